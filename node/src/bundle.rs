//! Evidence bundles: one exchange from a node's message log (request, response, every RFC 9421
//! signature they hold, the chain position up to a signed head) with the certificates needed to
//! check it offline, years later, without the node or the registry. REST records hold a request
//! and a response signature; gRPC records up to four (see `relay::grpc_evidence`).

use std::collections::BTreeMap;
use std::path::Path;

use enlace_certs::TrustStore;
use enlace_core::config::GlobalConfig;
use enlace_core::problem::{Problem, ProblemKind};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use serde::{Deserialize, Serialize};

use crate::relay::grpc_evidence;
use enlace_httpsig::{self as signature, Expected, Message, MessageContext};
use enlace_msglog::{Evidence, Record, RecordKind};

pub const BUNDLE_FORMAT: &str = "enlace-evidence-bundle-v1";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    pub format: String,
    /// The node whose log this comes from.
    pub node: String,
    pub evidence: Evidence,
    /// The federation CA certificate(s) and CRL at export time.
    pub federation_ca: Vec<String>,
    pub crl: String,
    /// Signing certificates of the nodes whose signatures appear, by node id.
    pub signing_certificates: BTreeMap<String, String>,
}

/// Exports `message_id` from the log at `db` of `node`, with certificates from `config`.
pub fn create(
    db: &Path,
    message_id: &str,
    node: &str,
    config: &GlobalConfig,
) -> Result<Bundle, Problem> {
    let evidence = enlace_msglog::export(db, message_id)?;
    let mut wanted: Vec<String> = vec![node.to_string()];
    wanted.extend(
        evidence
            .entries
            .iter()
            .filter_map(|e| e.record.peer.clone()),
    );
    let signing_certificates = config
        .nodes
        .iter()
        .filter(|n| wanted.contains(&n.id.to_string()))
        .map(|n| (n.id.to_string(), n.signing_certificate.clone()))
        .collect();
    Ok(Bundle {
        format: BUNDLE_FORMAT.into(),
        node: node.to_string(),
        evidence,
        federation_ca: config.federation_ca.clone(),
        crl: config.crl.clone(),
        signing_certificates,
    })
}

fn header_map(
    pairs: &[(&str, Option<&str>)],
    extra: &[(String, String)],
) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (k, v) in extra {
        let name: HeaderName = k.parse().map_err(|_| format!("header name {k}"))?;
        h.append(
            name,
            HeaderValue::from_str(v).map_err(|_| format!("header {k}"))?,
        );
    }
    for (k, v) in pairs {
        if let Some(v) = v {
            let name: HeaderName = k.parse().map_err(|_| format!("header name {k}"))?;
            h.insert(
                name,
                HeaderValue::from_str(v).map_err(|_| format!("header {k}"))?,
            );
        }
    }
    Ok(h)
}

