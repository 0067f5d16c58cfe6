//! Signing a message, and Enlace's request and response signatures.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use enlace_certs::SigningKey;
use enlace_core::problem::{Problem, ProblemKind};

use crate::base::{build_base, check_components, serialise_signature_params};
use crate::{
    Component, LABEL, Message, MessageContext, REQUEST_TAG, RESPONSE_COMPONENTS, RESPONSE_TAG,
    SigParams, request_components,
};

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

pub(crate) fn sign_labelled(
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
