//! Verifying a signature, and Enlace's request and response signatures.

use enlace_certs::verify_ed25519;
use enlace_core::problem::{Problem, ProblemKind};
use http::HeaderMap;

use crate::base::{build_base, check_components};
use crate::{
    ALGORITHM, CONTENT_DIGEST, Component, MAX_CONTENT_DIGEST_LEN, MAX_SIGNATURE_HEADER_LEN,
    Message, MessageContext, REQUEST_TAG, RESPONSE_COMPONENTS, RESPONSE_TAG, SIGNATURE,
    SIGNATURE_INPUT, check_content_digest, refused, request_components, sf, too_large,
};

/// The Ed25519 public key(s) a `keyid` stands for: one, or, while a node rolls its signing key
/// over, its current key first and then those it may still be using.
pub trait PublicKeys {
    fn candidates(&self) -> impl Iterator<Item = &[u8]>;
}

impl PublicKeys for Vec<u8> {
    fn candidates(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.as_slice())
    }
}

impl PublicKeys for Vec<Vec<u8>> {
    fn candidates(&self) -> impl Iterator<Item = &[u8]> {
        self.iter().map(Vec::as_slice)
    }
}

/// What a verifier demands of a signature besides a valid Ed25519 signature.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// Components the signature must cover (identical name and `req`).
    pub required: &'a [Component],
    /// The `tag` the signature must carry.
    pub tag: &'a str,
    /// The verifier's clock, Unix seconds.
    pub now: i64,
    /// How far `created` may lie from `now`, either way, in seconds.
    pub max_skew_secs: i64,
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSignature {
    /// The label it was sent under.
    pub label: String,
    /// The signer's key id (an Enlace node id).
    pub keyid: String,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The covered components, in order.
    pub components: Vec<Component>,
    /// The nonce, if any.
    pub nonce: Option<String>,
}

