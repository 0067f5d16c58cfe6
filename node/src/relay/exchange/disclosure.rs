//! The effective disclosure of a response, on the provider node, for REST and gRPC alike: the
//! described leaf fields of the operation that the contract's allowed fields cover, minus every
//! `secret` field, minus every `sensitive` field unless the request carries a valid
//! authorisation (`Enlace-Authorization`) of the person for this contract and procedure.
//!
//! Field classes come from the service description (cached per digest), so a later compatible
//! version that adds a `sensitive` or `secret` field under an allowed prefix (`/address/x`)
//! does not leak it, and members the description does not know are not disclosed either: the
//! result is a list of leaf pointers, which `minimise` keeps and nothing else.
//!
//! An authorisation that does not verify (malformed, forged, signed by anyone but the
//! registry, expired, revoked, of another person, contract or procedure) does not fail the
//! exchange: the sensitive fields are withheld and the access record says why.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use enlace_core::authorisation::{self, Claims, Expected, Refusal};
use enlace_core::config::ServiceEntry;
use enlace_core::contract::{Contract, FieldClass};
use enlace_core::problem::Problem;
use enlace_description::Description;

use super::context::Context;
use crate::relay::{Node, Snapshot};

/// Most verified tokens remembered.
const MAX_TOKENS: usize = 10_000;

/// The classified leaf fields of each operation of one description.
type Leaves = Arc<HashMap<String, Vec<(String, FieldClass)>>>;

/// What the node keeps between exchanges: the classified leaves of each operation, by
/// description digest, and the tokens whose signature and signer were checked, by token digest
/// and configuration serial (the CRL comes with the configuration).
#[derive(Default)]
pub struct Cache {
    leaves: Mutex<HashMap<String, Leaves>>,
    tokens: Mutex<HashMap<(String, u64), Result<Claims, Refusal>>>,
}

/// What became of the authorisation a request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request carried none.
    None,
    /// It verified: the authorisation id.
    Accepted(String),
    /// It did not, and why.
    Refused(Refusal),
}

impl Outcome {
    /// The access record's `authorisation` and `authorisation_refused`.
    pub fn for_record(&self) -> (Option<String>, Option<String>) {
        match self {
            Outcome::None => (None, None),
            Outcome::Accepted(id) => (Some(id.clone()), None),
            Outcome::Refused(r) => (None, Some(r.to_string().chars().take(200).collect())),
        }
    }
}

/// The leaf fields of each operation of a description, with their classes.
fn leaves_of(desc: &Description) -> HashMap<String, Vec<(String, FieldClass)>> {
    desc.operations
        .iter()
        .map(|op| {
            let leaves = op
                .fields
                .iter()
                .filter(|f| {
                    let below = format!("{}/", f.pointer);
                    !op.fields.iter().any(|g| g.pointer.starts_with(&below))
                })
                .map(|f| (f.pointer.clone(), f.class))
                .collect();
            (op.id.clone(), leaves)
        })
        .collect()
}

/// The leaf pointers to disclose for `operation` of `entry` under `contract`, given what became
/// of the request's authorisation.
pub(crate) async fn allowed(
    node: &Node,
    ctx: &Context,
    entry: &ServiceEntry,
    contract: &Contract,
    operation: &str,
) -> Result<Vec<String>, Problem> {
    let leaves = leaves(node, entry).await?;
    let authorised = matches!(outcome(node, ctx, contract), Outcome::Accepted(_));
    Ok(effective(
        leaves.get(operation).map(Vec::as_slice).unwrap_or(&[]),
        &contract.terms.allowed_fields,
        authorised,
    ))
}

/// The leaves `allowed_fields` cover, without `secret` ones and, unless authorised, without
/// `sensitive` ones.
pub fn effective(
    leaves: &[(String, FieldClass)],
    allowed_fields: &[String],
    authorised: bool,
) -> Vec<String> {
    leaves
        .iter()
        .filter(|(pointer, class)| {
            let covered = allowed_fields.iter().any(|a| {
                pointer == a
                    || pointer
                        .strip_prefix(a.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            });
            let withheld = match class {
                FieldClass::Secret => true,
                FieldClass::Sensitive => !authorised,
                _ => false,
            };
            covered && !withheld
        })
        .map(|(p, _)| p.clone())
        .collect()
}

/// The classified leaves of a service version's description, loaded once per digest.
async fn leaves(node: &Node, entry: &ServiceEntry) -> Result<Leaves, Problem> {
    if let Some(l) = node
        .disclosure
        .leaves
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&entry.digest)
    {
        return Ok(l.clone());
    }
    let bytes = node.description_bytes(entry).await?;
    let desc = Description::load(entry.kind, &bytes)?;
    let leaves = Arc::new(leaves_of(&desc));
    node.disclosure
        .leaves
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(entry.digest.clone(), leaves.clone());
    Ok(leaves)
}

