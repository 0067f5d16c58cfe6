//! `enlace up`: a whole local federation for a newcomer and for demos. Today the registry,
//! seeded with the demo federation of DESIGN.md; the nodes join it with the relay.

use std::path::PathBuf;
use std::process::ExitCode;

use enlace_registry::demo;

/// Fixed, documented loopback ports (docs/CONFIGURATION.md).
pub const REGISTRY_PORT: u16 = 7400;
pub const PROVIDER_NODE_PORT: u16 = 8443;
pub const CONSUMER_NODE_PORT: u16 = 8543;

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the federation keeps its data; a fresh one is seeded, an existing one reused.
    #[arg(long, default_value = ".enlace-up")]
    dir: PathBuf,
    #[arg(long, default_value_t = REGISTRY_PORT)]
    registry_port: u16,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let registry_dir = args.dir.join("registry");
    let fresh = !registry_dir.join("registry.sqlite").exists();
    let cfg = enlace_registry::RegistryConfig {
        instance: demo::INSTANCE.into(),
        listen: ([127, 0, 0, 1], args.registry_port).into(),
        data_dir: registry_dir,
        storage: "sqlite".into(),
        config_validity_secs: 600,
        node_cert_validity_hours: 7 * 24,
    };
    let running = enlace_registry::start(&cfg).await?;
    let demo_file = args.dir.join("demo.json");
    let demo: demo::Demo = if fresh {
        let provider = format!("127.0.0.1:{PROVIDER_NODE_PORT}");
        let consumer = format!("127.0.0.1:{CONSUMER_NODE_PORT}");
        let d = demo::seed(
            &running.registry,
            &args.dir.join("nodes"),
            [&provider, &consumer],
        )
        .await?;
        std::fs::write(&demo_file, serde_json::to_vec_pretty(&d)?)?;
        d
    } else {
        serde_json::from_slice(&std::fs::read(&demo_file)?)?
    };
    let url = format!("http://{}", running.addr);
    println!("Enlace demo federation {} is up.", demo::INSTANCE);
    println!();
    println!("  registry         {url}   (API description: {url}/openapi.json)");
    println!("  data             {}", args.dir.display());
    println!("  federation admin token: {}", running.admin_token);
    println!(
        "  Registro Civil admin token ({}): {}",
        demo::REGISTRO_CIVIL,
        demo.registro_civil_token
    );
    println!("  SII admin token ({}): {}", demo::SII, demo.sii_token);
    println!(
        "  contract {} lets SII's renta read name and address for tax-refund-eligibility",
        demo.contract
    );
    println!();
    println!("Try:");
    println!("  curl -s {url}/v1/members");
    println!("  curl -s {url}/v1/services/{}/versions/v1", demo::PERSONAS);
    println!("  curl -s {url}/v1/concepts");
    println!(
        "  curl -s -H 'Authorization: Bearer {}' {url}/v1/contracts/{}",
        demo.sii_token, demo.contract
    );
    println!(
        "  curl -s -X POST -H 'content-type: application/json' --data-binary @deploy/samples/form-subsidio.schema.json '{url}/v1/once-only-check?consumer={}'",
        demo::CONSUMER_SUBSYSTEM
    );
    println!(
        "  cargo run --release -- registry verify-config --ca {}/registry/ca.pem",
        args.dir.display()
    );
    println!(
        "  curl -s -H 'Authorization: Bearer {}' {url}/v1/audit",
        running.admin_token
    );
    println!();
    println!("Press Ctrl-C to stop.");
    tokio::signal::ctrl_c().await?;
    println!("stopping");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}
