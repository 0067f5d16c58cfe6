//! The global configuration the registry signs and every node follows: members, nodes and
//! their certificates, the CRL, services and their digests, and the active contracts.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::contract::Contract;
use crate::id::{Instance, MemberId, NodeId, ServiceId, ServiceVersion, SubsystemId};

/// Version of the configuration format.
pub const CONFIG_FORMAT: u32 = 1;

/// Longest signed configuration a node accepts, in bytes.
pub const MAX_CONFIG_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalConfig {
    pub format: u32,
    pub instance: Instance,
    /// Grows by one at each issue; a node refuses a serial below one it has seen.
    pub serial: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    /// After this a node fails closed until it has a newer configuration.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The federation CA certificate(s), PEM.
    pub federation_ca: Vec<String>,
    /// The CA's current certificate revocation list, PEM.
    pub crl: String,
    pub members: Vec<MemberEntry>,
    pub subsystems: Vec<SubsystemId>,
    pub nodes: Vec<NodeEntry>,
    pub services: Vec<ServiceEntry>,
    /// Approved and revoked contracts (a node tells a revoked or expired contract from a
    /// missing one, and refuses both).
    pub contracts: Vec<Contract>,
    /// Authorisations (consents) the person revoked whose tokens have not expired yet: a node
    /// refuses their tokens. Absent from configurations issued before consents existed.
    #[serde(default)]
    pub revoked_authorisations: Vec<RevokedAuthorisation>,
}

/// A revoked authorisation, listed until its token would have expired anyway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedAuthorisation {
    /// `aut_…`.
    pub id: String,
    /// The token's expiry.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    pub id: MemberId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub id: NodeId,
    /// Where peers reach its provider listener, `host:port`.
    pub address: String,
    /// TLS certificate, PEM.
    pub tls_certificate: String,
    /// Signing certificate, PEM.
    pub signing_certificate: String,
    /// Signing certificates a renewal replaced that are still valid and unrevoked: while a
    /// node rolls its key over, peers accept a signature by any of them (current first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_signing_certificates: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DescriptionKind {
    Openapi,
    Protobuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub id: ServiceId,
    pub version: ServiceVersion,
    pub kind: DescriptionKind,
    /// SHA-256 of the stored description, hex; the description itself is fetched by digest.
    pub digest: String,
    /// Operation ids (OpenAPI operationId, or `package.Service/Method`).
    pub operations: Vec<String>,
}

/// The signed form: the exact payload bytes (base64), the Ed25519 signature over them, and the
/// registry's signing certificate, which must chain to the federation CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedConfig {
    pub algorithm: String,
    pub payload: String,
    pub signature: String,
    pub signer_certificate: String,
}
