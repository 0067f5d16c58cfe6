//! Breaking changes between two versions of a protobuf description.

use super::*;

/// The breaking changes from `old` to `new`: a removed method; a changed request or response
/// type; changed streaming; a removed response field; a changed field type or label; a field
/// number reused under another name or type (`reused-field-number`; a type change is thus also
/// reported per pointer as `type-changed`) or a field moved to another number
/// (`renumbered-field`), in any message reachable from the old methods; a changed class; a new
/// or newly required proto2 request field; a data-subject binding added, removed or moved to
/// another field or scheme (`subject-binding-changed`). Needs the `stored` bytes of both.
pub fn compatibility(old: &Description, new: &Description) -> Vec<Break> {
    let mut breaks = Vec::new();
    for op in &old.operations {
        let Some(new_op) = new.operation(&op.id) else {
            breaks.push(brk(
                "removed-operation",
                &op.id,
                None,
                format!("method `{}` was removed", op.id),
            ));
            continue;
        };
        if (op.client_streaming, op.server_streaming)
            != (new_op.client_streaming, new_op.server_streaming)
        {
            breaks.push(brk(
                "streaming-changed",
                &op.id,
                None,
                format!(
                    "the method was {} and is now {}",
                    streaming_name(op),
                    streaming_name(new_op)
                ),
            ));
        }
        let (before, after) = (bound_subject(op), bound_subject(new_op));
        if before != after {
            let show = |b: &Option<(&str, &str)>| match b {
                Some((field, scheme)) => format!("request field `{field}` ({scheme})"),
                None => "nothing".to_string(),
            };
            breaks.push(brk(
                "subject-binding-changed",
                &op.id,
                after.or(before).map(|(field, _)| field),
                format!(
                    "the data subject was bound to {} and is now bound to {}; callers naming \
                     the person as before would be refused",
                    show(&before),
                    show(&after)
                ),
            ));
        }
        for field in &op.fields {
            let Some(new_field) = new_op.fields.iter().find(|f| f.pointer == field.pointer) else {
                breaks.push(brk(
                    "removed-field",
                    &op.id,
                    Some(&field.pointer),
                    format!("response field `{}` was removed", field.pointer),
                ));
                continue;
            };
            if new_field.ty != field.ty {
                breaks.push(brk(
                    "type-changed",
                    &op.id,
                    Some(&field.pointer),
                    type_change_detail("response field", &field.pointer, &field.ty, &new_field.ty),
                ));
            }
            if new_field.class != field.class {
                breaks.push(brk(
                    "class-changed",
                    &op.id,
                    Some(&field.pointer),
                    format!(
                        "response field `{}` was {} and is now {}; contracts naming it must be \
                         reviewed",
                        field.pointer,
                        field.class.as_str(),
                        new_field.class.as_str()
                    ),
                ));
            }
        }
        for input in &new_op.inputs {
            let before = op.inputs.iter().find(|i| i.name == input.name);
            if let Some(before) = before
                && before.ty != input.ty
            {
                breaks.push(brk(
                    "type-changed",
                    &op.id,
                    Some(&input.name),
                    type_change_detail("request field", &input.name, &before.ty, &input.ty),
                ));
            }
            if input.required && !before.is_some_and(|b| b.required) {
                breaks.push(brk(
                    "newly-required-input",
                    &op.id,
                    Some(&input.name),
                    format!(
                        "request field `{}` is now required; callers that leave it out are refused",
                        input.name
                    ),
                ));
            }
        }
    }
    message_breaks(old, new, &mut breaks);
    breaks
}

