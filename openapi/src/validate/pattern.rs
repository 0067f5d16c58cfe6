//! Every `pattern` (and `patternProperties` name) of a schema compiled at upload with the engine,
//! flags and limits the validator uses at request time, refused with the keyword's JSON pointer.
//!
//! Each pattern is compiled by building a one-keyword validator (`{"pattern": p}`) with
//! [`options`], the same options every request validator is built with, so what passes here is
//! what a node compiles later: ECMA-262 translated to Rust regex syntax, `fancy-regex` for
//! look-around and back-references, and the size limits below, which keep an upload from making
//! the registry (or a node) build a huge automaton (`\w{1000}` is several megabytes).

use std::collections::HashSet;

use enlace_core::problem::Problem;
use jsonschema::{Draft, PatternOptions, ValidationOptions};
use serde_json::{Value, json};

use super::schema::{LIST, MAP, ONE};
use super::{escape, invalid};

/// Longest `pattern` accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Approximate size of one compiled regex, in bytes (`regex`'s default is 10 MiB).
pub const MAX_PATTERN_PROGRAM_BYTES: usize = 1 << 20;
/// Backtracking steps allowed to a `pattern` with look-around or back-references.
const BACKTRACK_LIMIT: usize = 100_000;
/// Transition cache of one regex's lazy DFA, in bytes (`regex`'s default is 2 MiB).
const DFA_CACHE_BYTES: usize = 1 << 20;

// The schema keywords walked are the ones the schema rewrite walks (`schema.rs`).

/// The validator options for every schema: 2020-12, offline, formats asserted, and the regex
/// engine with its limits.
pub(super) fn options() -> ValidationOptions<'static> {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .offline()
        .should_validate_formats(true)
        .with_pattern_options(
            PatternOptions::fancy_regex()
                .backtrack_limit(BACKTRACK_LIMIT)
                .size_limit(MAX_PATTERN_PROGRAM_BYTES)
                .dfa_size_limit(DFA_CACHE_BYTES),
        )
}

/// Patterns already compiled, and `$ref` targets already walked, across one document.
#[derive(Default)]
pub(super) struct Checked {
    patterns: HashSet<String>,
    refs: HashSet<String>,
}

/// Compiles every pattern reachable from `schema` (at `at` in `root`), following local `$ref`s
/// once each. In OpenAPI 3.0 (`v30`) the siblings of a `$ref` are ignored, as the validator
/// ignores them.
pub(super) fn check(
    root: &Value,
    v30: bool,
    schema: &Value,
    at: &str,
    done: &mut Checked,
) -> Result<(), Problem> {
    let mut stack: Vec<(&Value, String)> = vec![(schema, at.to_owned())];
    while let Some((v, at)) = stack.pop() {
        let Value::Object(m) = v else { continue };
        if let Some(r) = m.get("$ref").and_then(Value::as_str) {
            // The bundler has already refused anything that is not a local reference.
            if let Some(pointer) = r.strip_prefix('#').and_then(super::schema::percent_decode)
                && let Some(target) = root.pointer(&pointer)
                && done.refs.insert(pointer.clone())
            {
                stack.push((target, pointer));
            }
            if v30 {
                continue;
            }
        }
        for (k, val) in m {
            let k_at = format!("{at}/{}", escape(k));
            match (k.as_str(), val) {
                ("pattern", Value::String(p)) => compile(p, &k_at, done)?,
                ("patternProperties", Value::Object(names)) => {
                    for name in names.keys() {
                        compile(name, &format!("{k_at}/{}", escape(name)), done)?;
                    }
                }
                _ => {}
            }
            if ONE.contains(&k.as_str()) {
                stack.push((val, k_at.clone()));
            }
            // `items` in its tuple form is an array of schemas too.
            if (LIST.contains(&k.as_str()) || k == "items")
                && let Value::Array(list) = val
            {
                for (i, s) in list.iter().enumerate() {
                    stack.push((s, format!("{k_at}/{i}")));
                }
            }
            if MAP.contains(&k.as_str())
                && let Value::Object(schemas) = val
            {
                for (name, s) in schemas {
                    stack.push((s, format!("{k_at}/{}", escape(name))));
                }
            }
        }
    }
    Ok(())
}

/// Compiles one pattern, found at `at`.
fn compile(pattern: &str, at: &str, done: &mut Checked) -> Result<(), Problem> {
    if done.patterns.contains(pattern) {
        return Ok(());
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(invalid(format!(
            "the pattern at {at} is {} bytes; the limit is {MAX_PATTERN_BYTES}",
            pattern.len()
        ))
        .with("at", at)
        .with("limit", MAX_PATTERN_BYTES));
    }
    options()
        .build(&json!({ "pattern": pattern }))
        .map_err(|e| {
            invalid(format!(
                "the pattern at {at} cannot be compiled as a regular expression (ECMA-262, at \
                 most {MAX_PATTERN_PROGRAM_BYTES} bytes compiled): {e}"
            ))
            .with("at", at)
        })?;
    done.patterns.insert(pattern.to_owned());
    Ok(())
}