impl Bundle {
    /// Checks everything offline: each signer's certificate chains to the CA (at the time of
    /// the record), the chain proof up to the signed head and the head's signature, and every
    /// RFC 9421 signature each record holds (and the bodies kept, against what is signed).
    /// Returns what was checked, line by line.
    pub fn verify(&self) -> Result<Vec<String>, String> {
        if self.format != BUNDLE_FORMAT {
            return Err(format!("unknown bundle format `{}`", self.format));
        }
        let trust = TrustStore::new(&self.federation_ca, Some(&self.crl)).map_err(|p| p.detail)?;
        let key_of = |node: &str, at: time::OffsetDateTime| -> Result<Vec<u8>, String> {
            let cert = self
                .signing_certificates
                .get(node)
                .ok_or_else(|| format!("no signing certificate for {node} in the bundle"))?;
            let id: enlace_core::NodeId = node.parse().map_err(|e| format!("{e}"))?;
            enlace_certs::verify_signer(&trust, cert, &id.uri(), at)
                .map_err(|p| format!("signing certificate of {node}: {}", p.detail))
        };
        let mut lines = Vec::new();
        let first_at = self
            .evidence
            .entries
            .first()
            .map(|e| e.record.at)
            .ok_or("the bundle holds no records")?;
        let own = key_of(&self.node, first_at)?;
        self.evidence.verify_offline_with_key(&own)?;
        for e in &self.evidence.entries {
            let head = match &e.proof {
                Some(p) => format!("chained to signed head seq {}", p.head.seq),
                None => format!(
                    "chain hash verified; {}",
                    e.note.as_deref().unwrap_or("no signed head yet")
                ),
            };
            lines.push(format!(
                "record {} ({}): {head}",
                e.seq,
                e.record.kind.as_str()
            ));
        }
        for e in &self.evidence.entries {
            let r = &e.record;
            if grpc_evidence::is_grpc(r) {
                // What this node sent (as consumer, the request direction) it signed itself.
                let (consumer, provider) = match r.kind {
                    RecordKind::RequestOut | RecordKind::ResponseIn => {
                        (Some(self.node.as_str()), r.peer.as_deref())
                    }
                    _ => (r.peer.as_deref(), Some(self.node.as_str())),
                };
                let signers = grpc_evidence::Signers { consumer, provider };
                let checked = grpc_evidence::check(r, first_at, &signers, &key_of)
                    .map_err(|m| format!("record {}: {m}", e.seq))?;
                for l in checked {
                    lines.push(format!("record {} ({}): {l}", e.seq, r.kind.as_str()));
                }
                continue;
            }
            if let Some(signer) = signer_of(&self.node, r) {
                let key = key_of(&signer, r.at)?;
                verify_record(r, &key).map_err(|p| format!("record {}: {p}", e.seq))?;
                lines.push(format!(
                    "record {} ({}): RFC 9421 signature of {signer} verifies",
                    e.seq,
                    r.kind.as_str()
                ));
            }
            if r.kind == RecordKind::Refusal
                && let Some(l) = refused_request_line(r, &key_of)
            {
                lines.push(format!("record {} ({}): {l}", e.seq, r.kind.as_str()));
            }
        }
        Ok(lines)
    }
}

/// Who signed what a record holds: the node itself for what it sent, the peer for what it got.
fn signer_of(node: &str, r: &Record) -> Option<String> {
    r.signature.as_ref()?;
    match r.kind {
        RecordKind::RequestOut | RecordKind::ResponseOut | RecordKind::Refusal => {
            Some(node.to_string())
        }
        RecordKind::RequestIn | RecordKind::ResponseIn => r.peer.clone(),
    }
}

fn verify_record(r: &Record, key: &[u8]) -> Result<(), String> {
    let method: Method = r
        .method
        .as_deref()
        .unwrap_or("GET")
        .parse()
        .map_err(|_| "method".to_string())?;
    let uri: Uri = r
        .target
        .as_deref()
        .ok_or("the record has no target")?
        .parse()
        .map_err(|_| "target".to_string())?;
    let at = r.at.unix_timestamp();
    let lookup = |_: &str| -> Result<Vec<u8>, Problem> { Ok(key.to_vec()) };
    let message_id = Some(r.message_id.as_str());
    match r.kind {
        RecordKind::RequestOut | RecordKind::RequestIn => {
            let headers = header_map(
                &[
                    (signature::CONTENT_DIGEST, r.request_digest.as_deref()),
                    (signature::SIGNATURE_INPUT, r.signature_input.as_deref()),
                    (signature::SIGNATURE, r.signature.as_deref()),
                ],
                &r.headers,
            )?;
            verify_request_head(&method, &uri, &headers, at, key)?;
        }
        _ => {
            let status = StatusCode::from_u16(r.status).map_err(|_| "status".to_string())?;
            let response = header_map(
                &[
                    (signature::CONTENT_DIGEST, r.response_digest.as_deref()),
                    (signature::SIGNATURE_INPUT, r.signature_input.as_deref()),
                    (signature::SIGNATURE, r.signature.as_deref()),
                    ("enlace-message-id", message_id),
                ],
                &r.headers,
            )?;
            let request = header_map(
                &[
                    (signature::CONTENT_DIGEST, r.request_digest.as_deref()),
                    ("enlace-message-id", message_id),
                ],
                &[],
            )?;
            let expected = Expected {
                required: signature::RESPONSE_COMPONENTS,
                tag: signature::RESPONSE_TAG,
                now: at,
                max_skew_secs: 300,
            };
            let (input, sig) = signature::signature_headers(&response).map_err(|p| p.detail)?;
            let ctx = MessageContext::response(
                Message::response(status, &response),
                Message::request(&method, &uri, &request),
            );
            signature::verify(&input, &sig, &ctx, &expected, lookup).map_err(|p| p.detail)?;
        }
    }
    Ok(())
}

