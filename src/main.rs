//! `enlace`: one command line for every role: a whole local federation (`up`), the registry,
//! the node, the federation PKI, and the checks an agency runs against the registry.
#![forbid(unsafe_code)]

mod bench;
mod bench_access;
mod federation;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The allocator of every role: jemalloc with its background threads, which return the pages a
/// burst freed to the system within seconds, also when the process then sits idle. Under glibc's
/// malloc a node kept all the memory 2,400 idle connections had taken (about 120 MB) after they
/// closed, and grew with each flood; see `tests/process_faults.rs` and BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for bad configuration or usage (sysexits EX_USAGE).
const EXIT_CONFIG: u8 = 64;

#[derive(Parser)]
#[command(
    name = "enlace",
    version,
    about = "Enlace: interoperability layer for a state"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole local federation (registry seeded with the demo federation).
    Up(up::UpArgs),
    /// The schema registry.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// The node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The federation PKI.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// A node's message log: verify the chain, export and check evidence.
    #[command(subcommand)]
    Log(LogCommand),
    /// Benchmarks: the relay against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// The access log, checked from outside the registry.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The sample `personas` backend on its own (for `enlace bench`).
    #[command(hide = true)]
    SampleBackend {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    /// The sample `personas.v1.Personas` gRPC backend on its own (for `enlace bench grpc`).
    #[command(hide = true)]
    SampleGrpcBackend {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify access-log evidence: offline from a saved file (--evidence), or fetched from the
    /// registry (--registry with --message-id or --from/--to). Checks the signed tree head
    /// (signature, certificate chain to the CA, CRL), then the record's inclusion proof and the
    /// node's signature on it, or the consistency of two tree heads. Exit 1 if any check fails.
    Verify {
        /// The federation CA certificate (PEM): the only trust anchor.
        #[arg(long)]
        ca: PathBuf,
        /// Saved evidence (`enlace audit evidence`), checked with no network.
        #[arg(long, conflicts_with_all = ["registry", "message_id", "from", "to"])]
        evidence: Option<PathBuf>,
        /// The registry's base URL.
        #[arg(long, required_unless_present = "evidence")]
        registry: Option<String>,
        /// The access record's message id (with --token).
        #[arg(long, requires = "token", conflicts_with_all = ["from", "to"])]
        message_id: Option<String>,
        /// A token that may read the record (an admin token, or the person's ID token).
        #[arg(long)]
        token: Option<String>,
        /// The earlier tree size (with --to).
        #[arg(long, requires = "to")]
        from: Option<u64>,
        /// The later tree size.
        #[arg(long, requires = "from")]
        to: Option<u64>,
    },
    /// Save access-log evidence to a file, to verify later offline (`enlace audit verify
    /// --evidence`): a record's (with --message-id and --token) or two tree heads' (with --from
    /// and --to).
    Evidence {
        /// The registry's base URL.
        #[arg(long)]
        registry: String,
        #[arg(long, requires = "token", conflicts_with_all = ["from", "to"])]
        message_id: Option<String>,
        /// The emitting node, when several nodes logged the message id.
        #[arg(long, requires = "message_id")]
        node: Option<String>,
        #[arg(long)]
        token: Option<String>,
        #[arg(long, requires = "to")]
        from: Option<u64>,
        #[arg(long, requires = "from")]
        to: Option<u64>,
        /// Where to write the evidence (JSON).
        #[arg(long, short)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check a message log's hash chain and its signed heads (local and anchored in the
    /// registry); report the first broken record.
    Verify {
        /// The node's configuration file (finds the log, the registry and the node id).
        #[arg(long, short, conflicts_with = "db")]
        config: Option<PathBuf>,
        /// A message log file, checked on its own (without the registry's anchored heads).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Write the evidence bundle of one exchange: records, signatures, certificates, chain
    /// position.
    Export {
        message_id: String,
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Check an evidence bundle offline.
    Check { bundle: PathBuf },
}

#[derive(Subcommand)]
enum RegistryCommand {
    /// Serve the registry from a configuration file (TOML).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List the fields of a form (a JSON Schema) that the state already holds.
    OnceOnlyCheck {
        form: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:7400", env = "ENLACE_REGISTRY")]
        registry: String,
        /// The subsystem that would consume the data, to find its contracts.
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Fetch the signed configuration and verify it against the federation CA.
    VerifyConfig {
        #[arg(long, default_value = "http://127.0.0.1:7400", env = "ENLACE_REGISTRY")]
        registry: String,
        /// The federation CA certificate (PEM), the trust anchor.
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value = "CL-DEV")]
        instance: String,
    },
    /// Check the access log's file at rest: leaves, stored subtrees and every signed tree head
    /// against the entries; report the first inconsistency.
    CheckAccessLog {
        /// The registry's `access.sqlite`.
        #[arg(long)]
        db: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Run a node from its configuration file (TOML).
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a node's TLS key and signing key, and a CSR for each, in a directory.
    Init {
        /// The node id, e.g. CL-DEV/GOV/61002000-3/node/a.
        #[arg(long)]
        id: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Create a federation root CA (ca.pem, ca-key.pem) in a directory.
    CaInit {
        #[arg(long)]
        instance: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Show a certificate's serial, validity, and identities.
    Show { cert: PathBuf },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    enlace_certs::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("enlace: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("enlace: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(args).await,
        Command::Bench(cmd) => bench::run(cmd).await,
        Command::SampleBackend { listen } => bench::sample_backend(listen).await,
        Command::SampleGrpcBackend { listen } => bench::sample_grpc_backend(listen).await,
        Command::Registry(RegistryCommand::Serve { config }) => {
            let text = std::fs::read_to_string(&config)
                .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
            let cfg = match enlace_registry::RegistryConfig::from_toml(&text) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("enlace: {}: {e:#}", config.display());
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let running = enlace_registry::start(&cfg).await?;
            let stop = stop_signal()?;
            eprintln!(
                "registry listening on {}, serving {}",
                running.addr, running.url
            );
            eprintln!(
                "federation admin token in {}",
                cfg.data_dir.join("admin.token").display()
            );
            stop.await;
            running.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Registry(RegistryCommand::OnceOnlyCheck {
            form,
            registry,
            consumer,
        }) => once_only_check(&form, &registry, consumer.as_deref()).await,
        Command::Registry(RegistryCommand::CheckAccessLog { db }) => {
            match enlace_registry::access_log::check::check_file(&db) {
                Ok(c) => {
                    println!(
                        "{} leaves ({} access records, {} log heads), {} stored subtrees and {} signed tree heads agree",
                        c.leaves, c.records, c.log_heads, c.subtrees, c.tree_heads
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("INCONSISTENT: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Registry(RegistryCommand::VerifyConfig {
            registry,
            ca,
            instance,
        }) => {
            let anchors = vec![std::fs::read_to_string(&ca)?];
            let dir = std::env::temp_dir().join(format!("enlace-verify-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let client = enlace_node::ConfigClient::new(enlace_node::ConfigSource {
                registry_url: registry,
                instance: instance.parse()?,
                anchors,
                cache_path: dir.join("config.json"),
            })?;
            let result = client.fetch(std::time::Duration::ZERO).await;
            let _ = std::fs::remove_dir_all(&dir);
            result?;
            let cfg = client.current()?;
            println!(
                "configuration serial {} of {} verifies: issued {}, expires {}, {} members, {} nodes, {} services, {} active contracts",
                cfg.serial,
                cfg.instance,
                cfg.issued_at,
                cfg.expires_at,
                cfg.members.len(),
                cfg.nodes.len(),
                cfg.services.len(),
                cfg.contracts.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeCommand::Serve { config }) => {
            let settings = match load_node_settings(&config) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("enlace: {}: {e:#}", config.display());
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            let node = enlace_node::start(settings, std::time::Duration::from_secs(30)).await?;
            let stop = stop_signal()?;
            eprintln!(
                "node {} listening: consumer http://{}, provider {}, admin http://{}",
                node.node.settings.id, node.consumer_addr, node.provider_addr, node.admin_addr
            );
            stop.await;
            eprintln!("stopping: draining exchanges");
            node.stop().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Log(cmd) => log_command(cmd).await,
        Command::Audit(cmd) => audit_command(cmd).await,
        Command::Node(NodeCommand::Init { id, out }) => {
            let node: enlace_core::NodeId = id.parse()?;
            let keys = enlace_certs::node_init(&node)?;
            std::fs::create_dir_all(&out)?;
            for (name, text, secret) in [
                ("tls-key.pem", &keys.tls_key_pem, true),
                ("signing-key.pem", &keys.signing_key_pem, true),
                ("tls.csr", &keys.tls_csr_pem, false),
                ("signing.csr", &keys.signing_csr_pem, false),
            ] {
                write_file(&out.join(name), text, secret)?;
            }
            println!(
                "wrote tls-key.pem, signing-key.pem, tls.csr and signing.csr to {}",
                out.display()
            );
            println!(
                "register the node with its member admin token: POST /v1/nodes {{id, address, tls_csr, signing_csr}}"
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::CaInit {
            instance,
            out,
            days,
        }) => {
            let instance: enlace_core::Instance = instance.parse()?;
            std::fs::create_dir_all(&out)?;
            let ca = enlace_certs::FederationCa::create(&instance, time_days(days))?;
            write_file(&out.join("ca-key.pem"), ca.key_pem(), true)?;
            write_file(&out.join("ca.pem"), ca.cert_pem(), false)?;
            println!(
                "wrote ca.pem and ca-key.pem to {}; point the registry's data_dir at it",
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCommand::Show { cert }) => {
            let pem = std::fs::read_to_string(&cert)?;
            let info = enlace_certs::cert_info(&pem)?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn audit_command(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    use enlace_node::audit::{Auditor, Evidence};
    match cmd {
        AuditCommand::Verify {
            ca,
            evidence,
            registry,
            message_id,
            token,
            from,
            to,
        } => {
            let ca = std::fs::read_to_string(&ca)
                .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
            let result = match (evidence, registry, message_id, token, from, to) {
                (Some(file), ..) => {
                    let bytes = std::fs::read(&file)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                    Evidence::parse(&bytes).and_then(|e| e.verify(&ca))
                }
                (None, Some(registry), Some(id), Some(token), None, None) => {
                    Auditor::new(&registry, &ca, reqwest::Client::new())
                        .verify_inclusion(&id, &token)
                        .await
                }
                (None, Some(registry), None, None, Some(from), Some(to)) => {
                    Auditor::new(&registry, &ca, reqwest::Client::new())
                        .verify_consistency(from, to)
                        .await
                }
                _ => {
                    eprintln!(
                        "enlace: give --evidence FILE, or --registry with --message-id and --token, or with --from and --to"
                    );
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            match result {
                Ok(report) => {
                    for line in report.lines {
                        println!("verified: {line}");
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(p) => {
                    eprintln!("enlace: NOT verified: {}", p.detail);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AuditCommand::Evidence {
            registry,
            message_id,
            node,
            token,
            from,
            to,
            out,
        } => {
            // The evidence is checked when verified, against the CA the verifier holds.
            let auditor = Auditor::new(&registry, "", reqwest::Client::new());
            let evidence = match (message_id, token, from, to) {
                (Some(id), Some(token), None, None) => {
                    auditor
                        .fetch_access_evidence(&id, node.as_deref(), &token)
                        .await
                }
                (None, None, Some(from), Some(to)) => {
                    auditor.fetch_consistency_evidence(from, to).await
                }
                _ => {
                    eprintln!("enlace: give --message-id and --token, or --from and --to");
                    return Ok(ExitCode::from(EXIT_CONFIG));
                }
            };
            match evidence {
                Ok(e) => {
                    std::fs::write(&out, serde_json::to_vec_pretty(&e)?)?;
                    println!(
                        "wrote the evidence to {}; check it offline with `enlace audit verify --evidence {} --ca ca.pem`",
                        out.display(),
                        out.display()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(p) => {
                    eprintln!("enlace: {}", p.detail);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

fn time_days(days: i64) -> time::Duration {
    time::Duration::days(days)
}

fn write_file(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

async fn once_only_check(
    form: &std::path::Path,
    registry: &str,
    consumer: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let body = std::fs::read(form).map_err(|e| anyhow::anyhow!("{}: {e}", form.display()))?;
    let mut url = format!("{registry}/v1/once-only-check");
    if let Some(c) = consumer {
        url.push_str(&format!("?consumer={c}"));
    }
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = resp.status();
    let report: serde_json::Value = resp.json().await?;
    if !status.is_success() {
        eprintln!(
            "refused: {}",
            report["detail"].as_str().unwrap_or("(no detail)")
        );
        return Ok(ExitCode::FAILURE);
    }
    let held = report["held"].as_array().cloned().unwrap_or_default();
    println!(
        "{} field(s) the state already holds (do not ask the person):",
        held.len()
    );
    for h in &held {
        println!(
            "  {:<28} {:<22} from {} {} {}  contract: {}",
            h["field"].as_str().unwrap_or(""),
            h["concept"].as_str().unwrap_or(""),
            h["service"].as_str().unwrap_or(""),
            h["operation"].as_str().unwrap_or(""),
            h["source_field"].as_str().unwrap_or(""),
            h["contract"].as_str().unwrap_or("none yet: propose one"),
        );
    }
    let not_held = report["not_held"].as_array().cloned().unwrap_or_default();
    println!("{} field(s) only the person can give:", not_held.len());
    for f in not_held {
        println!("  {}", f.as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

fn load_node_settings(path: &std::path::Path) -> anyhow::Result<enlace_node::settings::Checked> {
    let text = std::fs::read_to_string(path)?;
    enlace_node::settings::NodeSettings::from_toml(&text)
}

/// The signed configuration as the node last verified it (its cache).
fn cached_config(
    settings: &enlace_node::settings::Checked,
) -> anyhow::Result<std::sync::Arc<enlace_core::GlobalConfig>> {
    let ca = std::fs::read_to_string(&settings.raw.ca_file)?;
    let client = enlace_node::ConfigClient::new(enlace_node::ConfigSource {
        registry_url: settings.raw.registry_url.clone(),
        instance: settings.instance.clone(),
        anchors: vec![ca],
        cache_path: settings.raw.data_dir.join("config.json"),
    })?;
    client
        .last_verified()
        .ok_or_else(|| anyhow::anyhow!("the node has no verified configuration cached"))
}

async fn log_command(cmd: LogCommand) -> anyhow::Result<ExitCode> {
    use enlace_msglog as msglog;
    match cmd {
        LogCommand::Verify { config, db } => {
            let (db, heads, key) = match (config, db) {
                (Some(config), _) => {
                    let settings = load_node_settings(&config)?;
                    let db = settings.raw.data_dir.join("messages.sqlite");
                    let node = settings.id.to_string();
                    let url = format!("{}/v1/log-heads/{node}", settings.raw.registry_url);
                    let ca = std::fs::read_to_string(&settings.raw.ca_file)?;
                    let http = enlace_node::registry_client(
                        &settings.raw.registry_url,
                        &enlace_certs::TrustStore::new(&[ca], None)?,
                    )?;
                    let anchored: Vec<enlace_core::loghead::SignedHead> = http
                        .get(&url)
                        .send()
                        .await?
                        .error_for_status()?
                        .json()
                        .await?;
                    println!(
                        "{} head(s) anchored in the registry for {node}",
                        anchored.len()
                    );
                    let mut heads = anchored;
                    heads.extend(msglog::stored_heads(&db)?);
                    let cfg = cached_config(&settings)?;
                    let trust = enlace_certs::TrustStore::new(&cfg.federation_ca, Some(&cfg.crl))?;
                    let cert = std::fs::read_to_string(&settings.raw.signing_cert_file)?;
                    let key = enlace_certs::verify_signer(
                        &trust,
                        &cert,
                        &settings.id.uri(),
                        time::OffsetDateTime::now_utc(),
                    )?;
                    (db, heads, Some(key))
                }
                (None, Some(db)) => {
                    let heads = msglog::stored_heads(&db)?;
                    (db, heads, None)
                }
                (None, None) => anyhow::bail!("give --config NODE.toml or --db MESSAGES.sqlite"),
            };
            let report = msglog::verify_file(&db, &heads, key.as_deref())?;
            println!(
                "{} record(s) from seq {} to {}, head {}; {} signed head(s) checked{}",
                report.records,
                report.from_seq,
                report.head_seq,
                report.head_hash_hex,
                report.heads_checked,
                if key.is_some() {
                    " with the node's signing key"
                } else {
                    " (signatures not checked: no key)"
                }
            );
            for f in &report.head_failures {
                println!("signed head at seq {}: {}", f.seq, f.reason);
            }
            match report.first_broken {
                Some(seq) => {
                    println!(
                        "BROKEN at record {seq}: {}",
                        report.reason.as_deref().unwrap_or("?")
                    );
                    Ok(ExitCode::FAILURE)
                }
                None if !report.head_failures.is_empty() => Ok(ExitCode::FAILURE),
                None => {
                    println!("the chain verifies");
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        LogCommand::Export {
            message_id,
            config,
            out,
        } => {
            let settings = load_node_settings(&config)?;
            let cfg = cached_config(&settings)?;
            let db = settings.raw.data_dir.join("messages.sqlite");
            let bundle =
                enlace_node::bundle::create(&db, &message_id, &settings.id.to_string(), &cfg)?;
            std::fs::write(&out, serde_json::to_vec_pretty(&bundle)?)?;
            println!(
                "wrote {} record(s) of {message_id} to {}",
                bundle.evidence.entries.len(),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Check { bundle } => {
            let b = enlace_node::bundle::read(&bundle)?;
            match b.verify() {
                Ok(lines) => {
                    for l in lines {
                        println!("{l}");
                    }
                    println!("the evidence verifies");
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    println!("the evidence does NOT verify: {e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

/// Listens for Ctrl-C (SIGINT) or, on Unix, SIGTERM (what systemd and Kubernetes send), so that
/// every role drains and anchors its log before it exits. The handlers are installed when this
/// is called, not when the future is first polled: call it before saying "ready", or a signal
/// sent right after that line would still meet the default action and kill the process.
pub(crate) fn stop_signal() -> std::io::Result<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        Ok(Box::pin(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }))
    }
    #[cfg(not(unix))]
    {
        Ok(Box::pin(async {
            let _ = tokio::signal::ctrl_c().await;
        }))
    }
}
