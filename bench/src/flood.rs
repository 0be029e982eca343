//! `bench flood`: flood isolation of `POST /events`. A well-behaved user posts at a steady
//! rate, first alone (baseline), then while one other user floods the service at
//! `--overload` times its own rate limit. The claim under test (issue 5): the well-behaved
//! user's p99 stays within 2x of its baseline p99, and the flooder gets no more than its
//! limit.
//!
//! The sidecar runs in this process on a fresh PostgreSQL database, with Redis (the shared
//! buckets) and a private `nats-server`, at the contract's default limits. Each user comes
//! from an address of its own, through `X-Forwarded-For` from a trusted proxy (this
//! process), as it would behind a gateway. Both loads are open-loop: requests leave on a
//! fixed schedule whatever the answers, so a slow answer cannot hide behind a delayed send.
//! Baseline and flood phases alternate for `--rounds` rounds, so that background noise on
//! the machine falls on both alike; each phase's samples are pooled over the rounds.
//!
//! A flooder starts with a full bucket, so the first moment of each flood phase admits its
//! burst (1,000 events at the default limit) at once: that is the limit working as
//! configured, not overload. The well-behaved user's requests sent during the first
//! `--settle` seconds of a flood phase are therefore reported on their own ("burst"), and
//! the claim is checked on the steady overload that follows.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::time::MissedTickBehavior;

