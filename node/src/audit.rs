//! `enlace audit`: checks access-log evidence from outside the registry, offline. A record's
//! evidence (the record, its inclusion proof, the signed tree head, the node's signing
//! certificate, the CRL) or two heads' (both heads and the consistency proof) is saved from the
//! registry once (`enlace audit evidence`) and verified later with nothing but the federation
//! CA (`enlace audit verify --evidence`): each signer certificate must chain to the CA, name the
//! registry or the node, be unrevoked by the saved CRL and valid when it signed; the tree head's
//! and the record's signatures must verify; the proof must lead to the signed root.

use base64::Engine;
use enlace_certs::TrustStore;
use enlace_core::evidence::{
    ACCESS_EVIDENCE_FORMAT, AccessEvidence, CONSISTENCY_EVIDENCE_FORMAT, ConsistencyEvidence,
    LOG_HEAD_EVIDENCE_FORMAT, LogHeadEvidence, PublishedTreeHead,
};
use enlace_core::merkle::{Hash, SignedTreeHead};
use enlace_core::problem::{Problem, ProblemKind};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The URI prefix of the registry's signing certificate.
const REGISTRY_URI_PREFIX: &str = "urn:enlace:registry:";
/// Largest evidence document read.
pub const MAX_EVIDENCE_BYTES: usize = 1024 * 1024;

/// What was verified, one sentence a line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

fn failed(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::SignatureInvalid, detail)
}

fn time_of(what: &str, at: &str) -> Result<OffsetDateTime, Problem> {
    OffsetDateTime::parse(at, &Rfc3339)
        .map_err(|_| failed(format!("{what}: `{at}` is not an RFC 3339 time")))
}

/// Checks a tree head: its certificate (CA, CRL, registry URI, valid when the head was signed)
/// and its signature; returns its root.
fn checked_head(
    trust: &TrustStore,
    published: &PublishedTreeHead,
    report: &mut Report,
) -> Result<Hash, Problem> {
    let head: &SignedTreeHead = &published.tree_head;
    let instance = head
        .signer
        .strip_prefix(REGISTRY_URI_PREFIX)
        .ok_or_else(|| {
            failed(format!(
                "the head's signer `{}` is not a registry",
                head.signer
            ))
        })?;
    let instance: enlace_core::id::Instance = instance.parse()?;
    let expected = enlace_certs::registry_uri(&instance);
    let signed_at = time_of("the tree head's timestamp", &head.timestamp)?;
    let key =
        enlace_certs::verify_signer(trust, &published.signer_certificate, &expected, signed_at)
            .map_err(|p| failed(format!("the tree head's signer: {}", p.detail)))?;
    let sig = base64::engine::general_purpose::STANDARD
        .decode(&head.signature_b64)
        .map_err(|_| failed("the tree head's signature is not base64"))?;
    if !enlace_certs::verify_ed25519(&key, head.signed_text().as_bytes(), &sig) {
        return Err(failed(format!(
            "the signature of the tree head of size {} does not verify",
            head.tree_size
        )));
    }
    let root = head
        .root_hash()
        .ok_or_else(|| failed("the tree head's root is not 64 hex digits"))?;
    report.lines.push(format!(
        "tree head of size {} (root {}, {}) signed by {expected}, whose certificate chains to the CA, was valid then and is not revoked",
        head.tree_size, head.root_hash_hex, head.timestamp
    ));
    Ok(root)
}

fn trust(ca_pem: &str, crl: &str) -> Result<TrustStore, Problem> {
    TrustStore::new(&[ca_pem.to_string()], Some(crl))
        .map_err(|p| failed(format!("the CA or the saved CRL: {}", p.detail)))
}

