//! The Enlace headers of an exchange, read and checked once: who calls, under which contract,
//! about whom, for which procedure.

use enlace_core::id::{ContractId, SubjectId, SubsystemId};
use enlace_core::problem::{Problem, ProblemKind};
use http::HeaderMap;

pub const CLIENT: &str = "enlace-client";
pub const CONTRACT: &str = "enlace-contract";
pub const SUBJECT: &str = "enlace-subject";
pub const USER: &str = "enlace-user";
pub const PROCEDURE: &str = "enlace-procedure";
pub const STEP: &str = "enlace-step";
pub const AUTHORIZATION: &str = "enlace-authorization";
pub const MESSAGE_ID: &str = "enlace-message-id";
pub const SERVICE: &str = "enlace-service";
pub const ERROR: &str = "enlace-error";

/// Headers that ask a server to treat a request as another method: never honoured, refused.
pub const METHOD_OVERRIDES: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

/// The context a consumer backend states and the nodes carry, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Context {
    pub client: SubsystemId,
    pub contract: Option<ContractId>,
    pub subject: Option<SubjectId>,
    pub user: Option<String>,
    pub procedure: Option<String>,
    pub step: Option<String>,
    pub authorization: Option<String>,
}

fn invalid(detail: String) -> Problem {
    Problem::new(ProblemKind::InvalidRequest, detail)
}

/// One value of a header, at most `max` bytes, visible ASCII; a repeated header is refused.
pub fn single(headers: &HeaderMap, name: &str, max: usize) -> Result<Option<String>, Problem> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid(format!("{name}: given more than once")));
    }
    let s = v
        .to_str()
        .map_err(|_| invalid(format!("{name}: not visible ASCII")))?;
    if s.is_empty() || s.len() > max {
        return Err(invalid(format!("{name}: must be 1 to {max} characters")));
    }
    Ok(Some(s.to_string()))
}

/// A free-text label (official, procedure, step): `[A-Za-z0-9._:@/+-]`, at most 128.
fn label(headers: &HeaderMap, name: &str) -> Result<Option<String>, Problem> {
    let v = single(headers, name, 128)?;
    if let Some(s) = &v
        && !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/+-".contains(&b))
    {
        return Err(invalid(format!(
            "{name}: only letters, digits and . _ : @ / + - are allowed"
        )));
    }
    Ok(v)
}

impl Context {
    /// Reads and validates the context headers.
    pub fn read(headers: &HeaderMap) -> Result<Context, Problem> {
        let client = single(headers, CLIENT, 256)?
            .ok_or_else(|| invalid(format!("{CLIENT}: required (the calling subsystem)")))?
            .parse::<SubsystemId>()?;
        let contract = single(headers, CONTRACT, 64)?
            .map(|s| s.parse::<ContractId>())
            .transpose()?;
        let subject = single(headers, SUBJECT, 128)?
            .map(|s| s.parse::<SubjectId>())
            .transpose()?;
        Ok(Context {
            client,
            contract,
            subject,
            user: label(headers, USER)?,
            procedure: label(headers, PROCEDURE)?,
            step: label(headers, STEP)?,
            authorization: single(headers, AUTHORIZATION, 4096)?,
        })
    }

    /// Writes the context into `headers` (the names above, lower case).
    pub fn write(&self, headers: &mut HeaderMap) -> Result<(), Problem> {
        let mut put = |name: &'static str, value: &str| -> Result<(), Problem> {
            let v = http::HeaderValue::from_str(value)
                .map_err(|_| invalid(format!("{name}: not a header value")))?;
            headers.insert(name, v);
            Ok(())
        };
        put(CLIENT, &self.client.to_string())?;
        if let Some(c) = &self.contract {
            put(CONTRACT, c.as_str())?;
        }
        if let Some(s) = &self.subject {
            put(SUBJECT, &s.to_string())?;
        }
        for (name, v) in [
            (USER, &self.user),
            (PROCEDURE, &self.procedure),
            (STEP, &self.step),
            (AUTHORIZATION, &self.authorization),
        ] {
            if let Some(v) = v {
                put(name, v)?;
            }
        }
        Ok(())
    }
}