/// Verifies one RFC 9421 signature over `msg`.
///
/// Both headers must hold exactly one member, under the same label. The signature must state
/// `created`, `keyid` and a `tag` equal to `expected.tag`; `alg`, if stated, must be `ed25519`;
/// `expires` and `nonce` are allowed, anything else is refused. Every component of
/// `expected.required` must be covered. `created` must lie within `expected.now ±
/// expected.max_skew_secs` and `expires`, if stated, not before `now`
/// ([`ProblemKind::Stale`]). Then the key for `keyid` (errors from `public_key_for` are returned
/// as they are) must verify the signature over the rebuilt signature base. Every other failure
/// is [`ProblemKind::SignatureInvalid`]; oversized headers are [`ProblemKind::BodyTooLarge`].
pub fn verify<K: PublicKeys>(
    signature_input: &str,
    signature: &str,
    msg: &MessageContext<'_>,
    expected: &Expected<'_>,
    public_key_for: impl Fn(&str) -> Result<K, Problem>,
) -> Result<VerifiedSignature, Problem> {
    if signature_input.len() > MAX_SIGNATURE_HEADER_LEN {
        return Err(too_large(
            SIGNATURE_INPUT,
            signature_input.len(),
            MAX_SIGNATURE_HEADER_LEN,
        ));
    }
    if signature.len() > MAX_SIGNATURE_HEADER_LEN {
        return Err(too_large(
            SIGNATURE,
            signature.len(),
            MAX_SIGNATURE_HEADER_LEN,
        ));
    }
    let inputs = sf::parse_dictionary(signature_input)
        .map_err(|e| refused(format!("signature-input is malformed: {e}")))?;
    let signatures = sf::parse_dictionary(signature)
        .map_err(|e| refused(format!("signature is malformed: {e}")))?;
    let [(label, input)] = inputs.as_slice() else {
        return Err(refused(format!(
            "signature-input must hold exactly one signature, it holds {}",
            inputs.len()
        )));
    };
    let [(signature_label, signature_member)] = signatures.as_slice() else {
        return Err(refused(format!(
            "signature must hold exactly one signature, it holds {}",
            signatures.len()
        )));
    };
    if label != signature_label {
        return Err(refused(format!(
            "signature-input is labelled `{label}` but signature `{signature_label}`"
        )));
    }
    let sf::Member::InnerList(items, params) = input else {
        return Err(refused("signature-input member is not an inner list"));
    };
    let sf::Member::Item(sf::Item {
        bare: sf::BareItem::ByteSeq(signature_bytes),
        params: signature_params,
    }) = signature_member
    else {
        return Err(refused("signature member is not a byte sequence"));
    };
    if !signature_params.is_empty() {
        return Err(refused("signature member has parameters"));
    }

    let components = items
        .iter()
        .map(Component::from_item)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| refused(format!("covered component {e}")))?;
    check_components(&components).map_err(refused)?;
    let parsed = ParsedParams::from_sf(params).map_err(refused)?;

    match parsed.alg.as_deref() {
        None | Some(ALGORITHM) => {}
        Some(other) => {
            return Err(refused(format!(
                "algorithm `{other}` is not accepted, only `{ALGORITHM}`"
            )));
        }
    }
    match parsed.tag.as_deref() {
        Some(tag) if tag == expected.tag => {}
        Some(tag) => {
            return Err(refused(format!(
                "signature tag is `{tag}`, expected `{}`",
                expected.tag
            )));
        }
        None => {
            return Err(refused(format!(
                "signature has no tag, expected `{}`",
                expected.tag
            )));
        }
    }
    for r in expected.required {
        if !components.contains(r) {
            return Err(refused(format!("the signature does not cover {r}"))
                .with("component", r.to_string()));
        }
    }
    check_freshness(parsed.created, parsed.expires, expected)?;
    if signature_bytes.len() != 64 {
        return Err(refused(format!(
            "an ed25519 signature has 64 bytes, this one {}",
            signature_bytes.len()
        )));
    }

    let base =
        build_base(&components, &sf::inner_list_to_string(items, params), msg).map_err(refused)?;
    let public_keys = public_key_for(&parsed.keyid)?;
    if !public_keys
        .candidates()
        .any(|key| verify_ed25519(key, base.as_bytes(), signature_bytes))
    {
        return Err(refused("the signature does not verify").with("keyid", parsed.keyid.as_str()));
    }
    Ok(VerifiedSignature {
        label: label.clone(),
        keyid: parsed.keyid,
        created: parsed.created,
        components,
        nonce: parsed.nonce,
    })
}

/// The `Signature-Input` and `Signature` values of `headers`, each header's lines joined with
/// `, ` (so a second signature shows up as a second dictionary member and is refused).
pub fn signature_headers(headers: &HeaderMap) -> Result<(String, String), Problem> {
    let input = joined_header(headers, SIGNATURE_INPUT, MAX_SIGNATURE_HEADER_LEN)?;
    let signature = joined_header(headers, SIGNATURE, MAX_SIGNATURE_HEADER_LEN)?;
    Ok((input, signature))
}

/// Verifies a request signed by [`sign_request`] and its body against `Content-Digest`.
///
/// The required components are [`request_components`] of the received headers: the mandatory
/// ones plus every optional Enlace header present, so an unsigned header added in transit is
/// refused.
pub fn verify_request<K: PublicKeys>(
    request: Message<'_>,
    body: &[u8],
    public_key_for: impl Fn(&str) -> Result<K, Problem>,
    now: i64,
    max_skew_secs: i64,
) -> Result<VerifiedSignature, Problem> {
    let (input, signature) = signature_headers(request.headers())?;
    let required = request_components(request.headers());
    let expected = Expected {
        required: &required,
        tag: REQUEST_TAG,
        now,
        max_skew_secs,
    };
    let verified = verify(
        &input,
        &signature,
        &MessageContext::request(request),
        &expected,
        public_key_for,
    )?;
    let digest = joined_header(request.headers(), CONTENT_DIGEST, MAX_CONTENT_DIGEST_LEN)?;
    check_content_digest(&digest, body)?;
    Ok(verified)
}

