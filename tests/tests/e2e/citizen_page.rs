//! The citizen web page (`/citizen/`): served with a strict Content-Security-Policy and no
//! external resources, and, in headless Chromium, a person signed in through the development
//! issuer sees the sentence for their record with the mark of the inclusion proof checked in the
//! browser, while another person sees no record of theirs.
//!
//! Needs Chromium (`/usr/bin/chromium`, Debian package `chromium`; `.ci/run` installs it). The
//! browser test fails, never skips, when it is missing.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use enlace_registry::citizen::page::CSP;
use enlace_registry::demo;
use enlace_tests::TestFederation;

use crate::browser::{HEADLESS, chromium};
use reqwest::Method;

/// The DOM of `url` after its scripts ran, from headless Chromium's `--dump-dom`.
fn dump_dom(url: &str) -> String {
    let bin = chromium();
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("dom.html");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(&bin)
        .args(HEADLESS)
        .arg("--virtual-time-budget=10000")
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium exited with {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(&out_path).unwrap()
}

async fn browse(url: String) -> String {
    tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .unwrap()
}

/// Waits until the registry holds at least `n` records about `subject` (through the citizen
/// API, with a development token).
async fn wait_for_records(f: &TestFederation, subject: &str, n: u64) {
    let token = f
        .registry
        .post(
            "/oidc/dev/token",
            None,
            &serde_json::json!({ "sub": subject }),
        )
        .await
        .ok(200)["id_token"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = f
            .registry
            .get("/v1/citizen/access-records", Some(&token))
            .await;
        if r.ok(200)["total"].as_u64().unwrap_or(0) >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the access record never reached the registry"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_and_its_script_are_served_with_a_strict_csp() {
    let f = TestFederation::start().await;
    for (path, media) in [
        ("/citizen/", "text/html"),
        ("/citizen/app.js", "text/javascript"),
        ("/citizen/app.css", "text/css"),
    ] {
        let resp = f
            .registry
            .http
            .get(format!("{}{path}", f.registry.url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let h = resp.headers();
        assert_eq!(h["content-security-policy"], CSP, "{path}");
        assert_eq!(CSP, "default-src 'self'; script-src 'self'");
        assert!(
            h["content-type"].to_str().unwrap().starts_with(media),
            "{path}: {:?}",
            h["content-type"]
        );
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let body = resp.text().await.unwrap();
        // Nothing from elsewhere: no absolute URLs at all.
        assert!(
            !body.contains("http://") && !body.contains("https://") && !body.contains("//cdn"),
            "{path} names an external resource"
        );
        if path == "/citizen/" {
            // The only script is the page's own file; no inline script or style.
            assert_eq!(body.matches("<script").count(), 1);
            assert!(body.contains(r#"<script src="/citizen/app.js" defer></script>"#));
            assert!(!body.contains("<style") && !body.contains("style=\""));
            assert!(body.contains("development sign-in"));
            assert!(body.contains("ClaveÚnica"));
        }
    }
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_sees_their_verified_record_in_the_browser_and_another_sees_none() {
    chromium();
    let f = TestFederation::start().await;
    f.call(Method::GET, "/persons/12345678-5", &[])
        .await
        .ok(200);
    wait_for_records(&f, demo::PERSON, 1).await;

    let dom = browse(format!("{}/citizen/?dev_run=12345678-5", f.registry.url)).await;
    assert!(dom.contains(r#"data-state="done""#), "{dom}");
    assert!(dom.contains("CL-RUN:12345678-5"), "{dom}");
    let expected = "El Servicio de Impuestos Internos consultó su dirección y nombre el ";
    assert!(dom.contains(expected), "{dom}");
    let tail = format!(
        " UTC para tax-refund-eligibility, bajo el contrato {}.",
        f.demo.contract
    );
    assert!(dom.contains(&tail), "{dom}");
    let records: Vec<&str> = dom.split(r#"<li class="record""#).skip(1).collect();
    assert_eq!(records.len(), 1, "{dom}");
    assert!(
        records[0].contains(r#"data-verified="yes""#)
            && records[0].contains("Verificado en su navegador"),
        "the record's proof is checked in the browser: {dom}"
    );
    assert!(!dom.contains(r#"data-verified="no""#), "{dom}");

    let dom = browse(format!("{}/citizen/?dev_run=11111111-1", f.registry.url)).await;
    assert!(dom.contains(r#"data-state="done""#), "{dom}");
    assert!(dom.contains("CL-RUN:11111111-1"), "{dom}");
    assert!(
        dom.contains(r#"<p id="empty">No hay registros de acceso sobre usted.</p>"#),
        "{dom}"
    );
    assert!(!dom.contains("12345678-5"), "{dom}");
    assert!(!dom.contains(r#"<li class="record""#), "{dom}");
    f.stop().await;
}

/// A loopback HTTP/1.1 proxy to the registry that alters the `purpose` of every record the
/// citizen API returns (as a dishonest server or a man in the middle would), leaving the proofs
/// and the tree head as they are. One request per connection.
async fn tampering_proxy(registry: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let http = reqwest::Client::new();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let (http, registry) = (http.clone(), registry.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.lines();
                let mut first = lines.next().unwrap_or("").split(' ');
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or("/"));
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let mut req = http.request(
                    method.parse().unwrap_or(Method::GET),
                    format!("{registry}{path}"),
                );
                for (k, v) in &headers {
                    if k == "authorization" || k == "content-type" {
                        req = req.header(k, v);
                    }
                }
                let resp = req.body(buf[head_end..].to_vec()).send().await.unwrap();
                let status = resp.status().as_u16();
                let keep = ["content-type", "content-security-policy"];
                let mut out_headers = String::new();
                for (k, v) in resp.headers() {
                    if keep.contains(&k.as_str()) {
                        out_headers.push_str(&format!("{k}: {}\r\n", v.to_str().unwrap()));
                    }
                }
                let mut body = resp.bytes().await.unwrap().to_vec();
                if path.starts_with("/v1/citizen/access-records") && status == 200 {
                    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    for item in v["records"].as_array_mut().unwrap() {
                        item["record"]["record"]["purpose"] = "statistics".into();
                    }
                    body = serde_json::to_vec(&v).unwrap();
                }
                let head = format!(
                    "HTTP/1.1 {status} X\r\n{out_headers}content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_altered_after_logging_is_marked_unverified() {
    chromium();
    let f = TestFederation::start().await;
    f.call(Method::GET, "/persons/12345678-5", &[])
        .await
        .ok(200);
    wait_for_records(&f, demo::PERSON, 1).await;
    let proxy = tampering_proxy(f.registry.url.clone()).await;
    let dom = browse(format!("{proxy}/citizen/?dev_run=12345678-5")).await;
    assert!(dom.contains(r#"data-state="done""#), "{dom}");
    assert!(dom.contains("para statistics, bajo el contrato"), "{dom}");
    assert!(dom.contains(r#"data-verified="no""#), "{dom}");
    assert!(dom.contains("Prueba inválida"), "{dom}");
    assert!(!dom.contains(r#"data-verified="yes""#), "{dom}");
    f.stop().await;
}

/// The number of the person's access records under `contract` in the registry's database.
fn logged_under(f: &TestFederation, contract: &str) -> usize {
    let conn =
        rusqlite::Connection::open(f.registry.dir.path().join("registry").join("access.sqlite"))
            .unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM access_records WHERE contract = ?1",
        [contract],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as usize
}

/// Waits until a signed tree head covers every access record logged.
async fn all_records_in_a_signed_head(f: &TestFederation) {
    let conn =
        rusqlite::Connection::open(f.registry.dir.path().join("registry").join("access.sqlite"))
            .unwrap();
    let leaves: i64 = conn
        .query_row("SELECT COUNT(*) FROM merkle_leaves", [], |r| r.get(0))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while f
        .registry
        .get("/v1/access-log/tree-head", None)
        .await
        .ok(200)["tree_head"]["tree_size"]
        .as_i64()
        .unwrap_or(0)
        < leaves
    {
        assert!(Instant::now() < deadline, "no tree head covers the log");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_grants_and_revokes_on_the_page_and_the_field_follows() {
    use crate::browser::Browser;
    use crate::consent::{read, request, token_of};
    const PROCEDURE: &str = "deduccion-salud-2026";
    crate::browser::chromium();
    let f = TestFederation::start().await;
    let consent = f.demo.consent_contract.clone();
    // SII asks; the person opens the page and sees the request, in plain words.
    let id = request(&f, &consent, demo::PERSON, PROCEDURE).await;
    let mut page = Browser::open(&format!("{}/citizen/?dev_run=12345678-5", f.registry.url)).await;
    page.wait_for(
        "document.body.dataset.state === 'done'",
        Duration::from_secs(30),
    )
    .await;
    let pending = format!("document.querySelector('#pending li[data-id=\"{id}\"]')");
    page.wait_for(&format!("{pending} !== null"), Duration::from_secs(5))
        .await;
    let text = page.eval(&format!("{pending}.textContent")).await;
    let text = text.as_str().unwrap();
    assert!(
        text.contains("El Servicio de Impuestos Internos pide su autorización para recibir su previsión de salud para health-expense-deduction, en el trámite deduccion-salud-2026"),
        "{text}"
    );
    assert!(
        text.contains("Autorizar") && text.contains("Rechazar"),
        "{text}"
    );

    // The person clicks «Autorizar».
    page.eval(&format!(
        "{pending}.querySelector('button.grant').click(), true"
    ))
    .await;
    let granted = format!(
        "(() => {{ const li = document.querySelector('#history li[data-id=\"{id}\"]'); return li !== null && li.dataset.state === 'granted' && document.body.dataset.state === 'done'; }})()"
    );
    page.wait_for(&granted, Duration::from_secs(10)).await;
    assert_eq!(
        page.eval("document.querySelectorAll('#pending li').length")
            .await,
        serde_json::json!(0)
    );

    // SII gets the health insurance through both nodes with the token.
    let t = token_of(&f, &id).await;
    assert_eq!(
        read(&f, Some(&t), PROCEDURE).await["healthInsurance"],
        "FONASA"
    );
    while logged_under(&f, &consent) < 1 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_records_in_a_signed_head(&f).await;

    // The person revokes on the page; within seconds the field is withheld again.
    page.go(&format!("{}/citizen/?dev_run=12345678-5", f.registry.url))
        .await;
    page.wait_for(
        "document.body.dataset.state === 'done'",
        Duration::from_secs(30),
    )
    .await;
    let with_authorisation = format!(
        "Array.from(document.querySelectorAll('li.record')).some(li => li.textContent.includes('consultó su previsión de salud y nombre') && li.textContent.includes('Con su autorización {id}'))"
    );
    page.wait_for(&with_authorisation, Duration::from_secs(5))
        .await;
    page.eval(&format!(
        "document.querySelector('#history li[data-id=\"{id}\"] button.revoke').click(), true"
    ))
    .await;
    let revoked = format!(
        "(() => {{ const li = document.querySelector('#history li[data-id=\"{id}\"]'); return li !== null && li.dataset.state === 'revoked' && document.body.dataset.state === 'done'; }})()"
    );
    page.wait_for(&revoked, Duration::from_secs(10)).await;
    let revoked_at = Instant::now();
    loop {
        if read(&f, Some(&t), PROCEDURE)
            .await
            .get("healthInsurance")
            .is_none()
        {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "still released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let n = logged_under(&f, &consent);
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged_under(&f, &consent) < n.max(2) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    all_records_in_a_signed_head(&f).await;

    // The page again: the earlier record still shows the field, the later one says the
    // authorisation was revoked; every record's proof verifies in the browser.
    page.go(&format!("{}/citizen/?dev_run=12345678-5", f.registry.url))
        .await;
    page.wait_for(
        "document.body.dataset.state === 'done'",
        Duration::from_secs(30),
    )
    .await;
    let dom = page.dom().await;
    assert!(
        dom.contains("consultó su previsión de salud y nombre"),
        "{dom}"
    );
    assert!(
        dom.contains("Se presentó una autorización que no fue aceptada (usted la había revocado)"),
        "{dom}"
    );
    let events: Vec<&str> = ["Solicitada", "Autorizada por usted", "Revocada por usted"].into();
    for e in events {
        assert!(dom.contains(e), "{e}: {dom}");
    }
    assert!(!dom.contains(r#"data-verified="no""#), "{dom}");
    assert!(dom.contains(r#"data-verified="yes""#), "{dom}");
    page.close().await;
    f.stop().await;
}
