//! `enlace audit verify`: checks, from outside the registry, that a signed tree head is the
//! registry's (its certificate chains to the federation CA, is not revoked, and names
//! `urn:enlace:registry:INSTANCE`), then that an access record is in the tree it commits to, or
//! that two heads are consistent (the later tree extends the earlier one).

use base64::Engine;
use enlace_certs::TrustStore;
use enlace_core::access::SignedAccessRecord;
use enlace_core::merkle::{ConsistencyProof, Hash, InclusionProof, SignedTreeHead};
use enlace_core::problem::{Problem, ProblemKind};
use serde::Deserialize;

/// The URI prefix of the registry's signing certificate.
const REGISTRY_URI_PREFIX: &str = "urn:enlace:registry:";

/// What was verified, one sentence a line.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lines: Vec<String>,
}

#[derive(Deserialize)]
struct Published {
    tree_head: SignedTreeHead,
    signer_certificate: String,
}

#[derive(Deserialize)]
struct RecordProof {
    record: serde_json::Value,
    proof: InclusionProof,
}

fn failed(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::SignatureInvalid, detail)
}

/// The registry at `registry` with the federation CA `ca_pem`: the client and the trust it is
/// checked against.
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

    async fn get(&self, path: &str, token: Option<&str>) -> Result<reqwest::Response, Problem> {
        let mut req = self.http.get(format!("{}{path}", self.registry));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            Problem::new(
                ProblemKind::PeerUnreachable,
                format!("the registry is unreachable: {e}"),
            )
        })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(Problem::new(
                ProblemKind::PeerUnreachable,
                format!("GET {path}: the registry answered {status}: {text}"),
            ));
        }
        Ok(resp)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<T, Problem> {
        let bytes =
            self.get(path, token).await?.bytes().await.map_err(|e| {
                Problem::new(ProblemKind::PeerUnreachable, format!("GET {path}: {e}"))
            })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| failed(format!("GET {path}: not the expected document: {e}")))
    }

    /// Checks a served head: its certificate (CA, CRL, registry URI) and its signature; returns
    /// the head and its root.
    async fn checked_head(
        &self,
        path: &str,
        report: &mut Report,
    ) -> Result<(SignedTreeHead, Hash), Problem> {
        let published: Published = self.json(path, None).await?;
        let crl =
            self.get("/v1/crl", None).await?.text().await.map_err(|e| {
                Problem::new(ProblemKind::PeerUnreachable, format!("GET /v1/crl: {e}"))
            })?;
        let trust = TrustStore::new(std::slice::from_ref(&self.ca_pem), Some(&crl))?;
        let head = published.tree_head;
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
        let key = enlace_certs::verify_signer(
            &trust,
            &published.signer_certificate,
            &expected,
            time::OffsetDateTime::now_utc(),
        )
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
            "tree head of size {} (root {}, {}) signed by {expected}, whose certificate chains to the CA and is not revoked",
            head.tree_size, head.root_hash_hex, head.timestamp
        ));
        Ok((head, root))
    }

    /// The latest signed head, then the record with `message_id` and its inclusion proof
    /// against it (the leaf hash recomputed from the record served). `token` authorises the
    /// read of the record (an admin's or the person's).
    pub async fn verify_inclusion(&self, message_id: &str, token: &str) -> Result<Report, Problem> {
        let mut report = Report::default();
        let (head, root) = self
            .checked_head("/v1/access-log/tree-head", &mut report)
            .await?;
        let path = format!(
            "/v1/access-log/proof/inclusion?message_id={}&size={}",
            urlencode(message_id),
            head.tree_size
        );
        let served: RecordProof = self.json(&path, Some(token)).await?;
        let record: SignedAccessRecord = serde_json::from_value(served.record)
            .map_err(|e| failed(format!("the record served is not an access record: {e}")))?;
        if record.record.message_id != message_id {
            return Err(failed(
                "the registry served another record than the one asked for",
            ));
        }
        if served.proof.tree_size != head.tree_size {
            return Err(failed(format!(
                "the proof is for a tree of {} leaves, the head for {}",
                served.proof.tree_size, head.tree_size
            )));
        }
        let leaf = record.leaf_hash();
        if !served.proof.verify(&leaf, &root) {
            return Err(failed(format!(
                "the inclusion proof of {message_id} does not lead to the signed root"
            )));
        }
        report.lines.push(format!(
            "record {message_id} ({} about {}, {}) is leaf {} of the tree of {} leaves: the inclusion proof leads to the signed root",
            record.record.consumer_member,
            record.record.subject,
            record.record.result,
            served.proof.leaf_index,
            head.tree_size
        ));
        Ok(report)
    }

    /// The signed heads of sizes `from` and `to`, and the consistency proof between them.
    pub async fn verify_consistency(&self, from: u64, to: u64) -> Result<Report, Problem> {
        let mut report = Report::default();
        let (_, root1) = self
            .checked_head(
                &format!("/v1/access-log/tree-heads?size={from}"),
                &mut report,
            )
            .await?;
        let (_, root2) = self
            .checked_head(&format!("/v1/access-log/tree-heads?size={to}"), &mut report)
            .await?;
        let proof: ConsistencyProof = self
            .json(
                &format!("/v1/access-log/proof/consistency?from={from}&to={to}"),
                None,
            )
            .await?;
        if proof.tree_size_1 != from || proof.tree_size_2 != to || !proof.verify(&root1, &root2) {
            return Err(failed(format!(
                "the consistency proof from {from} to {to} leaves does not verify: the log was rewritten"
            )));
        }
        report.lines.push(format!(
            "the tree of {to} leaves extends the tree of {from} leaves: the consistency proof verifies"
        ));
        Ok(report)
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
