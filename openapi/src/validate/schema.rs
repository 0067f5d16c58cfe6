//! OpenAPI schemas turned into self-contained JSON Schema 2020-12 documents: every local
//! `#/components/...` reference is copied under `$defs` and rewritten to point there, and the
//! OpenAPI 3.0 dialect is translated (`nullable`, boolean `exclusiveMinimum`/`exclusiveMaximum`,
//! `$ref` siblings ignored). Annotations that only document (`example`, `xml`, `discriminator`,
//! `externalDocs`, `x-*`) are dropped, and so is `$schema`: one dialect is used for everything.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

/// Keywords whose value is one schema.
pub(super) const ONE: [&str; 12] = [
    "additionalProperties",
    "not",
    "if",
    "then",
    "else",
    "propertyNames",
    "contains",
    "unevaluatedProperties",
    "unevaluatedItems",
    "contentSchema",
    "additionalItems",
    "items",
];
/// Keywords whose value is an array of schemas.
pub(super) const LIST: [&str; 4] = ["allOf", "anyOf", "oneOf", "prefixItems"];
/// Keywords whose value is an object of schemas.
pub(super) const MAP: [&str; 3] = ["properties", "patternProperties", "dependentSchemas"];
/// Keywords dropped from every schema.
const DROPPED: [&str; 12] = [
    "$schema",
    "$id",
    "$anchor",
    "$dynamicAnchor",
    "$comment",
    "$defs",
    "definitions",
    "example",
    "examples",
    "xml",
    "discriminator",
    "externalDocs",
];

/// Turns `schema` (found in `root`, an OpenAPI document) into one JSON Schema 2020-12 document.
pub(super) fn bundle(root: &Value, v30: bool, schema: &Value) -> Result<Value, String> {
    let mut b = Bundler {
        root,
        v30,
        keys: HashMap::new(),
        pending: Vec::new(),
    };
    let mut out = b.translate(schema)?;
    let mut defs = Map::new();
    while let Some((pointer, key)) = b.pending.pop() {
        let target = root
            .pointer(&pointer)
            .ok_or_else(|| format!("`$ref` to #{pointer} points at nothing"))?;
        let t = b.translate(target)?;
        defs.insert(key, t);
    }
    if defs.is_empty() {
        return Ok(out);
    }
    match &mut out {
        Value::Object(m) => {
            m.insert("$defs".into(), Value::Object(defs));
            Ok(out)
        }
        // A boolean schema has no references, so `defs` is empty above.
        other => Ok(json!({ "allOf": [other.clone()], "$defs": defs })),
    }
}

struct Bundler<'a> {
    root: &'a Value,
    v30: bool,
    /// Decoded JSON pointer of a referenced component → its key under `$defs`.
    keys: HashMap<String, String>,
    pending: Vec<(String, String)>,
}

