//! The registry's operations: each checks who acts, validates, and commits one change with its
//! audit entry; afterwards the signed configuration is reissued.

use std::sync::Arc;

use enlace_certs::FederationCa;
use enlace_core::config::{GlobalConfig, MemberEntry, NodeEntry, ServiceEntry};
use enlace_core::contract::{
    Contract, ContractAction, ContractState, ContractTerms, FieldClass, Party,
};
use enlace_core::id::{
    ConceptId, ContractId, Instance, MemberId, NodeId, ServiceId, ServiceVersion, SubsystemId,
};
use enlace_core::problem::{Problem, ProblemKind};
use enlace_description::Description;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

use crate::model::{
    Approval, ConceptRecord, MemberRecord, NodeRecord, PreviousCert, RevokedRecord, ServiceRecord,
    SubsystemRecord, TokenRecord, kind,
};
use crate::publish::{self, Published};
use crate::store::{AuditEntry, Change, Store, StoreError};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    FederationAdmin,
    MemberAdmin(MemberId),
}

impl Actor {
    pub fn label(&self) -> String {
        match self {
            Actor::FederationAdmin => "federation-admin".into(),
            Actor::MemberAdmin(m) => format!("member-admin:{m}"),
        }
    }
    fn party(&self) -> Party {
        match self {
            Actor::FederationAdmin => Party::FederationAdmin,
            Actor::MemberAdmin(m) => Party::MemberAdmin(m.clone()),
        }
    }
}

/// Settings the registry runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub instance: Instance,
    /// How long a signed configuration is valid.
    pub config_validity: time::Duration,
    /// How long node certificates are valid.
    pub node_cert_validity: time::Duration,
    /// The longest a person's authorisation (consent) token is valid.
    pub consent_validity: time::Duration,
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn internal(e: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %e, "registry internal error");
    Problem::new(
        ProblemKind::Internal,
        "the registry failed; the change was not made",
    )
}

impl From<StoreError> for Problem {
    fn from(e: StoreError) -> Self {
        internal(e)
    }
}

fn forbidden(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::Forbidden, detail)
}

fn not_found(what: &str, id: &str) -> Problem {
    Problem::new(
        ProblemKind::NotFound,
        format!("{what} {id} is not registered"),
    )
    .with("id", id)
}

/// The registry: storage, the federation CA, the configuration signer, and the serial writer.
pub struct Registry {
    pub(crate) store: Arc<dyn Store>,
    /// Serialises changes so that check-then-commit is consistent.
    pub(crate) write: Mutex<()>,
    pub(crate) ca: FederationCa,
    pub(crate) signer: Mutex<publish::Signer>,
    pub(crate) settings: Settings,
    pub(crate) published: watch::Sender<Arc<Published>>,
    admin_token_hash: String,
    /// The access log, attached by [`crate::start`] (absent in a registry built for a test of
    /// other operations).
    access_log: std::sync::OnceLock<Arc<crate::access_log::AccessLog>>,
    /// OpenID Connect for the citizen API, attached by [`crate::start`] when configured.
    pub(crate) oidc: std::sync::OnceLock<Arc<crate::oidc::Oidc>>,
    /// In-memory indexes of the citizen side (hidings, authorisations, signing keys).
    pub(crate) caches: crate::caches::Caches,
}

pub fn token_hash(token: &str) -> String {
    enlace_description::sha256_hex(token.as_bytes())
}

impl Registry {
    pub fn new(
        store: Arc<dyn Store>,
        ca: FederationCa,
        signer: publish::Signer,
        settings: Settings,
        admin_token: &str,
    ) -> Result<Arc<Registry>, Problem> {
        let (published, _) = watch::channel(Arc::new(Published::empty()));
        let reg = Arc::new(Registry {
            store,
            write: Mutex::new(()),
            ca,
            signer: Mutex::new(signer),
            settings,
            published,
            admin_token_hash: token_hash(admin_token),
            access_log: std::sync::OnceLock::new(),
            oidc: std::sync::OnceLock::new(),
            caches: Default::default(),
        });
        Ok(reg)
    }

