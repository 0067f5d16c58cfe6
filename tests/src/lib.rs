//! The in-process sandbox for end-to-end tests: a registry (and, with the relay, nodes) on
//! ephemeral loopback ports, talked to over real HTTP.
#![forbid(unsafe_code)]

pub use enlace_node::Clock;
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
        tls_names: Vec::new(),
        oidc: enlace_registry::citizen::oidc::OidcConfig {
            dev_issuer: true,
            ..Default::default()
        },
        consent_max_days: 365,
        limits: Default::default(),
    }
}

pub async fn start_registry() -> TestRegistry {
    let dir = tempfile::tempdir().expect("tempdir");
    start_registry_in(dir).await
}

pub async fn start_registry_in(dir: tempfile::TempDir) -> TestRegistry {
    start_registry_with(dir, 120).await
}

/// A registry whose configurations are valid for `validity_secs` (reissued every 10 s or on a
/// change, whichever comes first).
pub async fn start_registry_with(dir: tempfile::TempDir, validity_secs: u64) -> TestRegistry {
    start_registry_on(dir, validity_secs, 0).await
}

/// As [`start_registry_with`], listening on `port` (0: any).
pub async fn start_registry_on(
    dir: tempfile::TempDir,
    validity_secs: u64,
    port: u16,
) -> TestRegistry {
    let mut cfg = registry_config(dir.path());
    cfg.config_validity_secs = validity_secs;
    cfg.listen = format!("127.0.0.1:{port}").parse().expect("loopback");
    start_registry_configured(dir, cfg).await
}

