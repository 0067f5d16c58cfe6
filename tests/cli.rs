//! The `enlace` command itself, run as a person runs it from the README: `enlace up` serving a
//! person through both nodes, the registry and log subcommands against it, SIGTERM draining
//! everything, and a bad configuration file refused with exit code 64 naming the key.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod support;

use support::{BIN, free_base, text};

fn enlace(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("enlace runs")
}

/// `enlace up` in the background, and the lines it printed until it was ready. Dropped
/// before it was terminated (a failed assertion), it kills the process.
struct Up {
    child: Child,
    lines: Vec<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Up {
    fn start(dir: &std::path::Path, base: u16) -> Up {
        let mut cmd = Command::new(BIN);
        cmd.stderr(Stdio::null());
        Up::start_as(cmd, dir, base)
    }

    /// `cmd` (the binary, or a shell that execs it) with `up`'s arguments.
    fn start_as(mut cmd: Command, dir: &std::path::Path, base: u16) -> Up {
        let mut child = cmd
            .args(["up", "--dir"])
            .arg(dir)
            .args(["--base-port", &base.to_string()])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("enlace up starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains("Press Ctrl-C to stop.");
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "enlace up did not get ready; it printed:\n{}",
                        lines.join("\n")
                    );
                }
            }
        }
        Up { child, lines }
    }

    /// The last word of the line that starts with `label`.
    fn value(&self, label: &str) -> String {
        self.lines
            .iter()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split_whitespace().nth(label.split_whitespace().count()))
            .unwrap_or_else(|| panic!("`{label}` not printed:\n{}", self.lines.join("\n")))
            .to_string()
    }

    /// Sends SIGTERM and waits for a clean exit.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("enlace up did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn up_serves_a_person_through_both_nodes_and_the_subcommands_work_against_it() {
    enlace_certs::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let mut up = Up::start(dir.path(), base);
    let registry = format!("http://127.0.0.1:{base}");
    let sii = format!("http://127.0.0.1:{}", base + 7);
    let token = up.value("SII renta backend token");
    let contract = up.value("contract");
    assert!(contract.starts_with("ctr_"), "{contract}");

    // The README's curl: name and address only, the contract's fields.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!(
            "{sii}/r1/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/12345678-5"
        ))
        .bearer_auth(&token)
        .header("Enlace-Client", "CL-DEV/GOV/60803000-K/renta")
        .header("Enlace-Contract", &contract)
        .header("Enlace-Subject", "CL-RUN:12345678-5")
        .header("Enlace-User", "funcionaria-42")
        .header("Enlace-Procedure", "devolucion-renta-2026")
        .send()
        .await
        .expect("the SII node answers");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("enlace-message-id"));
    let person: serde_json::Value = resp.json().await.expect("json");
    let mut keys: Vec<&str> = person
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["address", "name"], "{person}");

    // The tour's subcommands, against the running federation.
    let form = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/samples/form-subsidio.schema.json"
    );
    let o = enlace(&[
        "registry",
        "once-only-check",
        form,
        "--registry",
        &registry,
        "--consumer",
        "CL-DEV/GOV/60803000-K/renta",
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for field in ["nombre", "domicilio", "fecha_nacimiento"] {
        assert!(out.contains(field), "{field} in:\n{out}");
    }
    assert!(
        out.contains(&contract),
        "the covering contract is named:\n{out}"
    );

    let ca = dir.path().join("registry/ca.pem");
    let o = enlace(&[
        "registry",
        "verify-config",
        "--registry",
        &registry,
        "--ca",
        ca.to_str().expect("utf-8 path"),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    let sii_config = dir.path().join("nodes/60803000-K/node.toml");
    let o = enlace(&[
        "log",
        "verify",
        "--config",
        sii_config.to_str().expect("path"),
    ]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("with the node's signing key"), "{out}");

    // SIGTERM drains and stops everything cleanly; the logs verify afterwards.
    let status = up.terminate();
    assert!(status.success(), "enlace up exited with {status}");
    for member in ["61002000-3", "60803000-K"] {
        let db = dir
            .path()
            .join(format!("nodes/{member}/data/messages.sqlite"));
        let o = enlace(&["log", "verify", "--db", db.to_str().expect("path")]);
        let out = text(&o);
        assert!(o.status.success(), "{member}: {out}");
        assert!(out.contains("record(s)"), "{out}");
    }
}

#[test]
fn a_bad_node_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("id = \"CL-DEV/GOV/61002000-4/node/a\"\n", "id"),
        (
            "id = \"CL-DEV/GOV/61002000-3/node/a\"\nfavourite_colour = \"blue\"\n",
            "favourite_colour",
        ),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, toml).expect("write");
        let o = enlace(&["node", "serve", "--config", path.to_str().expect("path")]);
        assert_eq!(o.status.code(), Some(64), "{}", text(&o));
        assert!(text(&o).contains(key), "names `{key}`: {}", text(&o));
    }
}

