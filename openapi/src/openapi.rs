//! OpenAPI 3.0/3.1 documents: parsing, local `$ref` resolution, field classes, compatibility.
//!
//! # Field classes: `x-enlace-class`
//!
//! Every field of an operation's success response carries a class, written as the extension
//! `x-enlace-class` with one of `public`, `personal`, `sensitive`, `statistical`, `reserved`,
//! `secret`. It may be written on the property's schema itself, beside a `$ref` (the use site
//! wins over the referenced schema), on the root of a referenced or `allOf`/`oneOf`/`anyOf`
//! member schema, or on any enclosing object or array, from which it is inherited by everything
//! below that has no class of its own:
//!
//! ```yaml
//! Person:
//!   type: object
//!   x-enlace-class: personal        # inherited by every property below
//!   properties:
//!     name: { type: string }
//!     healthInsurance: { type: string, x-enlace-class: sensitive }
//! ```
//!
//! A response field that ends up with no class makes the whole document refused
//! (`unclassified-field`, listing every such field). Request schemas need no classes.
//!
//! # The data subject: `x-enlace-subject`
//!
//! A path or query parameter that holds the identifier of the person an operation is about
//! carries `x-enlace-subject` with the identifier's scheme (`CL-RUN`). The provider node then
//! requires `Enlace-Subject` to name that same person (`subject-mismatch` otherwise), so a
//! consumer cannot read one person's data while the access log names another. At most one
//! parameter per operation; adding, removing or moving the binding is a breaking change.
//!
//! # What is refused
//!
//! Documents over [`MAX_DESCRIPTION_BYTES`] (also once YAML aliases are expanded), nesting
//! deeper than [`MAX_DEPTH`], more than [`MAX_OPERATIONS`] operations or [`MAX_FIELDS`] fields
//! and inputs, any `$ref` that is not a local `#/components/...` reference (and `$id`,
//! `$dynamicRef`, `$recursiveRef`): nothing is ever fetched. Recursive schemas reachable from an
//! operation's request or success response are refused, because their fields could not all be
//! listed and classified; unused recursive components are accepted.

use std::collections::{HashMap, HashSet};
use std::fmt;

use enlace_core::config::DescriptionKind;
use enlace_core::contract::FieldClass;
use enlace_core::problem::{Problem, ProblemKind};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::model::{
    Break, Description, Field, Input, MAX_DESCRIPTION_BYTES, Operation, is_subject_scheme,
    sha256_hex,
};

/// Deepest nesting of arrays and objects in a document, and of schemas (counting each
/// `$ref`, `allOf`/`oneOf`/`anyOf` member, property and `items` step) below an operation.
pub const MAX_DEPTH: usize = 64;
/// Most operations in one document.
pub const MAX_OPERATIONS: usize = 1000;
/// Most response fields plus request-body inputs in one document, over all operations.
pub const MAX_FIELDS: usize = 10_000;
/// Most schema expansion steps for one document (guards against `$ref` fan-out).
const MAX_SCHEMA_STEPS: usize = 1_000_000;
/// Longest chain of `$ref` to `$ref` for parameters, responses, request bodies, path items.
const MAX_REF_HOPS: usize = 32;
const CLASS_KEY: &str = "x-enlace-class";
/// The extension naming the data-subject scheme a parameter carries, e.g. `CL-RUN`.
const SUBJECT_KEY: &str = "x-enlace-subject";
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Parses an OpenAPI 3.0.x or 3.1.x document, as JSON or YAML, into a [`Description`].
///
/// `stored` is the document re-serialised as compact JSON in document order, so a YAML
/// document and the JSON document with the same members in the same order have the same
/// digest, and parsing `stored` again gives the same description.
pub fn parse(bytes: &[u8]) -> Result<Description, Problem> {
    if bytes.len() > MAX_DESCRIPTION_BYTES {
        return Err(too_large(format!(
            "the document is {} bytes; the limit is {MAX_DESCRIPTION_BYTES}",
            bytes.len()
        )));
    }
    let doc = decode(bytes)?;
    if !doc.is_object() {
        return Err(invalid("an OpenAPI document must be a JSON or YAML object"));
    }
    check_version(&doc)?;
    scan(&doc, &mut String::new())?;
    let mut reader = Reader::new(&doc);
    let operations = reader.operations()?;
    if !reader.unclassified.is_empty() {
        return Err(unclassified(&reader.unclassified));
    }
    let stored = serde_json::to_vec(&doc)
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("re-serialising: {e}")))?;
    if stored.len() > MAX_DESCRIPTION_BYTES {
        return Err(too_large(format!(
            "the document is {} bytes once written as JSON (YAML aliases expanded); the limit \
             is {MAX_DESCRIPTION_BYTES}",
            stored.len()
        )));
    }
    let description = Description {
        kind: DescriptionKind::Openapi,
        digest: sha256_hex(&stored),
        operations,
        stored,
    };
    // Compile every operation's validators now, as a node will: a schema that cannot be
    // compiled (a `pattern` that is no regular expression, say) is refused at upload rather
    // than failing every call through the nodes.
    crate::validate::CompiledService::compile(&description)?;
    Ok(description)
}

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

