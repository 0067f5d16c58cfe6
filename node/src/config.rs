//! Following the registry's signed global configuration: verify, cache on disk, long-poll for
//! the next serial, keep working on the cached copy, and fail closed once it has expired.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use enlace_certs::TrustStore;
use enlace_core::config::{CONFIG_FORMAT, GlobalConfig, MAX_CONFIG_BYTES, SignedConfig};
use enlace_core::id::Instance;
use enlace_core::problem::{Problem, ProblemKind};
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::clock::{Clock, RegistryOffset};

/// Longest pause between two fetches while the registry is unreachable and the cached
/// configuration is still valid.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Longest pause between two fetches once no unexpired configuration is left (the node fails
/// closed until one arrives).
const FAILED_CLOSED_RETRY: Duration = Duration::from_secs(1);

/// How far a configuration's issue time may lie in our future (clock skew).
const MAX_SKEW: time::Duration = time::Duration::seconds(60);

/// The URI SAN of the certificate that signs an instance's configuration.
pub fn registry_signer_uri(instance: &Instance) -> String {
    format!("urn:enlace:registry:{instance}")
}

fn bad_signature(detail: impl Into<String>) -> Problem {
    Problem::new(ProblemKind::ConfigSignatureInvalid, detail)
}

/// Verifies a signed configuration against the federation CA (`anchors`): the signer
/// certificate chains to it and names the registry of `instance`, the Ed25519 signature
/// covers the payload, the payload is for `instance`, not expired at `now`, not issued in the
/// future, and its serial is not below `min_serial` (a replayed older configuration).
pub fn verify(
    signed: &SignedConfig,
    anchors: &TrustStore,
    instance: &Instance,
    min_serial: u64,
    now: OffsetDateTime,
) -> Result<GlobalConfig, Problem> {
    if signed.algorithm != "ed25519" {
        return Err(bad_signature(format!(
            "algorithm `{}` is not ed25519",
            signed.algorithm
        )));
    }
    let payload = B64
        .decode(&signed.payload)
        .map_err(|e| bad_signature(format!("payload is not base64: {e}")))?;
    let signature = B64
        .decode(&signed.signature)
        .map_err(|e| bad_signature(format!("signature is not base64: {e}")))?;
    let key = enlace_certs::verify_signer(
        anchors,
        &signed.signer_certificate,
        &registry_signer_uri(instance),
        now,
    )
    .map_err(|p| bad_signature(format!("signer certificate: {}", p.detail)))?;
    if !enlace_certs::verify_ed25519(&key, &payload, &signature) {
        return Err(bad_signature("the signature does not match the payload"));
    }
    let config: GlobalConfig = serde_json::from_slice(&payload)
        .map_err(|e| bad_signature(format!("signed payload is not a configuration: {e}")))?;
    if config.format != CONFIG_FORMAT {
        return Err(bad_signature(format!(
            "configuration format {} is not {CONFIG_FORMAT}",
            config.format
        )));
    }
    if &config.instance != instance {
        return Err(bad_signature(format!(
            "configuration is for instance {}, not {instance}",
            config.instance
        )));
    }
    if config.serial < min_serial {
        return Err(Problem::new(
            ProblemKind::ConfigReplayed,
            format!(
                "configuration serial {} is older than serial {min_serial} already seen",
                config.serial
            ),
        ));
    }
    if config.issued_at > now + MAX_SKEW {
        return Err(bad_signature(format!(
            "configuration issued in the future ({})",
            enlace_core::rfc3339(config.issued_at)
        )));
    }
    if config.expires_at <= now {
        return Err(Problem::new(
            ProblemKind::ConfigurationExpired,
            format!(
                "configuration serial {} expired at {}",
                config.serial,
                enlace_core::rfc3339(config.expires_at)
            ),
        ));
    }
    Ok(config)
}

/// The issue time a signed configuration claims, read before verification only to choose the
/// moment at which to verify an expired copy (the signature is still checked).
fn claimed_issue_time(signed: &SignedConfig) -> Option<OffsetDateTime> {
    let payload = B64.decode(&signed.payload).ok()?;
    let cfg: GlobalConfig = serde_json::from_slice(&payload).ok()?;
    Some(cfg.issued_at)
}

/// An HTTP `Date` (IMF-fixdate, RFC 9110 §5.6.7: `Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(value: &str) -> Option<OffsetDateTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(value, &format)
        .ok()
        .map(time::PrimitiveDateTime::assume_utc)
}