    /// Attaches the access log; a second call is ignored.
    pub fn attach_access_log(&self, log: Arc<crate::access_log::AccessLog>) {
        let _ = self.access_log.set(log);
    }

    /// The access log, or a problem when none is attached.
    pub fn access_log(&self) -> Result<&Arc<crate::access_log::AccessLog>, Problem> {
        self.access_log
            .get()
            .ok_or_else(|| Problem::new(ProblemKind::NotFound, "this registry keeps no access log"))
    }

    pub fn instance(&self) -> &Instance {
        &self.settings.instance
    }

    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// Resolves a bearer token to an actor.
    pub fn authenticate(&self, token: &str) -> Result<Actor, Problem> {
        if token.is_empty() || token.len() > 256 {
            return Err(Problem::new(
                ProblemKind::Unauthenticated,
                "missing or malformed bearer token",
            ));
        }
        let hash = token_hash(token);
        if constant_time_eq(hash.as_bytes(), self.admin_token_hash.as_bytes()) {
            return Ok(Actor::FederationAdmin);
        }
        match self.get::<TokenRecord>(kind::TOKEN, &hash)? {
            Some(t) if t.revoked_at.is_some() => Err(Problem::new(
                ProblemKind::Unauthenticated,
                "this token was revoked",
            )),
            Some(t) => Ok(Actor::MemberAdmin(t.member)),
            None => Err(Problem::new(
                ProblemKind::Unauthenticated,
                "unknown bearer token",
            )),
        }
    }

    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        kind: &str,
        id: &str,
    ) -> Result<Option<T>, Problem> {
        match self.store.get(kind, id)? {
            Some(v) => Ok(Some(serde_json::from_value(v).map_err(internal)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn list<T: DeserializeOwned>(&self, kind: &str) -> Result<Vec<T>, Problem> {
        self.store
            .list(kind)?
            .into_iter()
            .map(|v| serde_json::from_value(v).map_err(internal))
            .collect()
    }

    /// Commits `puts` with one audit entry per put (before/after), then reissues the configuration.
    pub(crate) async fn commit(
        &self,
        actor: &Actor,
        action: &str,
        puts: Vec<(&'static str, String, Value)>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Problem> {
        self.commit_as(&actor.label(), action, puts, blobs).await
    }

    /// [`Registry::commit`] for an actor named by its audit label (a node renewing itself).
    pub(crate) async fn commit_as(
        &self,
        who: &str,
        action: &str,
        puts: Vec<(&'static str, String, Value)>,
        blobs: Vec<(String, Vec<u8>)>,
    ) -> Result<(), Problem> {
        let at = rfc3339(now());
        let mut audit = Vec::new();
        for (k, id, after) in &puts {
            if *k == kind::TOKEN {
                // Token records are audited without their hash.
                audit.push(AuditEntry {
                    seq: 0,
                    at: at.clone(),
                    actor: who.to_string(),
                    action: action.into(),
                    object: after["member"].as_str().unwrap_or_default().into(),
                    outcome: "ok".into(),
                    before: None,
                    after: Some(serde_json::json!({"label": after["label"]})),
                });
                continue;
            }
            audit.push(AuditEntry {
                seq: 0,
                at: at.clone(),
                actor: who.to_string(),
                action: action.into(),
                object: id.clone(),
                outcome: "ok".into(),
                before: self.store.get(k, id)?,
                after: Some(after.clone()),
            });
        }
        self.store.commit(Change {
            puts,
            blobs,
            audit,
            settings: Vec::new(),
        })?;
        tracing::info!(actor = %who, action, "registry changed");
        self.publish().await
    }

    /// Records a refused request in the audit trail.
    pub fn audit_refusal(&self, actor: &str, action: &str, object: &str, problem: &Problem) {
        let entry = AuditEntry {
            seq: 0,
            at: rfc3339(now()),
            actor: actor.into(),
            action: action.into(),
            object: object.chars().take(256).collect(),
            outcome: problem.kind.slug().into(),
            before: None,
            after: Some(
                serde_json::json!({"detail": problem.detail.chars().take(1000).collect::<String>()}),
            ),
        };
        tracing::info!(actor, action, object, problem = problem.kind.slug(), detail = %problem.detail, "request refused");
        if let Err(e) = self.store.commit(Change {
            audit: vec![entry],
            ..Change::default()
        }) {
            tracing::error!(error = %e, "could not record a refusal");
        }
    }

    /// Records that `count` refusals of unknown callers in the last `window_secs` were
    /// counted rather than written one by one (their audit budget was spent).
    pub fn audit_summary(&self, count: u64, window_secs: u64) {
        let entry = AuditEntry {
            seq: 0,
            at: rfc3339(now()),
            actor: "unknown callers".into(),
            action: "refusals counted, not written one by one".into(),
            object: String::new(),
            outcome: "summarised".into(),
            before: None,
            after: Some(serde_json::json!({"refusals": count, "window_secs": window_secs})),
        };
        tracing::warn!(
            refusals = count,
            window_secs,
            "refusals of unknown callers over their audit budget, summarised"
        );
        if let Err(e) = self.store.commit(Change {
            audit: vec![entry],
            ..Change::default()
        }) {
            tracing::error!(error = %e, "could not record a refusal summary");
        }
    }

    pub fn audit_entries(
        &self,
        actor: &Actor,
        after: u64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, Problem> {
        let entries = self.store.audit(after, limit.min(1000))?;
        Ok(match actor {
            Actor::FederationAdmin => entries,
            Actor::MemberAdmin(m) => {
                let label = actor.label();
                let prefix = format!("{m}/");
                let me = m.to_string();
                entries
                    .into_iter()
                    .filter(|e| e.actor == label || e.object == me || e.object.starts_with(&prefix))
                    .collect()
            }
        })
    }

    pub(crate) fn require_federation_admin(actor: &Actor) -> Result<(), Problem> {
        match actor {
            Actor::FederationAdmin => Ok(()),
            _ => Err(forbidden("only the federation admin may do this")),
        }
    }

    fn require_member(actor: &Actor, member: &MemberId) -> Result<(), Problem> {
        match actor {
            Actor::MemberAdmin(m) if m == member => Ok(()),
            Actor::MemberAdmin(m) => Err(forbidden(format!(
                "the admin of {m} cannot act for {member}"
            ))),
            Actor::FederationAdmin => Err(forbidden(format!(
                "this is for the admin of {member}, not the federation admin"
            ))),
        }
    }

    fn require_instance(&self, member: &MemberId) -> Result<(), Problem> {
        if member.instance != self.settings.instance {
            return Err(Problem::new(
                ProblemKind::InvalidIdentifier,
                format!(
                    "member {member} is not of instance {}",
                    self.settings.instance
                ),
            ));
        }
        Ok(())
    }

    // ---- members and tokens ----

    pub async fn create_member(
        &self,
        actor: &Actor,
        id: MemberId,
        name: String,
    ) -> Result<MemberRecord, Problem> {
        Self::require_federation_admin(actor)?;
        self.require_instance(&id)?;
        check_text("name", &name, 200)?;
        let _w = self.write.lock().await;
        if self.store.get(kind::MEMBER, &id.to_string())?.is_some() {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("member {id} is already registered"),
            ));
        }
        let rec = MemberRecord {
            id,
            name,
            created_at: rfc3339(now()),
        };
        self.commit(
            actor,
            "member.create",
            vec![(kind::MEMBER, rec.id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    /// Issues a new admin token for a member; returns the token (shown once).
    pub async fn issue_member_token(
        &self,
        actor: &Actor,
        member: &MemberId,
        label: String,
    ) -> Result<String, Problem> {
        Self::require_federation_admin(actor)?;
        check_text("label", &label, 100)?;
        let _w = self.write.lock().await;
        self.member(member)?;
        let token = new_token();
        let rec = TokenRecord {
            hash: token_hash(&token),
            member: member.clone(),
            label,
            created_at: rfc3339(now()),
            revoked_at: None,
        };
        self.commit(
            actor,
            "member.token.issue",
            vec![(kind::TOKEN, rec.hash.clone(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(token)
    }

    /// A member's admin tokens (label, times; never the hash), for the federation admin or
    /// that member's admin.
    pub fn member_tokens(&self, actor: &Actor, member: &MemberId) -> Result<Vec<Value>, Problem> {
        if *actor != Actor::FederationAdmin {
            Self::require_member(actor, member)?;
        }
        let tokens: Vec<TokenRecord> = self.list(kind::TOKEN)?;
        Ok(tokens
            .into_iter()
            .filter(|t| &t.member == member)
            .map(|t| {
                serde_json::json!({"label": t.label, "created_at": t.created_at, "revoked_at": t.revoked_at})
            })
            .collect())
    }

    /// Revokes every unrevoked admin token of `member` labelled `label`: by the federation
    /// admin, or by that member's admin (a token thought leaked). Returns how many.
    pub async fn revoke_member_tokens(
        &self,
        actor: &Actor,
        member: &MemberId,
        label: &str,
    ) -> Result<usize, Problem> {
        if *actor != Actor::FederationAdmin {
            Self::require_member(actor, member)?;
        }
        let _w = self.write.lock().await;
        let at = rfc3339(now());
        let tokens: Vec<TokenRecord> = self.list(kind::TOKEN)?;
        let mut puts = Vec::new();
        for mut t in tokens
            .into_iter()
            .filter(|t| &t.member == member && t.label == label && t.revoked_at.is_none())
        {
            t.revoked_at = Some(at.clone());
            puts.push((kind::TOKEN, t.hash.clone(), to_value(&t)?));
        }
        if puts.is_empty() {
            return Err(not_found("token labelled", label));
        }
        let n = puts.len();
        self.commit(actor, "member.token.revoke", puts, vec![])
            .await?;
        Ok(n)
    }

    pub fn member(&self, id: &MemberId) -> Result<MemberRecord, Problem> {
        self.get(kind::MEMBER, &id.to_string())?
            .ok_or_else(|| not_found("member", &id.to_string()))
    }

    // ---- subsystems ----

    pub async fn register_subsystem(
        &self,
        actor: &Actor,
        id: SubsystemId,
    ) -> Result<SubsystemRecord, Problem> {
        Self::require_member(actor, &id.member)?;
        let _w = self.write.lock().await;
        self.member(&id.member)?;
        if self.store.get(kind::SUBSYSTEM, &id.to_string())?.is_some() {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("subsystem {id} is already registered"),
            ));
        }
        let rec = SubsystemRecord {
            id,
            state: Approval::Pending,
            created_at: rfc3339(now()),
        };
        self.commit(
            actor,
            "subsystem.register",
            vec![(kind::SUBSYSTEM, rec.id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    pub async fn approve_subsystem(
        &self,
        actor: &Actor,
        id: &SubsystemId,
    ) -> Result<SubsystemRecord, Problem> {
        Self::require_federation_admin(actor)?;
        let _w = self.write.lock().await;
        let mut rec = self.subsystem(id)?;
        if rec.state == Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("subsystem {id} is already approved"),
            ));
        }
        rec.state = Approval::Approved;
        self.commit(
            actor,
            "subsystem.approve",
            vec![(kind::SUBSYSTEM, id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    /// Withdraws an approved subsystem: it leaves the signed configuration, and nodes refuse
    /// its calls within seconds. By the federation admin or the admin of its member.
    pub async fn revoke_subsystem(
        &self,
        actor: &Actor,
        id: &SubsystemId,
        reason: String,
    ) -> Result<SubsystemRecord, Problem> {
        if *actor != Actor::FederationAdmin {
            Self::require_member(actor, &id.member)?;
        }
        check_text("reason", &reason, 1000)?;
        let _w = self.write.lock().await;
        let mut rec = self.subsystem(id)?;
        if rec.state != Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("subsystem {id} is not approved, so it cannot be revoked"),
            ));
        }
        rec.state = Approval::Revoked;
        self.commit(
            actor,
            "subsystem.revoke",
            vec![(kind::SUBSYSTEM, id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        tracing::info!(subsystem = %id, %reason, "subsystem revoked");
        Ok(rec)
    }

    pub fn subsystem(&self, id: &SubsystemId) -> Result<SubsystemRecord, Problem> {
        self.get(kind::SUBSYSTEM, &id.to_string())?
            .ok_or_else(|| not_found("subsystem", &id.to_string()))
    }

    fn approved_subsystem(&self, id: &SubsystemId) -> Result<SubsystemRecord, Problem> {
        let rec = self.subsystem(id)?;
        if rec.state != Approval::Approved {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!("subsystem {id} is not yet approved by the federation admin"),
            ));
        }
        Ok(rec)
    }

    // ---- nodes ----

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

    // ---- services ----

    /// Publishes a version of a service from a parsed description, refusing breaking changes
    /// within a major version.
    pub async fn publish_service(
        &self,
        actor: &Actor,
        id: ServiceId,
        version: ServiceVersion,
        description: Description,
    ) -> Result<ServiceRecord, Problem> {
        Self::require_member(actor, id.member())?;
        let _w = self.write.lock().await;
        self.approved_subsystem(&id.subsystem)?;
        let versions = self.service_versions(&id)?;
        if versions.iter().any(|v| v.version == version) {
            return Err(Problem::new(
                ProblemKind::AlreadyExists,
                format!("{id} {version} is already published; versions are immutable"),
            ));
        }
        if let Some(later) = versions
            .iter()
            .find(|v| v.version.major == version.major && v.version > version)
        {
            return Err(Problem::new(
                ProblemKind::InvalidTransition,
                format!(
                    "{id} {} is already published; publish minor versions in order",
                    later.version
                ),
            ));
        }
        let previous = versions
            .iter()
            .filter(|v| v.version < version)
            .max_by_key(|v| v.version);
        if let Some(prev) = previous
            && prev.version.major == version.major
        {
            let old = self.description(prev)?;
            let breaks = enlace_description::compatibility(&old, &description);
            if !breaks.is_empty() {
                return Err(Problem::new(
                    ProblemKind::IncompatibleVersion,
                    format!(
                        "{id} {version} breaks {} in {} place(s); publish it as v{}.0 instead",
                        prev.version,
                        breaks.len(),
                        version.major + 1
                    ),
                )
                .with("breaks", &breaks));
            }
        }
        let rec = ServiceRecord {
            id,
            version,
            kind: description.kind,
            digest: description.digest.clone(),
            published_at: rfc3339(now()),
            operations: description.operations.clone(),
        };
        let key = ServiceRecord::key(&rec.id, rec.version);
        self.commit(
            actor,
            "service.publish",
            vec![(kind::SERVICE, key, to_value(&rec)?)],
            vec![(description.digest.clone(), description.stored)],
        )
        .await?;
        Ok(rec)
    }

    pub fn services(&self) -> Result<Vec<ServiceRecord>, Problem> {
        self.list(kind::SERVICE)
    }

    pub fn service_versions(&self, id: &ServiceId) -> Result<Vec<ServiceRecord>, Problem> {
        let mut v: Vec<ServiceRecord> = self
            .services()?
            .into_iter()
            .filter(|s| &s.id == id)
            .collect();
        v.sort_by_key(|s| s.version);
        Ok(v)
    }

    pub fn service(
        &self,
        id: &ServiceId,
        version: ServiceVersion,
    ) -> Result<ServiceRecord, Problem> {
        self.get(kind::SERVICE, &ServiceRecord::key(id, version))?
            .ok_or_else(|| not_found("service version", &format!("{id} {version}")))
    }

    pub fn description(&self, rec: &ServiceRecord) -> Result<Description, Problem> {
        let bytes = self
            .store
            .blob(&rec.digest)?
            .ok_or_else(|| internal(format!("description {} missing", rec.digest)))?;
        Description::load(rec.kind, &bytes)
    }

    pub fn blob(&self, digest: &str) -> Result<Option<Vec<u8>>, Problem> {
        Ok(self.store.blob(digest)?)
    }

    // ---- concepts ----

    pub async fn claim_concept(
        &self,
        actor: &Actor,
        id: ConceptId,
        service: ServiceId,
        operation: String,
        field: String,
        aliases: Vec<String>,
    ) -> Result<ConceptRecord, Problem> {
        Self::require_member(actor, service.member())?;
        if aliases.len() > 32 || aliases.iter().any(|a| a.is_empty() || a.len() > 64) {
            return Err(Problem::new(
                ProblemKind::InvalidRequest,
                "aliases: at most 32, each 1 to 64 characters",
            ));
        }
        let _w = self.write.lock().await;
        if let Some(current) = self.get::<ConceptRecord>(kind::CONCEPT, id.as_str())? {
            return Err(Problem::new(
                ProblemKind::ConceptClaimed,
                format!(
                    "{id} already has an authoritative source: {} ({} {})",
                    current.service, current.operation, current.field
                ),
            )
            .with("current_source", &current.service)
            .with("operation", &current.operation)
            .with("field", &current.field));
        }
        let latest = self
            .service_versions(&service)?
            .pop()
            .ok_or_else(|| not_found("service", &service.to_string()))?;
        let op = latest
            .operations
            .iter()
            .find(|o| o.id == operation)
            .ok_or_else(|| {
                Problem::new(
                    ProblemKind::UnknownOperation,
                    format!(
                        "operation `{operation}` is not in {service} {}",
                        latest.version
                    ),
                )
            })?;
        if !op.fields.iter().any(|f| f.pointer == field) {
            return Err(Problem::new(
                ProblemKind::UnknownField,
                format!("`{field}` is not returned by {operation}"),
            )
            .with("fields", [&field]));
        }
        let rec = ConceptRecord {
            id,
            service,
            operation,
            field,
            aliases,
            claimed_at: rfc3339(now()),
        };
        self.commit(
            actor,
            "concept.claim",
            vec![(kind::CONCEPT, rec.id.to_string(), to_value(&rec)?)],
            vec![],
        )
        .await?;
        Ok(rec)
    }

    pub fn concepts(&self) -> Result<Vec<ConceptRecord>, Problem> {
        self.list(kind::CONCEPT)
    }

    // ---- contracts ----

    pub async fn propose_contract(
        &self,
        actor: &Actor,
        terms: ContractTerms,
    ) -> Result<Contract, Problem> {
        Self::require_member(actor, &terms.consumer.member)?;
        terms.check_shape()?;
        let _w = self.write.lock().await;
        self.approved_subsystem(&terms.consumer)?;
        let versions: Vec<ServiceRecord> = self
            .service_versions(&terms.provider)?
            .into_iter()
            .filter(|s| terms.versions.contains(s.version))
            .collect();
        if versions.is_empty() {
            return Err(Problem::new(
                ProblemKind::UnknownService,
                format!(
                    "{} has no published version in {}..{}",
                    terms.provider, terms.versions.min, terms.versions.max
                ),
            ));
        }
        // Every covered version must offer the operations and fields named.
        for v in &versions {
            let desc = self.description(v)?;
            desc.check_contract_fields(&terms.operations, &terms.allowed_fields)
                .map_err(|p| {
                    let d = format!("{} {}: {}", terms.provider, v.version, p.detail);
                    Problem { detail: d, ..p }
                })?;
            let sensitive: Vec<String> = desc
                .classes_disclosed(&terms.operations, &terms.allowed_fields)
                .into_iter()
                .filter(|(_, c)| *c == FieldClass::Sensitive)
                .map(|(p, _)| p)
                .collect();
            if !sensitive.is_empty() && !terms.authorisation_required {
                return Err(Problem::new(
                    ProblemKind::InvalidContract,
                    format!("allowed_fields include sensitive fields ({}); authorisation_required must be true", sensitive.join(", ")),
                )
                .with("fields", &sensitive));
            }
            let forbidden_classes: Vec<String> = desc
                .classes_disclosed(&terms.operations, &terms.allowed_fields)
                .into_iter()
                .filter(|(_, c)| *c == FieldClass::Secret)
                .map(|(p, _)| p)
                .collect();
            if !forbidden_classes.is_empty() {
                return Err(Problem::new(
                    ProblemKind::InvalidContract,
                    format!(
                        "secret fields cannot be disclosed under a contract: {}",
                        forbidden_classes.join(", ")
                    ),
                )
                .with("fields", &forbidden_classes));
            }
        }
        let contract = Contract {
            id: ContractId::generate(),
            terms,
            state: ContractState::Proposed,
            reason: None,
        };
        self.commit(
            actor,
            "contract.propose",
            vec![(
                kind::CONTRACT,
                contract.id.to_string(),
                to_value(&contract)?,
            )],
            vec![],
        )
        .await?;
        Ok(contract)
    }

    pub async fn act_on_contract(
        &self,
        actor: &Actor,
        id: &ContractId,
        action: ContractAction,
    ) -> Result<Contract, Problem> {
        let _w = self.write.lock().await;
        let mut contract = self.contract_any(id)?;
        if let Actor::MemberAdmin(m) = actor
            && m != &contract.terms.consumer.member
            && m != contract.terms.provider.member()
        {
            return Err(not_found("contract", &id.to_string()));
        }
        let next = contract.next_state(&action, &actor.party())?;
        contract.state = next;
        contract.reason = match &action {
            ContractAction::Refuse { reason } | ContractAction::Revoke { reason } => {
                Some(reason.clone())
            }
            _ => contract.reason,
        };
        let name = match action {
            ContractAction::Approve => "contract.approve",
            ContractAction::Refuse { .. } => "contract.refuse",
            ContractAction::Withdraw => "contract.withdraw",
            ContractAction::Revoke { .. } => "contract.revoke",
        };
        self.commit(
            actor,
            name,
            vec![(kind::CONTRACT, id.to_string(), to_value(&contract)?)],
            vec![],
        )
        .await?;
        Ok(contract)
    }

    fn contract_any(&self, id: &ContractId) -> Result<Contract, Problem> {
        self.get(kind::CONTRACT, id.as_str())?
            .ok_or_else(|| not_found("contract", id.as_str()))
    }

    /// A contract, visible to the federation admin and the two members it binds.
    pub fn contract(&self, actor: &Actor, id: &ContractId) -> Result<Contract, Problem> {
        let c = self.contract_any(id)?;
        match actor {
            Actor::FederationAdmin => Ok(c),
            Actor::MemberAdmin(m)
                if m == &c.terms.consumer.member || m == c.terms.provider.member() =>
            {
                Ok(c)
            }
            // Do not reveal that it exists.
            Actor::MemberAdmin(_) => Err(not_found("contract", id.as_str())),
        }
    }

    pub fn contracts(&self, actor: &Actor) -> Result<Vec<Contract>, Problem> {
        let all: Vec<Contract> = self.list(kind::CONTRACT)?;
        Ok(match actor {
            Actor::FederationAdmin => all,
            Actor::MemberAdmin(m) => all
                .into_iter()
                .filter(|c| &c.terms.consumer.member == m || c.terms.provider.member() == m)
                .collect(),
        })
    }

    // ---- the signed configuration ----

    /// Builds the configuration document from the store (without serial and times).
    pub(crate) fn config_body(
        &self,
        serial: u64,
        issued_at: OffsetDateTime,
    ) -> Result<GlobalConfig, Problem> {
        let members: Vec<MemberRecord> = self.list(kind::MEMBER)?;
        let subsystems: Vec<SubsystemRecord> = self.list(kind::SUBSYSTEM)?;
        let nodes: Vec<NodeRecord> = self.list(kind::NODE)?;
        let services = self.services()?;
        let contracts: Vec<Contract> = self.list(kind::CONTRACT)?;
        let revoked: Vec<RevokedRecord> = self.list(kind::REVOKED)?;
        let crl = self.ca.crl_pem(
            &revoked
                .iter()
                .map(|r| enlace_certs::Revoked {
                    serial_hex: r.serial_hex.clone(),
                    revoked_at: time::OffsetDateTime::parse(
                        &r.revoked_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .unwrap_or(issued_at),
                    reason: None,
                })
                .collect::<Vec<_>>(),
            serial,
            issued_at,
            issued_at + self.settings.config_validity + time::Duration::hours(1),
        )?;
        Ok(GlobalConfig {
            format: enlace_core::config::CONFIG_FORMAT,
            instance: self.settings.instance.clone(),
            serial,
            issued_at,
            expires_at: issued_at + self.settings.config_validity,
            federation_ca: vec![self.ca.cert_pem().to_string()],
            crl,
            members: members
                .into_iter()
                .map(|m| MemberEntry {
                    id: m.id,
                    name: m.name,
                })
                .collect(),
            subsystems: subsystems
                .into_iter()
                .filter(|s| s.state == Approval::Approved)
                .map(|s| s.id)
                .collect(),
            nodes: nodes
                .into_iter()
                .filter(|n| n.state == Approval::Approved && !n.revoked)
                .filter_map(|n| {
                    let now_s = rfc3339(now());
                    let previous_signing_certificates = n
                        .previous
                        .iter()
                        .filter(|p| p.purpose == "signing" && !p.revoked && p.not_after > now_s)
                        .filter_map(|p| p.certificate.clone())
                        .collect();
                    Some(NodeEntry {
                        id: n.id,
                        address: n.address,
                        tls_certificate: n.tls_certificate?,
                        signing_certificate: n.signing_certificate?,
                        previous_signing_certificates,
                    })
                })
                .collect(),
            services: services
                .into_iter()
                .map(|s| ServiceEntry {
                    id: s.id,
                    version: s.version,
                    kind: s.kind,
                    digest: s.digest,
                    operations: s.operations.into_iter().map(|o| o.id).collect(),
                })
                .collect(),
            contracts: contracts
                .into_iter()
                .filter(|c| matches!(c.state, ContractState::Approved | ContractState::Revoked))
                .collect(),
            revoked_authorisations: self.revoked_authorisations(issued_at)?,
        })
    }
}

pub(crate) fn to_value<T: Serialize>(v: &T) -> Result<Value, Problem> {
    serde_json::to_value(v).map_err(internal)
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), Problem> {
    if s.trim().is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
        return Err(Problem::new(
            ProblemKind::InvalidRequest,
            format!("{field}: must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// `host:port`, a DNS name or an IP address and a port.
fn check_address(s: &str) -> Result<(), Problem> {
    let bad = || {
        Problem::new(
            ProblemKind::InvalidRequest,
            "address: must be host:port, e.g. node-a.example.cl:8443 or 127.0.0.1:8443",
        )
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || b == b'.'
                || b == b'-'
                || b == b'['
                || b == b']'
                || b == b':'
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(bad())
    }
}

/// A new federation admin token.
pub(crate) fn new_admin_token() -> String {
    new_token()
}

fn new_token() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    format!(
        "enl_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
