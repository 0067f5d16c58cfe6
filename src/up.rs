//! `enlace up`: a whole local federation for a newcomer and for demos, on fixed loopback
//! ports, stopped cleanly by Ctrl-C.

use std::path::PathBuf;
use std::process::ExitCode;

use enlace_registry::demo;

use crate::federation::{self, Ports};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Where the federation keeps its data; a fresh one is seeded, an existing one reused.
    #[arg(long, default_value = ".enlace-up")]
    dir: PathBuf,
    /// Nine consecutive ports from this one instead of the documented ones (for tests).
    #[arg(long, hide = true)]
    base_port: Option<u16>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let ports = match args.base_port {
        Some(base) if base < u16::MAX - 9 => Ports::from_base(base),
        Some(base) => anyhow::bail!("--base-port {base}: nine ports from it must fit below 65536"),
        None => Ports::UP,
    };
    let f = federation::start(&args.dir, ports).await?;
    // Listening before the ready line below: a Ctrl-C or SIGTERM right after it drains.
    let stop = crate::stop_signal()?;
    let registry = format!("http://{}", f.registry.addr);
    let sii = format!("http://{}", f.consumer.consumer_addr);
    let s = &f.secrets;
    println!("Enlace demo federation {} is up.", demo::INSTANCE);
    println!();
    println!("  registry                      {registry}  (API: {registry}/openapi.json)");
    println!(
        "  Registro Civil node           provider {}  consumer http://{}  admin http://{}",
        f.provider.provider_addr, f.provider.consumer_addr, f.provider.admin_addr
    );
    println!(
        "  SII node                      provider {}  consumer {sii}  admin http://{}",
        f.consumer.provider_addr, f.consumer.admin_addr
    );
    println!("  sample personas backend       http://{}", f.backend);
    println!(
        "  sample personas gRPC backend  h2c://{}  (personas.v1.Personas)",
        f.grpc_backend
    );
    println!("  data                          {}", args.dir.display());
    println!();
    println!("  federation admin token        {}", f.registry.admin_token);
    println!(
        "  Registro Civil admin token    {}",
        s.demo.registro_civil_token
    );
    println!("  SII admin token               {}", s.demo.sii_token);
    println!("  SII renta backend token       {}", s.renta_token);
    println!(
        "  contract                      {} (renta may read name and address for tax-refund-eligibility)",
        s.demo.contract
    );
    println!(
        "  gRPC contract                 {} (renta may call the four methods of personas-grpc)",
        s.demo.grpc_contract
    );
    println!(
        "  consent contract              {} (renta may read the name, and the health insurance with the person's authorisation, for {})",
        s.demo.consent_contract,
        demo::CONSENT_PURPOSE
    );
    println!();
    println!(
        "Fetch a person through both nodes (you get name and address only: the contract's fields):"
    );
    println!();
    println!(
        "  curl -s {sii}/r1/{}/v1/persons/12345678-5 \\\n    -H 'Authorization: Bearer {}' \\\n    -H 'Enlace-Client: {}' -H 'Enlace-Contract: {}' \\\n    -H 'Enlace-Subject: {}' -H 'Enlace-User: funcionaria-42' -H 'Enlace-Procedure: devolucion-renta-2026'",
        demo::PERSONAS,
        s.renta_token,
        demo::CONSUMER_SUBSYSTEM,
        s.demo.contract,
        demo::PERSON
    );
    println!();
    println!(
        "The same person over gRPC, through both nodes (grpcurl finds the method by reflection on the SII node):"
    );
    println!();
    let sii_grpc = f.consumer.consumer_addr;
    println!(
        "  grpcurl -plaintext \\\n    -H 'authorization: Bearer {}' \\\n    -H 'enlace-client: {}' -H 'enlace-contract: {}' \\\n    -H 'enlace-subject: {}' \\\n    -d '{{\"run\":\"12345678-5\"}}' {sii_grpc} personas.v1.Personas/GetPerson",
        s.renta_token,
        demo::CONSUMER_SUBSYSTEM,
        s.demo.grpc_contract,
        demo::PERSON
    );
    println!(
        "  grpcurl -plaintext -H 'authorization: Bearer {}' {sii_grpc} describe personas.v1.Personas",
        s.renta_token
    );
    println!();
    println!(
        "Each kind of call goes through both nodes the same way, with the same -H lines: a server stream"
    );
    println!(
        "  (ListDocuments), a client stream (VerifyIdentities: you get the counts only, the contract's fields)"
    );
    println!(
        "  and a bidirectional one (LookupPersons: type {{\"run\":\"12345678-5\"}} per line, each answered at once)."
    );
    println!(
        "  Every request message names the person of enlace-subject (the run is bound to it); another RUN is PERMISSION_DENIED:"
    );
    println!();
    let metadata = format!(
        "-H 'authorization: Bearer {}' -H 'enlace-client: {}' \\\n    -H 'enlace-contract: {}' -H 'enlace-subject: {}'",
        s.renta_token,
        demo::CONSUMER_SUBSYSTEM,
        s.demo.grpc_contract,
        demo::PERSON
    );
    println!(
        "  grpcurl -plaintext {metadata} \\\n    -d '{{\"run\":\"12345678-5\"}}' {sii_grpc} personas.v1.Personas/ListDocuments"
    );
    println!(
        "  grpcurl -plaintext {metadata} \\\n    -d '{{\"run\":\"12345678-5\",\"name\":\"María José Pérez Soto\",\"birthDate\":\"1980-04-15\"}} {{\"run\":\"12345678-5\",\"name\":\"María José Peres Soto\",\"birthDate\":\"1980-04-15\"}}' \\\n    {sii_grpc} personas.v1.Personas/VerifyIdentities"
    );
    println!(
        "  grpcurl -plaintext {metadata} \\\n    -d @ {sii_grpc} personas.v1.Personas/LookupPersons"
    );
    println!();
    println!(
        "Sensitive data needs the person's authorisation. SII asks for it, the person grants it on the citizen page, SII reads the token:"
    );
    println!();
    println!(
        "  curl -s -X POST {registry}/v1/authorisations -H 'Authorization: Bearer {}' -H 'content-type: application/json' \\
    -d '{{\"contract\":\"{}\",\"subject\":\"{}\",\"procedure\":\"deduccion-salud-2026\",\"reason\":\"Deducir sus gastos de salud\"}}'",
        s.demo.sii_token,
        s.demo.consent_contract,
        demo::PERSON
    );
    println!(
        "  open {registry}/citizen/?dev_run=12345678-5          # «Autorizar» (and later «Revocar»)"
    );
    println!(
        "  curl -s {registry}/v1/authorisations/$AUTHORISATION_ID -H 'Authorization: Bearer {}'   # .token once granted",
        s.demo.sii_token
    );
    println!(
        "  curl -s {sii}/r1/{}/v1/persons/12345678-5 \\
    -H 'Authorization: Bearer {}' -H 'Enlace-Client: {}' -H 'Enlace-Contract: {}' \\
    -H 'Enlace-Subject: {}' -H 'Enlace-Procedure: deduccion-salud-2026' -H \"Enlace-Authorization: $TOKEN\"",
        demo::PERSONAS,
        s.renta_token,
        demo::CONSUMER_SUBSYSTEM,
        s.demo.consent_contract,
        demo::PERSON
    );
    println!(
        "  (without Enlace-Authorization, or after a revocation, healthInsurance is withheld and the rest is answered)"
    );
    println!();
    println!("More to try:");
    println!(
        "  curl -s {sii}/meta/allowed -H 'Authorization: Bearer {}'",
        s.renta_token
    );
    println!(
        "  curl -s {registry}/v1/services/{}/versions/v1",
        demo::PERSONAS
    );
    println!(
        "  cargo run --release -- registry once-only-check deploy/samples/form-subsidio.schema.json --consumer {}",
        demo::CONSUMER_SUBSYSTEM
    );
    println!(
        "  cargo run --release -- log verify --db {}/nodes/61002000-3/data/messages.sqlite",
        args.dir.display()
    );
    println!(
        "  curl -s -H 'Authorization: Bearer {}' {registry}/v1/audit",
        f.registry.admin_token
    );
    println!();
    println!("Press Ctrl-C to stop.");
    stop.await;
    println!("stopping: draining exchanges, anchoring log heads");
    f.stop().await;
    Ok(ExitCode::SUCCESS)
}