/// A parameter's `x-enlace-subject`: a subject scheme (`[A-Z][A-Z0-9-]{1,15}`), on a path or
/// query parameter only (a header could be dropped or added by anything in between).
fn subject_binding(p: &Value, location: &str, at: &str) -> Result<Option<String>, Problem> {
    let Some(v) = p.get(SUBJECT_KEY) else {
        return Ok(None);
    };
    let Some(scheme) = v.as_str() else {
        return Err(invalid(format!(
            "`{SUBJECT_KEY}` at {at} must be a subject scheme such as CL-RUN"
        )));
    };
    if !matches!(location, "path" | "query") {
        return Err(invalid(format!(
            "`{SUBJECT_KEY}` at {at} is on a {location} parameter; only path and query parameters may carry the data subject"
        )));
    }
    if !is_subject_scheme(scheme) {
        return Err(invalid(format!(
            "`{SUBJECT_KEY}` at {at}: `{scheme}` must match [A-Z][A-Z0-9-]{{1,15}}"
        )));
    }
    Ok(Some(scheme.into()))
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
fn template(path: &str) -> String {
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

// ---------------------------------------------------------------------------------------------
// Problems

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidServiceDescription, detail)
}

fn too_large(detail: String) -> Problem {
    Problem::new(ProblemKind::BodyTooLarge, detail).with("limit", MAX_DESCRIPTION_BYTES)
}

fn remote(key: &str, target: &str, at: &str) -> Problem {
    let why = if key == "$ref" {
        "only local references into #/components/ are allowed, and nothing is ever fetched"
    } else {
        "it would resolve references against another document; only local references into \
         #/components/ are allowed, and nothing is ever fetched"
    };
    Problem::new(
        ProblemKind::RemoteReference,
        format!("`{key}: {target}` at {at} is refused: {why}"),
    )
    .with("at", at)
    .with("ref", target)
}

fn unclassified(found: &[(String, String)]) -> Problem {
    let mut pointers: Vec<&str> = Vec::new();
    let mut by_operation: Map<String, Value> = Map::new();
    for (op, pointer) in found {
        if !pointers.contains(&pointer.as_str()) {
            pointers.push(pointer);
        }
        if let Value::Array(list) = by_operation
            .entry(op.clone())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            list.push(Value::String(pointer.clone()));
        }
    }
    let shown: Vec<&str> = pointers.iter().take(20).copied().collect();
    let more = match pointers.len() - shown.len() {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    Problem::new(
        ProblemKind::UnclassifiedField,
        format!(
            "response fields without `{CLASS_KEY}`: {}{more}; set it on the property or on an \
             enclosing object",
            shown.join(", ")
        ),
    )
    .with("fields", &pointers)
    .with("by_operation", by_operation)
}

// ---------------------------------------------------------------------------------------------
// Decoding: JSON or YAML into a bounded serde_json::Value

/// Decodes JSON (when the first non-blank byte is `{`) or YAML. Refuses duplicate keys, nesting
/// deeper than [`MAX_DEPTH`], non-finite numbers, YAML tags, and documents whose expansion
/// (YAML aliases) would exceed [`MAX_DESCRIPTION_BYTES`]: every value is weighed as it is built
/// (one per node plus string lengths, never more than its compact JSON length), so an alias
/// bomb stops before it fills memory. serde_norway's own limits (128 levels, alias jumps at most
/// 100 times the event count) also apply, but only the weight bounds wide aliases.
fn decode(bytes: &[u8]) -> Result<Value, Problem> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut limits = Limits::default();
    let json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let result = if json {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        ValueSeed {
            limits: &mut limits,
            depth: 0,
        }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| format!("not valid JSON: {e}"))
    } else {
        // The YAML parser reads the whole event stream before the seed below sees a level,
        // and its cost grows with the square of flow nesting: bound that nesting first.
        if let Some(at) = yaml_flow_too_deep(bytes) {
            return Err(invalid(format!(
                "the document's flow collections (`[`, `{{`) nest deeper than {MAX_DEPTH} levels \
                 (at byte {at})"
            ))
            .with("limit", MAX_DEPTH));
        }
        let de = serde_norway::Deserializer::from_slice(bytes);
        ValueSeed {
            limits: &mut limits,
            depth: 0,
        }
        .deserialize(de)
        .map_err(|e| format!("not valid JSON or YAML: {e}"))
    };
    result.map_err(|msg| limits.tripped.take().unwrap_or_else(|| invalid(msg)))
}