/// Verifies a REST request head (its signature, tag `enlace-request`) with `key`, the clock at
/// `at`.
fn verify_request_head(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    at: i64,
    key: &[u8],
) -> Result<(), String> {
    let lookup = |_: &str| -> Result<Vec<u8>, Problem> { Ok(key.to_vec()) };
    let required = signature::request_components(headers);
    let expected = Expected {
        required: &required,
        tag: signature::REQUEST_TAG,
        now: at,
        max_skew_secs: 300,
    };
    let (input, sig) = signature::signature_headers(headers).map_err(|p| p.detail)?;
    signature::verify(
        &input,
        &sig,
        &MessageContext::request(Message::request(method, uri, headers)),
        &expected,
        lookup,
    )
    .map_err(|p| p.detail)?;
    Ok(())
}

/// What a REST refusal says of the request it kept as the peer node sent it (prefixed
/// `request-`): whether its signature verifies. Told, never held against the evidence: a bad
/// signature may be why it was refused. `None` when no request signature was kept.
fn refused_request_line(r: &Record, key_of: &grpc_evidence::KeyOf<'_>) -> Option<String> {
    let kept: Vec<(String, String)> = r
        .headers
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(crate::relay::REFUSED_REQUEST_PREFIX)?;
            Some((name.to_string(), v.clone()))
        })
        .collect();
    if !kept.iter().any(|(k, _)| k == signature::SIGNATURE) {
        return None;
    }
    let what = "the refused request as the peer node sent it";
    let Some(peer) = r.peer.as_deref() else {
        return Some(format!(
            "{what}: no peer node known, its signature not checked"
        ));
    };
    // The peer's key first: without it nothing can be said of the signature.
    let key = match key_of(peer, r.at) {
        Ok(key) => key,
        Err(e) => return Some(format!("{what}: its signature not checked: {e}")),
    };
    let checked = (|| {
        let method: Method = r
            .method
            .as_deref()
            .unwrap_or("GET")
            .parse()
            .map_err(|_| "method")?;
        let uri: Uri = r
            .target
            .as_deref()
            .ok_or("no target")?
            .parse()
            .map_err(|_| "target")?;
        let headers = header_map(&[], &kept)?;
        verify_request_head(&method, &uri, &headers, r.at.unix_timestamp(), &key)
    })();
    Some(match checked {
        Ok(()) => format!("{what}: RFC 9421 signature of {peer} verifies"),
        Err(e) => format!(
            "{what}: the signature of {peer} does not verify ({e}); a bad signature may be why \
             it was refused"
        ),
    })
}

/// Reads a bundle file.
pub fn read(path: &Path) -> Result<Bundle, Problem> {
    let bytes = std::fs::read(path).map_err(|e| {
        Problem::new(
            ProblemKind::InvalidRequest,
            format!("{}: {e}", path.display()),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Problem::new(
            ProblemKind::InvalidRequest,
            format!("{}: not an evidence bundle: {e}", path.display()),
        )
    })
}
