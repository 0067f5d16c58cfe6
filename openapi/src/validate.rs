//! Request matching and validation, response validation and minimisation, per operation.
//!
//! A provider node compiles each OpenAPI service once ([`CompiledService::compile`], cached by
//! the description's digest), then for every relayed request:
//!
//! 1. [`CompiledService::match_request`] reads the path strictly and finds the one operation.
//! 2. [`CompiledService::validate_request`] checks parameters and body against their schemas.
//! 3. After the backend answers, [`CompiledService::validate_response`] checks the response.
//! 4. [`minimise`] cuts the response down to the contract's allowed fields.
//!
//! # Paths
//!
//! The path (after the service prefix) is refused with `invalid-request` and an extension
//! `trick` naming what was found: longer than [`MAX_PATH_BYTES`] (`too-long`), not starting
//! with `/` (`not-absolute`), raw control characters (`control-character`), `\`
//! (`backslash`), `;` raw or as `%3B` (`matrix-parameter`), `?` or `#` (`query-or-fragment`),
//! raw non-ASCII (`non-ascii`), `//` (`empty-segment`), `.` or `..` segments (`dot-segment`),
//! `%` without two hex digits (`bad-percent-encoding`), percent-encoded `/`, `\`, `.`, `%` or
//! control characters (`encoded-slash`, `encoded-backslash`, `encoded-dot`, `encoded-percent`,
//! `encoded-control-character`), percent-encoded unreserved characters, which RFC 3986 says are
//! never encoded and which the backend would read raw (`encoded-unreserved`), segments that do not decode to UTF-8 (`not-utf8`), a trailing
//! `/` no template has (`trailing-slash`), and a method that is not an upper-case token
//! (`method`). Literal segments match the decoded segment exactly (case-sensitive); `{param}`
//! matches one whole non-empty decoded segment (with any literal text around it in the
//! template). Among templates that match with the request's method, the most literal wins,
//! segment by segment from the left; then the first in the document. No match is `not-found`
//! (with `allowed` listing the methods described at that path, if any): `HEAD`, `OPTIONS`,
//! `TRACE` and `CONNECT` are only accepted where described.
//!
//! # Parameters and bodies
//!
//! Path, query and header parameters are read as text and turned into the type their schema
//! asks for (`integer`/`number` as JSON numbers, `boolean` from `true`/`false`; a schema that
//! allows `string` keeps the text) before validation. Query strings are
//! `application/x-www-form-urlencoded` (`+` is a space), at most [`MAX_QUERY_BYTES`]; a query
//! parameter not described, or a non-array parameter given twice, is a violation. Arrays:
//! `form` with `explode` (the default) repeats the key, otherwise one value split on `,`
//! (`form`), ` ` (`spaceDelimited`) or `|` (`pipeDelimited`); path and header arrays are split
//! on `,`. A parameter with `content: application/json` is parsed as JSON. Header parameters are
//! checked when present and required when `required`; other headers are not looked at;
//! `Accept`, `Content-Type` and `Authorization` parameters are ignored (as OpenAPI says), and so
//! are cookie parameters. Object-valued parameters, `deepObject`, `label` and `matrix` styles
//! are not supported: the service does not compile.
//!
//! A request body is refused on an operation without `requestBody`, required when the
//! description says so, must carry a JSON content type (`application/json` or
//! `application/*+json`, UTF-8) that the operation describes (otherwise
//! `unsupported-media-type`), must parse ([`MAX_JSON_DEPTH`] levels at most, no duplicate
//! members) and validate. Violations are reported together as `request-schema-violation` with
//! `errors: [{at, message}]` (at most [`MAX_ERRORS`], then `truncated: true`); `at` is
//! `/path/<name>`, `/query/<name>`, `/header/<name>` or `/body/<pointer>`. Messages never quote
//! the values.
//!
//! # Responses
//!
//! The response object is the one for the exact status, else its range (`2XX`), else
//! `default`. Successful statuses (below 400) must be described; their body must be JSON of a
//! described media type and valid, or empty when the response has no content. Error statuses
//! (4xx, 5xx) with a described JSON schema are validated when they have a body (an empty error
//! body is accepted); undescribed error bodies must still be JSON or empty. Anything else is
//! `response-schema-violation` (502). The parsed body is returned (`null` when empty).
//!
//! # Schemas
//!
//! Each parameter, request body media type and response media type gets one JSON Schema
//! 2020-12 validator, built offline: every `#/components/...` reference is copied under
//! `$defs`, the 3.0 dialect is translated (`nullable`, boolean `exclusiveMinimum`/
//! `exclusiveMaximum`, `$ref` siblings ignored), `example`, `$schema` and `x-*` are dropped,
//! `format` is asserted (`int32` bounds too), and nothing is ever fetched. Every `pattern` is
//! compiled first on its own (see `pattern`), so one that does not compile, is longer than
//! [`MAX_PATTERN_BYTES`] or compiles to more than [`MAX_PATTERN_PROGRAM_BYTES`] is refused with
//! the JSON pointer of the keyword.

