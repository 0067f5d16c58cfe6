//! The federation: the registry's operations that change it, each checking who acts,
//! validating, and committing one change with its audit entry, after which the signed
//! configuration is reissued. Here: who acts ([`Actor`]), the [`Registry`] itself, its
//! authentication, storage helpers and audit trail; `members.rs` (members, tokens,
//! subsystems), `nodes.rs`, `services.rs` (and concepts), `contracts.rs`, `config.rs` (the
//! configuration document built from the store), and `publish.rs` (signing and publishing it).
//! The access log ([`crate::access_log::AccessLog`]) and the citizen side
//! ([`crate::citizen::Citizens`]) are types of their own over this one.

use std::sync::Arc;

use enlace_certs::FederationCa;
use enlace_core::contract::Party;
use enlace_core::id::{Instance, MemberId};
use enlace_core::problem::{Problem, ProblemKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{Mutex, watch};

use self::publish::Published;
use crate::model::{TokenRecord, kind};
use crate::store::{AuditEntry, Change, Store, StoreError};

mod config;
mod contracts;
mod members;
mod nodes;
pub(crate) mod publish;
mod services;

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

/// A failure of the registry itself (storage, serialisation): logged for the operator with what
/// failed, answered with a detail that says only that nothing was changed.
pub(crate) fn internal(e: impl std::fmt::Display) -> Problem {
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
    /// Told of each configuration before it is signed (the access log keeps the nodes' signing
    /// certificates from it, see [`crate::access_log::AccessLog::new`]); set once.
    on_publish: std::sync::OnceLock<PublishHook>,
}

/// What is told of each configuration the registry issues.
pub(crate) type PublishHook = Box<dyn Fn(&enlace_core::config::GlobalConfig) + Send + Sync>;

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
            on_publish: std::sync::OnceLock::new(),
        });
        Ok(reg)
    }

    /// Sets what is told of each configuration before it is signed; a second call is ignored.
    pub(crate) fn on_publish(&self, hook: PublishHook) {
        let _ = self.on_publish.set(hook);
    }

    /// Tells the hook of a configuration about to be signed.
    pub(crate) fn publishing(&self, config: &enlace_core::config::GlobalConfig) {
        if let Some(hook) = self.on_publish.get() {
            hook(config);
        }
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
