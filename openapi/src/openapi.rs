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

mod compat;
mod decode;
mod reader;
#[cfg(test)]
mod tests;

pub use compat::compatibility;
use decode::decode;
use reader::Reader;

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
