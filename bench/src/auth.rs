//! `bench auth`: login + refresh through the sidecar against the same two calls made
//! directly to the .NET emulator, with the same load loop, in the same process and run.
//!
//! Both the emulator and the sidecar run in-process (the sidecar as `Application::build`
//! exactly as the binary builds it, SQLite store, JSON logs formatted and discarded), unless
//! `--dotnet-url` names an emulator running elsewhere. Each round measures, in order:
//! direct at concurrency 1, sidecar at 1, direct at `--concurrency`, sidecar at it; the
//! figures merge the rounds.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use crate::load::{self, Recorder, RunResult};

#[derive(Args)]
pub struct AuthArgs {
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unrecorded warm-up before each run.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Rounds (each: direct c1, sidecar c1, direct cN, sidecar cN).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The high concurrency.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Use this emulator instead of starting one in-process.
    #[arg(long)]
    dotnet_url: Option<String>,
    /// The user that logs in (must not need MFA).
    #[arg(long, default_value = "alice@example.com")]
    email: String,
}

/// One login, then one refresh with the pair it returned.
async fn login_and_refresh(client: reqwest::Client, base: String, email: String) -> Recorder {
    let mut rec = Recorder::default();
    let started = Instant::now();
    let login = client
        .post(format!("{base}/auth/login"))
        .json(
            &json!({"email": email, "password": emulator::DEFAULT_PASSWORD, "device_id": "bench"}),
        )
        .send()
        .await;
    let body: Option<Value> = match login {
        Ok(resp) if resp.status() == 200 => resp.json().await.ok(),
        _ => None,
    };
    rec.record("login", started.elapsed());
    let Some(refresh_token) = body
        .as_ref()
        .and_then(|b| b["tokens"]["refresh_token"].as_str())
    else {
        rec.errors += 1;
        return rec;
    };
    let started = Instant::now();
    let refresh = client
        .post(format!("{base}/auth/refresh"))
        .json(&json!({"refresh_token": refresh_token, "device_id": "bench"}))
        .send()
        .await;
    let ok = match refresh {
        Ok(resp) if resp.status() == 200 => resp.bytes().await.is_ok(),
        _ => false,
    };
    rec.record("refresh", started.elapsed());
    if !ok {
        rec.errors += 1;
    }
    rec
}

async fn measure(base: &str, email: &str, concurrency: usize, args: &AuthArgs) -> RunResult {
    let (base, email) = (base.to_owned(), email.to_owned());
    load::run(
        concurrency,
        Duration::from_secs_f64(args.warmup),
        Duration::from_secs_f64(args.duration),
        move |client| login_and_refresh(client, base.clone(), email.clone()),
    )
    .await
}

pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    // The sidecar's JSON logs are formatted as in production, then discarded.
    sidecar::telemetry::init_logs(sidecar::settings::AppEnv::Prod, std::io::sink);
    let _emulator;
    let dotnet_url = match &args.dotnet_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let handle = emulator::Emulator::start(emulator::EmulatorConfig::default()).await?;
            let url = handle.base_url();
            _emulator = handle;
            url
        }
    };
    let dir = std::env::temp_dir().join(format!("sidecar-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let env: std::collections::HashMap<String, String> = [
        ("SIDECAR_BIND", "127.0.0.1:0".to_owned()),
        ("APP_ENV", "prod".to_owned()),
        ("DOTNET_BASE_URL", dotnet_url.clone()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/bench.db?mode=rwc", dir.display()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = sidecar::settings::Settings::from_map(&env)?;
    let app = sidecar::app::Application::build(settings)
        .await
        .context("the sidecar starts")?;
    let sidecar_url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));

    let cn = args.concurrency;
    let mut direct_1 = Vec::new();
    let mut sidecar_1 = Vec::new();
    let mut direct_n = Vec::new();
    let mut sidecar_n = Vec::new();
    for round in 1..=args.rounds {
        eprintln!("round {round}/{}", args.rounds);
        direct_1.push(measure(&dotnet_url, &args.email, 1, &args).await);
        sidecar_1.push(measure(&sidecar_url, &args.email, 1, &args).await);
        direct_n.push(measure(&dotnet_url, &args.email, cn, &args).await);
        sidecar_n.push(measure(&sidecar_url, &args.email, cn, &args).await);
        let (d, s) = (
            direct_n.last().unwrap().throughput(),
            sidecar_n.last().unwrap().throughput(),
        );
        eprintln!(
            "  c{cn}: direct {d:.0} req/s, sidecar {s:.0} req/s ({:.0}%)",
            100.0 * s / d
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    report(cn, &direct_1, &sidecar_1, &direct_n, &sidecar_n);
    Ok(())
}

/// Merges the rounds of one configuration.
fn merge(runs: &[RunResult]) -> RunResult {
    let mut samples: Vec<(String, load::Samples)> = Vec::new();
    let mut errors = 0;
    let mut elapsed = Duration::ZERO;
    for r in runs {
        errors += r.errors;
        elapsed += r.elapsed;
        for (kind, s) in &r.samples {
            match samples.iter_mut().find(|(k, _)| k == kind) {
                Some((_, t)) => t.extend(s),
                None => samples.push((kind.clone(), s.clone())),
            }
        }
    }
    RunResult {
        samples,
        errors,
        elapsed,
    }
}

fn kind<'a>(r: &'a RunResult, name: &str) -> &'a load::Samples {
    static EMPTY: std::sync::OnceLock<load::Samples> = std::sync::OnceLock::new();
    r.samples
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
}

fn report(
    cn: usize,
    direct_1: &[RunResult],
    sidecar_1: &[RunResult],
    direct_n: &[RunResult],
    sidecar_n: &[RunResult],
) {
    let rows = [
        ("emulator direct", 1, merge(direct_1)),
        ("through sidecar", 1, merge(sidecar_1)),
        ("emulator direct", cn, merge(direct_n)),
        ("through sidecar", cn, merge(sidecar_n)),
    ];
    println!("| target | concurrency | login p50 | login p99 | refresh p50 | refresh p99 | requests/s | requests | errors |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, c, r) in &rows {
        let (l, f) = (kind(r, "login"), kind(r, "refresh"));
        println!(
            "| {name} | {c} | {:.3} ms | {:.3} ms | {:.3} ms | {:.3} ms | {:.0} | {} | {} |",
            l.quantile_ms(0.5),
            l.quantile_ms(0.99),
            f.quantile_ms(0.5),
            f.quantile_ms(0.99),
            r.throughput(),
            r.requests(),
            r.errors
        );
    }
    let added =
        |k: &str| kind(&rows[1].2, k).quantile_ms(0.5) - kind(&rows[0].2, k).quantile_ms(0.5);
    let all_added = rows[1].2.all().quantile_ms(0.5) - rows[0].2.all().quantile_ms(0.5);
    let ratio = rows[3].2.throughput() / rows[2].2.throughput();
    println!();
    println!(
        "- added at p50, concurrency 1: login {:+.3} ms, refresh {:+.3} ms, all requests {:+.3} ms (target ≤ 0.5 ms)",
        added("login"),
        added("refresh"),
        all_added
    );
    println!(
        "- throughput at concurrency {cn}: {:.0} req/s through the sidecar vs {:.0} req/s direct = {:.0}% (target ≥ 50%)",
        rows[3].2.throughput(),
        rows[2].2.throughput(),
        100.0 * ratio
    );
}
