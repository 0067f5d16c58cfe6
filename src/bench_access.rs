//! `enlace bench access-log --records N`: fills a registry's access log with N realistic signed
//! access records through its ingestion path and measures, against baselines measured in the
//! same run, the ingestion rate (over HTTP for a sample, and the bulk fill) and the citizen
//! queries at the end (a page of a person's records with their inclusion proofs, and one
//! record's inclusion proof), p50 and p99.
//!
//! The registry runs in this process with its development issuer (so the queries carry a real
//! ID token). Records are signed by the demo's Registro Civil node key, for many people (most
//! with a handful of records, a few with thousands), generated in chunks on every core and then
//! ingested with `AccessLog::ingest` (the handler's own path: validation,
//! signatures checked on every core, one transaction per batch). The baselines: the same rows
//! inserted into a plain SQLite table indexed by person (no signatures, no tree), and the same
//! page query against it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use enlace_core::access::{AccessRecord, SignedAccessRecord};
use enlace_core::id::SubjectId;
use enlace_registry::citizen::CitizenQuery;
use enlace_registry::demo;
use rusqlite::params;

use crate::federation::{self, Backends, Ports};

/// Records per ingestion request (the registry's maximum).
const BATCH: usize = 1000;
/// Records generated and held in memory at a time.
const CHUNK: usize = 100_000;
/// People with many records.
const HEAVY_PEOPLE: u64 = 5;
/// Page size of the citizen queries.
const PAGE: u64 = 20;
/// Ingestion requests in flight at once.
const IN_FLIGHT: usize = 4;

#[derive(clap::Args)]
pub struct AccessLogArgs {
    /// Access records to generate and ingest.
    #[arg(long, default_value_t = 200_000)]
    records: u64,
    /// Records sent over HTTP (POST /v1/access-records, 1000 a request) to measure that path;
    /// the rest are ingested in-process through the same function.
    #[arg(long, default_value_t = 50_000)]
    http_records: u64,
    /// Citizen queries measured per kind.
    #[arg(long, default_value_t = 500)]
    queries: usize,
    /// Where the registry and the baseline keep their files (a fresh temporary directory by
    /// default, removed at the end). 10 million records take about 30 GB (16 GB of access log).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory at the end.
    #[arg(long)]
    keep: bool,
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The data subject with RUN body `n` and its check digit.
fn run_with_dv(n: u64) -> String {
    let body = u32::try_from(n).expect("a RUN body fits in 32 bits");
    format!("CL-RUN:{n}-{}", enlace_core::id::rut_check_digit(body))
}

/// Who the records are about: a few people with many records, the others with a handful.
struct People {
    heavy_each: u64,
    light: u64,
}

impl People {
    fn new(records: u64) -> People {
        let heavy_each = (records / 100).min(20_000);
        let light = ((records - heavy_each * HEAVY_PEOPLE) / 20).max(1);
        People { heavy_each, light }
    }

    fn heavy(i: u64) -> String {
        run_with_dv(5_000_000 + i)
    }

    fn light_person(i: u64) -> String {
        run_with_dv(10_000_000 + i)
    }

    /// The subject of record `i` of `n`.
    fn of(&self, i: u64, rng: &mut Rng) -> String {
        let heavy_total = self.heavy_each * HEAVY_PEOPLE;
        if i < heavy_total {
            return Self::heavy(i % HEAVY_PEOPLE);
        }
        Self::light_person(rng.below(self.light))
    }
}

const PURPOSES: [(&str, &str); 3] = [
    ("tax-refund-eligibility", "ctr_01JAAAAAAAAAAAAAAAAAAAAAAA"),
    ("health-expense-deduction", "ctr_01JBBBBBBBBBBBBBBBBBBBBBBB"),
    ("tax-audit", "ctr_01JCCCCCCCCCCCCCCCCCCCCCCC"),
];

/// Records `from..to`, signed, generated on every core.
fn generate(
    key: &enlace_certs::SigningKey,
    people: &People,
    from: u64,
    to: u64,
    at: &str,
) -> Vec<SignedAccessRecord> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let per = (to - from).div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..threads)
            .map(|t| {
                let (a, b) = (from + t * per, (from + (t + 1) * per).min(to));
                s.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (a + 1));
                    (a..b)
                        .map(|i| {
                            let (purpose, contract) = PURPOSES[(i % 3) as usize];
                            let record = AccessRecord {
                                message_id: uuid::Uuid::now_v7().to_string(),
                                at: at.to_string(),
                                consumer_member: demo::SII.into(),
                                consumer_subsystem: demo::CONSUMER_SUBSYSTEM.into(),
                                provider_service: demo::PERSONAS.into(),
                                provider_version: "v1.0".into(),
                                operation: "getPerson".into(),
                                subject: people.of(i, &mut rng),
                                fields: vec![
                                    "/address/commune".into(),
                                    "/address/region".into(),
                                    "/address/street".into(),
                                    "/name".into(),
                                ],
                                purpose: purpose.into(),
                                legal_basis: "Decreto Ley 824 (Ley sobre Impuesto a la Renta)"
                                    .into(),
                                contract: contract.into(),
                                procedure: Some("devolucion-renta-2026".into()),
                                step: None,
                                user: Some(format!("funcionaria-{}", i % 97)),
                                authorisation: None,
                                result: "served".into(),
                                status: 200,
                                request_digest: Some(
                                    "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:".into(),
                                ),
                                response_digest: Some(
                                    "sha-256=:Xga2oyEkRUxnOzUrIzaop34ski+zt6F34kw+tAh6U1A=:".into(),
                                ),
                                node: demo::PROVIDER_NODE.into(),
                                authorisation_refused: None,
                            };
                            SignedAccessRecord::sign(record, |m| key.sign(m))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap_or_default())
            .collect()
    })
}

