//! The demo federation of DESIGN.md (Registro Civil provides `personas`, SII consumes it under a
//! contract for tax-refund eligibility), seeded through the same operations an admin uses.

use std::path::Path;

use enlace_core::contract::{
    ContractAction, ContractTerms, Period, Usage, VersionRange, VolumeLimit,
};
use enlace_core::id::{MemberId, NodeId, ServiceId, SubsystemId};
use enlace_core::problem::Problem;
use serde::{Deserialize, Serialize};

use crate::federation::{Actor, Registry};

pub const INSTANCE: &str = "CL-DEV";
pub const REGISTRO_CIVIL: &str = "CL-DEV/GOV/61002000-3";
pub const SII: &str = "CL-DEV/GOV/60803000-K";
pub const PROVIDER_SUBSYSTEM: &str = "CL-DEV/GOV/61002000-3/registro-civil";
pub const CONSUMER_SUBSYSTEM: &str = "CL-DEV/GOV/60803000-K/renta";
pub const PERSONAS: &str = "CL-DEV/GOV/61002000-3/registro-civil/personas";
pub const PERSONAS_GRPC: &str = "CL-DEV/GOV/61002000-3/registro-civil/personas-grpc";
pub const PROVIDER_NODE: &str = "CL-DEV/GOV/61002000-3/node/a";
pub const CONSUMER_NODE: &str = "CL-DEV/GOV/60803000-K/node/a";
pub const PERSON: &str = "CL-RUN:12345678-5";

/// The OpenAPI description of `personas` v1.
pub const PERSONAS_OPENAPI: &str = include_str!("../../openapi/samples/personas-v1.json");

/// What seeding produced: admin tokens and the contract.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Demo {
    pub registro_civil_token: String,
    pub sii_token: String,
    pub contract: String,
    /// The contract for `personas-grpc` (all four methods: names, addresses, document types
    /// and numbers, counts of verified identities); empty unless seeded by [`seed_with_grpc`].
    #[serde(default)]
    pub grpc_contract: String,
    /// The contract for the name and the health insurance (a sensitive field), with the
    /// person's authorisation, for [`CONSENT_PURPOSE`]; empty in a federation seeded before it
    /// existed (see [`seed_consent_contract`]).
    #[serde(default)]
    pub consent_contract: String,
}

/// The purpose of the contract that needs the person's authorisation.
pub const CONSENT_PURPOSE: &str = "health-expense-deduction";

fn id<T: std::str::FromStr<Err = enlace_core::IdError>>(s: &str) -> T {
    // The constants above are valid identifiers; a typo is caught by the tests.
    s.parse()
        .unwrap_or_else(|e| panic!("demo identifier {s}: {e}"))
}

