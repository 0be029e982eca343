//! `bench ingest`: accepted events/s and latency of `POST /events`, and in the same run the
//! raw ceilings of the backends fed directly: the same multi-row insert into PostgreSQL
//! (the shard's own statement, `EventStore::insert_batch`), and JetStream publishing with
//! `Nats-Msg-Id` and acks (pipelined).
//!
//! The sidecar runs in this process (the library's `Application`), on a fresh PostgreSQL
//! database, with a private `nats-server` (JetStream, temp dir) so that nothing else's
//! streams interfere. The load is closed-loop (`--concurrency` clients, each posting its
//! next batch when the previous one is answered); then an open-loop phase at 80% of the
//! measured peak request rate gives the latency at that load. Bearer tokens are judged by a
//! benchmark-only authenticator (`bench-user:<id>`) that never exists in the binary.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actors::events::store::{new_batch_id, EventRow, EventStore};
use anyhow::Context;
use async_nats::jetstream;
use migrations::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;
use sidecar::app::{Application, Overrides};
use sidecar::http::problem::Problem;
use sidecar::http::security::{Authenticator, Caller};
use sidecar::settings::Settings;

#[derive(clap::Args, Debug, Clone, serde::Serialize)]
pub struct Args {
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Share of each batch that repeats ids already accepted (0..1).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// PostgreSQL server (a fresh database is created on it and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// EVENT_SHARDS of the sidecar.
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// EVENT_SHARD_FLUSHES of the sidecar.
    #[arg(long, default_value_t = 2)]
    flushes: usize,
    /// Skip the raw ceilings (only the sidecar).
    #[arg(long)]
    no_ceilings: bool,
    /// Skip the 80%-of-peak latency phase.
    #[arg(long)]
    no_latency_phase: bool,
    /// Run without NATS (the embedded default: events wait in the outbox).
    #[arg(long)]
    no_nats: bool,
    /// Judge bearer tokens with a benchmark-only stub instead of verifying the .NET
    /// emulator's JWTs (to see what JWT verification costs).
    #[arg(long)]
    static_auth: bool,
    /// Run this sidecar binary as a process of its own (instead of the library in this
    /// process), so that its memory is measured alone; not with `--static-auth`.
    #[arg(long)]
    sidecar_binary: Option<String>,
    /// Also write the figures as one JSON object to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Benchmark-only: `bench-user:<id>` is user `<id>`.
pub(crate) struct BenchAuthenticator;

impl Authenticator for BenchAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        _ctx: Option<&'a sidecar::http::context::RequestContext>,
    ) -> futures::future::BoxFuture<'a, Result<Caller, Problem>> {
        Box::pin(async move {
            match token.strip_prefix("bench-user:") {
                Some(user) => Ok(Caller {
                    user_id: user.to_owned(),
                    role: None,
                    session_id: None,
                    age_group: None,
                    token: String::new(),
                }),
                None => Err(Problem::unauthorized("not a bench token")),
            }
        })
    }
}

/// A private nats-server, killed on drop.
pub(crate) struct Nats {
    child: Child,
    pub(crate) url: String,
    dir: std::path::PathBuf,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(crate) async fn start_nats() -> anyhow::Result<Nats> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("bench-nats-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nats-server on PATH")?;
    let nats = Nats {
        child,
        url: format!("nats://127.0.0.1:{port}"),
        dir,
    };
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(nats);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("nats-server did not start")
}

pub(crate) fn db_url(admin: &str, name: &str) -> String {
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => admin.to_owned(),
    }
}

pub(crate) async fn create_db(admin: &str) -> anyhow::Result<String> {
    let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
    let db = sea_orm::Database::connect(admin).await?;
    db.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await?;
    db.close().await?;
    Ok(name)
}

pub(crate) async fn drop_db(admin: &str, name: &str) {
    if let Ok(db) = sea_orm::Database::connect(admin).await {
        let _ = db
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    }
}

fn rss_mb() -> f64 {
    vm_hwm_mb("/proc/self/status").unwrap_or(0.0)
}

