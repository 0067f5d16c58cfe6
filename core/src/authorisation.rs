//! A person's authorisation (consent) token: the compact JWS (EdDSA) the registry signs when a
//! person grants a consumer access to sensitive fields under one contract and procedure, with
//! its signer certificate in `x5c`. Pure: encoding, decoding and the claim checks; the signature
//! and the certificate chain are verified by callers with `enlace-certs`.
//!
//! Form: `base64url(header) "." base64url(claims) "." base64url(signature)`, the signature being
//! Ed25519 over the ASCII of the first two parts (RFC 7515 §5.1). Header
//! `{"alg":"EdDSA","typ":"enlace-authorisation+jwt","x5c":["<base64 DER>"]}`; claims
//! [`Claims`]. At most [`MAX_TOKEN_BYTES`] long, the cap of the `Enlace-Authorization` header.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};

/// The `typ` of the JOSE header.
pub const TOKEN_TYPE: &str = "enlace-authorisation+jwt";
/// The only algorithm accepted.
pub const ALGORITHM: &str = "EdDSA";
/// Longest token: the cap on `Enlace-Authorization`.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest lifetime (`exp - iat`) a node accepts, whatever the registry's setting.
pub const MAX_LIFETIME_SECS: i64 = 366 * 24 * 3600;
/// Clock skew allowed on `iat` and `exp`.
pub const LEEWAY_SECS: i64 = 60;
/// The prefix of an authorisation id: `aut_` and 32 lower-case hex digits.
pub const ID_PREFIX: &str = "aut_";

/// The JOSE header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub alg: String,
    pub typ: String,
    /// The signer's certificate, standard base64 of its DER (RFC 7515 §4.1.6); exactly one.
    pub x5c: Vec<String>,
}

/// What the person granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The registry that signed, `urn:enlace:registry:INSTANCE`.
    pub iss: String,
    /// The authorisation id, `aut_…`.
    pub jti: String,
    /// The person, `CL-RUN:…`.
    pub sub: String,
    /// The contract, `ctr_…`.
    pub contract: String,
    /// The consumer's administrative procedure the consent is for.
    pub procedure: String,
    /// Issued at and expiry, Unix seconds.
    pub iat: i64,
    pub exp: i64,
}

/// A token taken apart (nothing verified yet).
#[derive(Debug, Clone)]
pub struct Decoded {
    pub header: Header,
    pub claims: Claims,
    /// The DER of the signer certificate.
    pub certificate_der: Vec<u8>,
    /// The bytes the signature covers.
    pub signing_input: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a token is not accepted: recorded in the access record (`authorisation_refused`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token of this form (the detail says what).
    Malformed(String),
    /// The signer certificate is not the registry's, or does not chain, or is revoked.
    Signer(String),
    /// The signature does not verify with the signer certificate's key.
    Signature,
    Issuer,
    Expired,
    IssuedInTheFuture,
    LifetimeTooLong,
    AnotherPerson,
    AnotherContract,
    AnotherProcedure,
    Revoked,
}

impl Refusal {
    /// A short stable reason: `expired`, `revoked`, `another-person`, …
    pub fn slug(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Signer(_) => "signer-invalid",
            Refusal::Signature => "signature-invalid",
            Refusal::Issuer => "another-issuer",
            Refusal::Expired => "expired",
            Refusal::IssuedInTheFuture => "issued-in-the-future",
            Refusal::LifetimeTooLong => "lifetime-too-long",
            Refusal::AnotherPerson => "another-person",
            Refusal::AnotherContract => "another-contract",
            Refusal::AnotherProcedure => "another-procedure",
            Refusal::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Malformed(d) | Refusal::Signer(d) => write!(f, "{}: {d}", self.slug()),
            other => f.write_str(other.slug()),
        }
    }
}

