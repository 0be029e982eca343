//! `bench config`: `GET /config` through the sidecar, without `If-None-Match` (200 and the
//! body) and with the current `ETag` in it (304, no body), against the .NET emulator's own
//! `GET /config` called directly as the reference, with the same load loop
//! (`bench/src/load.rs`), in the same process and run.
//!
//! `/config` is public (contract 7.1): no bearer token. The sidecar runs in-process
//! (`Application::build_with`, SQLite store, JSON logs formatted and discarded) in front of
//! an in-process emulator; the sidecar answers from its `ConfigCache` (refreshed from .NET
//! once per `CONFIG_TTL_SECONDS`), so this measures the cache and the HTTP path, while the
//! emulator builds its JSON answer on every call. Each round measures, in order, at
//! concurrency 1 and then at `--concurrency`: direct, sidecar 200, sidecar 304; the figures
//! merge the rounds.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::auth::merge;
use crate::load::{self, Recorder, RunResult};
use crate::report::{self, Latency, Meta};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct Args {
    /// Seconds measured per run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of unrecorded warm-up before each run.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rounds (each: the three targets at concurrency 1, then at `--concurrency`).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// The high concurrency.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Also write the figures as one JSON object to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// What is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Target {
    /// The emulator's `/config`, directly.
    Direct,
    /// The sidecar's `/config`, no `If-None-Match`: 200 with the body.
    Sidecar200,
    /// The sidecar's `/config` with the current ETag: 304, no body.
    Sidecar304,
}

impl Target {
    const ALL: [Target; 3] = [Target::Direct, Target::Sidecar200, Target::Sidecar304];

    fn title(self) -> &'static str {
        match self {
            Target::Direct => "emulator direct (200)",
            Target::Sidecar200 => "sidecar, no If-None-Match (200)",
            Target::Sidecar304 => "sidecar, If-None-Match: ETag (304)",
        }
    }
}

/// `bench config --json`.
#[derive(Serialize)]
struct ConfigReport {
    meta: Meta,
    config: serde_json::Value,
    /// Size of the config body the 200s carry, bytes.
    body_bytes: usize,
    rows: Vec<Row>,
    /// Per concurrency: requests/s of the sidecar's 200 and 304 over the emulator direct.
    ratios: Vec<Ratios>,
}

#[derive(Serialize)]
struct Row {
    target: Target,
    concurrency: usize,
    requests_per_s: f64,
    requests: usize,
    errors: u64,
    seconds: f64,
    latency: Latency,
}

#[derive(Serialize)]
struct Ratios {
    concurrency: usize,
    sidecar_200_vs_direct: Option<f64>,
    sidecar_304_vs_direct: Option<f64>,
    /// p50 of the sidecar minus p50 direct, ms.
    added_p50_ms_200: Option<f64>,
    added_p50_ms_304: Option<f64>,
}

/// One GET, expecting `expect`; the body is read to the end.
async fn get(client: reqwest::Client, url: String, etag: Option<String>, expect: u16) -> Recorder {
    let mut rec = Recorder::default();
    let started = Instant::now();
    let mut request = client.get(&url);
    if let Some(etag) = etag {
        request = request.header("If-None-Match", etag);
    }
    let ok = match request.send().await {
        Ok(resp) if resp.status().as_u16() == expect => resp.bytes().await.is_ok(),
        _ => false,
    };
    rec.record("get", started.elapsed());
    if !ok {
        rec.errors += 1;
    }
    rec
}

