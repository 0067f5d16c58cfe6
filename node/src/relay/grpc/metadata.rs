//! Which gRPC metadata crosses the nodes: the caller's custom request metadata on to the
//! provider's backend, the backend's custom response metadata (headers and trailers) and its
//! status fields back; bounded, visible ASCII, and covered by a signature on the way between
//! the nodes. Credentials, hop-by-hop and transport fields, the reserved `grpc-*` names and
//! Enlace's own `enlace-*` names never pass as custom metadata (a backend cannot set
//! `enlace-problem-type`, nor a caller `enlace-message-id`).

use http::{HeaderMap, HeaderName};

/// Most custom metadata names passed on in one header section.
pub const MAX_CUSTOM: usize = 16;
/// Longest custom metadata name passed on, in bytes.
pub const MAX_NAME: usize = 100;
/// Longest value (all lines of one name together) passed on, in bytes.
pub const MAX_VALUE: usize = 8 * 1024;

/// Fields that are never custom metadata: credentials, hop-by-hop and transport fields, the
/// content description, and what the nodes sign with.
const NEVER: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "via",
    "forwarded",
    "date",
    "user-agent",
    "accept",
    "accept-encoding",
    "content-type",
    "content-length",
    "content-encoding",
    "content-digest",
    "signature",
    "signature-input",
];

/// Whether `name` (lower case) is custom metadata a node passes on.
pub fn is_custom(name: &str) -> bool {
    !(NEVER.contains(&name)
        || name.starts_with("enlace-")
        || name.starts_with("grpc-")
        || name.starts_with("x-forwarded-")
        || name.starts_with(':'))
}

/// The custom metadata names present in `headers`, sorted, each once.
pub fn custom_names(headers: &HeaderMap) -> Vec<&str> {
    let mut names: Vec<&str> = headers
        .keys()
        .map(HeaderName::as_str)
        .filter(|n| is_custom(n))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The custom metadata of `from`, checked: at most [`MAX_CUSTOM`] names of at most
/// [`MAX_NAME`] bytes, each name's values visible ASCII (a `-bin` value is base64) and at most
/// [`MAX_VALUE`] bytes together. The error says what is wrong, for the caller to blame.
pub fn custom(from: &HeaderMap) -> Result<HeaderMap, String> {
    let names = custom_names(from);
    if names.len() > MAX_CUSTOM {
        return Err(format!(
            "{} custom metadata names; at most {MAX_CUSTOM} are relayed",
            names.len()
        ));
    }
    let mut out = HeaderMap::new();
    for name in names {
        if name.len() > MAX_NAME {
            return Err(format!(
                "metadata name `{}…` is longer than {MAX_NAME} bytes",
                &name[..32]
            ));
        }
        let mut total = 0;
        for value in from.get_all(name) {
            total += value.len();
            if !value
                .as_bytes()
                .iter()
                .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
            {
                return Err(format!(
                    "metadata `{name}` has a value that is not visible ASCII (binary metadata \
                     is named `…-bin` and base64-encoded)"
                ));
            }
            if total > MAX_VALUE {
                return Err(format!(
                    "metadata `{name}` is longer than {MAX_VALUE} bytes"
                ));
            }
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                out.append(n, value.clone());
            }
        }
    }
    Ok(out)
}

/// Appends every field of `from` to `to`.
pub fn append(to: &mut HeaderMap, from: &HeaderMap) {
    for (name, value) in from {
        to.append(name.clone(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use proptest::prelude::*;

    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn credentials_transport_and_reserved_names_never_pass() {
        let from = map(&[
            ("authorization", "Bearer secret"),
            ("cookie", "a=b"),
            ("te", "trailers"),
            ("user-agent", "tonic"),
            ("content-type", "application/grpc"),
            ("grpc-timeout", "1S"),
            ("grpc-status-details-bin", "AAAA"),
            ("enlace-problem-type", "urn:enlace:problem:replay"),
            ("enlace-message-id", "x"),
            ("signature", "sig1=:AA==:"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-request-ref", "expediente-77"),
            ("x-trace-bin", "AAEC"),
            ("x-request-ref", "second"),
        ]);
        let got = custom(&from).unwrap();
        assert_eq!(custom_names(&got), ["x-request-ref", "x-trace-bin"]);
        let refs: Vec<&HeaderValue> = got.get_all("x-request-ref").iter().collect();
        assert_eq!(refs, ["expediente-77", "second"]);
    }

    #[test]
    fn custom_metadata_is_bounded() {
        let many: Vec<(String, String)> = (0..=MAX_CUSTOM)
            .map(|i| (format!("x-m{i}"), "v".to_string()))
            .collect();
        let pairs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert!(custom(&map(&pairs)).unwrap_err().contains("at most 16"));
        assert!(custom(&map(&pairs[1..])).is_ok());

        let long = "x".repeat(MAX_NAME + 1);
        assert!(custom(&map(&[(&long, "v")])).is_err());
        let big = "v".repeat(MAX_VALUE + 1);
        assert!(custom(&map(&[("x-big", &big)])).is_err());
        let mut obs = HeaderMap::new();
        obs.insert("x-latin", HeaderValue::from_bytes(b"P\xe9rez").unwrap());
        assert!(custom(&obs).unwrap_err().contains("visible ASCII"));
    }

    proptest! {
        #[test]
        fn what_passes_is_custom_and_bounded(
            pairs in proptest::collection::vec(("[a-z][a-z0-9-]{0,20}", "[ -~]{0,40}"), 0..24),
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in &pairs {
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            if let Ok(out) = custom(&h) {
                prop_assert!(custom_names(&out).len() <= MAX_CUSTOM);
                for name in out.keys() {
                    prop_assert!(is_custom(name.as_str()));
                    prop_assert_eq!(out.get_all(name).iter().count(), h.get_all(name).iter().count());
                }
                prop_assert_eq!(custom_names(&out), custom_names(&h));
            }
        }
    }

    #[test]
    fn accept_is_not_custom_metadata() {
        // A REST request component already; as custom metadata too it would be covered twice.
        assert!(!is_custom("accept"));
        assert!(is_custom("x-request-reason"));
    }
}
