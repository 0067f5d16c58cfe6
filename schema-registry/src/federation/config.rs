//! The configuration document the registry signs and publishes, built from the store.

use enlace_core::config::{GlobalConfig, MemberEntry, NodeEntry, ServiceEntry};
use enlace_core::contract::{Contract, ContractState};
use enlace_core::problem::Problem;
use time::OffsetDateTime;

use crate::model::{Approval, MemberRecord, NodeRecord, RevokedRecord, SubsystemRecord, kind};

use super::{Registry, now, rfc3339};

impl Registry {
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
            revoked_authorisations: crate::citizen::authorisation::revoked_authorisations(
                self, issued_at,
            )?,
        })
    }
}