/// How records reach the registry.
enum Path<'a> {
    Http(&'a reqwest::Client, &'a str),
    InProcess(&'a std::sync::Arc<enlace_registry::AccessLog>),
}

/// Ingests `batches` with [`IN_FLIGHT`] requests at a time.
async fn ingest(batches: &[Vec<SignedAccessRecord>], path: Path<'_>) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for batch in batches {
        while tasks.len() >= IN_FLIGHT {
            tasks.join_next().await.expect("a task")??;
        }
        let batch = batch.clone();
        match &path {
            Path::Http(http, url) => {
                let (http, url) = ((*http).clone(), url.to_string());
                tasks.spawn(async move {
                    let resp = http
                        .post(format!("{url}/v1/access-records"))
                        .header("content-type", "application/json")
                        .body(serde_json::to_vec(&batch)?)
                        .send()
                        .await?;
                    anyhow::ensure!(
                        resp.status().is_success(),
                        "ingestion over HTTP refused: {}",
                        resp.text().await.unwrap_or_default()
                    );
                    Ok(())
                });
            }
            Path::InProcess(log) => {
                let log = (*log).clone();
                tasks.spawn(async move {
                    let n = batch.len() as u64;
                    let r = log
                        .ingest(batch)
                        .await
                        .map_err(|p| anyhow::anyhow!("ingestion refused: {p}"))?;
                    anyhow::ensure!(r.accepted == n, "duplicates in a fresh log");
                    Ok(())
                });
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// The plain table the page query is compared with.
struct Baseline {
    conn: rusqlite::Connection,
    next: i64,
}

impl Baseline {
    fn open(path: &std::path::Path) -> anyhow::Result<Baseline> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "cache_size", -256 * 1024)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS plain (idx INTEGER PRIMARY KEY, subject TEXT NOT NULL,
                at TEXT NOT NULL, consumer_member TEXT NOT NULL, purpose TEXT NOT NULL,
                contract TEXT NOT NULL, record BLOB NOT NULL);
             CREATE INDEX IF NOT EXISTS plain_subject ON plain (subject, idx);",
        )?;
        Ok(Baseline { conn, next: 0 })
    }

    /// Inserts a batch in one transaction.
    fn insert(&mut self, batch: &[SignedAccessRecord]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO plain (idx, subject, at, consumer_member, purpose, contract, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for s in batch {
                let r = &s.record;
                stmt.execute(params![
                    self.next,
                    r.subject,
                    r.at,
                    r.consumer_member,
                    r.purpose,
                    r.contract,
                    s.canonical_bytes()
                ])?;
                self.next += 1;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The same page the citizen API returns, without proofs: the count and the first page.
    fn page(&self, subject: &str) -> anyhow::Result<(i64, usize)> {
        let total: i64 = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM plain WHERE subject = ?1")?
            .query_row([subject], |r| r.get(0))?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT idx, record FROM plain WHERE subject = ?1 ORDER BY idx LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![subject, PAGE as i64], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut bytes = 0;
        for (_, b) in &rows {
            let v: serde_json::Value = serde_json::from_slice(b)?;
            bytes += v.to_string().len();
        }
        Ok((total, bytes))
    }
}

/// Latencies in milliseconds.
#[derive(Default)]
struct Times(Vec<f64>);

impl Times {
    fn push(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1000.0);
    }
    fn q(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(|a, b| a.total_cmp(b));
        if v.is_empty() {
            return f64::NAN;
        }
        v[((v.len() as f64 - 1.0) * q).round() as usize]
    }
}

fn rfc3339_now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub async fn run(args: AccessLogArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("enlace-bench-access-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = run_in(&dir, &args).await;
    if result.is_ok() && !args.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("kept {}", dir.display());
    }
    result
}

async fn run_in(dir: &std::path::Path, args: &AccessLogArgs) -> anyhow::Result<ExitCode> {
    let n = args.records.max(1);
    let http_n = args.http_records.min(n) / BATCH as u64 * BATCH as u64;
    let no_backends = Backends {
        rest: None,
        grpc: None,
    };
    let fed = federation::prepare(&dir.join("federation"), Ports::ANY, no_backends).await?;
    let access_log = fed.registry.access_log.clone();
    let citizens = fed.registry.citizens.clone();
    let url = format!("http://{}", fed.registry.addr);
    let key = enlace_certs::SigningKey::from_pem(&std::fs::read_to_string(
        dir.join("federation/nodes/61002000-3/signing-key.pem"),
    )?)?;
    let people = People::new(n);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    println!(
        "enlace bench access-log: {n} records ({} people with {} each, the rest over {} people), {cores} core(s), data in {}",
        HEAVY_PEOPLE,
        people.heavy_each,
        people.light,
        dir.display()
    );
    let mut baseline = Baseline::open(&dir.join("baseline.sqlite"))?;
    let http = reqwest::Client::new();

    // ---- fill ----
    let (mut generating, mut ingesting, mut plain) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut http_time, mut http_done) = (Duration::ZERO, 0u64);
    let fill_started = Instant::now();
    let mut done = 0u64;
    let mut last_report = Instant::now();
    while done < n {
        let to = (done + CHUNK as u64).min(n);
        let at = rfc3339_now();
        let t = Instant::now();
        let key2 = &key;
        let people2 = &people;
        let chunk = tokio::task::block_in_place(|| generate(key2, people2, done, to, &at));
        generating += t.elapsed();
        // The registry's ingestion, with `IN_FLIGHT` requests at a time (as several nodes
        // shipping at once): one request's signatures are checked while another's are written.
        let batches: Vec<Vec<SignedAccessRecord>> =
            chunk.chunks(BATCH).map(|b| b.to_vec()).collect();
        let over_http = batches
            .len()
            .min(((http_n - http_done) / BATCH as u64) as usize);
        let (by_http, in_process) = batches.split_at(over_http);
        if !by_http.is_empty() {
            let t = Instant::now();
            ingest(by_http, Path::Http(&http, &url)).await?;
            http_time += t.elapsed();
            http_done += by_http.iter().map(|b| b.len() as u64).sum::<u64>();
        }
        if !in_process.is_empty() {
            let t = Instant::now();
            ingest(in_process, Path::InProcess(&access_log)).await?;
            ingesting += t.elapsed();
        }
        let t = Instant::now();
        for batch in &batches {
            tokio::task::block_in_place(|| baseline.insert(batch))?;
        }
        plain += t.elapsed();
        done = to;
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "  {done} of {n} records ingested ({:.0} s)",
                fill_started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    let fill = fill_started.elapsed();
    let head = access_log
        .sign_tree_head()
        .await
        .map_err(|p| anyhow::anyhow!("{p}"))?;
    anyhow::ensure!(
        head.tree_head.tree_size == n,
        "the tree holds {} leaves",
        head.tree_head.tree_size
    );
    let bulk_n = n - http_done;
    let rate = |count: u64, d: Duration| count as f64 / d.as_secs_f64().max(1e-9);
    println!();
    println!(
        "ingestion ({IN_FLIGHT} requests of {BATCH} records in flight; signatures checked on every core, one transaction a request):"
    );
    if http_done > 0 {
        println!(
            "  over HTTP            {:>9.0} records/s   ({http_done} records, POST /v1/access-records)",
            rate(http_done, http_time)
        );
    }
    if bulk_n > 0 {
        println!(
            "  in-process           {:>9.0} records/s   ({bulk_n} records, AccessLog::ingest)",
            rate(bulk_n, ingesting)
        );
    }
    let ours = rate(n, http_time + ingesting);
    let base = rate(n, plain);
    println!(
        "  baseline: plain inserts into an indexed table, no signatures, no tree   {base:>9.0} records/s"
    );
    println!(
        "  ratio ingestion/baseline: {:.2}x the time per record",
        base / ours
    );
    println!(
        "  bulk fill, wall clock: {n} records in {:.1} s = {:.0} records/s (generating and signing {:.1} s, ingesting {:.1} s, baseline {:.1} s)",
        fill.as_secs_f64(),
        rate(n, fill),
        generating.as_secs_f64(),
        (http_time + ingesting).as_secs_f64(),
        plain.as_secs_f64()
    );
    let size = |p: &str| std::fs::metadata(dir.join(p)).map(|m| m.len()).unwrap_or(0);
    let access =
        size("federation/registry/access.sqlite") + size("federation/registry/access.sqlite-wal");
    let plain_size = size("baseline.sqlite") + size("baseline.sqlite-wal");
    println!(
        "  on disk: access log {:.0} MiB ({:.0} bytes a record), baseline {:.0} MiB",
        access as f64 / 1048576.0,
        access as f64 / n as f64,
        plain_size as f64 / 1048576.0
    );

    // ---- queries ----
    let mut rng = Rng(42);
    let mut light: Vec<String> = (0..args.queries)
        .map(|_| People::light_person(rng.below(people.light)))
        .collect();
    light.dedup();
    let heavy: Vec<String> = (0..args.queries as u64)
        .map(|i| People::heavy(i % HEAVY_PEOPLE))
        .collect();
    let mut tokens = std::collections::HashMap::new();
    for who in light.iter().chain(heavy.iter().take(HEAVY_PEOPLE as usize)) {
        let r: serde_json::Value = http
            .post(format!("{url}/oidc/dev/token"))
            .json(&serde_json::json!({ "sub": who }))
            .send()
            .await?
            .json()
            .await?;
        tokens.insert(
            who.clone(),
            r["id_token"].as_str().unwrap_or_default().to_string(),
        );
    }
    let query = CitizenQuery {
        page_size: Some(PAGE),
        ..Default::default()
    };
    println!();
    println!(
        "citizen queries at {n} records, one at a time (a page of {PAGE} records with their inclusion proofs against the latest signed head; then one record's proof):"
    );
    for (label, who) in [
        ("a person with few records", &light),
        ("a person with many records", &heavy),
    ] {
        let (mut over_http, mut in_process, mut base, mut proof) = (
            Times::default(),
            Times::default(),
            Times::default(),
            Times::default(),
        );
        let mut seen = 0u64;
        for person in who {
            let token = &tokens[person];
            let subject: SubjectId = person.parse()?;
            let t = Instant::now();
            let page: serde_json::Value = http
                .get(format!("{url}/v1/citizen/access-records?page_size={PAGE}"))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            over_http.push(t.elapsed());
            seen += page["total"].as_u64().unwrap_or(0);
            let t = Instant::now();
            let body = citizens
                .records(&subject, &query)
                .await
                .map_err(|p| anyhow::anyhow!("{p}"))?;
            in_process.push(t.elapsed());
            anyhow::ensure!(body["total"] == page["total"], "two answers differ");
            let t = Instant::now();
            let (total, _) = tokio::task::block_in_place(|| baseline.page(person))?;
            base.push(t.elapsed());
            anyhow::ensure!(
                serde_json::json!(total) == page["total"],
                "the baseline disagrees on {person}"
            );
            if let Some(id) = page["records"][0]["record"]["record"]["message_id"].as_str() {
                let t = Instant::now();
                let r = http
                    .get(format!(
                        "{url}/v1/access-log/proof/inclusion?message_id={id}"
                    ))
                    .bearer_auth(token)
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "proof refused");
                let _ = r.bytes().await?;
                proof.push(t.elapsed());
            }
        }
        println!(
            "  {label} ({:.0} records on average, {} queries):",
            seen as f64 / who.len().max(1) as f64,
            who.len()
        );
        let line = |what: &str, t: &Times| {
            println!(
                "    {what:<44} p50 {:>7.2} ms   p99 {:>7.2} ms",
                t.q(0.5),
                t.q(0.99)
            )
        };
        line("page over HTTP (ID token verified, JSON)", &over_http);
        line("page in-process (Citizens::records)", &in_process);
        line("baseline: same count and page, plain table", &base);
        line("one record's inclusion proof over HTTP", &proof);
        println!(
            "    ratio page/baseline: in-process p50 {:.1}x p99 {:.1}x; over HTTP p50 {:.1}x p99 {:.1}x",
            in_process.q(0.5) / base.q(0.5),
            in_process.q(0.99) / base.q(0.99),
            over_http.q(0.5) / base.q(0.5),
            over_http.q(0.99) / base.q(0.99)
        );
    }
    fed.registry.stop().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_runs_have_valid_check_digits() {
        for i in [0u64, 1, 17, 999_999] {
            let s = People::light_person(i);
            assert!(s.parse::<SubjectId>().is_ok(), "{s}");
            assert!(People::heavy(i % 5).parse::<SubjectId>().is_ok());
        }
        assert_eq!(run_with_dv(12_345_678), "CL-RUN:12345678-5");
    }
}