mod check;
mod compile;
mod json;
mod minimise;
mod path;
mod pattern;
mod schema;
#[cfg(test)]
mod tests;

use check::*;
use compile::*;

use enlace_core::config::DescriptionKind;
use enlace_core::problem::{Problem, ProblemKind};
use std::cell::RefCell;

use jsonschema::Validator;
use serde::Serialize;
use serde_json::Value;

use crate::model::Description;
use path::Segment;

pub use json::MAX_JSON_DEPTH;
pub use minimise::minimise;
pub use path::MAX_PATH_BYTES;
pub use pattern::{MAX_PATTERN_BYTES, MAX_PATTERN_PROGRAM_BYTES};

/// Most violations listed in one problem.
pub const MAX_ERRORS: usize = 20;
/// Longest query string accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 8192;
/// Longest chain of `$ref` to `$ref` for parameters, request bodies, responses, path items.
const MAX_REF_HOPS: usize = 32;
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// An OpenAPI service ready to check requests and responses: one validator per parameter,
/// request body and response media type, built once.
pub struct CompiledService {
    digest: String,
    ops: Vec<CompiledOp>,
}

impl std::fmt::Debug for CompiledService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledService")
            .field("digest", &self.digest)
            .field(
                "operations",
                &self.ops.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The operation a request path matched, and its path parameters (decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Index into the description's `operations`.
    pub op: usize,
    pub operation_id: String,
    /// `(name, decoded value)` in template order.
    pub params: Vec<(String, String)>,
}

struct CompiledOp {
    id: String,
    method: String,
    template: Vec<Segment>,
    params: Vec<Param>,
    body: Option<Body>,
    /// Keyed `200`, `2XX`, `default`, … as in the document (ranges upper-cased).
    responses: Vec<(String, Vec<Media>)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum In {
    Path,
    Query,
    Header,
}

impl In {
    fn as_str(self) -> &'static str {
        match self {
            In::Path => "path",
            In::Query => "query",
            In::Header => "header",
        }
    }
}

struct Param {
    /// As described; lower case for headers.
    name: String,
    location: In,
    required: bool,
    /// `x-enlace-subject`: the subject scheme this parameter's value belongs to.
    subject: Option<String>,
    form: Form,
    /// `None` when the parameter has no schema.
    validator: Option<Validator>,
}

enum Form {
    /// One value, read as one of `types` (empty: as text).
    Scalar { types: Vec<String> },
    /// Repeated query keys (`explode`) or one value split on `delimiter`.
    Array {
        explode: bool,
        delimiter: char,
        item_types: Vec<String>,
    },
    /// `content: application/json`: the value is a JSON document.
    Json,
}

struct Body {
    required: bool,
    media: Vec<Media>,
}

struct Media {
    /// Lower-case media type without parameters.
    essence: String,
    validator: Option<Validator>,
}

impl CompiledService {
    /// Compiles every operation of an OpenAPI description.
    pub fn compile(desc: &Description) -> Result<CompiledService, Problem> {
        if desc.kind != DescriptionKind::Openapi {
            return Err(invalid(
                "only OpenAPI descriptions are compiled here; gRPC messages are checked by \
                 their descriptors",
            ));
        }
        let doc: Value = serde_json::from_slice(&desc.stored)
            .map_err(|e| Problem::internal(format!("the stored description is not JSON: {e}")))?;
        let c = Compiler {
            root: &doc,
            v30: doc
                .get("openapi")
                .and_then(Value::as_str)
                .is_some_and(|v| v.starts_with("3.0")),
            patterns: RefCell::default(),
        };
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .ok_or_else(|| invalid("`paths` is missing"))?;
        let mut ops: Vec<Option<CompiledOp>> = desc.operations.iter().map(|_| None).collect();
        for (path, item) in paths {
            if path.starts_with("x-") {
                continue;
            }
            let (item, item_at) = c.deref(item, format!("/paths/{}", escape(path)))?;
            let Some(item) = item.as_object() else {
                return Err(invalid(format!(
                    "the path item at {item_at} must be an object"
                )));
            };
            for (method, op) in item.iter().filter(|(k, _)| METHODS.contains(&k.as_str())) {
                let upper = method.to_ascii_uppercase();
                let index = desc
                    .operations
                    .iter()
                    .position(|o| o.method == upper && o.path == *path)
                    .ok_or_else(|| {
                        Problem::internal(format!(
                            "{upper} {path} is in the document but not in the description"
                        ))
                    })?;
                let op_at = format!("{item_at}/{method}");
                let compiled = c.operation(
                    &desc.operations[index].id,
                    &upper,
                    path,
                    (item.get("parameters"), &item_at),
                    op,
                    &op_at,
                )?;
                ops[index] = Some(compiled);
            }
        }
        let ops = ops.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
            Problem::internal("an operation of the description is not in its document")
        })?;
        Ok(CompiledService {
            digest: desc.digest.clone(),
            ops,
        })
    }

    /// The digest of the description this was compiled from.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Finds the operation for a method and a raw request path (after the service prefix,
    /// still percent-encoded, without the query string).
    pub fn match_request(&self, method: &str, raw_path: &str) -> Result<Matched, Problem> {
        if method.is_empty() || method.len() > 16 || !method.bytes().all(|b| b.is_ascii_uppercase())
        {
            return Err(Problem::new(
                ProblemKind::InvalidRequest,
                "the method must be an upper-case token such as GET",
            )
            .with("trick", "method"));
        }
        let segs = path::segments(raw_path)?;
        let mut best: Option<(usize, Vec<u8>)> = None;
        let mut allowed: Vec<&str> = Vec::new();
        for (i, op) in self.ops.iter().enumerate() {
            if op.template.len() != segs.len()
                || !op
                    .template
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t.matches(s).is_some())
            {
                continue;
            }
            if op.method != method {
                if !allowed.contains(&op.method.as_str()) {
                    allowed.push(&op.method);
                }
                continue;
            }
            let rank: Vec<u8> = op.template.iter().map(Segment::rank).collect();
            if best.as_ref().is_none_or(|(_, r)| rank > *r) {
                best = Some((i, rank));
            }
        }
        let Some((i, _)) = best else {
            if segs.len() > 1 && segs.last().is_some_and(String::is_empty) {
                return Err(Problem::new(
                    ProblemKind::InvalidRequest,
                    "the request path ends with `/`, which no operation's path has",
                )
                .with("trick", "trailing-slash"));
            }
            if !allowed.is_empty() {
                allowed.sort_unstable();
                return Err(Problem::new(
                    ProblemKind::NotFound,
                    format!(
                        "no {method} operation at this path; described: {}",
                        allowed.join(", ")
                    ),
                )
                .with("allowed", &allowed));
            }
            return Err(Problem::new(
                ProblemKind::NotFound,
                "no operation of the service matches the request path",
            ));
        };
        let op = &self.ops[i];
        let params = op
            .template
            .iter()
            .zip(&segs)
            .filter_map(|(t, s)| match (t, t.matches(s)) {
                (Segment::Param { name, .. }, Some(Some(v))) => Some((name.clone(), v.to_owned())),
                _ => None,
            })
            .collect();
        Ok(Matched {
            op: i,
            operation_id: op.id.clone(),
            params,
        })
    }

    /// Checks a request's parameters and body against the matched operation.
    ///
    /// `query` is the raw query string without `?`; `headers` have lower-case names.
    pub fn validate_request(
        &self,
        m: &Matched,
        query: Option<&str>,
        headers: &[(String, String)],
        body: &[u8],
        content_type: Option<&str>,
    ) -> Result<(), Problem> {
        let op = self.op(m)?;
        let mut errs = Errors::default();
        for p in op.params.iter().filter(|p| p.location == In::Path) {
            match m.params.iter().find(|(n, _)| *n == p.name) {
                Some((_, v)) => check_param(p, &[v.as_str()], &mut errs),
                None => errs.push(p.at(), "the path parameter is not in the path"),
            }
        }
        let pairs = parse_query(query.unwrap_or(""))?;
        let mut unknown: Vec<&str> = Vec::new();
        for (key, _) in &pairs {
            let described = op
                .params
                .iter()
                .any(|p| p.location == In::Query && p.name == *key);
            if !described && !unknown.contains(&key.as_str()) {
                unknown.push(key);
                errs.push(
                    format!("/query/{}", escape(key)),
                    "the operation has no such query parameter",
                );
            }
        }
        for p in op.params.iter().filter(|p| p.location == In::Query) {
            let values: Vec<&str> = pairs
                .iter()
                .filter(|(k, _)| *k == p.name)
                .map(|(_, v)| v.as_str())
                .collect();
            if values.is_empty() {
                if p.required {
                    errs.push(p.at(), "the required query parameter is missing");
                }
                continue;
            }
            check_param(p, &values, &mut errs);
        }
        for p in op.params.iter().filter(|p| p.location == In::Header) {
            let values: Vec<&str> = headers
                .iter()
                .filter(|(k, _)| *k == p.name)
                .map(|(_, v)| v.as_str())
                .collect();
            if values.is_empty() {
                if p.required {
                    errs.push(p.at(), "the required header is missing");
                }
                continue;
            }
            if values.len() > 1 && matches!(p.form, Form::Array { .. }) {
                // Several header lines are one comma-separated list.
                let joined = values.join(",");
                check_param(p, &[joined.as_str()], &mut errs);
            } else {
                check_param(p, &values, &mut errs);
            }
        }
        check_body(op, body, content_type, &mut errs)?;
        errs.into_result(ProblemKind::RequestSchemaViolation, "request", &op.id)
    }

    /// Checks the backend's response to the matched operation and returns its parsed body
    /// (`null` when empty). See the module documentation for the rules.
    pub fn validate_response(
        &self,
        m: &Matched,
        status: u16,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Value, Problem> {
        let op = self.op(m)?;
        let refuse = |at: &str, message: String| {
            let mut errs = Errors::default();
            errs.push(at.to_owned(), message);
            errs.into_result(ProblemKind::ResponseSchemaViolation, "response", &op.id)
                .map(|()| Value::Null)
        };
        if !(100..=599).contains(&status) {
            return refuse("/status", format!("{status} is not an HTTP status"));
        }
        let error = status >= 400;
        let empty = body.iter().all(u8::is_ascii_whitespace);
        let described = response_for(&op.responses, status);
        let Some(media) = described else {
            if !error {
                return refuse(
                    "/status",
                    format!("status {status} is not described for this operation"),
                );
            }
            if empty {
                return Ok(Value::Null);
            }
            return match (json_type(content_type), json::parse(body)) {
                (Err(e), _) => refuse("/content-type", e),
                (Ok(_), Err(e)) => refuse("/body", e),
                (Ok(_), Ok(v)) => Ok(v),
            };
        };
        if empty {
            if media.is_empty() || error {
                return Ok(Value::Null);
            }
            return refuse(
                "/body",
                format!("the body is empty; status {status} is described with content"),
            );
        }
        if media.is_empty() && !error {
            return refuse(
                "/body",
                format!("status {status} is described without content, but has a body"),
            );
        }
        let essence = match json_type(content_type) {
            Ok(e) => e,
            Err(e) => return refuse("/content-type", e),
        };
        let chosen = media.iter().find(|m| m.essence == essence).or_else(|| {
            error
                .then(|| media.iter().find(|m| is_json(&m.essence)))
                .flatten()
        });
        if chosen.is_none() && !media.is_empty() {
            return refuse(
                "/content-type",
                format!(
                    "{essence} is not described for status {status}; described: {}",
                    media
                        .iter()
                        .map(|m| m.essence.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let value = match json::parse(body) {
            Ok(v) => v,
            Err(e) => return refuse("/body", e),
        };
        if let Some(validator) = chosen.and_then(|m| m.validator.as_ref()) {
            let mut errs = Errors::default();
            errs.schema("/body", validator, &value);
            errs.into_result(ProblemKind::ResponseSchemaViolation, "response", &op.id)?;
        }
        Ok(value)
    }

    /// The id of the matched operation.
    /// The data subject a matched request is about, as its description binds it
    /// (`x-enlace-subject` on a path or query parameter): `SCHEME:VALUE`, or `None` when the
    /// operation binds none. A bound query parameter that is absent or repeated is an error.
    pub fn bound_subject(
        &self,
        m: &Matched,
        query: Option<&str>,
    ) -> Result<Option<String>, Problem> {
        let op = self.op(m)?;
        let Some(p) = op.params.iter().find(|p| p.subject.is_some()) else {
            return Ok(None);
        };
        let scheme = p.subject.as_deref().unwrap_or_default();
        let values: Vec<String> = match p.location {
            In::Path => m
                .params
                .iter()
                .filter(|(n, _)| *n == p.name)
                .map(|(_, v)| v.clone())
                .collect(),
            In::Query => parse_query(query.unwrap_or(""))?
                .into_iter()
                .filter(|(k, _)| *k == p.name)
                .map(|(_, v)| v)
                .collect(),
            In::Header => Vec::new(),
        };
        match values.as_slice() {
            [one] => Ok(Some(format!("{scheme}:{one}"))),
            _ => Err(Problem::new(
                ProblemKind::RequestSchemaViolation,
                format!(
                    "the {} parameter `{}` names the person this operation is about; give it exactly once",
                    p.location.as_str(),
                    p.name
                ),
            )),
        }
    }

    /// The header parameters the matched operation describes (lower case): the only request
    /// headers besides the content headers and Enlace's that travel to the provider backend.
    pub fn header_params(&self, m: &Matched) -> Vec<&str> {
        self.op(m)
            .map(|op| {
                op.params
                    .iter()
                    .filter(|p| p.location == In::Header)
                    .map(|p| p.name.as_str())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn operation_id(&self, m: &Matched) -> Option<&str> {
        self.ops.get(m.op).map(|o| o.id.as_str())
    }

    fn op(&self, m: &Matched) -> Result<&CompiledOp, Problem> {
        self.ops
            .get(m.op)
            .filter(|o| o.id == m.operation_id)
            .ok_or_else(|| Problem::internal("the matched operation is not one of this service's"))
    }
}

impl Param {
    fn at(&self) -> String {
        format!("/{}/{}", self.location.as_str(), escape(&self.name))
    }
}

fn response_for(responses: &[(String, Vec<Media>)], status: u16) -> Option<&Vec<Media>> {
    let exact = status.to_string();
    let range = format!("{}XX", status / 100);
    [exact.as_str(), range.as_str(), "default"]
        .into_iter()
        .find_map(|k| responses.iter().find(|(key, _)| key == k))
        .map(|(_, media)| media)
}
#[derive(Serialize)]
struct Violation {
    at: String,
    message: String,
}

#[derive(Default)]
struct Errors {
    list: Vec<Violation>,
    truncated: bool,
}

impl Errors {
    fn push(&mut self, at: String, message: impl Into<String>) {
        if self.list.len() < MAX_ERRORS {
            self.list.push(Violation {
                at,
                message: message.into(),
            });
        } else {
            self.truncated = true;
        }
    }

    /// Runs a validator; messages are masked so that no value of the instance is quoted.
    fn schema(&mut self, at: &str, validator: &Validator, instance: &Value) {
        for e in validator.iter_errors(instance) {
            if self.list.len() == MAX_ERRORS {
                self.truncated = true;
                return;
            }
            self.push(
                format!("{at}{}", e.instance_path().as_str()),
                e.masked().to_string(),
            );
        }
    }

    fn into_result(self, kind: ProblemKind, what: &str, op: &str) -> Result<(), Problem> {
        let Some(first) = self.list.first() else {
            return Ok(());
        };
        let more = match (self.list.len() - 1, self.truncated) {
            (0, false) => String::new(),
            (n, false) => format!(" (and {n} more)"),
            (n, true) => format!(" (and more than {n} more)"),
        };
        let mut p = Problem::new(
            kind,
            format!(
                "the {what} does not match the description of `{op}`: {}: {}{more}",
                first.at, first.message
            ),
        )
        .with("operation", op)
        .with("errors", &self.list);
        if self.truncated {
            p = p.with("truncated", true);
        }
        Err(p)
    }
}

fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidServiceDescription, detail)
}