async fn measure(
    target: Target,
    urls: &(String, String),
    etag: &str,
    concurrency: usize,
    args: &Args,
) -> RunResult {
    let (url, etag, expect) = match target {
        Target::Direct => (format!("{}/config", urls.0), None, 200),
        Target::Sidecar200 => (format!("{}/config", urls.1), None, 200),
        Target::Sidecar304 => (format!("{}/config", urls.1), Some(etag.to_owned()), 304),
    };
    load::run(
        concurrency,
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
        move |client| get(client, url.clone(), etag.clone(), expect),
    )
    .await
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let meta = Meta::start("config");
    sidecar::telemetry::init_logs(sidecar::settings::AppEnv::Prod, std::io::sink);
    let emulator = emulator::Emulator::start(emulator::EmulatorConfig::default()).await?;
    let (app, dir) = crate::embedded::sidecar_in_front_of(&emulator.base_url(), "config").await?;
    let urls = (emulator.base_url(), format!("http://{}", app.local_addr()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async {
        let _ = stop_rx.await;
    }));

    // The current ETag, as a client would have it from its last 200.
    let first = reqwest::get(format!("{}/config", urls.1)).await?;
    anyhow::ensure!(
        first.status() == 200,
        "GET /config answered {}",
        first.status()
    );
    let etag = first
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .context("an ETag on GET /config")?
        .to_owned();
    let body_bytes = first.bytes().await?.len();
    println!("config body {body_bytes} bytes, ETag {etag}");

    let concurrencies = [1, args.concurrency];
    // runs[c][t]: concurrency index, target index.
    let mut runs: Vec<Vec<Vec<RunResult>>> = (0..2)
        .map(|_| (0..3).map(|_| Vec::new()).collect())
        .collect();
    for round in 1..=args.rounds {
        eprintln!("config: round {round}/{}", args.rounds);
        for (ci, &c) in concurrencies.iter().enumerate() {
            for (ti, &t) in Target::ALL.iter().enumerate() {
                let r = measure(t, &urls, &etag, c, &args).await;
                eprintln!("  c{c} {}: {:.0} req/s", t.title(), r.throughput());
                runs[ci][ti].push(r);
            }
        }
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    drop(emulator);
    let _ = std::fs::remove_dir_all(&dir);

    println!("| target | concurrency | p50 | p90 | p99 | p99.9 | requests/s | requests | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3} ms"));
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for (ci, &c) in concurrencies.iter().enumerate() {
        let merged: Vec<RunResult> = runs[ci].iter().map(Vec::as_slice).map(merge).collect();
        for (ti, &t) in Target::ALL.iter().enumerate() {
            let r = &merged[ti];
            let latency = Latency::of(&r.all());
            println!(
                "| {} | {c} | {} | {} | {} | {} | {:.0} | {} | {} |",
                t.title(),
                ms(latency.p50_ms),
                ms(latency.p90_ms),
                ms(latency.p99_ms),
                ms(latency.p999_ms),
                r.throughput(),
                r.requests(),
                r.errors
            );
            rows.push(Row {
                target: t,
                concurrency: c,
                requests_per_s: r.throughput(),
                requests: r.requests(),
                errors: r.errors,
                seconds: r.elapsed.as_secs_f64(),
                latency,
            });
        }
        let rate = |ti: usize| Some(merged[ti].throughput());
        let p50 = |ti: usize| Latency::of(&merged[ti].all()).p50_ms;
        let added = |ti: usize| p50(ti).zip(p50(0)).map(|(s, d)| s - d);
        ratios.push(Ratios {
            concurrency: c,
            sidecar_200_vs_direct: report::ratio(rate(1), rate(0)),
            sidecar_304_vs_direct: report::ratio(rate(2), rate(0)),
            added_p50_ms_200: added(1),
            added_p50_ms_304: added(2),
        });
    }
    println!();
    for r in &ratios {
        let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0));
        println!(
            "- concurrency {}: sidecar 200 at {} of direct requests/s, 304 at {}",
            r.concurrency,
            pct(r.sidecar_200_vs_direct),
            pct(r.sidecar_304_vs_direct)
        );
    }
    let mut figures = ConfigReport {
        meta,
        config: report::config_of(&args),
        body_bytes,
        rows,
        ratios,
    };
    figures.meta.finish();
    report::write(args.json.as_deref(), &figures)
}
