//! Covered component identifiers (RFC 9421 §2) and the sets Enlace's signatures cover.

use std::borrow::Cow;
use std::fmt;

use enlace_core::problem::{Problem, ProblemKind};
use http::HeaderMap;

use crate::{
    DERIVED, MAX_SIGNATURE_HEADER_LEN, OPTIONAL_REQUEST_COMPONENTS, REQUEST_COMPONENTS,
    RESPONSE_COMPONENTS, sf,
};

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

    pub(crate) fn from_item(item: &sf::Item) -> Result<Self, String> {
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
    pub(crate) fn check(&self) -> Result<(), String> {
        let name = &*self.name;
        if name.starts_with('@') {
            if !DERIVED.contains(&name) {
                return Err(format!("`{name}` is not a supported derived component"));
            }
            return Ok(());
        }
        let field_char = |b: u8| sf::is_tchar(b) && !b.is_ascii_uppercase();
        if name.is_empty() || !name.bytes().all(field_char) {
            return Err(format!("`{name}` is not a lower-case field name"));
        }
        Ok(())
    }

    pub(crate) fn to_item(&self) -> sf::Item {
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
