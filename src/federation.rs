//! A whole demo federation in one process: the registry seeded with the demo federation (with
//! the `personas-grpc` contract), the Registro Civil node in front of the sample `personas`
//! REST and gRPC backends, and the SII node. Used by
//! `enlace up` (fixed ports) and `enlace bench` (ephemeral ports). Each node runs from a
//! configuration file written next to its keys, exactly as an operator would run it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use enlace_node::RunningNode;
use enlace_node::settings::NodeSettings;
use enlace_registry::{RunningRegistry, demo};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Where each listener goes; 0 picks a free port.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub registry: u16,
    pub backend: u16,
    pub grpc_backend: u16,
    pub rc_provider: u16,
    pub rc_consumer: u16,
    pub rc_admin: u16,
    pub sii_provider: u16,
    pub sii_consumer: u16,
    pub sii_admin: u16,
}

impl Ports {
    /// The documented ports of `enlace up` (docs/CONFIGURATION.md).
    pub const UP: Ports = Ports {
        registry: 7400,
        backend: 9000,
        grpc_backend: 9001,
        rc_provider: 8443,
        rc_consumer: 8081,
        rc_admin: 8082,
        sii_provider: 8543,
        sii_consumer: 8080,
        sii_admin: 8083,
    };

    /// Every port picked free (the benchmarks'), the registry's by the kernel.
    pub const ANY: Ports = Ports {
        registry: 0,
        backend: 0,
        grpc_backend: 0,
        rc_provider: 0,
        rc_consumer: 0,
        rc_admin: 0,
        sii_provider: 0,
        sii_consumer: 0,
        sii_admin: 0,
    };

    /// Nine consecutive ports from `base`, in the order of the fields (for tests that run
    /// `enlace up` beside a developer's own).
    pub fn from_base(base: u16) -> Ports {
        Ports {
            registry: base,
            backend: base + 1,
            grpc_backend: base + 2,
            rc_provider: base + 3,
            rc_consumer: base + 4,
            rc_admin: base + 5,
            sii_provider: base + 6,
            sii_consumer: base + 7,
            sii_admin: base + 8,
        }
    }
}

/// What `enlace up` remembers between runs besides the registry: the demo's tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Secrets {
    pub demo: demo::Demo,
    /// Bearer token of SII's `renta` backend at the SII node.
    pub renta_token: String,
}

pub struct Federation {
    pub registry: RunningRegistry,
    pub provider: RunningNode,
    pub consumer: RunningNode,
    pub backend: SocketAddr,
    pub grpc_backend: SocketAddr,
    pub secrets: Secrets,
    backend_stop: watch::Sender<bool>,
}

/// A free port below the kernel's ephemeral range (32768 and up), so that no outgoing
/// connection takes it before the node binds it. A port is free when it can be bound now and
/// this process has not handed it out before: the listeners bind later, so two picks in a row
/// could otherwise both find the same port free.
fn free_port() -> anyhow::Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let mut b = [0u8; 2];
        rand::fill(&mut b);
        let port = 20_000 + u16::from_le_bytes(b) % 12_000;
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port between 20000 and 32000")
}

fn port_or_free(p: u16) -> anyhow::Result<u16> {
    if p == 0 { free_port() } else { Ok(p) }
}