/// Whether `id` is an authorisation id: `aut_` and 32 lower-case hex digits.
pub fn is_id(id: &str) -> bool {
    id.strip_prefix(ID_PREFIX).is_some_and(|h| {
        h.len() == 32
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A new authorisation id (from a UUIDv7).
pub fn new_id() -> String {
    format!("{ID_PREFIX}{}", uuid::Uuid::now_v7().simple())
}

/// Builds a token: the header with `certificate_der`, the claims, and `sign` (Ed25519 of the
/// signing input).
pub fn encode(
    claims: &Claims,
    certificate_der: &[u8],
    sign: impl FnOnce(&[u8]) -> Vec<u8>,
) -> String {
    let header = Header {
        alg: ALGORITHM.into(),
        typ: TOKEN_TYPE.into(),
        x5c: vec![STANDARD.encode(certificate_der)],
    };
    // Serialising structs of strings and numbers cannot fail.
    let h = serde_json::to_vec(&header).unwrap_or_default();
    let c = serde_json::to_vec(claims).unwrap_or_default();
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(h),
        URL_SAFE_NO_PAD.encode(c)
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// Takes a token apart, checking its form only: size, three parts, the header's algorithm,
/// type and single certificate, and the claims' shape.
pub fn decode(token: &str) -> Result<Decoded, Refusal> {
    let bad = |d: &str| Refusal::Malformed(d.to_string());
    if token.len() > MAX_TOKEN_BYTES {
        return Err(bad("longer than 4096 bytes"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not a compact JWS (three parts)"));
    };
    let header: Header = URL_SAFE_NO_PAD
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("the header is not an authorisation token header"))?;
    if header.alg != ALGORITHM || header.typ != TOKEN_TYPE {
        return Err(bad("alg must be EdDSA and typ enlace-authorisation+jwt"));
    }
    let [cert] = header.x5c.as_slice() else {
        return Err(bad("x5c must hold exactly the signer certificate"));
    };
    let certificate_der = STANDARD
        .decode(cert)
        .map_err(|_| bad("x5c is not base64"))?;
    let claims: Claims = URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| bad("the claims are not an authorisation's claims"))?;
    if !is_id(&claims.jti) {
        return Err(bad("jti is not an authorisation id"));
    }
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| bad("the signature is not base64url"))?;
    Ok(Decoded {
        header,
        claims,
        certificate_der,
        signing_input: token.as_bytes()[..h.len() + 1 + c.len()].to_vec(),
        signature,
    })
}

/// What an exchange expects of a token.
pub struct Expected<'a> {
    /// `urn:enlace:registry:INSTANCE` of the node's federation.
    pub issuer: &'a str,
    /// `Enlace-Subject`, `Enlace-Contract`, `Enlace-Procedure` of the request.
    pub subject: &'a str,
    pub contract: &'a str,
    pub procedure: Option<&'a str>,
    /// Unix seconds.
    pub now: i64,
}

/// Checks the claims against the exchange (after the signature verified): issuer, times,
/// person, contract, procedure. Revocation is checked by the caller against its configuration.
pub fn check_claims(claims: &Claims, expected: &Expected<'_>) -> Result<(), Refusal> {
    if claims.iss != expected.issuer {
        return Err(Refusal::Issuer);
    }
    if claims.iat > expected.now + LEEWAY_SECS {
        return Err(Refusal::IssuedInTheFuture);
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_LIFETIME_SECS {
        return Err(Refusal::LifetimeTooLong);
    }
    if expected.now >= claims.exp {
        return Err(Refusal::Expired);
    }
    if claims.sub != expected.subject {
        return Err(Refusal::AnotherPerson);
    }
    if claims.contract != expected.contract {
        return Err(Refusal::AnotherContract);
    }
    if expected.procedure != Some(claims.procedure.as_str()) {
        return Err(Refusal::AnotherProcedure);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            iss: "urn:enlace:registry:CL-DEV".into(),
            jti: new_id(),
            sub: "CL-RUN:12345678-5".into(),
            contract: "ctr_01JAAAAAAAAAAAAAAAAAAAAAAA".into(),
            procedure: "deduccion-salud-2026".into(),
            iat: 1_800_000_000,
            exp: 1_800_086_400,
        }
    }

    fn expected(c: &Claims) -> Expected<'_> {
        Expected {
            issuer: "urn:enlace:registry:CL-DEV",
            subject: "CL-RUN:12345678-5",
            contract: "ctr_01JAAAAAAAAAAAAAAAAAAAAAAA",
            procedure: Some("deduccion-salud-2026"),
            now: c.iat + 10,
        }
    }

    #[test]
    fn tokens_round_trip_and_sign_their_first_two_parts() {
        let c = claims();
        let mut signed = Vec::new();
        let token = encode(&c, b"certificate", |m| {
            signed = m.to_vec();
            vec![7; 64]
        });
        let d = decode(&token).unwrap();
        assert_eq!(d.claims, c);
        assert_eq!(d.certificate_der, b"certificate");
        assert_eq!(d.signature, vec![7; 64]);
        assert_eq!(d.signing_input, signed);
        assert!(token.starts_with(std::str::from_utf8(&signed).unwrap()));
        check_claims(&d.claims, &expected(&c)).unwrap();
    }

    #[test]
    fn malformed_tokens_are_refused_by_reason() {
        let c = claims();
        let token = encode(&c, b"cert", |_| vec![0; 64]);
        let slug = |t: &str| decode(t).err().map(|r| r.slug());
        assert_eq!(slug("a.b"), Some("malformed"));
        assert_eq!(slug(&format!("{token}.x")), Some("malformed"));
        assert_eq!(slug(&"a".repeat(MAX_TOKEN_BYTES + 1)), Some("malformed"));
        let parts: Vec<&str> = token.split('.').collect();
        let alg_none = URL_SAFE_NO_PAD
            .encode(br#"{"alg":"none","typ":"enlace-authorisation+jwt","x5c":["AA=="]}"#);
        assert_eq!(
            slug(&format!("{alg_none}.{}.{}", parts[1], parts[2])),
            Some("malformed")
        );
        let mut bad = c.clone();
        bad.jti = "auth-0001".into();
        assert_eq!(
            slug(&encode(&bad, b"cert", |_| vec![0; 64])),
            Some("malformed")
        );
        assert!(is_id(&new_id()));
        assert!(!is_id("aut_ABC"));
    }

    #[test]
    fn claims_must_match_the_exchange() {
        let c = claims();
        let e = expected(&c);
        let check = |c: &Claims, e: &Expected<'_>| check_claims(c, e).err().map(|r| r.slug());
        let mut other = c.clone();
        other.sub = "CL-RUN:11111111-1".into();
        assert_eq!(check(&other, &e), Some("another-person"));
        let mut other = c.clone();
        other.contract = "ctr_01JBBBBBBBBBBBBBBBBBBBBBBB".into();
        assert_eq!(check(&other, &e), Some("another-contract"));
        let mut other = c.clone();
        other.procedure = "otro".into();
        assert_eq!(check(&other, &e), Some("another-procedure"));
        assert_eq!(
            check(
                &c,
                &Expected {
                    procedure: None,
                    ..expected(&c)
                }
            ),
            Some("another-procedure")
        );
        assert_eq!(
            check(
                &c,
                &Expected {
                    now: c.exp,
                    ..expected(&c)
                }
            ),
            Some("expired")
        );
        assert_eq!(
            check(
                &c,
                &Expected {
                    now: c.iat - 120,
                    ..expected(&c)
                }
            ),
            Some("issued-in-the-future")
        );
        let mut long = c.clone();
        long.exp = long.iat + MAX_LIFETIME_SECS + 1;
        assert_eq!(check(&long, &e), Some("lifetime-too-long"));
        assert_eq!(
            check(
                &c,
                &Expected {
                    issuer: "urn:enlace:registry:CL",
                    ..expected(&c)
                }
            ),
            Some("another-issuer")
        );
    }
}
