//! RFC 9421 HTTP Message Signatures (Ed25519) and RFC 9530 `Content-Digest` for exchanges.
//!
//! A consumer node signs each request it relays with [`sign_request`]; the provider node checks
//! it with [`verify_request`], and signs its response with [`sign_response`], which covers the
//! request's method, path, query, digest and message id with `;req` so that a response cannot be
//! replayed as the answer to another request. The consumer checks that with [`verify_response`].
//!
//! The lower layer ([`sign`], [`verify`], [`signature_base`]) implements the signature base of
//! RFC 9421 §2.5 for the derived components `@method`, `@target-uri`, `@authority`, `@scheme`,
//! `@request-target`, `@path`, `@query` and `@status`, HTTP fields by lower-case name, and the
//! `req` component parameter. Other component parameters (`sf`, `key`, `bs`, `tr`, `name`) and
//! other algorithms are refused. Header parsing is strict RFC 8941 (see `sf`): one signature per
//! message, at most [`MAX_SIGNATURE_HEADER_LEN`] bytes per header, no unknown parameters.

#[doc(hidden)]
pub mod fuzzing;
mod sf;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use enlace_certs::{SigningKey, verify_ed25519};
use enlace_core::problem::{Problem, ProblemKind};
use http::{HeaderMap, Method, StatusCode, Uri};
use sha2::{Digest as _, Sha256, Sha512};

/// The header carrying the covered components and signature parameters.
pub const SIGNATURE_INPUT: &str = "signature-input";
/// The header carrying the signature itself.
pub const SIGNATURE: &str = "signature";
/// The RFC 9530 header carrying the digest of the content.
pub const CONTENT_DIGEST: &str = "content-digest";
/// The only signature algorithm, stated in the `alg` parameter.
pub const ALGORITHM: &str = "ed25519";
/// The label Enlace signs under (any single label is accepted on verification).
pub const LABEL: &str = "sig1";
/// The `tag` of a request signature.
pub const REQUEST_TAG: &str = "enlace-request";
/// The `tag` of a response signature.
pub const RESPONSE_TAG: &str = "enlace-response";
/// The largest `Signature-Input` or `Signature` accepted, in bytes.
pub const MAX_SIGNATURE_HEADER_LEN: usize = 4096;
/// The largest `Content-Digest` accepted, in bytes.
pub const MAX_CONTENT_DIGEST_LEN: usize = 1024;

/// Components every request signature covers, in this order.
pub const REQUEST_COMPONENTS: &[Component] = &[
    Component::new("@method"),
    Component::new("@path"),
    Component::new("@query"),
    Component::new("content-digest"),
    Component::new("enlace-message-id"),
    Component::new("enlace-client"),
    Component::new("enlace-service"),
    Component::new("enlace-contract"),
];

/// Components a request signature covers when the header is present, after
/// [`REQUEST_COMPONENTS`]. A verifier requires each one the received message carries, so a
/// header added in transit is refused rather than silently trusted.
pub const OPTIONAL_REQUEST_COMPONENTS: &[Component] = &[
    Component::new("content-type"),
    Component::new("accept"),
    Component::new("enlace-subject"),
    Component::new("enlace-user"),
    Component::new("enlace-procedure"),
    Component::new("enlace-step"),
    Component::new("enlace-authorization"),
];

/// Components every response signature covers: the response's own status, digest and message
/// id, and (with `;req`) the request's method, path, query, digest and message id.
pub const RESPONSE_COMPONENTS: &[Component] = &[
    Component::new("@status"),
    Component::new("content-type"),
    Component::new("content-digest"),
    Component::new("enlace-message-id"),
    Component::from_request("@method"),
    Component::from_request("@path"),
    Component::from_request("@query"),
    Component::from_request("content-digest"),
    Component::from_request("enlace-message-id"),
];

/// The derived components (RFC 9421 §2.2) this module can compute.
const DERIVED: &[&str] = &[
    "@method",
    "@target-uri",
    "@authority",
    "@scheme",
    "@request-target",
    "@path",
    "@query",
    "@status",
];

// ---------------------------------------------------------------------------------------------
// Content-Digest (RFC 9530)

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

// ---------------------------------------------------------------------------------------------
// Components

/// A covered component identifier (RFC 9421 §2): a derived component (`@method`) or a
/// lower-case field name (`content-digest`), taken from the request when `req` is set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Component {
    /// The component name, lower case; derived components start with `@`.
    pub name: Cow<'static, str>,
    /// Whether the value comes from the request a response answers (`;req`).
    pub req: bool,
}