/// Where YAML flow collections (`[…]`, `{…}`) first nest deeper than [`MAX_DEPTH`], counted
/// outside quoted scalars and comments, in one linear pass; `None` when they never do. A plain
/// scalar's brackets are counted too, which can only make the count larger.
fn yaml_flow_too_deep(bytes: &[u8]) -> Option<usize> {
    #[derive(PartialEq)]
    enum In {
        Text,
        Single,
        Double,
        Comment,
    }
    let mut state = In::Text;
    let mut depth = 0usize;
    let mut prev = b'\n';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let starts_token =
            prev.is_ascii_whitespace() || matches!(prev, b':' | b',' | b'[' | b'{' | b'-');
        match state {
            In::Text => match b {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Some(i);
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b'\'' if starts_token => state = In::Single,
                b'"' if starts_token => state = In::Double,
                b'#' if prev.is_ascii_whitespace() => state = In::Comment,
                _ => {}
            },
            In::Single if b == b'\'' => state = In::Text,
            In::Double if b == b'\\' => i += 1,
            In::Double if b == b'"' => state = In::Text,
            In::Comment if b == b'\n' => state = In::Text,
            _ => {}
        }
        prev = b;
        i += 1;
    }
    None
}

#[derive(Default)]
struct Limits {
    weight: usize,
    tripped: Option<Problem>,
}

impl Limits {
    fn weigh<E: de::Error>(&mut self, w: usize) -> Result<(), E> {
        self.weight = self.weight.saturating_add(w);
        if self.weight > MAX_DESCRIPTION_BYTES {
            return Err(self.trip(too_large(format!(
                "the document expands to more than {MAX_DESCRIPTION_BYTES} bytes of JSON \
                 (YAML aliases are expanded)"
            ))));
        }
        Ok(())
    }

    fn trip<E: de::Error>(&mut self, p: Problem) -> E {
        let msg = p.detail.clone();
        self.tripped.get_or_insert(p);
        E::custom(msg)
    }
}

struct ValueSeed<'l> {
    limits: &'l mut Limits,
    depth: usize,
}