/// Verifies a response signed by [`sign_response`], bound to `request` (as this node sent it),
/// and its body against `Content-Digest`.
pub fn verify_response<K: PublicKeys>(
    response: Message<'_>,
    body: &[u8],
    request: Message<'_>,
    public_key_for: impl Fn(&str) -> Result<K, Problem>,
    now: i64,
    max_skew_secs: i64,
) -> Result<VerifiedSignature, Problem> {
    let (input, signature) = signature_headers(response.headers())?;
    let expected = Expected {
        required: RESPONSE_COMPONENTS,
        tag: RESPONSE_TAG,
        now,
        max_skew_secs,
    };
    let verified = verify(
        &input,
        &signature,
        &MessageContext::response(response, request),
        &expected,
        public_key_for,
    )?;
    let digest = joined_header(response.headers(), CONTENT_DIGEST, MAX_CONTENT_DIGEST_LEN)?;
    check_content_digest(&digest, body)?;
    Ok(verified)
}

/// The signature parameters a verifier reads.
struct ParsedParams {
    created: i64,
    expires: Option<i64>,
    keyid: String,
    alg: Option<String>,
    tag: Option<String>,
    nonce: Option<String>,
}

impl ParsedParams {
    fn from_sf(params: &sf::Params) -> Result<Self, String> {
        let (mut created, mut expires, mut keyid, mut alg, mut tag, mut nonce) =
            (None, None, None, None, None, None);
        for (key, value) in params {
            match (key.as_str(), value) {
                ("created", sf::BareItem::Integer(i)) if *i >= 0 => created = Some(*i),
                ("expires", sf::BareItem::Integer(i)) if *i >= 0 => expires = Some(*i),
                ("keyid", sf::BareItem::String(s)) => keyid = Some(s.clone()),
                ("alg", sf::BareItem::String(s)) => alg = Some(s.clone()),
                ("tag", sf::BareItem::String(s)) => tag = Some(s.clone()),
                ("nonce", sf::BareItem::String(s)) => nonce = Some(s.clone()),
                ("created" | "expires", _) => {
                    return Err(format!("parameter `{key}` must be a non-negative integer"));
                }
                ("keyid" | "alg" | "tag" | "nonce", _) => {
                    return Err(format!("parameter `{key}` must be a string"));
                }
                _ => return Err(format!("unknown signature parameter `{key}`")),
            }
        }
        Ok(ParsedParams {
            created: created.ok_or("the signature has no `created` parameter")?,
            expires,
            keyid: keyid.ok_or("the signature has no `keyid` parameter")?,
            alg,
            tag,
            nonce,
        })
    }
}

fn check_freshness(
    created: i64,
    expires: Option<i64>,
    expected: &Expected<'_>,
) -> Result<(), Problem> {
    let skew = expected.max_skew_secs.max(0);
    let now = expected.now;
    let stale = |detail: String| {
        Problem::new(ProblemKind::Stale, detail)
            .with("created", created)
            .with("now", now)
    };
    if created > now.saturating_add(skew) {
        return Err(stale(format!(
            "signature created {}s in the future (allowed skew {skew}s)",
            created.saturating_sub(now)
        )));
    }
    if created < now.saturating_sub(skew) {
        return Err(stale(format!(
            "signature created {}s ago (allowed {skew}s)",
            now.saturating_sub(created)
        )));
    }
    if let Some(expires) = expires
        && expires < now
    {
        return Err(stale(format!(
            "signature expired {}s ago",
            now.saturating_sub(expires)
        )));
    }
    Ok(())
}

fn joined_header(headers: &HeaderMap, name: &str, max: usize) -> Result<String, Problem> {
    let mut joined = String::new();
    let mut any = false;
    for value in headers.get_all(name) {
        if any {
            joined.push_str(", ");
        }
        any = true;
        let text = value
            .to_str()
            .map_err(|_| refused(format!("header `{name}` is not visible ASCII")))?;
        joined.push_str(text);
        if joined.len() > max {
            return Err(too_large(name, joined.len(), max));
        }
    }
    if !any {
        return Err(refused(format!("the message has no `{name}` header")));
    }
    Ok(joined)
}
