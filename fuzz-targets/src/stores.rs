//! Files a node reads: an evidence bundle handed to `enlace evidence verify`, its own
//! configuration file, and the signed global configuration from the registry (or its cache).

use std::sync::OnceLock;

use enlace_certs::{FederationCa, TrustStore};
use enlace_core::config::SignedConfig;
use enlace_core::id::Instance;
use enlace_core::problem::ProblemKind;
use enlace_node::bundle::Bundle;
use enlace_node::settings::NodeSettings;

/// A bundle that parses serialises to JSON that parses and serialises the same; checking it
/// offline never panics, whatever it holds.
pub fn evidence_bundle(data: &[u8]) {
    let Ok(bundle) = serde_json::from_slice::<Bundle>(data) else {
        return;
    };
    let json = serde_json::to_vec(&bundle).expect("a bundle serialises");
    let again: Bundle = serde_json::from_slice(&json).expect("a serialised bundle parses");
    assert_eq!(
        serde_json::to_vec(&again).expect("a bundle serialises"),
        json
    );
    let _ = bundle.verify();
}

/// A node's `node.toml`: settings that are accepted name a node whose member owns every client
/// subsystem and every service it lists.
pub fn node_settings(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(checked) = NodeSettings::from_toml(text) else {
        return;
    };
    assert_eq!(checked.instance, checked.id.member.instance);
    for (subsystem, _) in checked
        .clients
        .values()
        .chain(checked.client_certs.values())
    {
        assert_eq!(subsystem.member, checked.id.member);
    }
    for service in checked.services.keys() {
        assert_eq!(service.member(), &checked.id.member);
    }
}

fn federation() -> &'static (Instance, TrustStore) {
    static FEDERATION: OnceLock<(Instance, TrustStore)> = OnceLock::new();
    FEDERATION.get_or_init(|| {
        enlace_certs::install_crypto_provider();
        let instance: Instance = "CL-DEV".parse().expect("an instance");
        let ca = FederationCa::create(&instance, time::Duration::days(1)).expect("a CA");
        let trust = TrustStore::new(&[ca.cert_pem().to_string()], None).expect("a trust store");
        (instance, trust)
    })
}

/// A signed configuration as the registry serves it: nothing the fuzzer writes is signed by a
/// CA made in this process, so every one is refused, and as a bad signature (never as expired
/// or replayed, which would mean its payload was trusted).
pub fn signed_config(data: &[u8]) {
    let Ok(signed) = serde_json::from_slice::<SignedConfig>(data) else {
        return;
    };
    let (instance, trust) = federation();
    let now = time::OffsetDateTime::from_unix_timestamp(crate::NOW).expect("a time");
    match enlace_node::verify_config(&signed, trust, instance, 0, now) {
        Ok(config) => panic!(
            "an unsigned configuration verified: serial {}",
            config.serial
        ),
        Err(p) => assert_eq!(p.kind, ProblemKind::ConfigSignatureInvalid, "{p:?}"),
    }
}
