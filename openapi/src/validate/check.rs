//! The checks of one request: its parameters against their schemas, its body against its media
//! type, and its query string decoded without surprises.

use super::*;

pub(super) fn check_param(p: &Param, values: &[&str], errs: &mut Errors) {
    let at = p.at();
    let instance = match &p.form {
        Form::Scalar { types } => {
            if values.len() > 1 {
                errs.push(at, "given more than once, but it is not an array");
                return;
            }
            coerce(values[0], types)
        }
        Form::Array {
            explode,
            delimiter,
            item_types,
        } => {
            let items: Vec<&str> = if *explode && p.location == In::Query {
                values.to_vec()
            } else if values.len() > 1 {
                errs.push(
                    at,
                    format!(
                        "given more than once; its values go in one, separated by `{delimiter}`"
                    ),
                );
                return;
            } else if values[0].is_empty() {
                Vec::new()
            } else {
                values[0].split(*delimiter).collect()
            };
            Value::Array(items.into_iter().map(|v| coerce(v, item_types)).collect())
        }
        Form::Json => {
            if values.len() > 1 {
                errs.push(at, "given more than once, but it is not an array");
                return;
            }
            match json::parse(values[0].as_bytes()) {
                Ok(v) => v,
                Err(e) => {
                    errs.push(at, e);
                    return;
                }
            }
        }
    };
    if let Some(v) = &p.validator {
        errs.schema(&at, v, &instance);
    }
}

/// Reads a parameter's text as the JSON type its schema asks for; the text itself when the
/// schema allows strings or the text reads as none of the types (validation then says why).
pub(super) fn coerce(raw: &str, types: &[String]) -> Value {
    let has = |t: &str| types.iter().any(|x| x == t);
    if types.is_empty() || has("string") {
        return Value::String(raw.to_owned());
    }
    if (has("integer") || has("number"))
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b == b'-' || b.is_ascii_digit())
        && let Ok(n) = serde_json::from_str::<serde_json::Number>(raw)
    {
        return Value::Number(n);
    }
    if has("boolean") && (raw == "true" || raw == "false") {
        return Value::Bool(raw == "true");
    }
    if has("null") && raw == "null" {
        return Value::Null;
    }
    Value::String(raw.to_owned())
}

pub(super) fn check_body(
    op: &CompiledOp,
    body: &[u8],
    content_type: Option<&str>,
    errs: &mut Errors,
) -> Result<(), Problem> {
    let Some(spec) = &op.body else {
        if !body.is_empty() {
            errs.push("/body".into(), "this operation takes no request body");
        }
        return Ok(());
    };
    if body.is_empty() {
        if spec.required {
            errs.push("/body".into(), "the request body is required");
        }
        return Ok(());
    }
    let essence =
        json_type(content_type).map_err(|e| Problem::new(ProblemKind::UnsupportedMediaType, e))?;
    let Some(media) = spec.media.iter().find(|m| m.essence == essence) else {
        return Err(Problem::new(
            ProblemKind::UnsupportedMediaType,
            format!(
                "{essence} is not described for this operation's request body; described: {}",
                spec.media
                    .iter()
                    .map(|m| m.essence.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    };
    match json::parse(body) {
        Ok(v) => {
            if let Some(validator) = &media.validator {
                errs.schema("/body", validator, &v);
            }
        }
        Err(e) => errs.push("/body".into(), e),
    }
    Ok(())
}

/// The essence of a JSON content type (`application/json`, `application/*+json`, UTF-8).
pub(super) fn json_type(content_type: Option<&str>) -> Result<String, String> {
    let Some(ct) = content_type else {
        return Err("a body needs a Content-Type; only JSON is relayed".into());
    };
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    if !is_json(&essence) {
        return Err(format!(
            "content type {essence} is not JSON; only application/json and application/*+json \
             bodies are relayed"
        ));
    }
    for param in parts {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        if k.trim().eq_ignore_ascii_case("charset")
            && !v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        {
            return Err("JSON bodies must be UTF-8".into());
        }
    }
    Ok(essence)
}

pub(super) fn is_json(essence: &str) -> bool {
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Splits and decodes a query string (`application/x-www-form-urlencoded`).
pub(super) fn parse_query(q: &str) -> Result<Vec<(String, String)>, Problem> {
    if q.len() > MAX_QUERY_BYTES {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!(
                "the query string is {} bytes; the limit is {MAX_QUERY_BYTES}",
                q.len()
            ),
        )
        .with("limit", MAX_QUERY_BYTES));
    }
    let mut out = Vec::new();
    for piece in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = piece.split_once('=').unwrap_or((piece, ""));
        out.push((form_decode(k)?, form_decode(v)?));
    }
    Ok(out)
}

pub(super) fn form_decode(s: &str) -> Result<String, Problem> {
    let refuse = |slug: &str, what: &str| {
        Problem::new(
            ProblemKind::InvalidRequest,
            format!("the query string holds {what}"),
        )
        .with("trick", slug)
    };
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let byte = b
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        refuse(
                            "bad-percent-encoding",
                            "a `%` not followed by two hexadecimal digits",
                        )
                    })?;
                if byte == 0 {
                    return Err(refuse("encoded-control-character", "a percent-encoded NUL"));
                }
                out.push(byte);
                i += 3;
            }
            c if c.is_ascii_control() || c == b'#' => {
                return Err(refuse("control-character", "a control character or `#`"));
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| refuse("not-utf8", "text that does not decode to UTF-8"))
}
