//! The in-process sandbox for end-to-end tests: a registry (and, with the relay, nodes) on
//! ephemeral loopback ports, talked to over real HTTP.
#![forbid(unsafe_code)]

use enlace_registry::{RegistryConfig, RunningRegistry, demo};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// A registry on an ephemeral loopback port with its own data directory.
pub struct TestRegistry {
    pub running: RunningRegistry,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
}

/// The configuration a test registry runs with, in `dir`.
pub fn registry_config(dir: &std::path::Path) -> RegistryConfig {
    RegistryConfig {
        instance: demo::INSTANCE.into(),
        listen: "127.0.0.1:0".parse().expect("loopback"),
        data_dir: dir.join("registry"),
        storage: "sqlite".into(),
        config_validity_secs: 120,
        node_cert_validity_hours: 24,
    }
}

pub async fn start_registry() -> TestRegistry {
    let dir = tempfile::tempdir().expect("tempdir");
    start_registry_in(dir).await
}

pub async fn start_registry_in(dir: tempfile::TempDir) -> TestRegistry {
    let _ = tracing_init();
    let running = enlace_registry::start(&registry_config(dir.path()))
        .await
        .expect("registry starts");
    let url = format!("http://{}", running.addr);
    TestRegistry {
        running,
        url,
        dir,
        http: reqwest::Client::new(),
    }
}

fn tracing_init() -> Option<()> {
    None
}

/// A response: status and JSON body (or `Value::Null` when empty or not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub body: Value,
}

impl Reply {
    /// Asserts an RFC 9457 problem of the given slug and status, and returns its body.
    #[track_caller]
    pub fn problem(&self, slug: &str, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "status of {:#}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{:#}",
            self.body
        );
        assert_eq!(
            self.body["type"],
            format!("urn:enlace:problem:{slug}"),
            "{:#}",
            self.body
        );
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        &self.body
    }

    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{:#}", self.body);
        &self.body
    }
}

impl TestRegistry {
    /// Sends `body` as `content_type` with an optional bearer token.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if !body.is_empty() || !content_type.is_empty() {
            req = req.header("content-type", content_type).body(body);
        }
        let resp = req.send().await.expect("registry answers");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp.bytes().await.expect("body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::GET, path, token, "", Vec::new()).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        self.send(
            Method::POST,
            path,
            token,
            "application/json",
            body.to_string().into_bytes(),
        )
        .await
    }

    pub fn admin(&self) -> &str {
        &self.running.admin_token
    }

    /// Seeds the demo federation in-process (the same operations the API performs).
    pub async fn seed_demo(&self) -> demo::Demo {
        demo::seed(
            &self.running.registry,
            &self.dir.path().join("nodes"),
            ["127.0.0.1:1", "127.0.0.1:2"],
        )
        .await
        .expect("demo seeds")
    }

    /// Number of audit entries so far.
    pub async fn audit_len(&self) -> usize {
        self.get("/v1/audit?limit=1000", Some(self.admin()))
            .await
            .ok(200)
            .as_array()
            .map_or(0, Vec::len)
    }
}