/// Verifies a record's evidence against the federation CA `ca_pem`, with no network: the tree
/// head, the inclusion proof (the leaf recomputed from the record), and the node's signature on
/// the record with its signing certificate of the record's time.
pub fn verify_access_evidence(e: &AccessEvidence, ca_pem: &str) -> Result<Report, Problem> {
    if e.format != ACCESS_EVIDENCE_FORMAT {
        return Err(failed(format!("unknown evidence format `{}`", e.format)));
    }
    let trust = trust(ca_pem, &e.crl)?;
    let mut report = Report::default();
    let root = checked_head(&trust, &e.tree_head, &mut report)?;
    let r = &e.record.record;
    if e.proof.tree_size != e.tree_head.tree_head.tree_size {
        return Err(failed(format!(
            "the proof is for a tree of {} leaves, the head for {}",
            e.proof.tree_size, e.tree_head.tree_head.tree_size
        )));
    }
    if !e.proof.verify(&e.record.leaf_hash(), &root) {
        return Err(failed(format!(
            "the inclusion proof of {} does not lead to the signed root: the record or the log was altered",
            r.message_id
        )));
    }
    report.lines.push(format!(
        "record {} ({} about {}, {}) is leaf {} of the tree of {} leaves: the inclusion proof leads to the signed root",
        r.message_id, r.consumer_member, r.subject, r.result, e.proof.leaf_index, e.proof.tree_size
    ));
    let node: enlace_core::id::NodeId = r.node.parse()?;
    let at = time_of("the record's time", &r.at)?;
    let key = enlace_certs::verify_signer(&trust, &e.node_signing_certificate, &node.uri(), at)
        .map_err(|p| failed(format!("the node's signing certificate: {}", p.detail)))?;
    let signed = e
        .record
        .signature()
        .is_some_and(|sig| enlace_certs::verify_ed25519(&key, &r.signed_bytes(), &sig));
    if !signed {
        return Err(failed(format!(
            "the record's signature does not verify with {node}'s signing key"
        )));
    }
    report.lines.push(format!(
        "the record is signed by {node}, whose signing certificate chains to the CA and was valid at {}",
        r.at
    ));
    Ok(report)
}

/// Verifies two saved heads and the consistency proof between them, with no network.
pub fn verify_consistency_evidence(
    e: &ConsistencyEvidence,
    ca_pem: &str,
) -> Result<Report, Problem> {
    if e.format != CONSISTENCY_EVIDENCE_FORMAT {
        return Err(failed(format!("unknown evidence format `{}`", e.format)));
    }
    let trust = trust(ca_pem, &e.crl)?;
    let mut report = Report::default();
    let root1 = checked_head(&trust, &e.first, &mut report)?;
    let root2 = checked_head(&trust, &e.second, &mut report)?;
    let (from, to) = (e.first.tree_head.tree_size, e.second.tree_head.tree_size);
    if e.proof.tree_size_1 != from || e.proof.tree_size_2 != to || !e.proof.verify(&root1, &root2) {
        return Err(failed(format!(
            "the consistency proof from {from} to {to} leaves does not verify: the log was rewritten"
        )));
    }
    report.lines.push(format!(
        "the tree of {to} leaves extends the tree of {from} leaves: the consistency proof verifies"
    ));
    Ok(report)
}

/// Verifies that a node's anchored log head is a leaf of a signed tree head, with no network.
pub fn verify_log_head_evidence(e: &LogHeadEvidence, ca_pem: &str) -> Result<Report, Problem> {
    if e.format != LOG_HEAD_EVIDENCE_FORMAT {
        return Err(failed(format!("unknown evidence format `{}`", e.format)));
    }
    let trust = trust(ca_pem, &e.crl)?;
    let mut report = Report::default();
    let root = checked_head(&trust, &e.tree_head, &mut report)?;
    let entry = serde_json::to_vec(&e.head).map_err(|e| failed(e.to_string()))?;
    let leaf = enlace_core::merkle::leaf_hash(&entry);
    if e.proof.tree_size != e.tree_head.tree_head.tree_size || !e.proof.verify(&leaf, &root) {
        return Err(failed(format!(
            "the log head of {} at seq {} is not in the signed tree",
            e.head.node, e.head.seq
        )));
    }
    report.lines.push(format!(
        "{}'s log head at seq {} ({}) is leaf {} of the tree of {} leaves",
        e.head.node, e.head.seq, e.head.hash_hex, e.proof.leaf_index, e.proof.tree_size
    ));
    Ok(report)
}

/// Saved evidence of any kind, as read from a file.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Evidence {
    Access(Box<AccessEvidence>),
    Consistency(ConsistencyEvidence),
    LogHead(LogHeadEvidence),
}

