//! Nodes: registration, approval, certificate issuance, renewal (by an admin or by the node's
//! own proof) and revocation.

use enlace_core::id::NodeId;
use enlace_core::problem::{Problem, ProblemKind};
use time::OffsetDateTime;

use crate::model::{Approval, NodeRecord, PreviousCert, RevokedRecord, kind};

use super::{Actor, Registry, check_address, check_text, not_found, now, rfc3339, to_value};

impl Registry {
    pub async fn register_node(
        &self,
        actor: &Actor,
        id: NodeId,
        address: String,
        tls_csr: String,
        signing_csr: String,
    ) -> Result<NodeRecord, Problem> {
        Self::require_member(actor, &id.member)?;
        check_address(&address)?;
        // Refuse a bad CSR now rather than at approval.
        for csr in [&tls_csr, &signing_csr] {
            enlace_certs::check_csr(csr)?;
        }
        let _w = self.write.lock().await;
        self.member(&id.member)?;
        if self.store.get(kind::NODE, &id.to_string())?.is_some() {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("node {id} is already registered"),
            ));
        }
        let rec = NodeRecord {
            id,
            address,
            state: Approval::Pending,
            tls_csr,
            signing_csr,
            tls_certificate: None,
            signing_certificate: None,
            tls_serial: None,
            signing_serial: None,
            not_after: None,
            revoked: false,
            previous: Vec::new(),
            last_renewal_at: None,
        };
        self.commit(
            actor,
            "node.register",
            vec![(kind::NODE, rec.id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    /// Approves a node and issues its TLS and signing certificates.
    pub async fn approve_node(&self, actor: &Actor, id: &NodeId) -> Result<NodeRecord, Problem> {
        Self::require_federation_admin(actor)?;
        let _w = self.write.lock().await;
        let mut rec = self.node(id)?;
        if rec.state == Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("node {id} is already approved"),
            ));
        }
        self.issue_node_certs(&mut rec)?;
        rec.state = Approval::Approved;
        self.commit(
            actor,
            "node.approve",
            vec![(kind::NODE, id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    /// Renews an approved node's certificates from new CSRs. The old ones stay valid until
    /// they expire, so a node can roll over without a gap, unless `revoke_previous` names a
    /// reason (a key thought compromised): then they go into the CRL at once.
    pub async fn renew_node(
        &self,
        actor: &Actor,
        id: &NodeId,
        tls_csr: String,
        signing_csr: String,
        revoke_previous: Option<String>,
    ) -> Result<NodeRecord, Problem> {
        Self::require_member(actor, &id.member)?;
        self.renew(
            &actor.label(),
            id,
            tls_csr,
            signing_csr,
            revoke_previous,
            None,
        )
        .await
    }

    /// A node renewing its own certificates, proving it holds its current signing key: the
    /// proof signs [`enlace_core::renewal::proof_text`] and `at` must be fresh and later than the last
    /// renewal's (no replays). Audited as `node:<id>`.
    pub async fn renew_node_by_proof(
        &self,
        id: &NodeId,
        tls_csr: String,
        signing_csr: String,
        at: String,
        signature_b64: String,
    ) -> Result<NodeRecord, Problem> {
        let proof = RenewalProof { at, signature_b64 };
        self.renew(
            &format!("node:{id}"),
            id,
            tls_csr,
            signing_csr,
            None,
            Some(proof),
        )
        .await
    }

    async fn renew(
        &self,
        who: &str,
        id: &NodeId,
        tls_csr: String,
        signing_csr: String,
        revoke_previous: Option<String>,
        proof: Option<RenewalProof>,
    ) -> Result<NodeRecord, Problem> {
        if let Some(reason) = &revoke_previous {
            check_text("reason", reason, 1000)?;
        }
        for csr in [&tls_csr, &signing_csr] {
            enlace_certs::check_csr(csr)?;
        }
        let _w = self.write.lock().await;
        let mut rec = self.node(id)?;
        if rec.state != Approval::Approved || rec.revoked {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("node {id} is not an approved, unrevoked node"),
            ));
        }
        if let Some(proof) = &proof {
            self.check_renewal_proof(&rec, proof, &tls_csr, &signing_csr)?;
            rec.last_renewal_at = Some(proof.at.clone());
        }
        rec.tls_csr = tls_csr;
        rec.signing_csr = signing_csr;
        self.issue_node_certs(&mut rec)?;
        let revoked = match &revoke_previous {
            Some(reason) => revoke_previous_certs(&mut rec, reason)?,
            None => Vec::new(),
        };
        let mut puts = vec![(kind::NODE, id.to_string(), to_value(&rec)?)];
        puts.extend(revoked);
        self.commit_as(who, "node.renew", puts, vec![]).await?;
        Ok(rec)
    }

    /// The proof of a node's own renewal: signed by the signing key of its current certificate
    /// (valid, unrevoked), over the node, a fresh time and both CSRs.
    fn check_renewal_proof(
        &self,
        rec: &NodeRecord,
        proof: &RenewalProof,
        tls_csr: &str,
        signing_csr: &str,
    ) -> Result<(), Problem> {
        let refused = |d: String| Problem::new(ProblemKind::Unauthenticated, d);
        let at = OffsetDateTime::parse(&proof.at, &time::format_description::well_known::Rfc3339)
            .map_err(|_| refused("proof.at: not an RFC 3339 time".into()))?;
        if (now() - at).abs() > time::Duration::minutes(5) {
            return Err(refused(format!(
                "proof.at {} is more than 5 minutes from the registry's clock",
                proof.at
            )));
        }
        if let Some(last) = rec.last_renewal_at.as_deref().and_then(|l| {
            OffsetDateTime::parse(l, &time::format_description::well_known::Rfc3339).ok()
        }) && at <= last
        {
            return Err(refused(format!(
                "proof.at {} is not after the last renewal's ({}): a replayed renewal",
                proof.at,
                rec.last_renewal_at.as_deref().unwrap_or("")
            )));
        }
        let cert = rec
            .signing_certificate
            .as_deref()
            .ok_or_else(|| refused(format!("node {} has no signing certificate", rec.id)))?;
        let trust = enlace_certs::TrustStore::new(
            &[self.ca.cert_pem().to_string()],
            Some(&self.current_config().crl),
        )?;
        let key = enlace_certs::verify_signer(&trust, cert, &rec.id.uri(), now())
            .map_err(|p| refused(format!("the node's signing certificate: {}", p.detail)))?;
        let sig = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            &proof.signature_b64,
        )
        .map_err(|_| refused("proof.signature: not base64".into()))?;
        let text = enlace_core::renewal::proof_text(&rec.id, &proof.at, tls_csr, signing_csr);
        if !enlace_certs::verify_ed25519(&key, text.as_bytes(), &sig) {
            return Err(refused(
                "proof.signature does not verify with the node's current signing key".into(),
            ));
        }
        Ok(())
    }

    fn issue_node_certs(&self, rec: &mut NodeRecord) -> Result<(), Problem> {
        // Remember what is replaced, while it can still be used; forget what has expired.
        let now_s = rfc3339(now());
        rec.previous.retain(|p| p.not_after > now_s);
        if let Some(not_after) = &rec.not_after {
            let signing = rec.signing_certificate.clone();
            for (serial, purpose, certificate) in [
                (&rec.tls_serial, "tls", None),
                (&rec.signing_serial, "signing", signing),
            ] {
                if let Some(serial) = serial {
                    rec.previous.push(PreviousCert {
                        serial_hex: serial.clone(),
                        purpose: purpose.into(),
                        not_after: not_after.clone(),
                        revoked: false,
                        certificate,
                    });
                }
            }
        }
        let validity = self.settings.node_cert_validity;
        let tls = self.ca.issue_node_tls(&rec.tls_csr, &rec.id, validity)?;
        let signing = self
            .ca
            .issue_node_signing(&rec.signing_csr, &rec.id, validity)?;
        rec.not_after = Some(rfc3339(tls.not_after.min(signing.not_after)));
        rec.tls_certificate = Some(tls.pem);
        rec.signing_certificate = Some(signing.pem);
        rec.tls_serial = Some(tls.serial_hex);
        rec.signing_serial = Some(signing.serial_hex);
        Ok(())
    }

    /// Revokes both of a node's certificates; the next configuration carries them in the CRL.
    pub async fn revoke_node(
        &self,
        actor: &Actor,
        id: &NodeId,
        reason: String,
    ) -> Result<NodeRecord, Problem> {
        if *actor != Actor::FederationAdmin {
            Self::require_member(actor, &id.member)?;
        }
        check_text("reason", &reason, 1000)?;
        let _w = self.write.lock().await;
        let mut rec = self.node(id)?;
        if rec.revoked || rec.state != Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("node {id} has no certificates to revoke"),
            ));
        }
        rec.revoked = true;
        let at = rfc3339(now());
        let mut revoked = revoke_previous_certs(&mut rec, &reason)?;
        for serial in [&rec.tls_serial, &rec.signing_serial].into_iter().flatten() {
            let r = RevokedRecord {
                serial_hex: serial.clone(),
                node: id.clone(),
                revoked_at: at.clone(),
                reason: reason.clone(),
            };
            revoked.push((kind::REVOKED, serial.clone(), to_value(&r)?));
        }
        let mut puts = vec![(kind::NODE, id.to_string(), to_value(&rec)?)];
        puts.extend(revoked);
        self.commit(actor, "node.revoke", puts, vec![]).await?;
        Ok(rec)
    }

    pub fn node(&self, id: &NodeId) -> Result<NodeRecord, Problem> {
        self.get(kind::NODE, &id.to_string())?
            .ok_or_else(|| not_found("node", &id.to_string()))
    }
}

/// Revocation entries for a node's replaced certificates that are still valid and not yet
/// revoked, marking them revoked in `rec`.
fn revoke_previous_certs(
    rec: &mut NodeRecord,
    reason: &str,
) -> Result<Vec<(&'static str, String, serde_json::Value)>, Problem> {
    let at = rfc3339(now());
    let mut out = Vec::new();
    for p in rec
        .previous
        .iter_mut()
        .filter(|p| !p.revoked && p.not_after > at)
    {
        p.revoked = true;
        let r = RevokedRecord {
            serial_hex: p.serial_hex.clone(),
            node: rec.id.clone(),
            revoked_at: at.clone(),
            reason: reason.to_string(),
        };
        out.push((kind::REVOKED, p.serial_hex.clone(), to_value(&r)?));
    }
    Ok(out)
}

/// A node's proof that it renews its own certificates.
struct RenewalProof {
    at: String,
    signature_b64: String,
}