use crate::ingest::{create_db, db_url, drop_db, start_nats};
use crate::load::Samples;
use crate::report::{self, Latency, Meta};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct Args {
    /// Seconds per phase (each round has a baseline and a flood phase).
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Baseline/flood rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Requests per second of the well-behaved user.
    #[arg(long, default_value_t = 20.0)]
    good_rps: f64,
    /// Events per request of the well-behaved user (20 x 5 = 100 events/s, half the
    /// default user limit).
    #[arg(long, default_value_t = 5)]
    good_batch: usize,
    /// The flooder offers this many times its user limit (RATE_LIMIT_USER's rate).
    #[arg(long, default_value_t = 10.0)]
    overload: f64,
    /// Events per request of the flooder.
    #[arg(long, default_value_t = 10)]
    flood_batch: usize,
    /// Seconds at the start of each flood phase reported apart (the flooder's burst).
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// RATE_LIMIT_USER of the sidecar (also DEVICE; the contract's default).
    #[arg(long, default_value = "200/s:1000")]
    user_limit: String,
    /// PostgreSQL server (a fresh database is created on it and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// Redis holding the shared buckets (keys under a fresh prefix).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Also write the figures as one JSON object to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `bench flood --json`.
#[derive(Serialize)]
struct FloodReport {
    meta: Meta,
    config: serde_json::Value,
    good_rps: f64,
    good_events_per_s: f64,
    flood_rps: f64,
    flood_offered_events_per_s: f64,
    user_limit_per_s: f64,
    /// The well-behaved user: `alone`, `burst` (first `--settle` s of each flood), `steady`.
    phases: Vec<FloodPhase>,
    /// Good p99 under steady flood over good p99 alone (the claim: at most 2).
    p99_ratio: Option<f64>,
    within_2x: Option<bool>,
    rounds: Vec<FloodRound>,
    flooder: Flooder,
}

#[derive(Serialize)]
struct FloodPhase {
    phase: &'static str,
    requests: usize,
    /// Answers that were neither 200 (errors, and 429s of the well-behaved user).
    errors: u64,
    p95_ms: Option<f64>,
    latency: Latency,
}

#[derive(Serialize)]
struct FloodRound {
    round: u32,
    good_p99_alone_ms: Option<f64>,
    good_p99_burst_ms: Option<f64>,
    good_p99_steady_ms: Option<f64>,
    flooder_ok: usize,
    flooder_limited: usize,
    flooder_errors: u64,
}

#[derive(Serialize)]
struct Flooder {
    answered_200: usize,
    accepted_events_per_s: f64,
    answered_429: usize,
    errors: u64,
    limited_latency: Latency,
}

fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// What one open-loop sender saw.
#[derive(Default)]
struct Tally {
    /// Latency of every request answered 200 (after the settle time).
    ok: Samples,
    /// Latency of requests answered 200 that were sent during the settle time.
    early: Samples,
    limited: Samples,
    /// Requests answered neither 200 nor 429, or not at all.
    errors: u64,
    accepted_events: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    println!("bench flood {args:?}");
    let limit: actors::token_bucket::Limit = args
        .user_limit
        .parse()
        .map_err(|e| anyhow::anyhow!("--user-limit: {e}"))?;
    let nats = start_nats().await?;
    let db_name = create_db(&args.postgres).await?;
    let url = db_url(&args.postgres, &db_name);
    let result = run_phases(&args, &url, &nats.url, limit).await;
    drop_db(&args.postgres, &db_name).await;
    result
}

async fn run_phases(
    args: &Args,
    db_url: &str,
    nats_url: &str,
    limit: actors::token_bucket::Limit,
) -> anyhow::Result<()> {
    let meta = Meta::start("flood");
    let mut rounds = Vec::new();
    let env: Vec<(String, String)> = vec![
        ("SIDECAR_BIND".into(), "127.0.0.1:0".into()),
        ("DATABASE_URL".into(), db_url.to_owned()),
        ("NATS_URL".into(), nats_url.to_owned()),
        ("REDIS_URL".into(), args.redis.clone()),
        (
            "REDIS_KEY_PREFIX".into(),
            format!("bench:{}:", uuid::Uuid::new_v4().simple()),
        ),
        (
            "EVENT_STREAM".into(),
            format!("F_{}", uuid::Uuid::new_v4().simple()),
        ),
        ("RATE_LIMIT_USER".into(), args.user_limit.clone()),
        ("RATE_LIMIT_DEVICE".into(), args.user_limit.clone()),
        ("TRUSTED_PROXIES".into(), "127.0.0.1/32".into()),
        ("APP_ENV".into(), "prod".into()),
    ];
    let server = crate::ingest::Server::in_process(env, true).await?;
    let base = server.base.clone();

    let good = Sender {
        client: client()?,
        url: format!("{base}/events"),
        user: "good".into(),
        address: "198.51.100.1".into(),
        batch: args.good_batch,
    };
    let flood_rps = args.overload * limit.rate_per_sec / args.flood_batch as f64;
    let phase = Duration::from_secs(args.seconds);
    let settle = Duration::from_secs(args.settle);
    let none = Duration::ZERO;
    let _ = good
        .open_loop(args.good_rps, Duration::from_secs(2), none)
        .await; // warm-up

    let (mut baseline, mut flooded, mut flooder) =
        (Tally::default(), Tally::default(), Tally::default());
    for round in 1..=args.rounds {
        let alone = good.open_loop(args.good_rps, phase, none).await;
        // A flooder of its own per round, so every round starts from a full bucket.
        let bad = Sender {
            client: client()?,
            url: format!("{base}/events"),
            user: format!("flooder-{round}"),
            address: format!("203.0.113.{round}"),
            batch: args.flood_batch,
        };
        let (with_flood, flood) = tokio::join!(
            good.open_loop(args.good_rps, settle + phase, settle),
            bad.open_loop(flood_rps, settle + phase, none)
        );
        println!(
            "round {round}: good p99 alone {:.1} ms, during the flooder's burst {:.1} ms, under steady flood {:.1} ms; flooder {} ok, {} limited, {} errors",
            alone.ok.quantile_ms(0.99),
            with_flood.early.quantile_ms(0.99),
            with_flood.ok.quantile_ms(0.99),
            flood.ok.len(),
            flood.limited.len(),
            flood.errors
        );
        rounds.push(FloodRound {
            round,
            good_p99_alone_ms: finite(alone.ok.quantile_ms(0.99)),
            good_p99_burst_ms: finite(with_flood.early.quantile_ms(0.99)),
            good_p99_steady_ms: finite(with_flood.ok.quantile_ms(0.99)),
            flooder_ok: flood.ok.len() + flood.early.len(),
            flooder_limited: flood.limited.len(),
            flooder_errors: flood.errors,
        });
        baseline.absorb(alone);
        flooded.absorb(with_flood);
        flooder.absorb(flood);
    }
    server.stop().await;

    let secs = (settle + phase).as_secs_f64() * f64::from(args.rounds);
    let offered = flood_rps * args.flood_batch as f64;
    println!();
    println!(
        "well-behaved user: {} req/s x {} events; flooder: {:.0} req/s x {} events = {offered:.0} events/s offered ({}x its limit of {}/s)",
        args.good_rps, args.good_batch, flood_rps, args.flood_batch, args.overload, limit.rate_per_sec
    );
    println!("| phase | good requests | good errors | p50 ms | p95 ms | p99 ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let rows = [
        ("alone".to_owned(), &baseline.ok, &baseline),
        (
            format!("first {} s of the flood (its burst)", args.settle),
            &flooded.early,
            &flooded,
        ),
        (
            format!("steady {}x flood", args.overload),
            &flooded.ok,
            &flooded,
        ),
    ];
    let mut phases = Vec::new();
    for ((name, samples, t), phase) in rows.into_iter().zip(["alone", "burst", "steady"]) {
        phases.push(FloodPhase {
            phase,
            requests: samples.len(),
            errors: t.errors + t.limited.len() as u64,
            p95_ms: finite(samples.quantile_ms(0.95)),
            latency: Latency::of(samples),
        });
        println!(
            "| {name} | {} | {} | {:.1} | {:.1} | {:.1} |",
            samples.len(),
            t.errors + t.limited.len() as u64,
            samples.quantile_ms(0.50),
            samples.quantile_ms(0.95),
            samples.quantile_ms(0.99)
        );
    }
    let ratio = flooded.ok.quantile_ms(0.99) / baseline.ok.quantile_ms(0.99);
    println!(
        "good p99 under steady flood / alone: {ratio:.2} ({})",
        if ratio <= 2.0 {
            "within 2x"
        } else {
            "NOT within 2x"
        }
    );
    println!(
        "machine load average (1, 5, 15 min) at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(", "))
            .unwrap_or_default()
    );
    println!(
        "flooder: {} answered 200 ({:.0} events/s accepted, limit {}/s plus one burst per round), {} answered 429 (p50 {:.1} ms, p99 {:.1} ms), {} errors",
        flooder.ok.len() + flooder.early.len(),
        flooder.accepted_events as f64 / secs,
        limit.rate_per_sec,
        flooder.limited.len(),
        flooder.limited.quantile_ms(0.50),
        flooder.limited.quantile_ms(0.99),
        flooder.errors
    );
    let mut figures = FloodReport {
        meta,
        config: report::config_of(args),
        good_rps: args.good_rps,
        good_events_per_s: args.good_rps * args.good_batch as f64,
        flood_rps,
        flood_offered_events_per_s: offered,
        user_limit_per_s: limit.rate_per_sec,
        phases,
        p99_ratio: finite(ratio),
        within_2x: finite(ratio).map(|r| r <= 2.0),
        rounds,
        flooder: Flooder {
            answered_200: flooder.ok.len() + flooder.early.len(),
            accepted_events_per_s: flooder.accepted_events as f64 / secs,
            answered_429: flooder.limited.len(),
            errors: flooder.errors,
            limited_latency: Latency::of(&flooder.limited),
        },
    };
    figures.meta.finish();
    report::write(args.json.as_deref(), &figures)
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(256)
        .build()?)
}