impl Evidence {
    /// Parses saved evidence by its `format`.
    pub fn parse(bytes: &[u8]) -> Result<Evidence, Problem> {
        if bytes.len() > MAX_EVIDENCE_BYTES {
            return Err(failed(format!(
                "the evidence is larger than {MAX_EVIDENCE_BYTES} bytes"
            )));
        }
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| failed(format!("the evidence is not JSON: {e}")))?;
        let bad = |e: serde_json::Error| failed(format!("the evidence is malformed: {e}"));
        match v["format"].as_str() {
            Some(ACCESS_EVIDENCE_FORMAT) => Ok(Evidence::Access(Box::new(
                serde_json::from_value(v).map_err(bad)?,
            ))),
            Some(CONSISTENCY_EVIDENCE_FORMAT) => Ok(Evidence::Consistency(
                serde_json::from_value(v).map_err(bad)?,
            )),
            Some(LOG_HEAD_EVIDENCE_FORMAT) => {
                Ok(Evidence::LogHead(serde_json::from_value(v).map_err(bad)?))
            }
            other => Err(failed(format!("unknown evidence format {other:?}"))),
        }
    }

    /// Verifies it against the federation CA, offline.
    pub fn verify(&self, ca_pem: &str) -> Result<Report, Problem> {
        match self {
            Evidence::Access(e) => verify_access_evidence(e, ca_pem),
            Evidence::Consistency(e) => verify_consistency_evidence(e, ca_pem),
            Evidence::LogHead(e) => verify_log_head_evidence(e, ca_pem),
        }
    }
}

/// The registry at `registry` with the federation CA `ca_pem`: fetches evidence, which is then
/// checked exactly as saved evidence is.
pub struct Auditor {
    registry: String,
    ca_pem: String,
    http: reqwest::Client,
}

impl Auditor {
    pub fn new(registry: &str, ca_pem: &str, http: reqwest::Client) -> Auditor {
        Auditor {
            registry: registry.trim_end_matches('/').to_string(),
            ca_pem: ca_pem.to_string(),
            http,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Result<Vec<u8>, Problem> {
        let mut req = self.http.get(format!("{}{path}", self.registry));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let unreachable = |e: String| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("the registry is unreachable: {e}"),
            )
        };
        let mut resp = req.send().await.map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        // Read at most what any answer needs: the evidence bound, which the largest (an
        // evidence document) must fit too.
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(e.to_string()))? {
            if bytes.len() + chunk.len() > MAX_EVIDENCE_BYTES {
                return Err(Problem::new(
                    ProblemKind::BodyTooLarge,
                    format!("GET {path}: the answer is larger than {MAX_EVIDENCE_BYTES} bytes"),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(Problem::new(
                ProblemKind::PeerUnreachable,
                format!(
                    "GET {path}: the registry answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            ));
        }
        Ok(bytes)
    }

    /// The evidence of the record with `message_id` (of `node`, when several nodes logged it),
    /// read with `token` (an admin's token, or the person's ID token).
    pub async fn fetch_access_evidence(
        &self,
        message_id: &str,
        node: Option<&str>,
        token: &str,
    ) -> Result<Evidence, Problem> {
        let mut path = format!(
            "/v1/access-log/evidence?message_id={}",
            urlencode(message_id)
        );
        if let Some(n) = node {
            path.push_str(&format!("&node={}", urlencode(n)));
        }
        let e = Evidence::parse(&self.get(&path, Some(token)).await?)?;
        match &e {
            Evidence::Access(a) if a.record.record.message_id == message_id => Ok(e),
            _ => Err(failed(
                "the registry served another record than the one asked for",
            )),
        }
    }

    /// The heads of sizes `from` and `to` and the consistency proof between them.
    pub async fn fetch_consistency_evidence(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Evidence, Problem> {
        let path = format!("/v1/access-log/evidence/consistency?from={from}&to={to}");
        let e = Evidence::parse(&self.get(&path, None).await?)?;
        match &e {
            Evidence::Consistency(c)
                if c.first.tree_head.tree_size == from && c.second.tree_head.tree_size == to =>
            {
                Ok(e)
            }
            _ => Err(failed("the registry served heads of other sizes")),
        }
    }

    /// Fetches a record's evidence and verifies it.
    pub async fn verify_inclusion(&self, message_id: &str, token: &str) -> Result<Report, Problem> {
        self.fetch_access_evidence(message_id, None, token)
            .await?
            .verify(&self.ca_pem)
    }

    /// Fetches two heads' evidence and verifies it.
    pub async fn verify_consistency(&self, from: u64, to: u64) -> Result<Report, Problem> {
        self.fetch_consistency_evidence(from, to)
            .await?
            .verify(&self.ca_pem)
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
