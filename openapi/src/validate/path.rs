//! Strict reading of a relayed request path and matching it against path templates.

use enlace_core::problem::{Problem, ProblemKind};

/// Longest request path accepted (after the service prefix), in bytes.
pub const MAX_PATH_BYTES: usize = 2048;

/// One `/`-separated segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Segment {
    Literal(String),
    /// `{name}`, possibly with literal text around it in the same segment (`{id}.json`).
    Param {
        prefix: String,
        name: String,
        suffix: String,
    },
}

impl Segment {
    /// How literal the segment is, for preferring `/persons/me` over `/persons/{run}`.
    pub(super) fn rank(&self) -> u8 {
        match self {
            Segment::Literal(_) => 2,
            Segment::Param { prefix, suffix, .. } if !prefix.is_empty() || !suffix.is_empty() => 1,
            Segment::Param { .. } => 0,
        }
    }

    /// The parameter value if `decoded` matches this segment.
    pub(super) fn matches<'s>(&self, decoded: &'s str) -> Option<Option<&'s str>> {
        match self {
            Segment::Literal(l) => (l == decoded).then_some(None),
            Segment::Param { prefix, suffix, .. } => {
                let v = decoded.strip_prefix(prefix.as_str())?;
                let v = v.strip_suffix(suffix.as_str())?;
                (!v.is_empty()).then_some(Some(v))
            }
        }
    }
}

/// `/persons/{run}/documents` → its segments. At most one parameter per segment.
pub(super) fn parse_template(path: &str) -> Result<Vec<Segment>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` must start with `/`"));
    };
    rest.split('/')
        .map(|seg| {
            let Some(open) = seg.find('{') else {
                if seg.contains('}') {
                    return Err(format!("path `{path}` has an unbalanced `}}`"));
                }
                return Ok(Segment::Literal(seg.to_owned()));
            };
            let close = seg[open..]
                .find('}')
                .map(|c| open + c)
                .ok_or_else(|| format!("path `{path}` has an unbalanced `{{`"))?;
            let (prefix, name, suffix) = (&seg[..open], &seg[open + 1..close], &seg[close + 1..]);
            if name.is_empty() || suffix.contains(['{', '}']) || prefix.contains('}') {
                return Err(format!(
                    "path `{path}`: a segment may hold one named parameter only"
                ));
            }
            Ok(Segment::Param {
                prefix: prefix.to_owned(),
                name: name.to_owned(),
                suffix: suffix.to_owned(),
            })
        })
        .collect()
}

fn trick(slug: &str, detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::InvalidRequest, detail).with("trick", slug)
}

/// Checks a raw request path and returns its percent-decoded segments. A trailing `/` gives a
/// last empty segment (matched only by a template that ends with `/`).
pub(super) fn segments(raw: &str) -> Result<Vec<String>, Problem> {
    if raw.len() > MAX_PATH_BYTES {
        return Err(trick(
            "too-long",
            format!(
                "the request path is {} bytes; the limit is {MAX_PATH_BYTES}",
                raw.len()
            ),
        )
        .with("limit", MAX_PATH_BYTES));
    }
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(trick(
            "not-absolute",
            "the request path must start with `/`",
        ));
    };
    for c in raw.chars() {
        let refused = match c {
            c if c.is_ascii_control() => Some(("control-character", "a control character")),
            '\\' => Some(("backslash", "a backslash")),
            ';' => Some(("matrix-parameter", "`;` (matrix parameters)")),
            '?' | '#' => Some(("query-or-fragment", "`?` or `#`")),
            c if !c.is_ascii() => {
                Some(("non-ascii", "a character that is not percent-encoded ASCII"))
            }
            _ => None,
        };
        if let Some((slug, what)) = refused {
            return Err(trick(slug, format!("the request path holds {what}")));
        }
    }
    let raw_segments: Vec<&str> = rest.split('/').collect();
    let last = raw_segments.len() - 1;
    let mut out = Vec::with_capacity(raw_segments.len());
    for (i, seg) in raw_segments.into_iter().enumerate() {
        if seg.is_empty() && i != last {
            return Err(trick(
                "empty-segment",
                "the request path has an empty segment (`//`)",
            ));
        }
        if seg == "." || seg == ".." {
            return Err(trick(
                "dot-segment",
                format!("the request path has a `{seg}` segment"),
            ));
        }
        out.push(decode_segment(seg)?);
    }
    Ok(out)
}

fn decode_segment(seg: &str) -> Result<String, Problem> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let byte = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or_else(|| {
                trick(
                    "bad-percent-encoding",
                    "the request path has a `%` not followed by two hexadecimal digits",
                )
            })?;
        let refused = match byte {
            b'/' => Some(("encoded-slash", "a percent-encoded `/` (%2F)")),
            b'\\' => Some(("encoded-backslash", "a percent-encoded `\\` (%5C)")),
            b'.' => Some(("encoded-dot", "a percent-encoded `.` (%2E)")),
            b'%' => Some((
                "encoded-percent",
                "a percent-encoded `%` (%25, double encoding)",
            )),
            b';' => Some(("matrix-parameter", "a percent-encoded `;` (%3B)")),
            // RFC 3986 §2.3: unreserved characters are never to be encoded. One that is would
            // be read decoded here (the subject check) and raw by the backend it is forwarded to.
            c if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~') => Some((
                "encoded-unreserved",
                "a percent-encoded letter, digit, `-`, `_` or `~`, which must be sent as itself",
            )),
            c if c.is_ascii_control() => Some((
                "encoded-control-character",
                "a percent-encoded control character",
            )),
            _ => None,
        };
        if let Some((slug, what)) = refused {
            return Err(trick(slug, format!("the request path holds {what}")));
        }
        out.push(byte);
        i += 3;
    }
    String::from_utf8(out)
        .map_err(|_| trick("not-utf8", "the request path does not decode to UTF-8 text"))
}
