//! Minimisation: clearing everything a contract's allowed field pointers do not cover, and writing
//! the message again.

use super::*;

// ---------------------------------------------------------------------------------------------
// Minimisation

/// The allowed pointers as a tree of field names (`*` for the elements of a repeated field).
#[derive(Default)]
pub(super) struct Allow {
    /// An allowed pointer ends here: the whole subtree is kept.
    whole: bool,
    children: HashMap<String, Allow>,
}

impl Allow {
    fn new(allowed: &[String]) -> Allow {
        let mut root = Allow::default();
        for pointer in allowed {
            if pointer.is_empty() {
                root.whole = true;
                continue;
            }
            let Some(rest) = pointer.strip_prefix('/') else {
                continue; // not a pointer: covers nothing
            };
            let mut node = &mut root;
            for seg in rest.split('/') {
                node = node.children.entry(seg.to_owned()).or_default();
            }
            node.whole = true;
        }
        root
    }
}

/// Keeps only the fields the `allowed` pointers cover and clears everything else, in place.
///
/// Pointers are those of the registry's field list for protobuf: field names as declared in
/// the .proto, `/address` keeps the whole `address` message, `/address/street` keeps only
/// `street` in it, `/documents/*/number` keeps only `number` in every element of the repeated
/// message field `documents` (and `/documents` whole elements). Maps and repeated scalars are
/// kept or cleared whole (`/labels`, `/tags`; `/tags/*` also keeps them). It is an allow-list:
/// fields not named, unknown fields and extensions are cleared, also inside kept subtrees. A
/// message field left with nothing allowed is cleared (not kept empty), and so is an element
/// of a repeated field; an empty message kept whole stays. Cleared fields lose their presence,
/// so they are absent from [`encode`]'s bytes.
///
/// Returns the disclosed leaf pointers, sorted and without duplicates: set scalar fields,
/// maps and repeated scalars by their field pointer, Google's well-known types as one leaf,
/// elements of repeated messages with `*`, and empty messages kept whole.
pub fn minimise(msg: &mut DynamicMessage, allowed: &[String]) -> Vec<String> {
    let allow = Allow::new(allowed);
    let mut disclosed = BTreeSet::new();
    let mut path = String::new();
    if !cut_message(msg, &allow, &mut path, &mut disclosed) {
        msg.clear();
    }
    disclosed.into_iter().collect()
}

/// Encodes a message (after [`minimise`]) for framing with [`encode_frame`].
pub fn encode(msg: &DynamicMessage) -> Vec<u8> {
    msg.encode_to_vec()
}

/// Cuts a message to what `allow` covers; false when nothing in it is allowed.
pub(super) fn cut_message(
    msg: &mut DynamicMessage,
    allow: &Allow,
    path: &mut String,
    out: &mut BTreeSet<String>,
) -> bool {
    if allow.whole {
        whole_message(msg, path, out);
        return true;
    }
    strip_unknown(msg);
    if allow.children.is_empty() {
        return false;
    }
    let fields: Vec<FieldDescriptor> = msg.descriptor().fields().collect();
    let mut kept = false;
    for field in fields {
        if !msg.has_field(&field) {
            continue;
        }
        let Some(child) = allow.children.get(field.name()) else {
            msg.clear_field(&field);
            continue;
        };
        let len = path.len();
        path.push('/');
        path.push_str(field.name());
        let keep = cut_field(&field, msg.get_field_mut(&field), child, path, out);
        path.truncate(len);
        if keep {
            kept = true;
        } else {
            msg.clear_field(&field);
        }
    }
    kept
}

/// Cuts one set field's value; false when the field must be cleared.
pub(super) fn cut_field(
    field: &FieldDescriptor,
    value: &mut Value,
    allow: &Allow,
    path: &mut String,
    out: &mut BTreeSet<String>,
) -> bool {
    if allow.whole {
        whole_field(field, value, path, out);
        return true;
    }
    if allow.children.is_empty() || field.is_map() {
        return false;
    }
    match value {
        Value::Message(child) => cut_message(child, allow, path, out),
        Value::List(items) => {
            let Some(element) = allow.children.get("*") else {
                return false;
            };
            if !matches!(field.kind(), Kind::Message(_)) {
                // `/tags/*` on repeated scalars: all or nothing, disclosed as `/tags`.
                if element.whole {
                    out.insert(path.clone());
                }
                return element.whole;
            }
            let len = path.len();
            path.push_str("/*");
            items.retain_mut(|item| match item {
                Value::Message(child) => cut_message(child, element, path, out),
                _ => false,
            });
            path.truncate(len);
            !items.is_empty()
        }
        _ => false,
    }
}

/// Records the leaves of a message kept whole, stripping unknown fields and extensions.
pub(super) fn whole_message(
    msg: &mut DynamicMessage,
    path: &mut String,
    out: &mut BTreeSet<String>,
) {
    strip_unknown(msg);
    let mut empty = true;
    for (field, value) in msg.fields_mut() {
        empty = false;
        let len = path.len();
        path.push('/');
        path.push_str(field.name());
        whole_field(&field, value, path, out);
        path.truncate(len);
    }
    if empty {
        out.insert(path.clone());
    }
}

/// Records the leaves of a field kept whole, stripping unknown fields below it.
pub(super) fn whole_field(
    field: &FieldDescriptor,
    value: &mut Value,
    path: &mut String,
    out: &mut BTreeSet<String>,
) {
    let leaf = field.is_map()
        || match field.kind() {
            Kind::Message(m) => m.package_name() == "google.protobuf",
            _ => true,
        };
    if leaf {
        strip_unknown_below(value);
        out.insert(path.clone());
        return;
    }
    match value {
        Value::Message(child) => whole_message(child, path, out),
        Value::List(items) => {
            let len = path.len();
            path.push_str("/*");
            for item in items {
                if let Value::Message(child) = item {
                    whole_message(child, path, out);
                }
            }
            path.truncate(len);
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

pub(super) fn strip_unknown(msg: &mut DynamicMessage) {
    msg.take_unknown_fields().for_each(drop);
    msg.take_extensions().for_each(drop);
}

/// Strips unknown fields and extensions from every message inside a value.
pub(super) fn strip_unknown_below(value: &mut Value) {
    match value {
        Value::Message(msg) => {
            strip_unknown(msg);
            for (_, v) in msg.fields_mut() {
                strip_unknown_below(v);
            }
        }
        Value::List(items) => items.iter_mut().for_each(strip_unknown_below),
        Value::Map(entries) => entries.values_mut().for_each(strip_unknown_below),
        _ => {}
    }
}