impl Component {
    /// A component of the message itself.
    pub const fn new(name: &'static str) -> Self {
        Component {
            name: Cow::Borrowed(name),
            req: false,
        }
    }

    /// A component of the request a response answers (`;req`).
    pub const fn from_request(name: &'static str) -> Self {
        Component {
            name: Cow::Borrowed(name),
            req: true,
        }
    }

    /// A component with a name known only at run time.
    pub fn named(name: impl Into<String>, req: bool) -> Self {
        Component {
            name: Cow::Owned(name.into()),
            req,
        }
    }

    /// Parses the serialised identifier form: `"@method"`, `"content-digest";req`.
    pub fn parse(identifier: &str) -> Result<Self, Problem> {
        let item = sf::parse_item(identifier).map_err(|e| {
            Problem::new(
                ProblemKind::InvalidRequest,
                format!("component identifier is malformed: {e}"),
            )
        })?;
        Component::from_item(&item)
            .map_err(|e| Problem::new(ProblemKind::InvalidRequest, format!("component {e}")))
    }

    fn from_item(item: &sf::Item) -> Result<Self, String> {
        let sf::BareItem::String(name) = &item.bare else {
            return Err("identifier is not a string".into());
        };
        let mut req = false;
        for (key, value) in &item.params {
            match (key.as_str(), value) {
                ("req", sf::BareItem::Boolean(true)) => req = true,
                ("req", _) => return Err(format!("`{name}` has a non-true `req` parameter")),
                _ => return Err(format!("`{name}` has an unsupported parameter `{key}`")),
            }
        }
        let component = Component::named(name.clone(), req);
        component.check()?;
        Ok(component)
    }

    /// Checks the name: a derived component we compute, or a lower-case field name.
    fn check(&self) -> Result<(), String> {
        let name = &*self.name;
        if name.starts_with('@') {
            if !DERIVED.contains(&name) {
                return Err(format!("`{name}` is not a supported derived component"));
            }
            return Ok(());
        }
        let field_char = |b: u8| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        };
        if name.is_empty() || !name.bytes().all(field_char) {
            return Err(format!("`{name}` is not a lower-case field name"));
        }
        Ok(())
    }

    fn to_item(&self) -> sf::Item {
        let params = if self.req {
            vec![("req".to_string(), sf::BareItem::Boolean(true))]
        } else {
            Vec::new()
        };
        sf::Item {
            bare: sf::BareItem::String(self.name.to_string()),
            params,
        }
    }
}

impl fmt::Display for Component {
    /// The serialised identifier, as it appears in `Signature-Input` and the signature base.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        sf::write_item(&mut out, &self.to_item());
        f.write_str(&out)
    }
}

/// The components a request signature covers: [`REQUEST_COMPONENTS`], then each of
/// [`OPTIONAL_REQUEST_COMPONENTS`] whose header is present in `headers`.
pub fn request_components(headers: &HeaderMap) -> Vec<Component> {
    let mut components = REQUEST_COMPONENTS.to_vec();
    components.extend(
        OPTIONAL_REQUEST_COMPONENTS
            .iter()
            .filter(|c| headers.contains_key(&*c.name))
            .cloned(),
    );
    components
}

/// The header fields (not derived components, not `;req` ones) a `Signature-Input` holding
/// one signature says it covers, at most `max`; none when it does not parse or is longer than
/// [`MAX_SIGNATURE_HEADER_LEN`]. For keeping what a refused message's signature covers beside
/// it, whatever the refusal was.
pub fn covered_field_names(signature_input: &str, max: usize) -> Vec<String> {
    if signature_input.len() > MAX_SIGNATURE_HEADER_LEN {
        return Vec::new();
    }
    let Ok(inputs) = sf::parse_dictionary(signature_input) else {
        return Vec::new();
    };
    let [(_, sf::Member::InnerList(items, _))] = inputs.as_slice() else {
        return Vec::new();
    };
    items
        .iter()
        .filter(|i| i.params.is_empty())
        .filter_map(|i| match &i.bare {
            sf::BareItem::String(name) if !name.starts_with('@') => Some(name.clone()),
            _ => None,
        })
        .take(max)
        .collect()
}

/// The `tag` of a `Signature-Input` holding one signature, if it parses and has one: which
/// kind of message it signs, for a reader that must pick the rule to check it by.
pub fn tag_of(signature_input: &str) -> Option<String> {
    let inputs = sf::parse_dictionary(signature_input).ok()?;
    let [(_, sf::Member::InnerList(_, params))] = inputs.as_slice() else {
        return None;
    };
    params
        .iter()
        .find_map(|(key, value)| match (key.as_str(), value) {
            ("tag", sf::BareItem::String(tag)) => Some(tag.clone()),
            _ => None,
        })
}