impl Tally {
    fn absorb(&mut self, other: Tally) {
        self.ok.extend(&other.ok);
        self.early.extend(&other.early);
        self.limited.extend(&other.limited);
        self.errors += other.errors;
        self.accepted_events += other.accepted_events;
    }
}

/// One user posting batches from one address.
struct Sender {
    client: reqwest::Client,
    url: String,
    user: String,
    address: String,
    batch: usize,
}

impl Sender {
    /// Sends `rps` requests per second for `length`, each on its own task, and waits for
    /// every answer. Answers to requests sent in the first `early` are tallied apart. The
    /// bodies are built before the clock starts, so that the load generator's own work
    /// does not compete with the service during the measurement.
    async fn open_loop(&self, rps: f64, length: Duration, early: Duration) -> Tally {
        let count = (rps * length.as_secs_f64()).ceil() as usize + 1;
        let mut bodies: Vec<Vec<u8>> = (0..count).map(|_| self.body()).collect();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rps));
        ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
        let start = Instant::now();
        let (end, early_end) = (start + length, start + early);
        let mut inflight = Vec::new();
        while Instant::now() < end {
            ticks.tick().await;
            let is_early = Instant::now() < early_end;
            let body = bodies.pop().unwrap_or_else(|| self.body());
            let request = self
                .client
                .post(&self.url)
                .bearer_auth(format!("bench-user:{}", self.user))
                .header("X-Forwarded-For", &self.address)
                .header("Content-Type", "application/json")
                .body(body);
            let tally = tally.clone();
            inflight.push(tokio::spawn(async move {
                let started = Instant::now();
                let answer = request.send().await;
                let latency = started.elapsed();
                let mut t = tally.lock().unwrap();
                match answer.map(|r| r.status().as_u16()) {
                    Ok(200) => {
                        if is_early {
                            t.early.record(latency);
                        } else {
                            t.ok.record(latency);
                        }
                        t.accepted_events += 1;
                    }
                    Ok(429) => t.limited.record(latency),
                    _ => t.errors += 1,
                }
            }));
        }
        for task in inflight {
            let _ = task.await;
        }
        let mut tally = Arc::try_unwrap(tally)
            .ok()
            .expect("every task joined")
            .into_inner()
            .unwrap();
        tally.accepted_events *= self.batch as u64;
        tally
    }

    fn body(&self) -> Vec<u8> {
        let now = chrono::Utc::now().to_rfc3339();
        let events: Vec<_> = (0..self.batch)
            .map(|i| {
                json!({
                    "eventId": uuid::Uuid::new_v4().to_string(),
                    "eventType": "app.tap",
                    "occurredAt": now,
                    "device_id": format!("{}-device", self.user),
                    "payload": {"i": i, "screen": "home"}
                })
            })
            .collect();
        serde_json::to_vec(&json!({ "events": events })).unwrap_or_default()
    }
}
