//! A headless Chromium driven over the Chrome DevTools Protocol, for tests that click on a
//! page: Chromium is started with `--remote-debugging-port=0`, and a minimal WebSocket client
//! (RFC 6455: the handshake, masked text frames out, unfragmented or continued frames in, ping
//! answered) sends `Target.*` and `Runtime.evaluate` commands to one page.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The Chromium binary: `ENLACE_CHROMIUM`, else `/usr/bin/chromium`; fails with how to install.
pub(crate) fn chromium() -> PathBuf {
    let path = std::env::var_os("ENLACE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "Chromium is missing at {}: install it (as root on Debian: `apt-get update && apt-get install -y --no-install-recommends chromium`; ./test.sh does this), or set ENLACE_CHROMIUM",
        path.display()
    );
    path
}

/// How the tests run Chromium: headless, sandbox off (as root in CI), nothing fetched but
/// the page.
pub(crate) const HEADLESS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
];

/// One page in a headless Chromium.
pub(crate) struct Browser {
    child: tokio::process::Child,
    ws: TcpStream,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium and opens `url` in a new page.
    pub(crate) async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = tokio::process::Command::new(chromium())
            .args(HEADLESS)
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium starts");
        // Chromium tells where its DevTools endpoint listens on stderr.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_string();
                }
            }
            panic!("chromium ended without a DevTools endpoint");
        })
        .await
        .expect("chromium's DevTools endpoint within 60 s");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let rest = endpoint.strip_prefix("ws://").unwrap();
        let (host, path) = rest.split_at(rest.find('/').unwrap());
        let ws = handshake(host, path).await;
        let mut b = Browser {
            child,
            ws,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = b
            .command("Target.createTarget", json!({"url": url}), false)
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b
            .command(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
                false,
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b
    }

    /// Sends a command (to the page's session when `page`) and returns its result.
    async fn command(&mut self, method: &str, params: Value, page: bool) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if page {
            msg["sessionId"] = json!(self.session);
        }
        send_text(&mut self.ws, &msg.to_string()).await;
        loop {
            let text = read_message(&mut self.ws).await;
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub(crate) async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .command(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
                true,
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is true in the page.
    pub(crate) async fn wait_for(&mut self, expression: &str, within: Duration) {
        let deadline = Instant::now() + within;
        // False, not an error, while the document is being replaced.
        let guarded = format!(
            "(() => {{ try {{ return ({expression}); }} catch (e) {{ return false; }} }})()"
        );
        loop {
            if self.eval(&guarded).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let dom = self.dom().await;
                panic!("`{expression}` not true within {within:?}: {dom}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The page's DOM as HTML.
    pub(crate) async fn dom(&mut self) -> String {
        self.eval("document.documentElement.outerHTML")
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Loads `url` in the page (the old document is marked first, so that a wait on the new
    /// one cannot be satisfied by the old).
    pub(crate) async fn go(&mut self, url: &str) {
        self.eval("document.body.dataset.state = 'navigating', true")
            .await;
        self.command("Page.navigate", json!({"url": url}), true)
            .await;
    }

    pub(crate) async fn close(mut self) {
        let _ = self.child.kill().await;
    }
}

/// The WebSocket opening handshake (RFC 6455 §4.1) to `host` for `path`.
async fn handshake(host: &str, path: &str) -> TcpStream {
    let mut ws = TcpStream::connect(host).await.unwrap();
    // Sixteen bytes that are new for each connection (RFC 6455 asks for a nonce, not a secret).
    let key = base64::engine::general_purpose::STANDARD.encode(uuid::Uuid::now_v7().as_bytes());
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    ws.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        ws.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    ws
}

/// One masked text frame (clients must mask, RFC 6455 §5.3).
async fn send_text(ws: &mut TcpStream, text: &str) {
    let payload = text.as_bytes();
    let mut frame = vec![0x81u8];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n < 65536 => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = (uuid::Uuid::now_v7().as_u128() as u32).to_be_bytes();
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    ws.write_all(&frame).await.unwrap();
}

/// The next whole text message, answering pings on the way.
async fn read_message(ws: &mut TcpStream) -> String {
    let mut message = Vec::new();
    loop {
        let mut h = [0u8; 2];
        ws.read_exact(&mut h).await.unwrap();
        let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            ws.read_exact(&mut b).await.unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            ws.read_exact(&mut b).await.unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        ws.read_exact(&mut payload).await.unwrap();
        match opcode {
            0x9 => {
                // Ping: answer with a masked pong of the same payload.
                let mask = [1u8, 2, 3, 4];
                let mut frame = vec![0x8a, 0x80 | payload.len() as u8];
                frame.extend_from_slice(&mask);
                frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
                ws.write_all(&frame).await.unwrap();
            }
            0x8 => panic!("chromium closed the DevTools connection"),
            0x0..=0x2 => {
                message.extend_from_slice(&payload);
                if fin {
                    return String::from_utf8(message).unwrap();
                }
            }
            _ => {}
        }
    }
}
