//! RFC 9530 `Content-Digest`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use enlace_core::problem::Problem;
use sha2::{Digest as _, Sha256, Sha512};

use crate::{CONTENT_DIGEST, MAX_CONTENT_DIGEST_LEN, refused, sf, too_large};

/// The `Content-Digest` value for `body`: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// Checks a `Content-Digest` value against `body`.
///
/// The value must be a well-formed RFC 8941 dictionary holding a `sha-256` byte sequence equal
/// to the body's digest. A `sha-512` member, if present, must match too; members with other
/// algorithm names are ignored. Anything else is refused as [`ProblemKind::SignatureInvalid`]
/// (the digest arrives from the peer node), an oversized value as [`ProblemKind::BodyTooLarge`].
pub fn check_content_digest(header: &str, body: &[u8]) -> Result<(), Problem> {
    if header.len() > MAX_CONTENT_DIGEST_LEN {
        return Err(too_large(
            CONTENT_DIGEST,
            header.len(),
            MAX_CONTENT_DIGEST_LEN,
        ));
    }
    let dict = sf::parse_dictionary(header)
        .map_err(|e| refused(format!("content-digest is malformed: {e}")))?;
    let mut has_sha256 = false;
    for (algorithm, member) in &dict {
        let expected: Vec<u8> = match algorithm.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        let sf::Member::Item(sf::Item {
            bare: sf::BareItem::ByteSeq(actual),
            params,
        }) = member
        else {
            return Err(refused(format!(
                "content-digest member `{algorithm}` is not a byte sequence"
            )));
        };
        if !params.is_empty() {
            return Err(refused(format!(
                "content-digest member `{algorithm}` has parameters"
            )));
        }
        if *actual != expected {
            return Err(refused(format!(
                "content-digest `{algorithm}` does not match the body"
            ))
            .with("algorithm", algorithm));
        }
        has_sha256 |= algorithm == "sha-256";
    }
    if !has_sha256 {
        return Err(refused("content-digest has no sha-256 member"));
    }
    Ok(())
}