/// The components a response signature covers: [`RESPONSE_COMPONENTS`].
pub fn response_components() -> Vec<Component> {
    RESPONSE_COMPONENTS.to_vec()
}

// ---------------------------------------------------------------------------------------------
// Messages

/// A request or response head, seen as RFC 9421 components.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    head: Head<'a>,
    headers: &'a HeaderMap,
}

#[derive(Debug, Clone, Copy)]
enum Head<'a> {
    Request { method: &'a Method, uri: &'a Uri },
    Response { status: StatusCode },
}

impl<'a> Message<'a> {
    /// A request: its method, target (origin or absolute form) and headers.
    pub fn request(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Message {
            head: Head::Request { method, uri },
            headers,
        }
    }

    /// A response: its status and headers.
    pub fn response(status: StatusCode, headers: &'a HeaderMap) -> Self {
        Message {
            head: Head::Response { status },
            headers,
        }
    }

    /// The head of an `http::Request`.
    pub fn of_request<B>(request: &'a http::Request<B>) -> Self {
        Message::request(request.method(), request.uri(), request.headers())
    }

    /// The head of an `http::Response`.
    pub fn of_response<B>(response: &'a http::Response<B>) -> Self {
        Message::response(response.status(), response.headers())
    }

    /// The headers.
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.head, Head::Request { .. })
    }

    fn uri(&self) -> Option<&'a Uri> {
        match self.head {
            Head::Request { uri, .. } => Some(uri),
            Head::Response { .. } => None,
        }
    }

    /// `@method`: the method, as sent (case-sensitive).
    pub fn method(&self) -> Option<&'a str> {
        match self.head {
            Head::Request { method, .. } => Some(method.as_str()),
            Head::Response { .. } => None,
        }
    }

    /// `@scheme`: the scheme, lower case, when the target is in absolute form.
    pub fn scheme(&self) -> Option<String> {
        Some(self.uri()?.scheme_str()?.to_ascii_lowercase())
    }

    /// `@authority`: host and port, lower case, default port removed; from the target if in
    /// absolute form, else from the `Host` header.
    pub fn authority(&self) -> Option<String> {
        let uri = self.uri()?;
        let authority = match uri.authority() {
            Some(a) => a.as_str().to_ascii_lowercase(),
            None => {
                let mut hosts = self.headers.get_all(http::header::HOST).iter();
                let host = hosts.next()?;
                if hosts.next().is_some() {
                    return None;
                }
                host.to_str().ok()?.trim().to_ascii_lowercase()
            }
        };
        let default_port = match self.scheme().as_deref() {
            Some("https") => Some(":443"),
            Some("http") => Some(":80"),
            _ => None,
        };
        match default_port.and_then(|p| authority.strip_suffix(p)) {
            Some(stripped) => Some(stripped.to_string()),
            None => Some(authority),
        }
    }

    /// `@path`: the absolute path, as sent; `/` when empty.
    pub fn path(&self) -> Option<&'a str> {
        let path = self.uri()?.path();
        Some(if path.is_empty() { "/" } else { path })
    }

    /// `@query`: the query with its leading `?`, or `?` alone when there is none.
    pub fn query(&self) -> Option<String> {
        Some(format!("?{}", self.uri()?.query().unwrap_or("")))
    }

    /// `@request-target`: the path and query, as in an origin-form request line.
    pub fn request_target(&self) -> Option<String> {
        let uri = self.uri()?;
        let path = self.path()?;
        Some(match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path.to_string(),
        })
    }

    /// `@target-uri`: the full target URI; only when the scheme and authority are known.
    pub fn target_uri(&self) -> Option<String> {
        let scheme = self.scheme()?;
        self.uri()?.authority()?;
        let authority = self.authority()?;
        Some(format!("{scheme}://{authority}{}", self.request_target()?))
    }

    /// `@status`: the three-digit status code.
    pub fn status(&self) -> Option<u16> {
        match self.head {
            Head::Response { status } => Some(status.as_u16()),
            Head::Request { .. } => None,
        }
    }

    /// A field's component value (RFC 9421 §2.1): every line's value with surrounding spaces
    /// and tabs removed, joined by `, `. `Ok(None)` when absent; an error for values that are
    /// not visible ASCII, which the signature base cannot carry unambiguously.
    pub fn field(&self, name: &str) -> Result<Option<String>, String> {
        let mut values = self.headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            return Ok(None);
        }
        let mut joined = String::new();
        for (i, value) in values.enumerate() {
            let bytes = value.as_bytes();
            if !bytes
                .iter()
                .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
            {
                return Err(format!("header `{name}` has a non-ASCII value"));
            }
            // Visible ASCII, so this is valid UTF-8.
            let text = String::from_utf8_lossy(bytes);
            if i > 0 {
                joined.push_str(", ");
            }
            joined.push_str(text.trim_matches([' ', '\t']));
        }
        Ok(Some(joined))
    }
}