impl ValueSeed<'_> {
    fn enter<E: de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_DEPTH {
            return Err(self.limits.trip(
                invalid(format!("the document nests deeper than {MAX_DEPTH} levels"))
                    .with("limit", MAX_DEPTH),
            ));
        }
        self.limits.weigh(1)?;
        Ok(depth)
    }

    fn number<E: de::Error>(self, n: Option<Number>) -> Result<Value, E> {
        self.limits.weigh(1)?;
        match n {
            Some(n) => Ok(Value::Number(n)),
            None => Err(E::custom("number not representable in JSON")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.limits.weigh(1)?;
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.number(Some(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.number(Some(v.into()))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        self.number(Number::from_i128(v))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        self.number(Number::from_u128(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.number(Number::from_f64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.limits.weigh(1 + v.len())?;
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.limits.weigh(1 + v.len())?;
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.limits.weigh(1)?;
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(ValueSeed {
            limits: &mut *self.limits,
            depth,
        })? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Value, A::Error> {
        let depth = self.enter()?;
        let mut out = Map::new();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            self.limits.weigh(1 + k.len())?;
            if out.contains_key(&k) {
                return Err(self.limits.trip(invalid(format!("duplicate key `{k}`"))));
            }
            let v = map.next_value_seed(ValueSeed {
                limits: &mut *self.limits,
                depth,
            })?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// A mapping key: a string, or (YAML) an integer or boolean such as an unquoted `200:`.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = String;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_any(self)
    }
}

impl Visitor<'_> for KeySeed {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping key that is a string, an integer or a boolean")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Whole-document checks

fn check_version(doc: &Value) -> Result<(), Problem> {
    match doc.get("openapi") {
        Some(Value::String(v)) if supported_version(v) => Ok(()),
        Some(Value::String(v)) => Err(invalid(format!(
            "OpenAPI version `{v}` is not supported; use 3.0.x or 3.1.x"
        ))
        .with("openapi", v)),
        Some(_) => Err(invalid(
            "`openapi` must be a string such as \"3.1.0\" (in YAML, quote it)",
        )),
        None if doc.get("swagger").is_some() => Err(invalid(
            "Swagger 2.0 documents are not supported; convert to OpenAPI 3.0 or 3.1",
        )),
        None => Err(invalid("not an OpenAPI document: `openapi` is missing")),
    }
}

fn supported_version(v: &str) -> bool {
    let mut it = v.split('.');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some("3"), Some("0" | "1"), Some(patch), None) => {
            !patch.is_empty() && patch.bytes().all(|b| b.is_ascii_digit())
        }
        _ => false,
    }
}

/// Walks the whole document: every `$ref` must be local into `#/components/`, no `$id`,
/// `$dynamicRef` or `$recursiveRef`, and every `x-enlace-class` string must be a known class.
fn scan(v: &Value, at: &mut String) -> Result<(), Problem> {
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                if let Value::String(s) = val {
                    match k.as_str() {
                        "$ref" if !s.starts_with("#/components/") => {
                            return Err(remote(k, s, &format!("{at}/{}", escape(k))));
                        }
                        "$id" | "$dynamicRef" | "$recursiveRef" => {
                            return Err(remote(k, s, &format!("{at}/{}", escape(k))));
                        }
                        CLASS_KEY => {
                            parse_class(s, &format!("{at}/{}", escape(k)))?;
                        }
                        _ => {}
                    }
                }
                let len = at.len();
                at.push('/');
                at.push_str(&escape(k));
                scan(val, at)?;
                at.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, val) in a.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                scan(val, at)?;
                at.truncate(len);
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_class(s: &str, at: &str) -> Result<FieldClass, Problem> {
    FieldClass::parse(s).ok_or_else(|| {
        invalid(format!(
            "unknown class `{s}` at {at}; the classes are {}",
            FieldClass::ALL.map(FieldClass::as_str).join(", ")
        ))
        .with("at", at)
        .with("class", s)
    })
}

fn class_of(m: &Map<String, Value>, at: &str) -> Result<Option<FieldClass>, Problem> {
    match m.get(CLASS_KEY) {
        None => Ok(None),
        Some(Value::String(s)) => parse_class(s, at).map(Some),
        Some(_) => Err(invalid(format!("`{CLASS_KEY}` at {at} must be a string")).with("at", at)),
    }
}

/// RFC 6901 escaping of one pointer segment.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The media type object for `application/json` (parameters such as `charset` ignored).
fn json_media<'a>(
    content: Option<&'a Value>,
    at: &str,
) -> Result<Option<(&'a Value, String)>, Problem> {
    let Some(content) = content else {
        return Ok(None);
    };
    let Value::Object(content) = content else {
        return Err(invalid(format!("`content` at {at} must be an object")));
    };
    Ok(content.iter().find_map(|(k, v)| {
        let essence = k.split(';').next().unwrap_or("").trim();
        essence
            .eq_ignore_ascii_case("application/json")
            .then(|| (v, format!("{at}/content/{}", escape(k))))
    }))
}

// ---------------------------------------------------------------------------------------------
// Operations and schemas

/// A schema reached from a field: where it is, the `$ref` targets being expanded above it (for
/// cycle detection), the class it inherits, and its schema depth.
#[derive(Clone)]
struct Part<'a> {
    schema: &'a Value,
    at: String,
    chain: Vec<String>,
    inherited: Option<FieldClass>,
    depth: usize,
}

/// What a field's schemas say once `$ref`, `allOf`, `oneOf` and `anyOf` are merged.
#[derive(Default)]
struct Shape<'a> {
    types: Vec<String>,
    nullable: bool,
    has_properties: bool,
    properties: Vec<(String, Vec<Part<'a>>)>,
    index: HashMap<String, usize>,
    required: HashSet<String>,
    items: Vec<Part<'a>>,
    /// The `pattern`s stated on the value (not on its properties or items).
    patterns: Vec<String>,
}

impl Shape<'_> {
    fn type_string(&self) -> String {
        let mut types: Vec<&str> = self.types.iter().map(String::as_str).collect();
        if types.is_empty() {
            if self.has_properties {
                types.push("object");
            } else if !self.items.is_empty() {
                types.push("array");
            } else {
                return "any".into();
            }
        }
        if self.nullable {
            types.push("null");
        }
        types.sort_unstable();
        types.dedup();
        types.join("|")
    }
}

/// A field or body input found by [`Reader::walk`].
struct Node {
    pointer: String,
    ty: String,
    class: Option<FieldClass>,
    required: bool,
    patterns: Vec<String>,
}

struct Reader<'a> {
    root: &'a Value,
    steps: usize,
    fields: usize,
    /// Whether classes matter (response schemas) or not (request schemas).
    classes: bool,
    /// (operation id, pointer) of response fields without a class.
    unclassified: Vec<(String, String)>,
}

impl<'a> Reader<'a> {
    fn new(root: &'a Value) -> Self {
        Reader {
            root,
            steps: 0,
            fields: 0,
            classes: false,
            unclassified: Vec::new(),
        }
    }

    fn operations(&mut self) -> Result<Vec<Operation>, Problem> {
        let paths = match self.root.get("paths") {
            Some(Value::Object(p)) => p,
            Some(_) => return Err(invalid("`paths` must be an object")),
            None => return Err(invalid("`paths` is required")),
        };
        let mut ops: Vec<Operation> = Vec::new();
        for (path, item) in paths {
            if path.starts_with("x-") {
                continue;
            }
            let at = format!("/paths/{}", escape(path));
            if !path.starts_with('/') {
                return Err(invalid(format!("path `{path}` must start with `/`")).with("at", at));
            }
            let (item, item_at) = self.deref(item, at)?;
            let Value::Object(item) = item else {
                return Err(invalid(format!(
                    "the path item at {item_at} must be an object"
                )));
            };
            for (method, op) in item.iter().filter(|(k, _)| METHODS.contains(&k.as_str())) {
                let op_at = format!("{item_at}/{method}");
                let method = method.to_ascii_uppercase();
                let Value::Object(op) = op else {
                    return Err(invalid(format!(
                        "the operation at {op_at} must be an object"
                    )));
                };
                let id = match op.get("operationId") {
                    Some(Value::String(s)) if !s.is_empty() => s.clone(),
                    Some(_) => {
                        return Err(invalid(format!(
                            "`operationId` at {op_at} must be a non-empty string"
                        ))
                        .with("at", op_at));
                    }
                    None => {
                        return Err(invalid(format!(
                            "{method} {path} has no `operationId`; contracts name operations by it"
                        ))
                        .with("at", op_at));
                    }
                };
                if let Some(other) = ops.iter().find(|o| o.id == id) {
                    return Err(invalid(format!(
                        "operationId `{id}` is used by both {} {} and {method} {path}",
                        other.method, other.path
                    ))
                    .with("operation", &id));
                }
                if ops.len() == MAX_OPERATIONS {
                    return Err(invalid(format!("more than {MAX_OPERATIONS} operations"))
                        .with("limit", MAX_OPERATIONS));
                }
                let mut inputs = self.parameters(&[
                    (item.get("parameters"), &item_at),
                    (op.get("parameters"), &op_at),
                ])?;
                inputs.extend(self.body(op.get("requestBody"), &op_at)?);
                let fields = self.response(&id, op.get("responses"), &op_at)?;
                ops.push(Operation {
                    id,
                    method,
                    path: path.clone(),
                    client_streaming: false,
                    server_streaming: false,
                    inputs,
                    fields,
                });
            }
        }
        Ok(ops)
    }

    /// Path-level then operation-level parameters; an operation-level one replaces a path-level
    /// one with the same name and location.
    fn parameters(
        &mut self,
        lists: &[(Option<&'a Value>, &String)],
    ) -> Result<Vec<Input>, Problem> {
        let mut out: Vec<Input> = Vec::new();
        for (list, at) in lists {
            let Some(list) = list else { continue };
            let Value::Array(list) = list else {
                return Err(invalid(format!("`parameters` at {at} must be an array")));
            };
            for (i, p) in list.iter().enumerate() {
                let (p, p_at) = self.deref(p, format!("{at}/parameters/{i}"))?;
                let name = p.get("name").and_then(Value::as_str);
                let location = p.get("in").and_then(Value::as_str);
                let (Some(name), Some(location @ ("path" | "query" | "header" | "cookie"))) =
                    (name, location)
                else {
                    return Err(invalid(format!(
                        "the parameter at {p_at} needs a `name` and an `in` of path, query, \
                         header or cookie"
                    ))
                    .with("at", p_at));
                };
                let required = location == "path" || p.get("required") == Some(&Value::Bool(true));
                let schema = match p.get("schema") {
                    Some(s) => Some((s, format!("{p_at}/schema"))),
                    None => json_media(p.get("content"), &p_at)?.and_then(|(m, m_at)| {
                        m.get("schema").map(|s| (s, format!("{m_at}/schema")))
                    }),
                };
                let (ty, patterns) = match schema {
                    Some((s, s_at)) => self.type_of(s, s_at)?,
                    None => ("any".into(), Vec::new()),
                };
                let subject = subject_binding(p, location, &p_at)?;
                let input = Input {
                    location: location.into(),
                    name: name.into(),
                    required,
                    ty,
                    subject,
                    patterns,
                };
                match out
                    .iter_mut()
                    .find(|x| x.location == input.location && x.name == input.name)
                {
                    Some(x) => *x = input,
                    None => out.push(input),
                }
            }
        }
        let bound: Vec<&Input> = out.iter().filter(|i| i.subject.is_some()).collect();
        if bound.len() > 1 {
            return Err(invalid(format!(
                "at most one parameter of an operation may carry `{SUBJECT_KEY}`; {} do ({})",
                bound.len(),
                bound
                    .iter()
                    .map(|i| format!("{} {}", i.location, i.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(out)
    }

    /// The request body as inputs: the body itself (`""`), then every property of a JSON body.
    fn body(&mut self, body: Option<&'a Value>, op_at: &str) -> Result<Vec<Input>, Problem> {
        let Some(body) = body else {
            return Ok(Vec::new());
        };
        let (body, at) = self.deref(body, format!("{op_at}/requestBody"))?;
        let required = body.get("required") == Some(&Value::Bool(true));
        let schema = json_media(body.get("content"), &at)?
            .and_then(|(m, m_at)| m.get("schema").map(|s| (s, format!("{m_at}/schema"))));
        let Some((schema, s_at)) = schema else {
            return Ok(vec![Input {
                location: "body".into(),
                name: String::new(),
                required,
                ty: "any".into(),
                subject: None,
                patterns: Vec::new(),
            }]);
        };
        self.classes = false;
        let mut nodes = Vec::new();
        self.walk(
            vec![root_part(schema, s_at)],
            "",
            required,
            true,
            &mut nodes,
        )?;
        Ok(nodes
            .into_iter()
            .map(|n| Input {
                location: "body".into(),
                name: n.pointer,
                required: n.required,
                ty: n.ty,
                subject: None,
                patterns: n.patterns,
            })
            .collect())
    }

    /// The fields of the lowest 2xx response that has `application/json` content.
    fn response(
        &mut self,
        id: &str,
        responses: Option<&'a Value>,
        op_at: &str,
    ) -> Result<Vec<Field>, Problem> {
        let Some(responses) = responses else {
            return Ok(Vec::new());
        };
        let Value::Object(responses) = responses else {
            return Err(invalid(format!("`responses` at {op_at} must be an object")));
        };
        let mut codes: Vec<(u16, &String, &'a Value)> = responses
            .iter()
            .filter_map(|(k, v)| {
                let code = match k.as_str() {
                    "2XX" | "2xx" => 299,
                    _ if k.len() == 3 && k.starts_with('2') => k.parse().ok()?,
                    _ => return None,
                };
                Some((code, k, v))
            })
            .collect();
        codes.sort_by_key(|(code, _, _)| *code);
        for (_, key, response) in codes {
            let (response, r_at) =
                self.deref(response, format!("{op_at}/responses/{}", escape(key)))?;
            let Some((media, m_at)) = json_media(response.get("content"), &r_at)? else {
                continue;
            };
            let Some(schema) = media.get("schema") else {
                return Ok(Vec::new());
            };
            self.classes = true;
            let mut nodes = Vec::new();
            let root = root_part(schema, format!("{m_at}/schema"));
            self.walk(vec![root], "", true, false, &mut nodes)?;
            let mut fields = Vec::with_capacity(nodes.len());
            for n in nodes {
                match n.class {
                    Some(class) => fields.push(Field {
                        pointer: n.pointer,
                        class,
                        ty: n.ty,
                        patterns: n.patterns,
                    }),
                    None => self.unclassified.push((id.to_owned(), n.pointer)),
                }
            }
            return Ok(fields);
        }
        Ok(Vec::new())
    }

    /// Follows `$ref` on a non-schema object (path item, parameter, request body, response).
    fn deref(&self, v: &'a Value, at: String) -> Result<(&'a Value, String), Problem> {
        let mut cur = (v, at);
        for _ in 0..MAX_REF_HOPS {
            match cur.0.get("$ref") {
                None => return Ok(cur),
                Some(r) => cur = self.resolve(r, &cur.1)?,
            }
        }
        Err(invalid(format!(
            "the references starting at {} go round in a circle or are more than {MAX_REF_HOPS} deep",
            cur.1
        )))
    }

    /// Resolves a local `$ref` to the value and its JSON pointer.
    fn resolve(&self, r: &Value, at: &str) -> Result<(&'a Value, String), Problem> {
        let Value::String(r) = r else {
            return Err(invalid(format!("`$ref` at {at} must be a string")).with("at", at));
        };
        let target = r
            .strip_prefix('#')
            .filter(|p| p.starts_with("/components/"))
            .ok_or_else(|| remote("$ref", r, at))?;
        let pointer = percent_decode(target).ok_or_else(|| {
            invalid(format!("`$ref: {r}` at {at} is not a valid URI fragment")).with("at", at)
        })?;
        match self.root.pointer(&pointer) {
            Some(v) => Ok((v, pointer)),
            None => Err(invalid(format!("`$ref: {r}` at {at} points at nothing"))
                .with("at", at)
                .with("ref", r.as_str())),
        }
    }

    /// Resolves a schema `$ref` and pushes its target on `chain`, refusing a cycle.
    fn enter_ref(
        &mut self,
        r: &Value,
        at: &str,
        chain: &mut Vec<String>,
    ) -> Result<(&'a Value, String), Problem> {
        let (target, pointer) = self.resolve(r, at)?;
        if let Some(start) = chain.iter().position(|p| *p == pointer) {
            let mut cycle: Vec<String> = chain[start..].iter().map(|p| format!("#{p}")).collect();
            cycle.push(format!("#{pointer}"));
            return Err(invalid(format!(
                "recursive schema: {} (reached at {at}); recursive request and response schemas \
                 are refused because their fields cannot all be listed and classified",
                cycle.join(" → ")
            ))
            .with("at", at)
            .with("cycle", cycle));
        }
        chain.push(pointer.clone());
        Ok((target, pointer))
    }

    fn step(&mut self, at: &str, depth: usize) -> Result<(), Problem> {
        self.steps += 1;
        if self.steps > MAX_SCHEMA_STEPS {
            return Err(invalid(format!(
                "the schemas are too complex to expand (more than {MAX_SCHEMA_STEPS} steps)"
            )));
        }
        if depth > MAX_DEPTH {
            return Err(invalid(format!(
                "schemas nest deeper than {MAX_DEPTH} levels (counting $ref, allOf/oneOf/anyOf, \
                 properties and items) at {at}"
            ))
            .with("at", at)
            .with("limit", MAX_DEPTH));
        }
        Ok(())
    }

    /// The type of a parameter schema, and its patterns (those of its array items too).
    fn type_of(&mut self, schema: &'a Value, at: String) -> Result<(String, Vec<String>), Problem> {
        let mut shape = Shape::default();
        let part = root_part(schema, at);
        self.classes = false;
        self.expand(
            part.schema,
            &part.at,
            None,
            &mut Vec::new(),
            0,
            true,
            &mut shape,
        )?;
        let ty = shape.type_string();
        let mut patterns = std::mem::take(&mut shape.patterns);
        let mut items = Shape::default();
        for p in shape.items {
            let mut chain = p.chain;
            self.expand(p.schema, &p.at, None, &mut chain, p.depth, true, &mut items)?;
        }
        patterns.extend(items.patterns.iter().map(|p| format!("items: {p}")));
        patterns.sort();
        patterns.dedup();
        Ok((ty, patterns))
    }

    /// Emits a node for `pointer` (when `emit`), then walks its properties and array items.
    /// Returns the node's patterns, those of its array items prefixed with `items: `.
    fn walk(
        &mut self,
        parts: Vec<Part<'a>>,
        pointer: &str,
        required: bool,
        emit: bool,
        out: &mut Vec<Node>,
    ) -> Result<Vec<String>, Problem> {
        let mut class = None;
        if self.classes {
            for p in &parts {
                let own = self.node_class(p.schema, &p.at, &mut p.chain.clone(), p.depth)?;
                class = agree(class, own, &p.at)?;
            }
            class = class.or_else(|| parts.iter().find_map(|p| p.inherited));
        }
        let mut shape = Shape::default();
        for p in parts {
            let mut chain = p.chain;
            self.expand(
                p.schema, &p.at, class, &mut chain, p.depth, true, &mut shape,
            )?;
        }
        if emit {
            self.fields += 1;
            if self.fields > MAX_FIELDS {
                return Err(invalid(format!(
                    "more than {MAX_FIELDS} response fields and request-body inputs"
                ))
                .with("limit", MAX_FIELDS));
            }
            out.push(Node {
                pointer: pointer.to_owned(),
                ty: shape.type_string(),
                class,
                required,
                patterns: Vec::new(),
            });
        }
        let index = out.len().checked_sub(1).filter(|_| emit);
        let Shape {
            properties,
            required: required_names,
            items,
            mut patterns,
            ..
        } = shape;
        for (name, parts) in properties {
            let child = format!("{pointer}/{}", escape(&name));
            let child_required = required && required_names.contains(&name);
            self.walk(parts, &child, child_required, true, out)?;
        }
        if !items.is_empty() {
            let of_items = self.walk(items, &format!("{pointer}/*"), required, false, out)?;
            patterns.extend(of_items.iter().map(|p| format!("items: {p}")));
        }
        patterns.sort();
        patterns.dedup();
        if let Some(i) = index {
            out[i].patterns = patterns.clone();
        }
        Ok(patterns)
    }

    /// The class a schema states for itself: its own `x-enlace-class`, else that of the schema
    /// it references, else the one its `allOf`/`oneOf`/`anyOf` members agree on.
    fn node_class(
        &mut self,
        schema: &'a Value,
        at: &str,
        chain: &mut Vec<String>,
        depth: usize,
    ) -> Result<Option<FieldClass>, Problem> {
        self.step(at, depth)?;
        let Value::Object(m) = schema else {
            return Ok(None);
        };
        if let Some(c) = class_of(m, at)? {
            return Ok(Some(c));
        }
        if let Some(r) = m.get("$ref") {
            let (target, t_at) = self.enter_ref(r, at, chain)?;
            let c = self.node_class(target, &t_at, chain, depth + 1);
            chain.pop();
            if let Some(c) = c? {
                return Ok(Some(c));
            }
        }
        let mut found = None;
        for (member, m_at, _) in members(m, at)? {
            let c = self.node_class(member, &m_at, chain, depth + 1)?;
            found = agree(found, c, at)?;
        }
        Ok(found)
    }

    /// Merges what `schema` says into `shape`; `class` is what its properties and items
    /// inherit. `all` is false below `oneOf`/`anyOf`, whose `required` lists are not merged.
    #[allow(clippy::too_many_arguments)]
    fn expand(
        &mut self,
        schema: &'a Value,
        at: &str,
        class: Option<FieldClass>,
        chain: &mut Vec<String>,
        depth: usize,
        all: bool,
        shape: &mut Shape<'a>,
    ) -> Result<(), Problem> {
        self.step(at, depth)?;
        let m = match schema {
            Value::Object(m) => m,
            Value::Bool(_) => return Ok(()),
            _ => {
                return Err(invalid(format!("the schema at {at} must be an object")).with("at", at));
            }
        };
        if let Some(r) = m.get("$ref") {
            let (target, t_at) = self.enter_ref(r, at, chain)?;
            let res = self.expand(target, &t_at, class, chain, depth + 1, all, shape);
            chain.pop();
            res?;
        }
        match m.get("type") {
            None => {}
            Some(Value::String(t)) => shape.types.push(t.clone()),
            Some(Value::Array(ts)) if ts.iter().all(Value::is_string) => {
                shape
                    .types
                    .extend(ts.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            Some(_) => {
                return Err(invalid(format!(
                    "`type` at {at} must be a string or an array of strings"
                ))
                .with("at", at));
            }
        }
        if m.get("nullable") == Some(&Value::Bool(true)) {
            shape.nullable = true;
        }
        if let Some(Value::String(p)) = m.get("pattern") {
            shape.patterns.push(p.clone());
        }
        if let Some(props) = m.get("properties") {
            let Value::Object(props) = props else {
                return Err(
                    invalid(format!("`properties` at {at} must be an object")).with("at", at)
                );
            };
            shape.has_properties = true;
            for (name, s) in props {
                let p_at = format!("{at}/properties/{}", escape(name));
                if name == "*" {
                    return Err(invalid(format!(
                        "a property may not be named `*` ({p_at}): `*` stands for every array \
                         element in field pointers"
                    ))
                    .with("at", p_at));
                }
                let part = Part {
                    schema: s,
                    at: p_at,
                    chain: chain.clone(),
                    inherited: class,
                    depth: depth + 1,
                };
                match shape.index.get(name) {
                    Some(&i) => shape.properties[i].1.push(part),
                    None => {
                        shape.index.insert(name.clone(), shape.properties.len());
                        shape.properties.push((name.clone(), vec![part]));
                    }
                }
            }
        }
        if let Some(req) = m.get("required") {
            match req {
                Value::Array(names) if names.iter().all(Value::is_string) => {
                    if all {
                        shape
                            .required
                            .extend(names.iter().filter_map(Value::as_str).map(str::to_owned));
                    }
                }
                // `required: true` inside a schema is a common slip for a parameter's flag.
                _ => {
                    return Err(invalid(format!(
                        "`required` at {at} must be an array of property names"
                    ))
                    .with("at", at));
                }
            }
        }
        for key in ["prefixItems", "items"] {
            let item_at = format!("{at}/{key}");
            let schemas: Vec<(&'a Value, String)> = match m.get(key) {
                None => continue,
                Some(Value::Array(a)) => a
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s, format!("{item_at}/{i}")))
                    .collect(),
                Some(s) => vec![(s, item_at)],
            };
            for (s, s_at) in schemas {
                shape.items.push(Part {
                    schema: s,
                    at: s_at,
                    chain: chain.clone(),
                    inherited: class,
                    depth: depth + 1,
                });
            }
        }
        for (member, m_at, member_all) in members(m, at)? {
            let own = if self.classes {
                self.node_class(member, &m_at, chain, depth + 1)?
            } else {
                None
            };
            self.expand(
                member,
                &m_at,
                own.or(class),
                chain,
                depth + 1,
                all && member_all,
                shape,
            )?;
        }
        Ok(())
    }
}

fn root_part(schema: &Value, at: String) -> Part<'_> {
    Part {
        schema,
        at,
        chain: Vec::new(),
        inherited: None,
        depth: 0,
    }
}

/// The members of `allOf` (true: their `required` lists count), `oneOf` and `anyOf`.
fn members<'a>(
    m: &'a Map<String, Value>,
    at: &str,
) -> Result<Vec<(&'a Value, String, bool)>, Problem> {
    let mut out = Vec::new();
    for key in ["allOf", "oneOf", "anyOf"] {
        match m.get(key) {
            None => {}
            Some(Value::Array(a)) => {
                out.extend(
                    a.iter()
                        .enumerate()
                        .map(|(i, s)| (s, format!("{at}/{key}/{i}"), key == "allOf")),
                );
            }
            Some(_) => {
                return Err(invalid(format!("`{key}` at {at} must be an array")).with("at", at));
            }
        }
    }
    Ok(out)
}

/// Combines two stated classes: equal or one missing is fine; two different ones are refused.
fn agree(
    a: Option<FieldClass>,
    b: Option<FieldClass>,
    at: &str,
) -> Result<Option<FieldClass>, Problem> {
    match (a, b) {
        (Some(x), Some(y)) if x != y => Err(invalid(format!(
            "the schemas combined at {at} state different classes ({} and {}); state \
             `{CLASS_KEY}` on the schema that combines them",
            x.as_str(),
            y.as_str()
        ))
        .with("at", at)),
        (x, y) => Ok(x.or(y)),
    }
}

#[cfg(test)]
mod tests;
