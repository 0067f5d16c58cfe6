//! Signature parameters (RFC 9421 §2.3) and the signature base (§2.5).

use enlace_core::problem::{Problem, ProblemKind};

use crate::{ALGORITHM, Component, MessageContext, sf};

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

    pub(crate) fn to_params(&self) -> Result<sf::Params, String> {
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
pub(crate) fn check_components(components: &[Component]) -> Result<(), String> {
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
pub fn component_lines(
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
pub(crate) fn build_base(
    components: &[Component],
    signature_params: &str,
    msg: &MessageContext<'_>,
) -> Result<String, String> {
    let mut base = component_lines(components, msg)?;
    base.push_str("\"@signature-params\": ");
    base.push_str(signature_params);
    Ok(base)
}

pub(crate) fn serialise_signature_params(components: &[Component], params: &sf::Params) -> String {
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