/// The message being signed or verified and, for a response, the request it answers (the
/// source of `;req` components).
#[derive(Debug, Clone, Copy)]
pub struct MessageContext<'a> {
    pub message: Message<'a>,
    pub request: Option<Message<'a>>,
}

impl<'a> MessageContext<'a> {
    /// A request on its own.
    pub fn request(request: Message<'a>) -> Self {
        MessageContext {
            message: request,
            request: None,
        }
    }

    /// A response to `request`.
    pub fn response(response: Message<'a>, request: Message<'a>) -> Self {
        MessageContext {
            message: response,
            request: Some(request),
        }
    }

    /// The value of one component, or why there is none.
    fn value(&self, c: &Component) -> Result<String, String> {
        let msg = if c.req {
            if self.message.is_request() {
                return Err(format!("{c}: `req` is only meaningful on a response"));
            }
            if c.name == "@status" {
                return Err(format!("{c}: a request has no status"));
            }
            self.request
                .ok_or_else(|| format!("{c}: no request to take it from"))?
        } else {
            self.message
        };
        let value = match &*c.name {
            "@method" => msg.method().map(str::to_string),
            "@target-uri" => msg.target_uri(),
            "@authority" => msg.authority(),
            "@scheme" => msg.scheme(),
            "@request-target" => msg.request_target(),
            "@path" => msg.path().map(str::to_string),
            "@query" => msg.query(),
            "@status" => msg.status().map(|s| s.to_string()),
            field if !field.starts_with('@') => msg.field(field)?,
            other => return Err(format!("`{other}` is not a supported derived component")),
        };
        value.ok_or_else(|| format!("the message has no value for {c}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Signature parameters and base

/// The signature parameters we emit (RFC 9421 §2.3), serialised in this order: `created`,
/// `keyid`, `nonce`, `alg`, `tag` (absent ones skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigParams {
    /// Creation time, Unix seconds.
    pub created: i64,
    /// The signer: an Enlace node id, e.g. `CL-DEV/GOV/61002000-3/node/a`.
    pub keyid: String,
    /// An optional nonce.
    pub nonce: Option<String>,
    /// Whether to state `alg="ed25519"`.
    pub alg: bool,
    /// The application tag: [`REQUEST_TAG`] or [`RESPONSE_TAG`].
    pub tag: Option<String>,
}

impl SigParams {
    /// Enlace's parameters: `created`, `keyid`, `alg="ed25519"` and `tag`.
    pub fn enlace(created: i64, keyid: impl Into<String>, tag: &str) -> Self {
        SigParams {
            created,
            keyid: keyid.into(),
            nonce: None,
            alg: true,
            tag: Some(tag.to_string()),
        }
    }

    fn to_params(&self) -> Result<sf::Params, String> {
        if !(0..=999_999_999_999_999).contains(&self.created) {
            return Err(format!("created {} is out of range", self.created));
        }
        let mut params = vec![("created".to_string(), sf::BareItem::Integer(self.created))];
        let mut string = |key: &str, value: &str| {
            if !sf::is_serialisable_string(value) {
                return Err(format!("{key} must be printable ASCII"));
            }
            params.push((key.to_string(), sf::BareItem::String(value.to_string())));
            Ok(())
        };
        string("keyid", &self.keyid)?;
        if let Some(nonce) = &self.nonce {
            string("nonce", nonce)?;
        }
        if self.alg {
            string("alg", ALGORITHM)?;
        }
        if let Some(tag) = &self.tag {
            string("tag", tag)?;
        }
        Ok(params)
    }
}

/// Refuses duplicate components and checks each name.
fn check_components(components: &[Component]) -> Result<(), String> {
    for (i, c) in components.iter().enumerate() {
        c.check()?;
        if components[..i].contains(c) {
            return Err(format!("component {c} is listed twice"));
        }
    }
    Ok(())
}

/// The component lines of a signature base (RFC 9421 §2.5), one `"<identifier>": <value>`
/// line per component, each ending in a newline: what a signature over `components` covers,
/// without the `"@signature-params"` line.
pub(crate) fn component_lines(
    components: &[Component],
    msg: &MessageContext<'_>,
) -> Result<String, String> {
    check_components(components)?;
    let mut base = String::new();
    for c in components {
        let value = msg.value(c)?;
        base.push_str(&c.to_string());
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    Ok(base)
}

/// The signature base (RFC 9421 §2.5): one `"<identifier>": <value>` line per component, then
/// the `"@signature-params"` line, with no final newline.
fn build_base(
    components: &[Component],
    signature_params: &str,
    msg: &MessageContext<'_>,
) -> Result<String, String> {
    let mut base = component_lines(components, msg)?;
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    Ok(base)
}

fn serialise_signature_params(components: &[Component], params: &sf::Params) -> String {
    let items: Vec<sf::Item> = components.iter().map(Component::to_item).collect();
    sf::inner_list_to_string(&items, params)
}

/// The signature base `sign` would sign, for logging and debugging.
pub fn signature_base(
    components: &[Component],
    params: &SigParams,
    msg: &MessageContext<'_>,
) -> Result<String, Problem> {
    let params = params
        .to_params()
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("signature parameters: {e}")))?;
    build_base(
        components,
        &serialise_signature_params(components, &params),
        msg,
    )
    .map_err(|e| Problem::new(ProblemKind::InvalidRequest, format!("cannot sign: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Signing

/// Signs `msg` over `components` with `params`, under the label [`LABEL`].
///
/// Returns the `Signature-Input` and `Signature` header values. A component the message lacks,
/// or a covered header with a non-ASCII value, is [`ProblemKind::InvalidRequest`] (the caller's
/// headers cannot be signed); bad parameters or component names are [`ProblemKind::Internal`].
pub fn sign(
    key: &SigningKey,
    components: &[Component],
    params: &SigParams,
    msg: &MessageContext<'_>,
) -> Result<(String, String), Problem> {
    sign_labelled(LABEL, key, components, params, msg)
}

fn sign_labelled(
    label: &str,
    key: &SigningKey,
    components: &[Component],
    params: &SigParams,
    msg: &MessageContext<'_>,
) -> Result<(String, String), Problem> {
    check_components(components)
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("covered components: {e}")))?;
    let sf_params = params
        .to_params()
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("signature parameters: {e}")))?;
    let signature_params = serialise_signature_params(components, &sf_params);
    let base = build_base(components, &signature_params, msg)
        .map_err(|e| Problem::new(ProblemKind::InvalidRequest, format!("cannot sign: {e}")))?;
    let signature = key.sign(base.as_bytes());
    Ok((
        format!("{label}={signature_params}"),
        format!("{label}=:{}:", STANDARD.encode(signature)),
    ))
}

/// Signs a request with Enlace's request components and [`REQUEST_TAG`]. The request must
/// already carry its `Content-Digest` and `Enlace-*` headers.
pub fn sign_request(
    key: &SigningKey,
    keyid: &str,
    created: i64,
    request: Message<'_>,
) -> Result<(String, String), Problem> {
    sign_request_covering(key, keyid, created, request, &[])
}

/// [`sign_request`], also covering the named request headers (lower case) that are present:
/// the header parameters of the operation, which travel on to the provider backend.
pub fn sign_request_covering(
    key: &SigningKey,
    keyid: &str,
    created: i64,
    request: Message<'_>,
    headers: &[&str],
) -> Result<(String, String), Problem> {
    let mut components = request_components(request.headers());
    for name in headers {
        if request.headers().contains_key(*name)
            && !components.iter().any(|c| c.name == *name && !c.req)
        {
            components.push(Component::named(*name, false));
        }
    }
    sign(
        key,
        &components,
        &SigParams::enlace(created, keyid, REQUEST_TAG),
        &MessageContext::request(request),
    )
}

/// Signs a response with [`RESPONSE_COMPONENTS`] and [`RESPONSE_TAG`], bound to `request` (as
/// received). The response must already carry its `Content-Digest` and `Enlace-Message-Id`.
pub fn sign_response(
    key: &SigningKey,
    keyid: &str,
    created: i64,
    response: Message<'_>,
    request: Message<'_>,
) -> Result<(String, String), Problem> {
    sign(
        key,
        RESPONSE_COMPONENTS,
        &SigParams::enlace(created, keyid, RESPONSE_TAG),
        &MessageContext::response(response, request),
    )
}

// ---------------------------------------------------------------------------------------------
// Verification

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

fn refused(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::SignatureInvalid, detail)
}

fn too_large(name: &str, len: usize, max: usize) -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("header `{name}` has {len} bytes, at most {max} are accepted"),
    )
    .with("header", name)
    .with("limit", max)
}
