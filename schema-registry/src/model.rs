//! The registry's records as stored: members, subsystems, nodes, service versions, concepts,
//! admin tokens and revoked certificates.

use enlace_core::config::DescriptionKind;
use enlace_core::id::{ConceptId, MemberId, NodeId, ServiceId, ServiceVersion, SubsystemId};
use enlace_description::Operation;
use serde::{Deserialize, Serialize};

/// Document kinds in the store.
pub mod kind {
    pub const MEMBER: &str = "member";
    pub const SUBSYSTEM: &str = "subsystem";
    pub const NODE: &str = "node";
    pub const SERVICE: &str = "service";
    pub const CONCEPT: &str = "concept";
    pub const CONTRACT: &str = "contract";
    pub const TOKEN: &str = "token";
    pub const REVOKED: &str = "revoked";
    pub const LOG_HEAD: &str = "loghead";
}

/// Whether the federation admin has approved a subsystem or node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    Pending,
    Approved,
    /// Withdrawn from the federation (a subsystem): left out of the signed configuration, so
    /// nodes refuse its calls; the federation admin may approve it again.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: MemberId,
    pub name: String,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemRecord {
    pub id: SubsystemId,
    pub state: Approval,
    pub created_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    /// `host:port` of its provider listener.
    pub address: String,
    pub state: Approval,
    pub tls_csr: String,
    pub signing_csr: String,
    pub tls_certificate: Option<String>,
    pub signing_certificate: Option<String>,
    pub tls_serial: Option<String>,
    pub signing_serial: Option<String>,
    pub not_after: Option<String>,
    pub revoked: bool,
    /// Certificates a renewal replaced that may still be within their validity: revoking the
    /// node revokes them too (a stolen old key must not outlive the node's revocation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous: Vec<PreviousCert>,
    /// The `at` of the node's last self-renewal proof: a later one must be later still.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_renewal_at: Option<String>,
}

/// A certificate of a node that a renewal replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousCert {
    pub serial_hex: String,
    /// `tls` or `signing`.
    pub purpose: String,
    /// RFC 3339; after this it needs no revocation.
    pub not_after: String,
    /// Whether it is already in the CRL.
    #[serde(default)]
    pub revoked: bool,
    /// The certificate (kept for signing certificates: peers still verify with it until the
    /// node has switched to its new key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: ServiceId,
    pub version: ServiceVersion,
    pub kind: DescriptionKind,
    pub digest: String,
    pub published_at: String,
    pub operations: Vec<Operation>,
}

impl ServiceRecord {
    pub fn key(id: &ServiceId, version: ServiceVersion) -> String {
        format!("{id}@{version}")
    }
}

/// The one authoritative source of a data concept: a field of an operation of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConceptRecord {
    pub id: ConceptId,
    pub service: ServiceId,
    pub operation: String,
    pub field: String,
    /// Other names forms use for it (`direccion`, `domicilio`).
    #[serde(default)]
    pub aliases: Vec<String>,
    pub claimed_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token, hex; the token itself is never stored.
    pub hash: String,
    pub member: MemberId,
    pub label: String,
    pub created_at: String,
    /// When it was revoked; a revoked token authenticates nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedRecord {
    pub serial_hex: String,
    pub node: NodeId,
    pub revoked_at: String,
    pub reason: String,
}

/// A node's anchored message-log head, as received (signature verified on receipt).
pub type LogHeadRecord = enlace_core::loghead::SignedHead;