/// Refuses method-override headers and header sections larger than `max_bytes`.
pub fn check_header_section(headers: &HeaderMap, max_bytes: usize) -> Result<(), Problem> {
    for h in METHOD_OVERRIDES {
        if headers.contains_key(*h) {
            return Err(invalid(format!(
                "{h}: method overrides are not honoured; send the real method"
            )));
        }
    }
    let size: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > max_bytes {
        return Err(Problem::new(
            ProblemKind::HeadersTooLarge,
            format!("headers total {size} bytes, more than {max_bytes}"),
        )
        .with("limit", max_bytes));
    }
    Ok(())
}

/// The context headers; `Enlace-Client` must be the authenticated subsystem.
pub(crate) fn read_context(headers: &HeaderMap, client: &SubsystemId) -> Result<Context, Problem> {
    let ctx = Context::read(headers)?;
    if &ctx.client != client {
        return Err(Problem::new(
            ProblemKind::Forbidden,
            format!(
                "{}: {} is not the subsystem this token belongs to ({client})",
                CLIENT, ctx.client
            ),
        ));
    }
    Ok(ctx)
}

/// Headers that never travel as an operation's header parameter: credentials, cookies,
/// Enlace's own, signatures and hop-by-hop headers (RFC 9110 §7.6.1).
pub(crate) fn is_reserved(name: &str) -> bool {
    name.starts_with("enlace-")
        || matches!(
            name,
            "authorization"
                | "proxy-authorization"
                | "cookie"
                | "set-cookie"
                | "host"
                | "content-length"
                | "content-digest"
                | "signature"
                | "signature-input"
                | "connection"
                | "keep-alive"
                | "proxy-connection"
                | "te"
                | "trailer"
                | "transfer-encoding"
                | "upgrade"
                | "forwarded"
                | "x-forwarded-for"
                | "x-forwarded-host"
                | "x-forwarded-proto"
        )
        || METHOD_OVERRIDES.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn context_round_trips_and_refuses_bad_values() {
        let h = map(&[
            (CLIENT, "CL-DEV/GOV/60803000-K/renta"),
            (CONTRACT, "ctr_01JD0000000000000000000000"),
            (SUBJECT, "CL-RUN:12345678-5"),
            (USER, "funcionario@sii.cl"),
        ]);
        let c = Context::read(&h).unwrap();
        let mut out = HeaderMap::new();
        c.write(&mut out).unwrap();
        assert_eq!(Context::read(&out).unwrap(), c);
        assert_eq!(
            Context::read(&map(&[(CLIENT, "x")])).unwrap_err().kind,
            ProblemKind::InvalidIdentifier
        );
        assert_eq!(
            Context::read(&HeaderMap::new()).unwrap_err().kind,
            ProblemKind::InvalidRequest
        );
        let twice = map(&[
            (CLIENT, "CL-DEV/GOV/60803000-K/renta"),
            (CLIENT, "CL-DEV/GOV/60803000-K/renta"),
        ]);
        assert!(Context::read(&twice).is_err());
        let bad_user = map(&[(CLIENT, "CL-DEV/GOV/60803000-K/renta"), (USER, "a b")]);
        assert!(Context::read(&bad_user).is_err());
        let bad_subject = map(&[
            (CLIENT, "CL-DEV/GOV/60803000-K/renta"),
            (SUBJECT, "CL-RUN:12345678-6"),
        ]);
        assert_eq!(
            Context::read(&bad_subject).unwrap_err().kind,
            ProblemKind::InvalidIdentifier
        );
    }

    #[test]
    fn overrides_and_large_headers_are_refused() {
        assert!(check_header_section(&map(&[("x-http-method-override", "DELETE")]), 1000).is_err());
        let big = "x".repeat(2000);
        assert_eq!(
            check_header_section(&map(&[("x-big", &big)]), 1000)
                .unwrap_err()
                .kind,
            ProblemKind::HeadersTooLarge
        );
        assert!(check_header_section(&map(&[("accept", "application/json")]), 1000).is_ok());
    }
}