#[test]
fn certs_and_node_init_make_a_ca_and_node_keys_with_csrs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let o = enlace(&[
        "certs",
        "ca-init",
        "--instance",
        "CL-DEV",
        "--out",
        ca_dir.to_str().expect("path"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = enlace(&[
        "certs",
        "show",
        ca_dir.join("ca.pem").to_str().expect("path"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("CL-DEV"), "{}", text(&o));
    let node_dir = dir.path().join("node");
    let o = enlace(&[
        "node",
        "init",
        "--id",
        "CL-DEV/GOV/61002000-3/node/b",
        "--out",
        node_dir.to_str().expect("path"),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let names: Vec<String> = std::fs::read_dir(&node_dir)
        .expect("node dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        names
            .iter()
            .filter(|n| n.ends_with(".csr.pem") || n.contains("csr"))
            .count()
            >= 2,
        "{names:?}"
    );
    // A malformed node id is refused naming the rule.
    let o = enlace(&[
        "node",
        "init",
        "--id",
        "CL-DEV/GOV/61002000-4/node/b",
        "--out",
        "x",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("check digit"), "{}", text(&o));
}

/// `registry serve` names the scheme it really serves: with `tls_names` set it says https.
#[test]
fn registry_serve_names_https_when_it_serves_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_base();
    for (names, scheme) in [
        ("\"enlace-registry\"", "https://enlace-registry:"),
        ("", "http://127.0.0.1:"),
    ] {
        let data = dir.path().join(format!("data-{}", names.len()));
        let path = dir.path().join(format!("registry-{}.toml", names.len()));
        std::fs::write(
            &path,
            format!(
                "instance = \"CL-DEV\"\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ntls_names = [{names}]\n",
                data.display()
            ),
        )
        .expect("write");
        let mut child = Command::new(BIN)
            .args([
                "registry",
                "serve",
                "--config",
                path.to_str().expect("path"),
            ])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("enlace runs");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l.contains("listening") => break l,
                Ok(_) => continue,
                Err(e) => {
                    let _ = child.kill();
                    panic!("no listening line: {e}");
                }
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        assert!(line.contains(&format!("{scheme}{port}")), "{line}");
        if !names.is_empty() {
            assert!(!line.contains("http://"), "{line}");
        }
    }
}

/// The soft and hard "Max open files" of a process, from `/proc/<pid>/limits`.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut words = line.split_whitespace().skip(3);
    (
        words.next().expect("soft").to_string(),
        words.next().expect("hard").to_string(),
    )
}

#[tokio::test]
async fn under_a_small_descriptor_limit_two_thousand_idle_sockets_do_not_stop_the_node() {
    enlace_certs::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let base = free_base();
    let stderr_path = dir.path().join("stderr.log");
    // systemd's default soft limit (1024), under a hard limit barely above it.
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 1024 && ulimit -Hn 1100 && exec \"$0\" \"$@\"",
        BIN,
    ])
    .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let up = Up::start_as(cmd, &dir.path().join("fed"), base);
    // The soft limit was raised to the hard one at start.
    assert_eq!(
        open_files_limit(up.child.id()),
        ("1100".to_string(), "1100".to_string())
    );
    let token = up.value("SII renta backend token");
    let contract = up.value("contract");

    // 2,000 idle sockets on the SII consumer listener, from five source addresses (400 each):
    // more than the process has descriptors for. Each source is held to its share.
    let consumer: std::net::SocketAddr = format!("127.0.0.1:{}", base + 7).parse().unwrap();
    let mut held = Vec::new();
    for i in 0..2000 {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        let source: std::net::IpAddr = format!("127.0.0.{}", 10 + i % 5).parse().unwrap();
        sock.bind(std::net::SocketAddr::new(source, 0))
            .expect("bind");
        if let Ok(s) = sock.connect(consumer).await {
            held.push(s);
        }
    }

    // The node still answers: its admin listener, and an exchange from another source.
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let ready = http
        .get(format!("http://127.0.0.1:{}/readyz", base + 8))
        .send()
        .await
        .expect("the admin listener answers");
    assert_eq!(ready.status(), 200);
    let resp = http
        .get(format!(
            "http://127.0.0.1:{}/r1/CL-DEV/GOV/61002000-3/registro-civil/personas/v1/persons/12345678-5",
            base + 7
        ))
        .bearer_auth(&token)
        .header("Enlace-Client", "CL-DEV/GOV/60803000-K/renta")
        .header("Enlace-Contract", &contract)
        .header("Enlace-Subject", "CL-RUN:12345678-5")
        .send()
        .await
        .expect("the consumer listener answers");
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered in {:?}",
        started.elapsed()
    );
    drop(held);
    drop(up);
    // The operator was told, once per interval, not once per connection.
    let log = std::fs::read_to_string(&stderr_path).expect("stderr");
    let lines = log.matches("connection cap reached").count();
    assert!((1..=3).contains(&lines), "{lines} cap lines:\n{log}");
}