/// An HTTP client for the registry. Over `https://` the registry's certificate must chain to the
/// federation CA (the node's only anchor); no system roots are consulted.
pub fn registry_client(
    registry_url: &str,
    anchors: &TrustStore,
) -> Result<reqwest::Client, Problem> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none());
    if registry_url.starts_with("https://") {
        let tls = enlace_certs::https_client_config(anchors)?;
        builder = builder.use_preconfigured_tls((*tls).clone());
    }
    builder
        .build()
        .map_err(|e| Problem::new(ProblemKind::Internal, format!("registry client: {e}")))
}

/// Where and how a node follows the configuration.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// Base URL of the registry, e.g. `http://127.0.0.1:7400`.
    pub registry_url: String,
    pub instance: Instance,
    /// The federation CA certificate(s), PEM: the node's trust anchor, obtained out of band.
    pub anchors: Vec<String>,
    /// Where the last verified configuration is cached.
    pub cache_path: PathBuf,
}

/// How far this node's clock may differ from the registry's when no tolerance is given.
pub const DEFAULT_CLOCK_TOLERANCE_SECS: i64 = 30;

/// Follows the registry's configuration and hands out the current one.
pub struct ConfigClient {
    source: ConfigSource,
    anchors: TrustStore,
    http: reqwest::Client,
    current: watch::Sender<Option<Arc<GlobalConfig>>>,
    clock: Clock,
    /// This node's clock against the registry's, measured at each fetch.
    offset: RegistryOffset,
}

impl ConfigClient {
    /// Builds the client and loads the cached configuration, if any verifies (expired is fine:
    /// it is kept to be replaced, and [`ConfigClient::current`] refuses it).
    pub fn new(source: ConfigSource) -> Result<Arc<ConfigClient>, Problem> {
        Self::with_clock(source, Clock::system(), DEFAULT_CLOCK_TOLERANCE_SECS)
    }

    /// As [`ConfigClient::new`], reading the time from `clock`; this node's clock counts as
    /// wrong when it is more than `tolerance_secs` from the registry's.
    pub fn with_clock(
        source: ConfigSource,
        clock: Clock,
        tolerance_secs: i64,
    ) -> Result<Arc<ConfigClient>, Problem> {
        let anchors = TrustStore::new(&source.anchors, None)?;
        let http = registry_client(&source.registry_url, &anchors)?;
        let client = Arc::new(ConfigClient {
            source,
            anchors,
            http,
            current: watch::channel(None).0,
            clock,
            offset: RegistryOffset::new(tolerance_secs),
        });
        if let Ok(bytes) = std::fs::read(&client.source.cache_path) {
            match serde_json::from_slice::<SignedConfig>(&bytes)
                .map_err(|e| bad_signature(e.to_string()))
                .and_then(|s| client.verify_at(&s, 0, client.clock.now()))
            {
                Ok(cfg) => {
                    client.current.send_replace(Some(Arc::new(cfg)));
                }
                Err(p) if p.kind == ProblemKind::ConfigurationExpired => {
                    tracing::warn!(problem = %p, "cached configuration has expired");
                    // Keep it for offline tools; `current()` refuses it.
                    if let Ok(cfg) = serde_json::from_slice::<SignedConfig>(&bytes)
                        .map_err(|e| bad_signature(e.to_string()))
                        .and_then(|s| {
                            let issued =
                                claimed_issue_time(&s).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                            client.verify_at(&s, 0, issued)
                        })
                    {
                        client.current.send_replace(Some(Arc::new(cfg)));
                    }
                }
                Err(p) => tracing::warn!(problem = %p, "cached configuration refused"),
            }
        }
        Ok(client)
    }

    fn verify_at(
        &self,
        signed: &SignedConfig,
        min_serial: u64,
        now: OffsetDateTime,
    ) -> Result<GlobalConfig, Problem> {
        verify(
            signed,
            &self.anchors,
            &self.source.instance,
            min_serial,
            now,
        )
    }

    fn serial(&self) -> u64 {
        self.current.borrow().as_ref().map_or(0, |c| c.serial)
    }

    /// The node's time source.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// This node's clock against the registry's, as last measured.
    pub fn registry_offset(&self) -> &RegistryOffset {
        &self.offset
    }

    /// The current configuration, or `configuration-expired` (fail closed); `clock-skew`
    /// instead when there is none to use because this node's clock is off.
    pub fn current(&self) -> Result<Arc<GlobalConfig>, Problem> {
        let cfg = self.current.borrow().clone().ok_or_else(|| {
            self.offset.problem().unwrap_or_else(|| {
                Problem::new(
                    ProblemKind::ConfigurationExpired,
                    "no verified configuration yet",
                )
            })
        })?;
        if cfg.expires_at <= self.clock.now() {
            if let Some(p) = self.offset.problem() {
                return Err(p);
            }
            return Err(Problem::new(
                ProblemKind::ConfigurationExpired,
                format!(
                    "configuration serial {} expired at {}; the registry has not been reachable",
                    cfg.serial,
                    enlace_core::rfc3339(cfg.expires_at)
                ),
            ));
        }
        Ok(cfg)
    }