/// Peak resident memory (`VmHWM`) of a process, in MB.
fn vm_hwm_mb(status: &str) -> Option<f64> {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn row(user: &Arc<str>) -> EventRow {
    EventRow {
        event_id: uuid::Uuid::new_v4(),
        user_id: user.clone(),
        device_id: Some("bench-device".into()),
        event_type: "bench.tap".into(),
        occurred_at: chrono::Utc::now(),
        event_hash: "0".repeat(64),
        payload: r#"{"screen":"home","n":1,"tags":["a","b"]}"#.into(),
    }
}

/// Raw PostgreSQL: the shard's statement, `batch` rows at a time, `concurrency` at once,
/// into a database of its own (created and dropped here) so that the sidecar's relay never
/// sees these rows.
async fn pg_ceiling(args: &Args) -> anyhow::Result<f64> {
    let name = create_db(&args.postgres).await?;
    let url = db_url(&args.postgres, &name);
    let rate = pg_ceiling_on(&url, args).await;
    drop_db(&args.postgres, &name).await;
    rate
}

async fn pg_ceiling_on(url: &str, args: &Args) -> anyhow::Result<f64> {
    let db = sea_orm::Database::connect(
        sea_orm::ConnectOptions::new(url)
            .max_connections(32)
            .to_owned(),
    )
    .await?;
    Migrator::up(&db, None).await?;
    let store = EventStore::from_connection(&db)?;
    let rows = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let user: Arc<str> = "raw".into();
    let workers = (0..args.concurrency).map(|_| {
        let (store, rows, user) = (store.clone(), rows.clone(), user.clone());
        let batch = args.batch;
        async move {
            while Instant::now() < deadline {
                let events: Vec<EventRow> = (0..batch).map(|_| row(&user)).collect();
                let refs: Vec<&EventRow> = events.iter().collect();
                let n = store
                    .insert_batch(new_batch_id(), chrono::Utc::now(), &refs)
                    .await?
                    .len();
                rows.fetch_add(n as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });
    let started = Instant::now();
    for r in futures::future::join_all(workers).await {
        r?;
    }
    let rate = rows.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    db.close().await?;
    Ok(rate)
}

/// Raw JetStream: publishes with `Nats-Msg-Id`, pipelined in rounds of `batch x
/// concurrency`, acks awaited.
async fn nats_ceiling(url: &str, args: &Args) -> anyhow::Result<f64> {
    let client = async_nats::ConnectOptions::new()
        .client_capacity(16_384)
        .connect(url)
        .await?;
    let js = jetstream::new(client);
    let name = format!("RAW_{}", uuid::Uuid::new_v4().simple());
    js.create_stream(jetstream::stream::Config {
        name: name.clone(),
        subjects: vec![format!("raw.{name}.>")],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await?;
    let user: Arc<str> = "raw".into();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let published = Arc::new(AtomicU64::new(0));
    let workers = (0..args.concurrency).map(|_| {
        let (js, user, published, name) =
            (js.clone(), user.clone(), published.clone(), name.clone());
        let batch = args.batch;
        async move {
            while Instant::now() < deadline {
                let mut acks = Vec::with_capacity(batch);
                for _ in 0..batch {
                    let r = row(&user);
                    let received_at = actors::events::stream::timestamp(chrono::Utc::now());
                    let (headers, payload) = actors::events::stream::message_of(&r, &received_at);
                    let publish = jetstream::context::Publish::build()
                        .headers(headers)
                        .payload(payload);
                    acks.push(
                        js.send_publish(format!("raw.{name}.bench"), publish)
                            .await?,
                    );
                }
                for ack in futures::future::join_all(
                    acks.into_iter().map(std::future::IntoFuture::into_future),
                )
                .await
                {
                    ack?;
                }
                published.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }
    });
    for r in futures::future::join_all(workers).await {
        r?;
    }
    let rate = published.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    js.delete_stream(&name).await?;
    Ok(rate)
}

/// What one load phase measured.
struct Phase {
    requests: u64,
    accepted: u64,
    duplicates: u64,
    errors: u64,
    /// Status of each error answer (0: no answer).
    error_statuses: std::collections::BTreeMap<u16, u64>,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn figures(&self) -> crate::report::IngestPhase {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let latency = crate::report::Latency::of_sorted(&sorted, percentile);
        let (r, a, d, e) = (self.requests, self.accepted, self.duplicates, self.errors);
        crate::report::IngestPhase::new(r, a, d, e, self.elapsed, latency)
    }

    fn report(&self, label: &str) {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let secs = self.elapsed.as_secs_f64();
        println!(
            "{label}: {:.0} accepted events/s, {:.0} events/s judged, {:.0} requests/s, \
             p50 {:.1} ms, p99 {:.1} ms, errors {} (by status {:?}), duplicates {}",
            self.accepted as f64 / secs,
            (self.accepted + self.duplicates) as f64 / secs,
            self.requests as f64 / secs,
            percentile(&sorted, 0.50).as_secs_f64() * 1000.0,
            percentile(&sorted, 0.99).as_secs_f64() * 1000.0,
            self.errors,
            self.error_statuses,
            self.duplicates,
        );
    }
}

/// Ids accepted so far, to draw duplicates from.
#[derive(Default)]
struct Pool {
    ids: Vec<String>,
}

fn body(args: &Args, pool: &Mutex<Pool>, n: u64) -> (Vec<u8>, usize) {
    // Dithered over requests, so that the share holds on average even when the batch is
    // too small for it (batch 1 at 50%: every other request is a duplicate).
    let dither = (n as f64 * 0.618_033_988_749_895).fract();
    let dups = ((args.batch as f64) * args.duplicates + dither).floor() as usize;
    let pool = pool.lock().unwrap();
    let now = chrono::Utc::now().to_rfc3339();
    let mut out = String::with_capacity(args.batch * 200);
    out.push_str("{\"events\":[");
    let mut fresh = 0;
    for i in 0..args.batch {
        let id = if i < dups && !pool.ids.is_empty() {
            pool.ids[(n as usize * 7919 + i * 104_729) % pool.ids.len()].clone()
        } else {
            fresh += 1;
            uuid::Uuid::new_v4().to_string()
        };
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"eventId":"{id}","eventType":"bench.tap","occurredAt":"{now}","device_id":"d-{n}","payload":{{"screen":"home","n":{i},"tags":["a","b"]}}}}"#
        ));
    }
    out.push_str("]}");
    (out.into_bytes(), fresh)
}

/// Posts batches for `seconds`: closed loop when `rate` is `None`, else open loop at `rate`
/// requests/s spread over the clients.
async fn load(
    base: &str,
    args: &Args,
    token: Option<&str>,
    pool: Arc<Mutex<Pool>>,
    rate: Option<f64>,
) -> Phase {
    let token = token.map(str::to_owned);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let results = Arc::new(Mutex::new(Phase {
        requests: 0,
        accepted: 0,
        duplicates: 0,
        errors: 0,
        error_statuses: Default::default(),
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    }));
    let started = Instant::now();
    let interval = rate.map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let workers = (0..args.concurrency).map(|w| {
        let (client, stop, counter, results, pool) = (
            client.clone(),
            stop.clone(),
            counter.clone(),
            results.clone(),
            pool.clone(),
        );
        let url = format!("{base}/events");
        let args = args.clone();
        let token = token.clone();
        async move {
            let mut next = Instant::now()
                + interval
                    .map(|i| i.mul_f64(w as f64 / args.concurrency as f64))
                    .unwrap_or_default();
            while !stop.load(Ordering::Relaxed) {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next.into()).await;
                    next += i;
                }
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (payload, _) = body(&args, &pool, n);
                let sent = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(
                        token
                            .clone()
                            .unwrap_or_else(|| format!("bench-user:u{}", n % 1000)),
                    )
                    .header("content-type", "application/json")
                    .body(payload)
                    .send()
                    .await;
                let mut status = 0;
                let answer = match resp {
                    Ok(r) if r.status() == 200 => r.bytes().await.ok(),
                    Ok(r) => {
                        status = r.status().as_u16();
                        None
                    }
                    Err(_) => None,
                };
                let latency = sent.elapsed();
                let mut fresh_ids = Vec::new();
                let (mut acc, mut dup) = (0, 0);
                if let Some(bytes) = &answer {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
                        acc = v["accepted"].as_u64().unwrap_or(0);
                        dup = v["duplicates"].as_u64().unwrap_or(0);
                        if args.duplicates > 0.0 {
                            for r in v["results"].as_array().into_iter().flatten() {
                                if r["status"] == "accepted" {
                                    fresh_ids
                                        .push(r["eventId"].as_str().unwrap_or_default().to_owned());
                                }
                            }
                        }
                    }
                }
                if !fresh_ids.is_empty() {
                    let mut pool = pool.lock().unwrap();
                    if pool.ids.len() < 200_000 {
                        pool.ids.extend(fresh_ids);
                    }
                }
                let mut r = results.lock().unwrap();
                r.requests += 1;
                r.latencies.push(latency);
                if answer.is_some() {
                    r.accepted += acc;
                    r.duplicates += dup;
                } else {
                    r.errors += 1;
                    *r.error_statuses.entry(status).or_default() += 1;
                }
            }
        }
    });
    let timer = {
        let stop = stop.clone();
        let seconds = args.seconds;
        async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.store(true, Ordering::Relaxed);
        }
    };
    futures::future::join(futures::future::join_all(workers), timer).await;
    let mut phase = std::mem::replace(
        &mut *results.lock().unwrap(),
        Phase {
            requests: 0,
            accepted: 0,
            duplicates: 0,
            errors: 0,
            error_statuses: Default::default(),
            elapsed: Duration::ZERO,
            latencies: Vec::new(),
        },
    );
    phase.elapsed = started.elapsed();
    phase
}

