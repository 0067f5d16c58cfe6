//! Data minimisation: a response cut down to what a contract's allowed field pointers cover.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;

/// The allowed pointers as a tree of segments (unescaped names; `*` for array elements).
#[derive(Default)]
struct Allow {
    /// An allowed pointer ends here: the whole subtree is kept.
    whole: bool,
    children: HashMap<String, Allow>,
}

impl Allow {
    fn new(allowed: &[String]) -> Allow {
        let mut root = Allow::default();
        for pointer in allowed {
            let mut node = &mut root;
            if pointer.is_empty() {
                node.whole = true;
                continue;
            }
            let Some(rest) = pointer.strip_prefix('/') else {
                // Not a pointer: covers nothing.
                continue;
            };
            for seg in rest.split('/') {
                node = node.children.entry(unescape(seg)).or_default();
            }
            node.whole = true;
        }
        root
    }
}

fn unescape(seg: &str) -> String {
    if seg.contains('~') {
        seg.replace("~1", "/").replace("~0", "~")
    } else {
        seg.to_owned()
    }
}

fn push_escaped(path: &mut String, name: &str) {
    path.push('/');
    if name.contains(['~', '/']) {
        path.push_str(&name.replace('~', "~0").replace('/', "~1"));
    } else {
        path.push_str(name);
    }
}

/// Keeps only what the `allowed` field pointers cover and removes everything else, in place.
///
/// `allowed` holds field pointers as in [`crate::Field`]: `/name` keeps the whole `name`
/// subtree, `/documents/*/number` keeps only `number` in every element of `documents`, and
/// `/documents` keeps whole elements. It is an allow-list: members the pointers do not name,
/// including members the description does not know, are removed. An object or array left with
/// nothing allowed is removed (not kept as `{}` or `[]`), and so is an array element; a value
/// of another type than the pointer expects (a string where `/address/street` expects an
/// object) is removed. The root, if nothing in it is allowed, becomes `{}`, `[]` or `null`.
///
/// Returns the leaf pointers disclosed (escaped, `*` for array elements, sorted, without
/// duplicates): scalars, and containers kept whole that are empty.
pub fn minimise(value: &mut Value, allowed: &[String]) -> Vec<String> {
    let allow = Allow::new(allowed);
    let mut disclosed = BTreeSet::new();
    let mut path = String::new();
    if !cut(value, &allow, &mut path, &mut disclosed) {
        *value = match value {
            Value::Object(_) => Value::Object(Default::default()),
            Value::Array(_) => Value::Array(Vec::new()),
            _ => Value::Null,
        };
    }
    disclosed.into_iter().collect()
}

/// Cuts `value` to what `allow` covers; false when nothing in it is allowed (the caller removes
/// it).
fn cut(value: &mut Value, allow: &Allow, path: &mut String, out: &mut BTreeSet<String>) -> bool {
    if allow.whole {
        leaves(value, path, out);
        return true;
    }
    if allow.children.is_empty() {
        return false;
    }
    let len = path.len();
    match value {
        Value::Object(members) => {
            members.retain(|name, v| {
                let Some(child) = allow.children.get(name.as_str()) else {
                    return false;
                };
                push_escaped(path, name);
                let keep = cut(v, child, path, out);
                path.truncate(len);
                keep
            });
            !members.is_empty()
        }
        Value::Array(items) => match allow.children.get("*") {
            None => false,
            Some(child) => {
                path.push_str("/*");
                items.retain_mut(|v| cut(v, child, path, out));
                path.truncate(len);
                !items.is_empty()
            }
        },
        _ => false,
    }
}

/// Records the leaves of a subtree kept whole, without recursion (the value may be deep).
fn leaves(value: &Value, path: &str, out: &mut BTreeSet<String>) {
    let mut stack: Vec<(&Value, String)> = vec![(value, path.to_owned())];
    while let Some((v, at)) = stack.pop() {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (name, child) in m {
                    let mut p = at.clone();
                    push_escaped(&mut p, name);
                    stack.push((child, p));
                }
            }
            Value::Array(a) if !a.is_empty() => {
                let p = format!("{at}/*");
                for child in a {
                    stack.push((child, p.clone()));
                }
            }
            _ => {
                if !out.contains(&at) {
                    out.insert(at);
                }
            }
        }
    }
}
