//! What the root tests (`cli`, `faults`, `process_faults`) share: the binary under test, free
//! ports for `enlace up --base-port`, and a command's whole output.

use std::process::Output;
use std::sync::Mutex;

/// The `enlace` binary this package builds.
pub const BIN: &str = env!("CARGO_BIN_EXE_enlace");

/// Nine consecutive free loopback ports (what `enlace up --base-port` takes), below the
/// kernel's ephemeral range (32768–60999) so that no outgoing connection takes one between the
/// check and the bind, and never within nine of a base already given in this process.
pub fn free_base() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .subsec_nanos();
    for i in 0..500u32 {
        let base = 20_000 + ((seed.wrapping_add(i * 7919)) % 12_000) as u16;
        let clear = given.iter().all(|g| base.abs_diff(*g) >= 9);
        if clear && (0..9).all(|k| std::net::TcpListener::bind(("127.0.0.1", base + k)).is_ok()) {
            given.push(base);
            return base;
        }
    }
    panic!("no nine consecutive free ports");
}

/// A finished command's stdout and stderr, one after the other.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