fn random_token() -> String {
    use std::fmt::Write;
    let mut bytes = [0u8; 24];
    rand::fill(&mut bytes);
    bytes.iter().fold(String::from("renta_"), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Writes a node's configuration file and returns its path.
#[allow(clippy::too_many_arguments)]
fn write_node_config(
    node_dir: &Path,
    id: &str,
    registry_url: &str,
    consumer: u16,
    provider: u16,
    admin: u16,
    clients: &str,
    services: &str,
) -> anyhow::Result<PathBuf> {
    let path = node_dir.join("node.toml");
    let text = format!(
        r#"# Enlace node {id} (written by `enlace up`; see docs/CONFIGURATION.md)
id = "{id}"
registry_url = "{registry_url}"
data_dir = "{data}"
ca_file = "{dir}/ca.pem"
tls_cert_file = "{dir}/tls.pem"
tls_key_file = "{dir}/tls-key.pem"
signing_cert_file = "{dir}/signing.pem"
signing_key_file = "{dir}/signing-key.pem"

[listen]
consumer = "127.0.0.1:{consumer}"
provider = "127.0.0.1:{provider}"
admin = "127.0.0.1:{admin}"

[log]
anchor_interval_secs = 30
{clients}{services}"#,
        data = node_dir.join("data").display(),
        dir = node_dir.display(),
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// A seeded federation whose nodes are not running yet: the registry runs, and each node's
/// configuration file is written, for a caller that runs the nodes itself (in-process or as
/// `enlace node serve` child processes, as `enlace bench` does).
pub struct Prepared {
    pub registry: RunningRegistry,
    pub secrets: Secrets,
    /// Every listener's port, zeros replaced by free ports.
    pub ports: Ports,
    /// The Registro Civil node's (provider) and the SII node's (consumer) `node.toml`.
    pub provider_config: PathBuf,
    pub consumer_config: PathBuf,
}

/// The sample backends the Registro Civil node forwards to; a service without one gets no
/// `[[services]]` entry (its calls are refused at the provider node).
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    /// `personas` (REST, HTTP/1.1).
    pub rest: Option<SocketAddr>,
    /// `personas-grpc` (gRPC, h2c).
    pub grpc: Option<SocketAddr>,
}

/// Starts the registry in `dir` (seeding it on first start, reusing it after; a federation
/// seeded without the `personas-grpc` contract gets it) and writes both nodes' configuration
/// files, the Registro Civil node forwarding to `backends`.
pub async fn prepare(dir: &Path, ports: Ports, backends: Backends) -> anyhow::Result<Prepared> {
    let ports = Ports {
        registry: ports.registry,
        backend: backends.rest.map_or(0, |a| a.port()),
        grpc_backend: backends.grpc.map_or(0, |a| a.port()),
        rc_provider: port_or_free(ports.rc_provider)?,
        rc_consumer: port_or_free(ports.rc_consumer)?,
        rc_admin: port_or_free(ports.rc_admin)?,
        sii_provider: port_or_free(ports.sii_provider)?,
        sii_consumer: port_or_free(ports.sii_consumer)?,
        sii_admin: port_or_free(ports.sii_admin)?,
    };
    let registry_dir = dir.join("registry");
    let fresh = !registry_dir.join("registry.sqlite").exists();
    let cfg = enlace_registry::RegistryConfig {
        instance: demo::INSTANCE.into(),
        listen: ([127, 0, 0, 1], ports.registry).into(),
        data_dir: registry_dir,
        storage: "sqlite".into(),
        config_validity_secs: 600,
        node_cert_validity_hours: 7 * 24,
        tls_names: Vec::new(),
        // The local demo signs people in with the registry's development issuer.
        oidc: enlace_registry::citizen::oidc::OidcConfig {
            dev_issuer: true,
            ..Default::default()
        },
        consent_max_days: 365,
        limits: Default::default(),
    };
    let registry = enlace_registry::start(&cfg).await?;
    let registry_url = format!("http://{}", registry.addr);
    let nodes_dir = dir.join("nodes");
    let secrets_file = dir.join("demo.json");
    let (rc_provider, sii_provider) = (ports.rc_provider, ports.sii_provider);
    let mut secrets: Secrets = if fresh {
        let d = demo::seed_with_grpc(
            &registry.registry,
            &nodes_dir,
            [
                &format!("127.0.0.1:{rc_provider}"),
                &format!("127.0.0.1:{sii_provider}"),
            ],
        )
        .await?;
        let s = Secrets {
            demo: d,
            renta_token: random_token(),
        };
        std::fs::write(&secrets_file, serde_json::to_vec_pretty(&s)?)?;
        s
    } else {
        serde_json::from_slice(
            &std::fs::read(&secrets_file).with_context(|| format!("{}", secrets_file.display()))?,
        )?
    };
    if !fresh {
        for node in demo::renew_stale_node_certs(&registry.registry, &nodes_dir)
            .await
            .context("renewing the demo nodes' certificates")?
        {
            tracing::info!(%node, "renewed the certificates of a demo node (they had expired or were about to)");
        }
    }
    if secrets.demo.consent_contract.is_empty() {
        // Seeded before consents existed: add the contract that needs one, and remember it.
        secrets.demo.consent_contract = demo::seed_consent_contract(&registry.registry)
            .await
            .context("adding the consent contract to an existing federation")?;
        std::fs::write(&secrets_file, serde_json::to_vec_pretty(&secrets)?)?;
    }
    if secrets.demo.grpc_contract.is_empty() {
        // Seeded before `enlace up` served gRPC: add the contract once, and remember it.
        secrets.demo.grpc_contract = demo::seed_grpc_contract(&registry.registry)
            .await
            .context("adding the personas-grpc contract to an existing federation")?;
        std::fs::write(&secrets_file, serde_json::to_vec_pretty(&secrets)?)?;
    }

    let rc_dir = nodes_dir.join("61002000-3");
    let mut services = String::new();
    if let Some(rest) = backends.rest {
        services.push_str(&format!(
            "\n[[services]]\nservice = \"{}\"\nbackend = \"http://{rest}\"\n",
            demo::PERSONAS
        ));
    }
    if let Some(grpc) = backends.grpc {
        services.push_str(&format!(
            "\n[[services]]\nservice = \"{}\"\nbackend = \"h2c://{grpc}\"\n",
            demo::PERSONAS_GRPC
        ));
    }
    let rc_cfg = write_node_config(
        &rc_dir,
        demo::PROVIDER_NODE,
        &registry_url,
        ports.rc_consumer,
        rc_provider,
        ports.rc_admin,
        "",
        &services,
    )?;
    let sii_dir = nodes_dir.join("60803000-K");
    let token_hash = enlace_description::sha256_hex(secrets.renta_token.as_bytes());
    let clients = format!(
        "\n[[clients]]\nsubsystem = \"{}\"\ntoken_sha256 = \"{token_hash}\"\nlog_bodies = false\n",
        demo::CONSUMER_SUBSYSTEM
    );
    let sii_cfg = write_node_config(
        &sii_dir,
        demo::CONSUMER_NODE,
        &registry_url,
        ports.sii_consumer,
        sii_provider,
        ports.sii_admin,
        &clients,
        "",
    )?;
    Ok(Prepared {
        registry,
        secrets,
        ports,
        provider_config: rc_cfg,
        consumer_config: sii_cfg,
    })
}

/// Starts the federation in `dir`: seeds it on first start, reuses it after; the sample
/// backends and both nodes run in this process.
pub async fn start(dir: &Path, ports: Ports) -> anyhow::Result<Federation> {
    let backend_listener = tokio::net::TcpListener::bind(("127.0.0.1", ports.backend))
        .await
        .context("sample backend port")?;
    let grpc_listener = tokio::net::TcpListener::bind(("127.0.0.1", ports.grpc_backend))
        .await
        .context("sample gRPC backend port")?;
    let backend = backend_listener.local_addr()?;
    let grpc_backend = grpc_listener.local_addr()?;
    // Dropping `backend_stop` (on an early return) stops the backends too.
    let (backend_stop, rx) = watch::channel(false);
    tokio::spawn(enlace_samples::rest::serve(backend_listener, rx.clone()));
    tokio::spawn(enlace_samples::grpc::serve(grpc_listener, rx));
    let backends = Backends {
        rest: Some(backend),
        grpc: Some(grpc_backend),
    };
    let p = prepare(dir, ports, backends).await?;

    let wait = Duration::from_secs(10);
    let provider = enlace_node::start(load(&p.provider_config)?, wait).await?;
    let consumer = enlace_node::start(load(&p.consumer_config)?, wait).await?;
    Ok(Federation {
        registry: p.registry,
        provider,
        consumer,
        backend,
        grpc_backend,
        secrets: p.secrets,
        backend_stop,
    })
}

fn load(path: &Path) -> anyhow::Result<enlace_node::settings::Checked> {
    let text = std::fs::read_to_string(path)?;
    NodeSettings::from_toml(&text).with_context(|| format!("{}", path.display()))
}

impl Federation {
    /// Stops the nodes (draining in-flight exchanges), the backends, then the registry.
    pub async fn stop(self) {
        self.consumer.stop().await;
        self.provider.stop().await;
        let _ = self.backend_stop.send(true);
        self.registry.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use enlace_proto::personas::v1::GetPersonRequest;
    use enlace_proto::personas::v1::personas_client::PersonasClient;

    /// GetPerson for the demo person through both nodes, as `enlace up` prints it.
    async fn get_person(f: &Federation) -> Result<String, tonic::Status> {
        let mut client = PersonasClient::connect(format!("http://{}", f.consumer.consumer_addr))
            .await
            .expect("the SII node accepts h2c");
        let mut req = tonic::Request::new(GetPersonRequest {
            run: "12345678-5".into(),
        });
        let s = &f.secrets;
        for (k, v) in [
            ("authorization", format!("Bearer {}", s.renta_token)),
            ("enlace-client", demo::CONSUMER_SUBSYSTEM.to_string()),
            ("enlace-contract", s.demo.grpc_contract.clone()),
            ("enlace-subject", demo::PERSON.to_string()),
        ] {
            req.metadata_mut()
                .insert(k, v.parse().expect("metadata value"));
        }
        Ok(client.get_person(req).await?.into_inner().name)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn up_serves_grpc_through_both_nodes_and_upgrades_an_old_directory() {
        let dir = std::env::temp_dir().join(format!("enlace-up-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // Fixed for both starts: the registry remembers the nodes' provider addresses.
        let ports = Ports {
            registry: free_port().unwrap(),
            backend: 0,
            grpc_backend: 0,
            rc_provider: free_port().unwrap(),
            rc_consumer: 0,
            rc_admin: 0,
            sii_provider: free_port().unwrap(),
            sii_consumer: 0,
            sii_admin: 0,
        };
        let f = start(&dir, ports).await.expect("the federation starts");
        assert!(!f.secrets.demo.grpc_contract.is_empty());
        assert!(!f.secrets.demo.consent_contract.is_empty());
        let rc = std::fs::read_to_string(dir.join("nodes/61002000-3/node.toml")).unwrap();
        assert!(
            rc.contains(&format!("backend = \"h2c://{}\"", f.grpc_backend)),
            "{rc}"
        );
        assert_eq!(get_person(&f).await.unwrap(), "María José Pérez Soto");
        f.stop().await;

        // A directory seeded before `enlace up` served gRPC: no gRPC contract remembered.
        let secrets_file = dir.join("demo.json");
        let mut old: Secrets =
            serde_json::from_slice(&std::fs::read(&secrets_file).unwrap()).unwrap();
        old.demo.grpc_contract.clear();
        old.demo.consent_contract.clear();
        std::fs::write(&secrets_file, serde_json::to_vec(&old).unwrap()).unwrap();
        let f = start(&dir, ports).await.expect("the federation restarts");
        assert!(!f.secrets.demo.grpc_contract.is_empty());
        assert!(!f.secrets.demo.consent_contract.is_empty());
        // The nodes follow the registry: the new contract reaches them shortly.
        let mut answer = get_person(&f).await;
        for _ in 0..50 {
            if answer.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = get_person(&f).await;
        }
        assert_eq!(answer.unwrap(), "María José Pérez Soto");
        f.stop().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