/// Seeds the demo federation. Node keys go to `nodes_dir/<member code>/` (TLS and signing keys,
/// and the certificates the registry issued). `addresses` are the provider listeners of the
/// Registro Civil and SII nodes.
pub async fn seed(reg: &Registry, nodes_dir: &Path, addresses: [&str; 2]) -> Result<Demo, Problem> {
    let admin = Actor::FederationAdmin;
    let rc: MemberId = id(REGISTRO_CIVIL);
    let sii: MemberId = id(SII);
    reg.create_member(
        &admin,
        rc.clone(),
        "Servicio de Registro Civil e Identificación".into(),
    )
    .await?;
    reg.create_member(&admin, sii.clone(), "Servicio de Impuestos Internos".into())
        .await?;
    let rc_token = reg.issue_member_token(&admin, &rc, "demo".into()).await?;
    let sii_token = reg.issue_member_token(&admin, &sii, "demo".into()).await?;
    let rc_admin = Actor::MemberAdmin(rc.clone());
    let sii_admin = Actor::MemberAdmin(sii.clone());

    let provider: SubsystemId = id(PROVIDER_SUBSYSTEM);
    let consumer: SubsystemId = id(CONSUMER_SUBSYSTEM);
    reg.register_subsystem(&rc_admin, provider.clone()).await?;
    reg.register_subsystem(&sii_admin, consumer.clone()).await?;
    reg.approve_subsystem(&admin, &provider).await?;
    reg.approve_subsystem(&admin, &consumer).await?;

    for (node, who, address) in [
        (PROVIDER_NODE, &rc_admin, addresses[0]),
        (CONSUMER_NODE, &sii_admin, addresses[1]),
    ] {
        let node: NodeId = id(node);
        let keys = enlace_certs::node_init(&node)?;
        let rec = reg
            .register_node(
                who,
                node.clone(),
                address.into(),
                keys.tls_csr_pem.clone(),
                keys.signing_csr_pem.clone(),
            )
            .await?;
        let rec = reg.approve_node(&admin, &rec.id).await?;
        let dir = nodes_dir.join(node.member.code());
        write_node_files(&dir, &keys, &rec, reg.ca_pem()).map_err(|e| {
            Problem::new(
                enlace_core::ProblemKind::Internal,
                format!("writing {}: {e}", dir.display()),
            )
        })?;
    }

    let personas: ServiceId = id(PERSONAS);
    let desc = enlace_description::openapi::parse(PERSONAS_OPENAPI.as_bytes())?;
    reg.publish_service(&rc_admin, personas.clone(), id("v1"), desc)
        .await?;
    let grpc =
        enlace_description::protobuf::from_descriptor_set(enlace_proto::PERSONAS_DESCRIPTOR_SET)?;
    reg.publish_service(&rc_admin, id(PERSONAS_GRPC), id("v1"), grpc)
        .await?;

    for (concept, field, aliases) in [
        ("person.name", "/name", vec!["nombre"]),
        (
            "person.birth_date",
            "/birthDate",
            vec!["fecha_nacimiento", "birthdate"],
        ),
        ("person.address", "/address", vec!["direccion", "domicilio"]),
        ("person.civil_status", "/civilStatus", vec!["estado_civil"]),
        ("person.nationality", "/nationality", vec!["nacionalidad"]),
    ] {
        reg.claim_concept(
            &rc_admin,
            id(concept),
            personas.clone(),
            "getPerson".into(),
            field.into(),
            aliases.into_iter().map(String::from).collect(),
        )
        .await?;
    }

    let now = time::OffsetDateTime::now_utc();
    let terms = ContractTerms {
        consumer,
        provider: personas,
        versions: VersionRange {
            min: id("v1.0"),
            max: id("v1.9999"),
        },
        operations: vec!["getPerson".into()],
        purpose: "tax-refund-eligibility".into(),
        legal_basis: "Decreto Ley 824 (Ley sobre Impuesto a la Renta), devolución de impuestos"
            .into(),
        allowed_fields: vec!["/name".into(), "/address".into()],
        subject_required: true,
        usage: Usage::Permanent,
        volume_limit: Some(VolumeLimit {
            max_requests: 1_000_000,
            period: Period::Day,
        }),
        valid_from: now - time::Duration::minutes(5),
        valid_until: now + time::Duration::days(365),
        authorisation_required: false,
    };
    let contract = reg.propose_contract(&sii_admin, terms).await?;
    reg.act_on_contract(&rc_admin, &contract.id, ContractAction::Approve)
        .await?;
    let consent_contract = seed_consent_contract(reg).await?;
    Ok(Demo {
        registro_civil_token: rc_token,
        sii_token,
        contract: contract.id.to_string(),
        grpc_contract: String::new(),
        consent_contract,
    })
}

/// SII's second contract on `personas`: the name and the health insurance (`sensitive`) for
/// the deduction of health expenses, which requires the person's authorisation; proposed by SII,
/// approved by the Registro Civil; returns its id.
pub async fn seed_consent_contract(reg: &Registry) -> Result<String, Problem> {
    let now = time::OffsetDateTime::now_utc();
    let terms = ContractTerms {
        consumer: id(CONSUMER_SUBSYSTEM),
        provider: id(PERSONAS),
        versions: VersionRange {
            min: id("v1.0"),
            max: id("v1.9999"),
        },
        operations: vec!["getPerson".into()],
        purpose: CONSENT_PURPOSE.into(),
        legal_basis: "Decreto Ley 824, deducción de gastos de salud; dato sensible tratado con autorización del titular (Ley 19.628, art. 10)".into(),
        allowed_fields: vec!["/name".into(), "/healthInsurance".into()],
        subject_required: true,
        usage: Usage::Permanent,
        volume_limit: Some(VolumeLimit {
            max_requests: 1_000_000,
            period: Period::Day,
        }),
        valid_from: now - time::Duration::minutes(5),
        valid_until: now + time::Duration::days(365),
        authorisation_required: true,
    };
    let sii_admin = Actor::MemberAdmin(id(SII));
    let rc_admin = Actor::MemberAdmin(id(REGISTRO_CIVIL));
    let contract = reg.propose_contract(&sii_admin, terms).await?;
    reg.act_on_contract(&rc_admin, &contract.id, ContractAction::Approve)
        .await?;
    Ok(contract.id.to_string())
}