/// Checks that need the descriptors: request and response types, and field numbers.
pub(super) fn message_breaks(old: &Description, new: &Description, breaks: &mut Vec<Break>) {
    let (Ok(old_pool), Ok(new_pool)) = (
        decode_pool(old.stored.as_slice()),
        decode_pool(new.stored.as_slice()),
    ) else {
        breaks.push(brk(
            "unreadable-description",
            "",
            None,
            "the stored descriptor sets cannot be read, so message types and field numbers \
             were not compared"
                .into(),
        ));
        return;
    };

    // Every message reachable from the old methods, with the first method reaching it.
    let mut reachable: Vec<(MessageDescriptor, String)> = Vec::new();
    let mut seen = HashSet::new();
    for op in &old.operations {
        let Some(method) = find_method(&old_pool, &op.id) else {
            breaks.push(brk(
                "unreadable-description",
                &op.id,
                None,
                format!("method `{}` is not in the stored descriptor set", op.id),
            ));
            continue;
        };
        if let Some(new_method) = find_method(&new_pool, &op.id) {
            for (what, before, after) in [
                ("request", method.input(), new_method.input()),
                ("response", method.output(), new_method.output()),
            ] {
                if before.full_name() != after.full_name() {
                    breaks.push(brk(
                        "type-changed",
                        &op.id,
                        None,
                        format!(
                            "the {what} message was `{}` and is now `{}`",
                            before.full_name(),
                            after.full_name()
                        ),
                    ));
                }
            }
        }
        let mut queue = vec![method.input(), method.output()];
        while let Some(message) = queue.pop() {
            if is_well_known(&message) || !seen.insert(message.full_name().to_string()) {
                continue;
            }
            for field in message.fields() {
                if let Kind::Message(child) = field.kind() {
                    queue.push(child);
                }
            }
            reachable.push((message, op.id.clone()));
        }
    }

    for (message, op_id) in &reachable {
        let Some(after) = new_pool.get_message_by_name(message.full_name()) else {
            continue;
        };
        for field in message.fields() {
            let item = format!("{}.{}", message.full_name(), field.name());
            match after.get_field(field.number()) {
                Some(now) if now.name() != field.name() || type_name(&now) != type_name(&field) => {
                    breaks.push(brk(
                        "reused-field-number",
                        op_id,
                        Some(&format!("{}.{}", message.full_name(), now.name())),
                        format!(
                            "field number {} of `{}` was `{}` ({}) and is now `{}` ({}); peers \
                             on the old version would misread it",
                            field.number(),
                            message.full_name(),
                            field.name(),
                            type_name(&field),
                            now.name(),
                            type_name(&now)
                        ),
                    ))
                }
                Some(_) => {}
                None => {
                    if let Some(moved) = after.get_field_by_name(field.name()) {
                        breaks.push(brk(
                            "renumbered-field",
                            op_id,
                            Some(&item),
                            format!(
                                "field `{item}` moved from number {} to {}; peers on the old \
                                 version would no longer see it",
                                field.number(),
                                moved.number()
                            ),
                        ));
                    }
                }
            }
        }
    }
}

pub(super) fn find_method(
    pool: &DescriptorPool,
    id: &str,
) -> Option<prost_reflect::MethodDescriptor> {
    let (service, method) = id.split_once('/')?;
    pool.get_service_by_name(service)?
        .methods()
        .find(|m| m.name() == method)
}

/// The request field an operation binds the data subject to, and its scheme.
pub(super) fn bound_subject(op: &Operation) -> Option<(&str, &str)> {
    op.inputs
        .iter()
        .find_map(|i| Some((i.name.as_str(), i.subject.as_deref()?)))
}

pub(super) fn streaming_name(op: &Operation) -> &'static str {
    match (op.client_streaming, op.server_streaming) {
        (false, false) => "unary",
        (false, true) => "server streaming",
        (true, false) => "client streaming",
        (true, true) => "bidirectional streaming",
    }
}

pub(super) fn type_change_detail(what: &str, item: &str, before: &str, after: &str) -> String {
    let repeated = |t: &str| t.starts_with("repeated ") || t.starts_with("map<");
    if repeated(before) != repeated(after) {
        let label = |t: &str| if repeated(t) { "repeated" } else { "singular" };
        format!(
            "{what} `{item}` changed from {} (`{before}`) to {} (`{after}`)",
            label(before),
            label(after)
        )
    } else {
        format!("{what} `{item}` changed type from `{before}` to `{after}`")
    }
}

pub(super) fn brk(kind: &str, operation: &str, item: Option<&str>, detail: String) -> Break {
    Break {
        kind: kind.into(),
        operation: operation.into(),
        item: item.map(str::to_string),
        detail,
    }
}