impl Bundler<'_> {
    fn reference(&mut self, r: &str) -> Result<String, String> {
        let pointer = r
            .strip_prefix('#')
            .filter(|p| p.starts_with("/components/"))
            .and_then(percent_decode)
            .ok_or_else(|| format!("`$ref: {r}` is not a local #/components/ reference"))?;
        if self.root.pointer(&pointer).is_none() {
            return Err(format!("`$ref: {r}` points at nothing"));
        }
        let n = self.keys.len();
        let key = self.keys.entry(pointer.clone()).or_insert_with(|| {
            let key = format!("c{n}");
            self.pending.push((pointer, key.clone()));
            key
        });
        Ok(format!("#/$defs/{key}"))
    }

    fn translate(&mut self, schema: &Value) -> Result<Value, String> {
        let Value::Object(m) = schema else {
            // `true`/`false` (3.1), or something the parser already let through as is.
            return Ok(schema.clone());
        };
        let mut out = Map::new();
        if let Some(r) = m.get("$ref") {
            let Value::String(r) = r else {
                return Err("`$ref` must be a string".into());
            };
            out.insert("$ref".into(), Value::String(self.reference(r)?));
            if self.v30 {
                // OpenAPI 3.0: "properties adjacent to $ref are ignored".
                return Ok(Value::Object(out));
            }
        }
        for (k, v) in m {
            let k = k.as_str();
            if k == "$ref" || k.starts_with("x-") || DROPPED.contains(&k) {
                continue;
            }
            if self.v30 && matches!(k, "nullable" | "exclusiveMinimum" | "exclusiveMaximum") {
                continue;
            }
            let t = if k == "items" && v.is_array() {
                // Tuple form (not OpenAPI, but JSON Schema drafts before 2020-12).
                out.insert("prefixItems".into(), self.list(v)?);
                continue;
            } else if ONE.contains(&k) {
                self.translate(v)?
            } else if LIST.contains(&k) {
                self.list(v)?
            } else if MAP.contains(&k) {
                match v {
                    Value::Object(props) => {
                        let mut t = Map::new();
                        for (name, s) in props {
                            t.insert(name.clone(), self.translate(s)?);
                        }
                        Value::Object(t)
                    }
                    other => other.clone(),
                }
            } else {
                v.clone()
            };
            out.insert(k.to_owned(), t);
        }
        if self.v30 {
            for (flag, bound) in [
                ("exclusiveMinimum", "minimum"),
                ("exclusiveMaximum", "maximum"),
            ] {
                if m.get(flag) == Some(&Value::Bool(true))
                    && let Some(limit) = out.remove(bound)
                {
                    out.insert(flag.into(), limit);
                }
            }
        }
        if out.get("format").and_then(Value::as_str) == Some("int32") {
            let bounds = json!({ "minimum": i32::MIN, "maximum": i32::MAX });
            match out.get_mut("allOf") {
                Some(Value::Array(all)) => all.push(bounds),
                _ => {
                    out.insert("allOf".into(), json!([bounds]));
                }
            }
        }
        if self.v30 && m.get("nullable") == Some(&Value::Bool(true)) {
            return Ok(nullable(out));
        }
        Ok(Value::Object(out))
    }

    fn list(&mut self, v: &Value) -> Result<Value, String> {
        match v {
            Value::Array(items) => items
                .iter()
                .map(|s| self.translate(s))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => Ok(other.clone()),
        }
    }
}

/// OpenAPI 3.0 `nullable: true`: `null` is allowed as well.
fn nullable(mut out: Map<String, Value>) -> Value {
    match out.get_mut("type") {
        Some(Value::String(t)) => {
            let t = std::mem::take(t);
            out.insert("type".into(), json!([t, "null"]));
        }
        Some(Value::Array(types)) => {
            if !types.iter().any(|t| t == "null") {
                types.push(Value::String("null".into()));
            }
        }
        _ => return json!({ "anyOf": [{ "type": "null" }, Value::Object(out)] }),
    }
    if let Some(Value::Array(values)) = out.get_mut("enum")
        && !values.contains(&Value::Null)
    {
        values.push(Value::Null);
    }
    Value::Object(out)
}

/// The JSON types a bundled schema allows at its top level (through `$ref`, `allOf`, `anyOf`,
/// `oneOf`), used to read a parameter's text as the right type; empty when anything goes.
pub(super) fn types_of(bundled: &Value, schema: &Value) -> Vec<String> {
    let mut out = Vec::new();
    collect_types(bundled, schema, 0, &mut out);
    out.sort();
    out.dedup();
    out
}

fn collect_types(bundled: &Value, schema: &Value, depth: usize, out: &mut Vec<String>) {
    if depth > 16 {
        return;
    }
    let Value::Object(m) = schema else { return };
    match m.get("type") {
        Some(Value::String(t)) => out.push(t.clone()),
        Some(Value::Array(ts)) => {
            out.extend(ts.iter().filter_map(|t| t.as_str().map(str::to_owned)))
        }
        _ => {}
    }
    if let Some(target) = m
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|p| bundled.pointer(p))
    {
        collect_types(bundled, target, depth + 1, out);
    }
    for k in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(list)) = m.get(k) {
            for s in list {
                collect_types(bundled, s, depth + 1, out);
            }
        }
    }
}

/// The `items` schema of an array schema (through `$ref` and `allOf`), if any.
pub(super) fn items_of<'a>(bundled: &'a Value, schema: &'a Value) -> Option<&'a Value> {
    let mut cur = schema;
    for _ in 0..16 {
        let m = cur.as_object()?;
        if let Some(items) = m.get("items") {
            return Some(items);
        }
        cur = match m.get("$ref").and_then(Value::as_str) {
            Some(r) => bundled.pointer(r.strip_prefix('#')?)?,
            None => m
                .get("allOf")?
                .as_array()?
                .iter()
                .find(|s| s.get("items").is_some() || s.get("$ref").is_some())?,
        };
    }
    None
}

pub(super) fn percent_decode(s: &str) -> Option<String> {
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