    /// The last verified configuration, expired or not (for offline tools).
    pub fn last_verified(&self) -> Option<Arc<GlobalConfig>> {
        self.current.borrow().clone()
    }

    /// A receiver that sees every new configuration.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<GlobalConfig>>> {
        self.current.subscribe()
    }

    /// Fetches once, waiting up to `wait` for a serial above ours. Returns whether it changed.
    pub async fn fetch(&self, wait: Duration) -> Result<bool, Problem> {
        let serial = self.serial();
        let url = format!(
            "{}/v1/config?after={serial}&wait={}",
            self.source.registry_url,
            wait.as_secs()
        );
        let unreachable = |e: reqwest::Error| {
            Problem::new(ProblemKind::PeerUnreachable, format!("registry: {e}"))
        };
        let resp = self
            .http
            .get(&url)
            .timeout(wait + Duration::from_secs(10))
            .send()
            .await
            .map_err(unreachable)?;
        self.measure_offset(resp.headers());
        if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
            return Ok(false);
        }
        if !resp.status().is_success() {
            return Err(Problem::new(
                ProblemKind::PeerUnreachable,
                format!("registry answered {}", resp.status()),
            ));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > MAX_CONFIG_BYTES)
        {
            return Err(Problem::new(
                ProblemKind::BodyTooLarge,
                "configuration larger than the node accepts",
            ));
        }
        let bytes = resp.bytes().await.map_err(unreachable)?;
        if bytes.len() > MAX_CONFIG_BYTES {
            return Err(Problem::new(
                ProblemKind::BodyTooLarge,
                "configuration larger than the node accepts",
            ));
        }
        let signed: SignedConfig = serde_json::from_slice(&bytes)
            .map_err(|e| bad_signature(format!("not a signed configuration: {e}")))?;
        let cfg = self
            .verify_at(&signed, serial, self.clock.now())
            .map_err(|p| self.clock_or(p))?;
        if cfg.serial == serial {
            return Ok(false);
        }
        self.write_cache(&bytes)?;
        tracing::info!(serial = cfg.serial, "new configuration");
        self.current.send_replace(Some(Arc::new(cfg)));
        Ok(true)
    }

    /// Compares this node's clock with the registry's `Date`.
    fn measure_offset(&self, headers: &reqwest::header::HeaderMap) {
        let date = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date);
        match date {
            Some(date) => self.offset.record(self.clock.now(), date),
            None => tracing::debug!("registry answer without a usable date"),
        }
    }

    /// A configuration refused for its times (issued in the future, expired) is this node's
    /// clock's fault when that clock is known to be off: say so instead.
    fn clock_or(&self, p: Problem) -> Problem {
        let about_time = p.kind == ProblemKind::ConfigurationExpired
            || (p.kind == ProblemKind::ConfigSignatureInvalid
                && p.detail.contains("in the future"));
        match self.offset.problem() {
            Some(clock) if about_time => clock.with("refused", p.detail),
            _ => p,
        }
    }

    fn write_cache(&self, bytes: &[u8]) -> Result<(), Problem> {
        let io = |e: std::io::Error| {
            Problem::new(ProblemKind::Internal, format!("configuration cache: {e}"))
        };
        let path = &self.source.cache_path;
        let tmp = path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    }

    /// Follows the registry until the task is dropped: long-polls, and retries after errors,
    /// backing off up to [`MAX_BACKOFF`] (but never past the expiry) while a usable copy is
    /// cached, and retrying every [`FAILED_CLOSED_RETRY`] at most once it has expired (every
    /// exchange is refused until then, so the node takes the registry's return within a second).
    pub fn follow(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(250);
            loop {
                match me.fetch(Duration::from_secs(30)).await {
                    Ok(_) => backoff = Duration::from_millis(250),
                    Err(p) => {
                        let pause = if let Ok(cfg) = me.current() {
                            tracing::warn!(problem = %p, "configuration fetch failed; keeping the cached copy");
                            // Awake when it expires, to retry at the failed-closed pace.
                            let left = cfg.expires_at - OffsetDateTime::now_utc();
                            backoff.min(left.try_into().unwrap_or(Duration::ZERO))
                        } else {
                            tracing::warn!(problem = %p, "configuration fetch failed; no unexpired copy, refusing exchanges");
                            backoff.min(FAILED_CLOSED_RETRY)
                        };
                        tokio::time::sleep(pause).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_http_date_parses_and_other_text_does_not() {
        let d = super::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(d.unix_timestamp(), 784_111_777);
        assert!(super::parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
        assert!(super::parse_http_date("").is_none());
    }
}