/// [`seed`], then a second contract for SII's `renta` on `personas-grpc` v1: `GetPerson`,
/// `ListDocuments`, `VerifyIdentities` and `LookupPersons`, disclosing names, addresses,
/// document types and numbers, and how many identity claims were checked and matched. Kept apart
/// from [`seed`] so that the federation `seed` builds stays the one DESIGN.md describes.
pub async fn seed_with_grpc(
    reg: &Registry,
    nodes_dir: &Path,
    addresses: [&str; 2],
) -> Result<Demo, Problem> {
    let mut demo = seed(reg, nodes_dir, addresses).await?;
    demo.grpc_contract = seed_grpc_contract(reg).await?;
    Ok(demo)
}

/// The `personas-grpc` contract of [`seed_with_grpc`] alone, for a federation [`seed`]ed
/// before: proposed by SII, approved by the Registro Civil; returns its id.
pub async fn seed_grpc_contract(reg: &Registry) -> Result<String, Problem> {
    let now = time::OffsetDateTime::now_utc();
    let terms = ContractTerms {
        consumer: id(CONSUMER_SUBSYSTEM),
        provider: id(PERSONAS_GRPC),
        versions: VersionRange {
            min: id("v1.0"),
            max: id("v1.9999"),
        },
        operations: vec![
            "personas.v1.Personas/GetPerson".into(),
            "personas.v1.Personas/ListDocuments".into(),
            "personas.v1.Personas/VerifyIdentities".into(),
            "personas.v1.Personas/LookupPersons".into(),
        ],
        purpose: "tax-refund-eligibility".into(),
        legal_basis: "Decreto Ley 824 (Ley sobre Impuesto a la Renta), devolución de impuestos"
            .into(),
        // `VerifyIdentities` discloses the counts only: which claims failed stays with the
        // Registro Civil (`/mismatched_runs` is not allowed).
        allowed_fields: vec![
            "/name".into(),
            "/address".into(),
            "/type".into(),
            "/number".into(),
            "/checked".into(),
            "/matched".into(),
        ],
        subject_required: true,
        usage: Usage::Permanent,
        volume_limit: Some(VolumeLimit {
            max_requests: 1_000_000,
            period: Period::Day,
        }),
        valid_from: now - time::Duration::minutes(5),
        valid_until: now + time::Duration::days(365),
        authorisation_required: false,
    };
    let sii_admin = Actor::MemberAdmin(id(SII));
    let rc_admin = Actor::MemberAdmin(id(REGISTRO_CIVIL));
    let contract = reg.propose_contract(&sii_admin, terms).await?;
    reg.act_on_contract(&rc_admin, &contract.id, ContractAction::Approve)
        .await?;
    Ok(contract.id.to_string())
}

/// Renews, as their members' admins, the demo nodes' certificates that have expired or have
/// less than a third of their life left (a demo directory reused after a week): a node renews
/// itself while its certificates are valid, but cannot prove anything with an expired key.
/// Returns the nodes renewed.
pub async fn renew_stale_node_certs(
    reg: &Registry,
    nodes_dir: &Path,
) -> Result<Vec<NodeId>, Problem> {
    let mut renewed = Vec::new();
    for node in [PROVIDER_NODE, CONSUMER_NODE] {
        let node: NodeId = id(node);
        let dir = nodes_dir.join(node.member.code());
        let now = time::OffsetDateTime::now_utc();
        let stale = ["tls.pem", "signing.pem"].iter().any(|f| {
            std::fs::read_to_string(dir.join(f))
                .map(|pem| enlace_certs::needs_renewal(&pem, now, 1.0 / 3.0))
                .unwrap_or(true)
        });
        if !stale {
            continue;
        }
        let keys = enlace_certs::node_init(&node)?;
        let admin = Actor::MemberAdmin(node.member.clone());
        let rec = reg
            .renew_node(
                &admin,
                &node,
                keys.tls_csr_pem.clone(),
                keys.signing_csr_pem.clone(),
                None,
            )
            .await?;
        write_node_files(&dir, &keys, &rec, reg.ca_pem()).map_err(|e| {
            Problem::new(
                enlace_core::ProblemKind::Internal,
                format!("writing {}: {e}", dir.display()),
            )
        })?;
        renewed.push(node);
    }
    Ok(renewed)
}

fn write_node_files(
    dir: &Path,
    keys: &enlace_certs::NodeKeys,
    rec: &crate::model::NodeRecord,
    ca_pem: &str,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let write_secret = |name: &str, text: &str| -> std::io::Result<()> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    };
    write_secret("tls-key.pem", &keys.tls_key_pem)?;
    write_secret("signing-key.pem", &keys.signing_key_pem)?;
    std::fs::write(
        dir.join("tls.pem"),
        rec.tls_certificate.as_deref().unwrap_or(""),
    )?;
    std::fs::write(
        dir.join("signing.pem"),
        rec.signing_certificate.as_deref().unwrap_or(""),
    )?;
    std::fs::write(dir.join("ca.pem"), ca_pem)?;
    Ok(())
}