/// What becomes of the request's authorisation: its signature and signer (the registry's
/// certificate, chaining to the federation CA, unrevoked by the configuration's CRL, valid when
/// it signed), its claims against the exchange (person, contract, procedure, times), and the
/// revocations the signed configuration lists.
pub(crate) fn outcome(node: &Node, ctx: &Context, contract: &Contract) -> Outcome {
    let Some(token) = ctx.authorization.as_deref() else {
        return Outcome::None;
    };
    let snap = match node.snapshot() {
        Ok(s) => s,
        Err(p) => return Outcome::Refused(Refusal::Signer(p.detail)),
    };
    let claims = match verified_claims(node, &snap, token) {
        Ok(c) => c,
        Err(r) => return Outcome::Refused(r),
    };
    let subject = ctx
        .subject
        .as_ref()
        .map(|s| s.to_string())
        .unwrap_or_default();
    let expected = Expected {
        issuer: &enlace_certs::registry_uri(&snap.config.instance),
        subject: &subject,
        contract: contract.id.as_str(),
        procedure: ctx.procedure.as_deref(),
        now: node.unix_now(),
    };
    if let Err(r) = authorisation::check_claims(&claims, &expected) {
        return Outcome::Refused(r);
    }
    if snap
        .config
        .revoked_authorisations
        .iter()
        .any(|r| r.id == claims.jti)
    {
        return Outcome::Refused(Refusal::Revoked);
    }
    Outcome::Accepted(claims.jti)
}

/// The claims of a token whose form, signer and signature verify (remembered per token and
/// configuration serial).
fn verified_claims(node: &Node, snap: &Snapshot, token: &str) -> Result<Claims, Refusal> {
    let key = (
        enlace_description::sha256_hex(token.as_bytes()),
        snap.config.serial,
    );
    if let Some(hit) = node
        .disclosure
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
    {
        return hit.clone();
    }
    let result = verify_token(snap, token);
    let mut tokens = node
        .disclosure
        .tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if tokens.len() >= MAX_TOKENS {
        tokens.clear();
    }
    tokens.insert(key, result.clone());
    result
}

fn verify_token(snap: &Snapshot, token: &str) -> Result<Claims, Refusal> {
    let decoded = authorisation::decode(token)?;
    let issuer = enlace_certs::registry_uri(&snap.config.instance);
    let signed_at = time::OffsetDateTime::from_unix_timestamp(decoded.claims.iat)
        .map_err(|_| Refusal::Malformed("iat is not a time".into()))?;
    let pem = enlace_certs::certificate_pem(&decoded.certificate_der);
    // The registry's key changes at each start: the token carries its certificate, checked
    // as it was when the token was signed (and against today's CRL).
    let key = enlace_certs::verify_signer(&snap.trust, &pem, &issuer, signed_at)
        .map_err(|p| Refusal::Signer(p.detail))?;
    if !enlace_certs::verify_ed25519(&key, &decoded.signing_input, &decoded.signature) {
        return Err(Refusal::Signature);
    }
    Ok(decoded.claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves() -> Vec<(String, FieldClass)> {
        [
            ("/name", FieldClass::Personal),
            ("/address/street", FieldClass::Personal),
            ("/address/x", FieldClass::Sensitive),
            ("/address/y", FieldClass::Secret),
            ("/healthInsurance", FieldClass::Sensitive),
            ("/nickname", FieldClass::Personal),
        ]
        .into_iter()
        .map(|(p, c)| (p.to_string(), c))
        .collect()
    }

    #[test]
    fn secret_fields_never_and_sensitive_fields_only_with_authorisation() {
        let allowed = vec![
            "/name".to_string(),
            "/address".to_string(),
            "/healthInsurance".to_string(),
        ];
        assert_eq!(
            effective(&leaves(), &allowed, false),
            vec!["/name", "/address/street"]
        );
        assert_eq!(
            effective(&leaves(), &allowed, true),
            vec!["/name", "/address/street", "/address/x", "/healthInsurance"]
        );
        // A prefix covers whole segments only.
        assert_eq!(
            effective(&leaves(), &["/nick".to_string()], true),
            Vec::<String>::new()
        );
    }
}