/// The sidecar under test: the library in this process (as the binary builds it), or the
/// release binary as a process of its own.
pub(crate) struct Server {
    pub(crate) base: String,
    child: Option<Child>,
    in_process: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<anyhow::Result<sidecar::app::ExitReason>>,
    )>,
}

impl Server {
    pub(crate) async fn in_process(
        env: Vec<(String, String)>,
        static_auth: bool,
    ) -> anyhow::Result<Server> {
        let map = env.into_iter().collect();
        let settings = Settings::from_map(&map)?;
        let app = Application::build_with(
            settings,
            Overrides {
                authenticator: static_auth.then(|| {
                    Arc::new(BenchAuthenticator) as sidecar::http::security::SharedAuthenticator
                }),
                ..Default::default()
            },
        )
        .await?;
        let base = format!("http://{}", app.local_addr());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stop_rx.await;
        }));
        Ok(Server {
            base,
            child: None,
            in_process: Some((stop_tx, server)),
        })
    }

    async fn process(binary: &str, env: Vec<(String, String)>) -> anyhow::Result<Server> {
        let port = free_port()?;
        let child = Command::new(binary)
            .env_clear()
            .envs(env)
            .env("SIDECAR_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let server = Server {
            base: format!("http://127.0.0.1:{port}"),
            child: Some(child),
            in_process: None,
        };
        for _ in 0..300 {
            if let Ok(r) = reqwest::get(format!("{}/health/ready", server.base)).await {
                if r.status() == 200 {
                    return Ok(server);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("{binary} did not become ready in 30 s")
    }

    /// Stops the sidecar; returns the peak RSS (MB) of its process when it had its own.
    pub(crate) async fn stop(mut self) -> Option<f64> {
        if let Some((stop_tx, server)) = self.in_process.take() {
            let _ = stop_tx.send(());
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
        let mut child = self.child.take()?;
        let rss = vm_hwm_mb(&format!("/proc/{}/status", child.id()));
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = child.try_wait() {
                return rss;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        rss
    }
}

/// What the event path still has to do: the outbox backlog and the consumers' lag, read
/// off the sidecar's own `/metrics` (refreshed every 0.5-1 s).
async fn backlog(base: &str) -> Option<f64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let values = text
        .lines()
        .filter(|l| l.starts_with("sidecar_outbox_pending") || l.starts_with("sidecar_queue_lag"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    Some(values.sum())
}

/// Waits (at most `limit`) until the outbox is published and the aggregator has caught up,
/// so that the next phase does not pay for the previous one's backlog. Returns the backlog
/// at the start and how long it took to drain (`None`: not drained in time).
async fn wait_drained(base: &str, limit: Duration) -> (f64, Option<Duration>) {
    let started = Instant::now();
    let first = backlog(base).await.unwrap_or(0.0);
    let mut quiet_since: Option<Duration> = None;
    let mut quiet_reads = 0;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(250)).await;
        // Several quiet reads in a row, because the gauges are refreshed on their own
        // clocks (0.5-1 s); the drain took until the first of them.
        if backlog(base).await.unwrap_or(f64::MAX) < 1.0 {
            let since = *quiet_since.get_or_insert(started.elapsed());
            quiet_reads += 1;
            if quiet_reads == 5 {
                return (first, Some(since));
            }
        } else {
            quiet_since = None;
            quiet_reads = 0;
        }
    }
    (first, None)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("bench ingest {args:?}");
    let nats = if args.no_nats {
        None
    } else {
        Some(start_nats().await?)
    };
    let db_name = create_db(&args.postgres).await?;
    let url = db_url(&args.postgres, &db_name);
    let result = run_phases(&args, &url, nats.as_ref()).await;
    drop_db(&args.postgres, &db_name).await;
    result
}

async fn run_phases(args: &Args, url: &str, nats: Option<&Nats>) -> anyhow::Result<()> {
    let mut pg_rate = None;
    let mut report = crate::report::IngestReport::new(args);
    if !args.no_ceilings {
        let rate = pg_ceiling(args).await?;
        println!("raw PostgreSQL ceiling (same insert, {} rows/statement, {} connections): {rate:.0} rows/s", args.batch, args.concurrency);
        pg_rate = Some(rate);
        report.pg_ceiling_before_rows_per_s = pg_rate;
        if let Some(nats) = nats {
            let rate = nats_ceiling(&nats.url, args).await?;
            println!("raw JetStream ceiling (Msg-Id, acks awaited, pipelined by {}): {rate:.0} messages/s", args.batch);
            report.nats_ceiling_msgs_per_s = Some(rate);
        }
    }
    let mut env: Vec<(String, String)> = vec![
        ("SIDECAR_BIND".into(), "127.0.0.1:0".into()),
        ("DATABASE_URL".into(), url.to_owned()),
        ("EVENT_SHARDS".into(), args.shards.to_string()),
        ("EVENT_SHARD_FLUSHES".into(), args.flushes.to_string()),
        (
            "EVENT_STREAM".into(),
            format!("B_{}", uuid::Uuid::new_v4().simple()),
        ),
        ("APP_ENV".into(), "prod".into()),
        // Throughput, not abuse control: every request comes from one address (the IP
        // bucket alone would cap it at 2,000 events/s). `bench flood` measures the limits.
        ("RATE_LIMIT_USER".into(), "10000000/s:10000000".into()),
        ("RATE_LIMIT_DEVICE".into(), "10000000/s:10000000".into()),
        ("RATE_LIMIT_IP".into(), "10000000/s:10000000".into()),
        // Ingestion, not backpressure: at peak the aggregator (on the same two cores) lags
        // past the contract's 100k watermark within seconds and /events answers 429.
        ("BACKPRESSURE_HIGH".into(), "1000000000".into()),
        ("BACKPRESSURE_LOW".into(), "999999999".into()),
    ];
    if let Some(nats) = nats {
        env.push(("NATS_URL".into(), nats.url.clone()));
    }
    // Real caller identity by default: the .NET emulator's JWTs, verified locally.
    let mut emulator = None;
    let token = if args.static_auth {
        None
    } else {
        let handle = emulator::Emulator::start(emulator::EmulatorConfig::default()).await?;
        env.push(("DOTNET_BASE_URL".into(), handle.base_url()));
        env.push(("JWT_ISSUER".into(), emulator::DEFAULT_ISSUER.into()));
        env.push(("JWT_AUDIENCE".into(), emulator::DEFAULT_AUDIENCE.into()));
        let tokens = handle.issue_tokens("alice@example.com", "bench")?;
        let access = tokens["access_token"]
            .as_str()
            .context("an access token from the emulator")?
            .to_owned();
        emulator = Some(handle);
        Some(access)
    };
    let server = match (&args.sidecar_binary, token.is_some()) {
        (Some(binary), true) => Server::process(binary, env).await?,
        _ => Server::in_process(env, token.is_none()).await?,
    };
    let base = server.base.clone();
    let pool = Arc::new(Mutex::new(Pool::default()));
    // A short warm-up fills connection pools (and the duplicate pool).
    let warm = Args {
        seconds: 1,
        ..args.clone()
    };
    let _ = load(&base, &warm, token.as_deref(), pool.clone(), None).await;
    let peak = load(&base, args, token.as_deref(), pool.clone(), None).await;
    report.peak = Some(peak.figures());
    peak.report(&format!(
        "sidecar peak (batch {}, concurrency {}, duplicates {:.0}%)",
        args.batch,
        args.concurrency,
        args.duplicates * 100.0
    ));
    // Requests/s the whole pipeline (ingest, publish, aggregate) kept up with over the peak
    // phase and the drain after it.
    let mut sustained_rps = None;
    if nats.is_some() {
        // At peak, ingestion outruns publishing and aggregation on two cores: wait for them
        // to catch up, and say how long that took (the pipeline's own capacity).
        let (left, drained) = wait_drained(&base, Duration::from_secs(300)).await;
        sustained_rps = drained.map(|t| peak.requests as f64 / (peak.elapsed + t).as_secs_f64());
        report.backlog_after_peak = Some(left);
        report.drain_seconds = drained.map(|t| t.as_secs_f64());
        report.sustained_events_per_s =
            drained.map(|t| peak.accepted as f64 / (peak.elapsed + t).as_secs_f64());
        match drained {
            Some(t) => println!(
                "backlog when the load stopped: {left:.0} messages (outbox + aggregator lag), \
                 drained in {:.1} s ({:.0} events/s published and aggregated after the load; \
                 sustained end to end over peak + drain: {:.0} events/s)",
                t.as_secs_f64(),
                left / t.as_secs_f64().max(0.001),
                peak.accepted as f64 / (peak.elapsed + t).as_secs_f64(),
            ),
            None => println!("backlog when the load stopped: {left:.0}, not drained in 300 s"),
        }
    }
    if let Some(before) = pg_rate {
        // The machine is shared: measure the ceiling again after the peak phase (and after
        // the sidecar's backlog drained, so that its work does not slow the ceiling down)
        // and compare with the mean of both.
        let after = pg_ceiling(args).await?;
        println!("raw PostgreSQL ceiling again, after the peak phase: {after:.0} rows/s");
        report.pg_ceiling_after_rows_per_s = Some(after);
        let pg = (before + after) / 2.0;
        let accepted = peak.accepted as f64 / peak.elapsed.as_secs_f64();
        println!(
            "accepted events/s vs raw PostgreSQL ceiling (mean {pg:.0}): {:.0}%",
            accepted / pg * 100.0
        );
    }
    if !args.no_latency_phase {
        let rate = 0.8 * peak.requests as f64 / peak.elapsed.as_secs_f64();
        let at80 = load(&base, args, token.as_deref(), pool.clone(), Some(rate)).await;
        at80.report(&format!("sidecar at 80% of peak ({rate:.0} requests/s)"));
        report.at_80_percent = Some(at80.figures());
        report.at_80_percent_offered_requests_per_s = Some(rate);
        if let Some(sustained) = sustained_rps {
            // The same, at 80% of what the whole pipeline sustains, from a drained start.
            wait_drained(&base, Duration::from_secs(300)).await;
            let rate = 0.8 * sustained;
            let at80 = load(&base, args, token.as_deref(), pool.clone(), Some(rate)).await;
            at80.report(&format!(
                "sidecar at 80% of the end-to-end sustained rate ({rate:.0} requests/s)"
            ));
            report.at_80_percent_sustained = Some(at80.figures());
            report.at_80_percent_sustained_offered_requests_per_s = Some(rate);
        }
    }
    println!(
        "peak RSS of this process ({}): {:.0} MB",
        if args.sidecar_binary.is_some() && token.is_some() {
            "load generator + emulator"
        } else {
            "sidecar + load generator + emulator"
        },
        rss_mb()
    );
    if let Some(rss) = server.stop().await {
        println!("peak RSS of the sidecar process alone: {rss:.0} MB");
        report.sidecar_rss_mb = Some(rss);
    }
    drop(emulator);
    report.peak_rss_mb = Some(rss_mb());
    report.finish(args.json.as_deref())
}