/// A registry with the configuration `cfg` (whose `data_dir` is under `dir`).
pub async fn start_registry_configured(
    dir: tempfile::TempDir,
    cfg: RegistryConfig,
) -> TestRegistry {
    let running = enlace_registry::start(&cfg).await.expect("registry starts");
    let url = format!("http://{}", running.addr);
    TestRegistry {
        running,
        url,
        dir,
        http: reqwest::Client::new(),
    }
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

/// A whole federation on loopback: the registry seeded with the demo federation, the Registro
/// Civil node in front of the sample `personas` backend, and the SII node.
pub struct TestFederation {
    pub registry: TestRegistry,
    pub demo: demo::Demo,
    pub provider: enlace_node::RunningNode,
    pub consumer: enlace_node::RunningNode,
    pub backend_addr: std::net::SocketAddr,
    backend_stop: tokio::sync::watch::Sender<bool>,
    /// Bearer token of SII's `renta` backend at the SII node.
    pub client_token: String,
    /// Base URL of the SII node's consumer listener.
    pub consumer_url: String,
    /// The sample gRPC backend, when started by [`TestFederation::start_grpc`].
    pub grpc: Option<GrpcBackend>,
}

/// The sample `personas.v1.Personas` gRPC backend behind the provider node.
pub struct GrpcBackend {
    pub addr: std::net::SocketAddr,
    /// The served instance: counts its open document streams.
    pub service: enlace_samples::grpc::SamplePersonas,
    stop: tokio::sync::watch::Sender<bool>,
}

/// A free loopback port (bound, then released).
///
/// Picked below the kernel's ephemeral range (32768 and up), so that the outgoing connections
/// of tests running in parallel cannot take it between now and the node binding it; and never
/// one handed out before in this process, which a listener not yet bound would leave looking
/// free.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = 20_000 + (rand_u16() % 12_000);
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

/// The node settings of a demo member, as `enlace up` writes them.
pub fn node_settings(
    nodes_dir: &std::path::Path,
    member_code: &str,
    node_id: &str,
    registry_url: &str,
    provider_port: u16,
    clients: Vec<enlace_node::settings::Client>,
    services: Vec<enlace_node::settings::Provided>,
) -> enlace_node::settings::NodeSettings {
    let dir = nodes_dir.join(member_code);
    enlace_node::settings::NodeSettings {
        id: node_id.into(),
        registry_url: registry_url.into(),
        data_dir: dir.join("data"),
        ca_file: dir.join("ca.pem"),
        tls_cert_file: dir.join("tls.pem"),
        tls_key_file: dir.join("tls-key.pem"),
        signing_cert_file: dir.join("signing.pem"),
        signing_key_file: dir.join("signing-key.pem"),
        listen: enlace_node::settings::Listen {
            consumer: "127.0.0.1:0".parse().expect("addr"),
            provider: format!("127.0.0.1:{provider_port}").parse().expect("addr"),
            admin: "127.0.0.1:0".parse().expect("addr"),
        },
        limits: Default::default(),
        clients,
        services,
        log: Default::default(),
        consumer_tls: None,
        renewal: Default::default(),
    }
}

/// A clock `secs` seconds ahead of the system's (behind when negative), for a node whose
/// clock is off.
pub fn shifted_clock(secs: i64) -> Clock {
    Clock::from_fn(move || time::OffsetDateTime::now_utc() + time::Duration::seconds(secs))
}

pub fn sha256_hex(s: &str) -> String {
    enlace_description::sha256_hex(s.as_bytes())
}

impl TestFederation {
    pub async fn start() -> TestFederation {
        Self::start_with(|_, _| {}).await
    }

    /// Starts the federation, letting the caller adjust each node's settings (provider first).
    pub async fn start_with(
        adjust: impl Fn(&mut enlace_node::settings::NodeSettings, bool),
    ) -> TestFederation {
        Self::start_custom(120, adjust).await
    }

    /// As [`TestFederation::start_with`], with configurations valid for `validity_secs`.
    pub async fn start_custom(
        validity_secs: u64,
        adjust: impl Fn(&mut enlace_node::settings::NodeSettings, bool),
    ) -> TestFederation {
        Self::start_inner(validity_secs, adjust, false).await
    }

    /// The federation with each node reading its own clock: `provider`'s and `consumer`'s
    /// (see [`shifted_clock`]) instead of the system's.
    pub async fn start_with_clocks(provider: Clock, consumer: Clock) -> TestFederation {
        Self::start_clocked(120, |_, _| {}, false, [provider, consumer]).await
    }

    /// The federation with the `personas-grpc` contract, and the sample gRPC backend behind
    /// the provider node (`h2c://`), besides the REST one.
    pub async fn start_grpc(
        adjust: impl Fn(&mut enlace_node::settings::NodeSettings, bool),
    ) -> TestFederation {
        Self::start_inner(120, adjust, true).await
    }

    async fn start_inner(
        validity_secs: u64,
        adjust: impl Fn(&mut enlace_node::settings::NodeSettings, bool),
        with_grpc: bool,
    ) -> TestFederation {
        let system = [Clock::system(), Clock::system()];
        Self::start_clocked(validity_secs, adjust, with_grpc, system).await
    }

    async fn start_clocked(
        validity_secs: u64,
        adjust: impl Fn(&mut enlace_node::settings::NodeSettings, bool),
        with_grpc: bool,
        [provider_clock, consumer_clock]: [Clock; 2],
    ) -> TestFederation {
        // A port below the ephemeral range, so the registry can be restarted on it.
        let registry = start_registry_on(
            tempfile::tempdir().expect("tempdir"),
            validity_secs,
            free_port(),
        )
        .await;
        let (p_port, c_port) = (free_port(), free_port());
        let nodes_dir = registry.dir.path().join("nodes");
        let addresses = [
            &format!("127.0.0.1:{p_port}") as &str,
            &format!("127.0.0.1:{c_port}"),
        ];
        let demo = if with_grpc {
            demo::seed_with_grpc(&registry.running.registry, &nodes_dir, addresses).await
        } else {
            demo::seed(&registry.running.registry, &nodes_dir, addresses).await
        }
        .expect("demo seeds");
        let grpc = if with_grpc {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (stop, rx) = tokio::sync::watch::channel(false);
            let service = enlace_samples::grpc::SamplePersonas::default();
            tokio::spawn(enlace_samples::grpc::serve_service(
                listener,
                rx,
                service.clone(),
            ));
            Some(GrpcBackend {
                addr,
                service,
                stop,
            })
        } else {
            None
        };
        let backend = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let backend_addr = backend.local_addr().expect("addr");
        let (backend_stop, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(enlace_samples::rest::serve(backend, rx));

        let mut p = node_settings(
            &nodes_dir,
            "61002000-3",
            demo::PROVIDER_NODE,
            &registry.url,
            p_port,
            vec![],
            vec![enlace_node::settings::Provided {
                service: demo::PERSONAS.into(),
                backend: format!("http://{backend_addr}"),
                log_bodies: false,
            }],
        );
        if let Some(g) = &grpc {
            p.services.push(enlace_node::settings::Provided {
                service: demo::PERSONAS_GRPC.into(),
                backend: format!("h2c://{}", g.addr),
                log_bodies: false,
            });
        }
        adjust(&mut p, true);
        let client_token = "test-renta-token-0123456789".to_string();
        let mut c = node_settings(
            &nodes_dir,
            "60803000-K",
            demo::CONSUMER_NODE,
            &registry.url,
            c_port,
            vec![enlace_node::settings::Client {
                subsystem: demo::CONSUMER_SUBSYSTEM.into(),
                token_sha256: Some(sha256_hex(&client_token)),
                certificate_sha256: None,
                log_bodies: true,
            }],
            vec![],
        );
        adjust(&mut c, false);
        let wait = std::time::Duration::from_secs(10);
        let checked = p.check().expect("provider settings");
        let provider = enlace_node::start_with_clock(checked, wait, provider_clock)
            .await
            .expect("provider node starts");
        let checked = c.check().expect("consumer settings");
        let consumer = enlace_node::start_with_clock(checked, wait, consumer_clock)
            .await
            .expect("consumer node starts");
        let consumer_url = format!("http://{}", consumer.consumer_addr);
        TestFederation {
            registry,
            demo,
            provider,
            consumer,
            backend_addr,
            backend_stop,
            client_token,
            consumer_url,
            grpc,
        }
    }

    /// A relayed call from SII's `renta` backend: `GET /r1/personas/v1{path}` with the demo
    /// contract and subject, plus `extra` headers (which may override them).
    pub async fn call(&self, method: Method, path: &str, extra: &[(&str, &str)]) -> Reply {
        let url = format!("{}/r1/{}/v1{path}", self.consumer_url, demo::PERSONAS);
        let mut headers = vec![
            (
                "authorization".to_string(),
                format!("Bearer {}", self.client_token),
            ),
            (
                "enlace-client".to_string(),
                demo::CONSUMER_SUBSYSTEM.to_string(),
            ),
            ("enlace-contract".to_string(), self.demo.contract.clone()),
            ("enlace-subject".to_string(), demo::PERSON.to_string()),
            ("enlace-user".to_string(), "funcionaria-42".to_string()),
            (
                "enlace-procedure".to_string(),
                "devolucion-renta-2026".to_string(),
            ),
        ];
        for (k, v) in extra {
            headers.retain(|(name, _)| name != k);
            if !v.is_empty() {
                headers.push((k.to_string(), v.to_string()));
            }
        }
        let mut req = self.registry.http.request(method, url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.expect("consumer node answers");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let bytes = resp.bytes().await.expect("body");
        Reply {
            status,
            content_type,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }

    pub async fn stop(self) {
        self.consumer.stop().await;
        self.provider.stop().await;
        let _ = self.backend_stop.send(true);
        if let Some(g) = &self.grpc {
            let _ = g.stop.send(true);
        }
        self.registry.running.stop().await;
    }
}

impl TestFederation {
    /// Stops the registry while the nodes keep running (they keep their configuration and
    /// queue their access records).
    pub async fn stop_registry(&mut self) {
        self.registry.running.halt().await;
    }

    /// Starts the registry again on the same address and data directory.
    pub async fn start_registry_again(&mut self) {
        let mut cfg = registry_config(self.registry.dir.path());
        cfg.listen = self.registry.running.addr;
        self.registry.running = enlace_registry::start(&cfg)
            .await
            .expect("the registry starts again");
    }

    /// A tonic client of `personas.v1.Personas` pointed at the SII node's consumer listener.
    pub async fn grpc_client(
        &self,
    ) -> enlace_proto::personas::v1::personas_client::PersonasClient<tonic::transport::Channel>
    {
        enlace_proto::personas::v1::personas_client::PersonasClient::connect(
            self.consumer_url.clone(),
        )
        .await
        .expect("the consumer node accepts h2c")
    }

    /// `message` with the metadata SII's `renta` backend sends: token, client, the gRPC
    /// contract, subject, official and procedure, then `extra` (an empty value removes one).
    pub fn grpc_request<T>(&self, message: T, extra: &[(&str, &str)]) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        let md = req.metadata_mut();
        let mut pairs = vec![
            ("authorization", format!("Bearer {}", self.client_token)),
            ("enlace-client", demo::CONSUMER_SUBSYSTEM.to_string()),
            ("enlace-contract", self.demo.grpc_contract.clone()),
            ("enlace-subject", demo::PERSON.to_string()),
            ("enlace-user", "funcionaria-42".to_string()),
            ("enlace-procedure", "devolucion-renta-2026".to_string()),
        ];
        for (k, v) in extra {
            pairs.retain(|(name, _)| name != k);
            if !v.is_empty() {
                pairs.push((k, v.to_string()));
            }
        }
        for (k, v) in pairs {
            let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).expect("metadata key");
            md.insert(key, v.parse().expect("metadata value"));
        }
        req
    }

    /// Waits up to 10 s until the provider's (or the consumer's) node holds a signed
    /// configuration satisfying `ready`; panics saying `what` it never saw.
    pub async fn await_config(
        &self,
        provider: bool,
        what: &str,
        ready: impl Fn(&enlace_core::config::GlobalConfig) -> bool,
    ) {
        let node = if provider {
            &self.provider.node
        } else {
            &self.consumer.node
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !ready(&node.config.current().unwrap()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the node never saw {what}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The message-log database of the consumer (`false`) or provider (`true`) node.
    pub fn log_db(&self, provider: bool) -> std::path::PathBuf {
        let node = if provider {
            &self.provider
        } else {
            &self.consumer
        };
        node.node.settings.raw.data_dir.join("messages.sqlite")
    }
}

/// A node's key material read from the files `enlace up` writes, for tests that act as a node
/// themselves (an attacker holding a node's keys, a man in the middle).
pub struct NodeKeys {
    pub id: String,
    pub tls_cert: String,
    pub tls_key: String,
    pub signing_key: enlace_certs::SigningKey,
}

impl TestFederation {
    pub fn node_keys(&self, member_code: &str, node_id: &str) -> NodeKeys {
        let dir = self.registry.dir.path().join("nodes").join(member_code);
        let read = |n: &str| std::fs::read_to_string(dir.join(n)).expect("node file");
        NodeKeys {
            id: node_id.to_string(),
            tls_cert: read("tls.pem"),
            tls_key: read("tls-key.pem"),
            signing_key: enlace_certs::SigningKey::from_pem(&read("signing-key.pem"))
                .expect("signing key"),
        }
    }

    /// Trust as a node has it: the federation CA and the current CRL.
    pub async fn trust(&self) -> enlace_certs::TrustStore {
        let crl = self
            .registry
            .http
            .get(format!("{}/v1/crl", self.registry.url))
            .send()
            .await
            .expect("crl")
            .text()
            .await
            .expect("crl");
        enlace_certs::TrustStore::new(
            &[self.registry.running.registry.ca_pem().to_string()],
            Some(&crl),
        )
        .expect("trust")
    }

    /// A signed request as the consumer node would send it to the provider node, before
    /// sending: the caller may tamper with it. Returns the request and its headers.
    pub fn signed_request(
        &self,
        keys: &NodeKeys,
        method: &str,
        path: &str,
        body: &[u8],
        extra: &[(&str, &str)],
        created: i64,
    ) -> http::Request<bytes::Bytes> {
        let uri: http::Uri = format!(
            "https://{}/r1/{}/v1{path}",
            self.provider.provider_addr,
            demo::PERSONAS
        )
        .parse()
        .expect("uri");
        let method: http::Method = method.parse().expect("method");
        let mut headers = http::HeaderMap::new();
        let mut put = |k: &str, v: &str| {
            let name: http::HeaderName = k.parse().expect("name");
            if v.is_empty() {
                headers.remove(&name);
            } else {
                headers.insert(name, v.parse().expect("value"));
            }
        };
        let message_id = uuid::Uuid::now_v7().to_string();
        put("enlace-message-id", &message_id);
        put("enlace-client", demo::CONSUMER_SUBSYSTEM);
        put("enlace-service", &format!("{}/v1.0", demo::PERSONAS));
        put("enlace-contract", &self.demo.contract);
        put("enlace-subject", demo::PERSON);
        put("content-digest", &enlace_httpsig::content_digest(body));
        for (k, v) in extra {
            put(k, v);
        }
        let (input, sig) = enlace_httpsig::sign_request(
            &keys.signing_key,
            &keys.id,
            created,
            enlace_httpsig::Message::request(&method, &uri, &headers),
        )
        .expect("signs");
        headers.insert("signature-input", input.parse().expect("value"));
        headers.insert("signature", sig.parse().expect("value"));
        let mut req = http::Request::new(bytes::Bytes::copy_from_slice(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        req
    }

    /// Sends a request to the provider node over mutual TLS with `keys`' TLS identity.
    pub async fn send_to_provider(
        &self,
        keys: &NodeKeys,
        req: http::Request<bytes::Bytes>,
    ) -> (http::StatusCode, http::HeaderMap, Value) {
        let material = enlace_node::DialMaterial {
            trust: self.trust().await,
            cert_pem: keys.tls_cert.clone(),
            key_pem: keys.tls_key.clone(),
        };
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(material));
        let pool = enlace_node::PeerPool::new(rx, std::time::Duration::from_secs(5));
        let provider: enlace_core::NodeId = demo::PROVIDER_NODE.parse().expect("node id");
        let (parts, body) = req.into_parts();
        let req = http::Request::from_parts(parts, http_body_util::Full::new(body));
        let resp = pool
            .send(
                &provider,
                &self.provider.provider_addr.to_string(),
                req,
                std::time::Duration::from_secs(10),
            )
            .await
            .expect("provider node answers");
        let (parts, body) = resp.into_parts();
        let bytes = enlace_node::read_body(body, 1 << 20).await.expect("body");
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

impl TestFederation {
    /// A federation whose provider node listens on another port than the one the registry has
    /// for it. Returns the federation and the registered address, where nothing listens until
    /// the test puts something there (a proxy, a man in the middle); the real provider node is
    /// at `provider.provider_addr`.
    pub async fn start_behind_proxy() -> (TestFederation, std::net::SocketAddr) {
        Self::behind_proxy(false).await
    }

    /// As [`TestFederation::start_behind_proxy`], with the gRPC contract and backend of
    /// [`TestFederation::start_grpc`].
    pub async fn start_grpc_behind_proxy() -> (TestFederation, std::net::SocketAddr) {
        Self::behind_proxy(true).await
    }

    async fn behind_proxy(grpc: bool) -> (TestFederation, std::net::SocketAddr) {
        let real = free_port();
        let f = Self::start_inner(
            120,
            move |s, provider| {
                if provider {
                    s.listen.provider = format!("127.0.0.1:{real}").parse().expect("addr");
                }
            },
            grpc,
        )
        .await;
        let node = f
            .registry
            .get(
                &format!("/v1/nodes/{}", demo::PROVIDER_NODE),
                Some(f.registry.admin()),
            )
            .await;
        let registered: std::net::SocketAddr = node.ok(200)["address"]
            .as_str()
            .expect("the provider node's address")
            .parse()
            .expect("a socket address");
        assert_ne!(registered, f.provider.provider_addr);
        (f, registered)
    }
}

fn rand_u16() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let id = uuid::Uuid::now_v7().as_u128();
    ((id as u32) ^ nanos ^ ((id >> 64) as u32)) as u16
}

impl TestFederation {
    /// Stops the provider node and starts it again with the same settings and data (its
    /// message log and caches survive; its memory does not).
    pub async fn restart_provider(self) -> TestFederation {
        let TestFederation {
            registry,
            demo,
            provider,
            consumer,
            backend_addr,
            backend_stop,
            client_token,
            consumer_url,
            grpc,
        } = self;
        let settings = provider.node.settings.clone();
        provider.stop().await;
        let provider = enlace_node::start(settings, std::time::Duration::from_secs(10))
            .await
            .expect("provider node restarts");
        TestFederation {
            registry,
            demo,
            provider,
            consumer,
            backend_addr,
            backend_stop,
            client_token,
            consumer_url,
            grpc,
        }
    }
}
