//! Compatibility of two OpenAPI descriptions: operations matched by method and path template.

use super::*;

/// The breaking changes from `old` to `new`, both OpenAPI descriptions.
///
/// Operations are matched by method and path template (parameter names in the template do not
/// matter). Breaks: an operation removed or its `operationId` changed, a response field removed
/// or its type, class or patterns changed, an input newly required, a pattern added to or
/// changed on an input. Added operations, optional inputs and response fields, removed inputs
/// and patterns removed from inputs are compatible. Patterns are compared as text: a different
/// pattern counts as a break even where it happens to accept the same values.
pub fn compatibility(old: &Description, new: &Description) -> Vec<Break> {
    let mut out = Vec::new();
    for o in &old.operations {
        let shape = template(&o.path);
        let Some(n) = new
            .operations
            .iter()
            .find(|n| n.method == o.method && template(&n.path) == shape)
        else {
            out.push(brk(
                "removed-operation",
                o,
                None,
                format!("operation `{}` ({} {}) was removed", o.id, o.method, o.path),
            ));
            continue;
        };
        if n.id != o.id {
            out.push(brk(
                "removed-operation",
                o,
                Some(&o.id),
                format!(
                    "the operationId of {} {} changed from `{}` to `{}`; contracts naming `{}` \
                     would no longer match",
                    o.method, o.path, o.id, n.id, o.id
                ),
            ));
        }
        for f in &o.fields {
            match n.fields.iter().find(|x| x.pointer == f.pointer) {
                None => out.push(brk(
                    "removed-field",
                    o,
                    Some(&f.pointer),
                    format!("response field {} was removed", f.pointer),
                )),
                Some(x) => {
                    if x.ty != f.ty {
                        out.push(brk(
                            "type-changed",
                            o,
                            Some(&f.pointer),
                            format!(
                                "response field {} changed type from {} to {}",
                                f.pointer, f.ty, x.ty
                            ),
                        ));
                    }
                    if x.patterns != f.patterns {
                        out.push(brk(
                            "pattern-changed",
                            o,
                            Some(&f.pointer),
                            format!(
                                "the patterns of response field {} changed from {} to {}; a \
                                 new or different pattern fails the answers the provider gives \
                                 today, a removed one lets consumers receive values outside \
                                 the format they were promised",
                                f.pointer,
                                show_patterns(&f.patterns),
                                show_patterns(&x.patterns)
                            ),
                        ));
                    }
                    if x.class != f.class {
                        out.push(brk(
                            "class-changed",
                            o,
                            Some(&f.pointer),
                            format!(
                                "response field {} changed class from {} to {}",
                                f.pointer,
                                f.class.as_str(),
                                x.class.as_str()
                            ),
                        ));
                    }
                }
            }
        }
        // Path parameters follow the template, which matched: renaming one changes nothing
        // for a client.
        for i in n
            .inputs
            .iter()
            .filter(|i| i.required && i.location != "path")
        {
            let before = o
                .inputs
                .iter()
                .find(|x| x.location == i.location && x.name == i.name);
            let what = describe_input(i);
            let detail = match before {
                Some(x) if x.required => continue,
                Some(_) => format!("{what} became required"),
                None => format!("{what} is new and required"),
            };
            out.push(brk("newly-required-input", o, Some(&i.name), detail));
        }
        for i in o.inputs.iter().filter(|i| i.location != "body") {
            let after = n
                .inputs
                .iter()
                .find(|x| x.location == i.location && x.name == i.name);
            let what = describe_input(i);
            match after {
                // A renamed path parameter changes nothing for a client (see above).
                None if i.location == "path" => {}
                None => out.push(brk(
                    "removed-input",
                    o,
                    Some(&i.name),
                    format!("{what} was removed; clients sending it would be refused"),
                )),
                Some(x) if x.ty != i.ty => out.push(brk(
                    "type-changed",
                    o,
                    Some(&i.name),
                    format!("{what} changed type from {} to {}", i.ty, x.ty),
                )),
                Some(_) => {}
            }
        }
        // A request pattern removed only lets more through; one added or changed may refuse
        // what clients send today. Whether one regex accepts all another does is not decided:
        // any pattern that is not in the old version counts as narrower.
        for i in &o.inputs {
            let Some(x) = n
                .inputs
                .iter()
                .find(|x| x.location == i.location && x.name == i.name)
            else {
                continue;
            };
            let added: Vec<String> = x
                .patterns
                .iter()
                .filter(|p| !i.patterns.contains(p))
                .cloned()
                .collect();
            if !added.is_empty() {
                out.push(brk(
                    "pattern-changed",
                    o,
                    Some(&i.name),
                    format!(
                        "{} must now match {} (before: {}); values clients send today may be \
                         refused",
                        describe_input(i),
                        show_patterns(&added),
                        show_patterns(&i.patterns)
                    ),
                ));
            }
        }
        let bound = |op: &Operation| {
            op.inputs.iter().find_map(|i| {
                i.subject
                    .as_ref()
                    .map(|s| (i.location.clone(), i.name.clone(), s.clone()))
            })
        };
        let (before, after) = (bound(o), bound(n));
        let same = match (&before, &after) {
            // A path parameter may be renamed; its position is what binds it.
            (Some((bl, bn, bs)), Some((al, an, as_))) => {
                bl == al && bs == as_ && (bl == "path" || bn == an)
            }
            (None, None) => true,
            _ => false,
        };
        if !same {
            let show = |b: &Option<(String, String, String)>| match b {
                Some((l, n, s)) => format!("{l} parameter `{n}` ({s})"),
                None => "nothing".to_string(),
            };
            out.push(brk(
                "subject-binding-changed",
                o,
                None,
                format!(
                    "the data subject was bound to {} and is now bound to {}",
                    show(&before),
                    show(&after)
                ),
            ));
        }
    }
    out
}

fn brk(kind: &str, op: &Operation, item: Option<&str>, detail: String) -> Break {
    Break {
        kind: kind.into(),
        operation: op.id.clone(),
        item: item.map(str::to_owned),
        detail,
    }
}

/// `` `^a$`, `^b$` ``, or `no pattern`.
fn show_patterns(patterns: &[String]) -> String {
    if patterns.is_empty() {
        return "no pattern".into();
    }
    patterns
        .iter()
        .map(|p| format!("`{p}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe_input(i: &Input) -> String {
    match (i.location.as_str(), i.name.as_str()) {
        ("body", "") => "the request body".into(),
        ("body", p) => format!("request body property {p}"),
        (loc, name) => format!("{loc} parameter `{name}`"),
    }
}

/// `/persons/{run}` → `/persons/{}`.
pub(super) fn template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_braces = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_braces = true;
                out.push('{');
            }
            '}' => {
                in_braces = false;
                out.push('}');
            }
            _ if in_braces => {}
            _ => out.push(c),
        }
    }
    out
}
