//! `bench auth`: auth calls through the sidecar against the same calls made directly to the
//! .NET emulator, with the same load loop, in the same process and run.
//!
//! Both the emulator and the sidecar run in-process (the sidecar as `Application::build`
//! builds it for the binary, SQLite store, JSON logs formatted and discarded), unless
//! `--dotnet-url` names an emulator running elsewhere. For each workload, each round
//! measures in order: direct at concurrency 1, sidecar at 1, direct at `--concurrency`,
//! sidecar at it; the figures merge the rounds.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use serde_json::{json, Value};

use crate::load::{self, Recorder, RunResult, Samples};
use crate::report::{self, Latency, Meta};

#[derive(Args, Serialize)]
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
    /// Workloads to run.
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Workload::LoginRefresh, Workload::RejectedVerify])]
    workload: Vec<Workload>,
    /// Also write the figures as one JSON object to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `bench auth --json`.
#[derive(Serialize)]
struct AuthReport {
    meta: Meta,
    config: Value,
    workloads: Vec<WorkloadFigures>,
}

/// One workload: four rows (direct and sidecar at 1 and at `--concurrency`), merged over
/// the rounds, and the two figures the targets are about.
#[derive(Serialize)]
struct WorkloadFigures {
    workload: Workload,
    title: &'static str,
    rows: Vec<Row>,
    /// Sidecar p50 minus direct p50 at concurrency 1, all requests, ms.
    added_p50_ms: Option<f64>,
    /// The same per request kind (`login`, `refresh`, `verify`).
    added_p50_ms_by_kind: std::collections::BTreeMap<String, Option<f64>>,
    /// Requests/s through the sidecar over direct, at `--concurrency`.
    throughput_ratio: Option<f64>,
    /// Per round, at `--concurrency`: sidecar over direct (the noise between rounds).
    throughput_ratio_by_round: Vec<Option<f64>>,
}

#[derive(Serialize)]
struct Row {
    /// `direct` (the emulator) or `sidecar`.
    target: &'static str,
    concurrency: usize,
    requests_per_s: f64,
    requests: usize,
    errors: u64,
    seconds: f64,
    /// All requests of the row.
    latency: Latency,
    by_kind: std::collections::BTreeMap<String, Latency>,
}

/// What each iteration of the load loop does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// One login, then one refresh with the pair it returned (the contract's target).
    LoginRefresh,
    /// One MFA verify of an unknown challenge: .NET answers 401 at once (no token to sign),
    /// the sidecar checks bounds, calls .NET and passes the problem through: the proxy's
    /// own cost, with a cheap upstream.
    RejectedVerify,
}

impl Workload {
    fn title(self) -> &'static str {
        match self {
            Workload::LoginRefresh => "login + refresh",
            Workload::RejectedVerify => "rejected MFA verify (a cheap .NET call)",
        }
    }
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

/// One MFA verify of a challenge that does not exist (401 `challenge_expired`).
async fn rejected_verify(client: reqwest::Client, base: String) -> Recorder {
    let mut rec = Recorder::default();
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/auth/mfa/verify"))
        .json(&json!({"challenge_id": "no-such-challenge", "otp_code": "123456"}))
        .send()
        .await;
    let ok = match resp {
        Ok(resp) if resp.status() == 401 => resp.bytes().await.is_ok(),
        _ => false,
    };
    rec.record("verify", started.elapsed());
    if !ok {
        rec.errors += 1;
    }
    rec
}

async fn measure(workload: Workload, base: &str, concurrency: usize, args: &AuthArgs) -> RunResult {
    let (base, email) = (base.to_owned(), args.email.clone());
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    match workload {
        Workload::LoginRefresh => {
            load::run(concurrency, warmup, duration, move |client| {
                login_and_refresh(client, base.clone(), email.clone())
            })
            .await
        }
        Workload::RejectedVerify => {
            load::run(concurrency, warmup, duration, move |client| {
                rejected_verify(client, base.clone())
            })
            .await
        }
    }
}

pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    // The sidecar's (and the emulator's) JSON logs are formatted as in production, then
    // discarded.
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
    let (app, dir) = crate::embedded::sidecar_in_front_of(&dotnet_url, "auth").await?;
    let sidecar_url = format!("http://{}", app.local_addr());
    tokio::spawn(app.run_until_stopped(std::future::pending()));

    let mut figures = AuthReport {
        meta: Meta::start("auth"),
        config: report::config_of(&args),
        workloads: Vec::new(),
    };
    let cn = args.concurrency;
    for &workload in &args.workload {
        let mut runs: [Vec<RunResult>; 4] = Default::default();
        for round in 1..=args.rounds {
            eprintln!("{}: round {round}/{}", workload.title(), args.rounds);
            runs[0].push(measure(workload, &dotnet_url, 1, &args).await);
            runs[1].push(measure(workload, &sidecar_url, 1, &args).await);
            runs[2].push(measure(workload, &dotnet_url, cn, &args).await);
            runs[3].push(measure(workload, &sidecar_url, cn, &args).await);
            let (d, s) = (
                runs[2].last().map_or(0.0, RunResult::throughput),
                runs[3].last().map_or(0.0, RunResult::throughput),
            );
            eprintln!(
                "  c{cn}: direct {d:.0} req/s, sidecar {s:.0} req/s ({:.0}%)",
                100.0 * s / d
            );
        }
        println!("### {}\n", workload.title());
        let mut workload_figures = report(cn, &runs);
        workload_figures.workload = workload;
        workload_figures.title = workload.title();
        workload_figures.throughput_ratio_by_round = runs[2]
            .iter()
            .zip(&runs[3])
            .map(|(d, s)| report::ratio(Some(s.throughput()), Some(d.throughput())))
            .collect();
        figures.workloads.push(workload_figures);
        println!();
    }
    let _ = std::fs::remove_dir_all(&dir);
    figures.meta.finish();
    report::write(args.json.as_deref(), &figures)
}

/// Merges the rounds of one configuration.
pub(crate) fn merge(runs: &[RunResult]) -> RunResult {
    let mut samples: Vec<(String, Samples)> = Vec::new();
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

fn kind(r: &RunResult, name: &str) -> Samples {
    r.samples
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, s)| s.clone())
        .unwrap_or_default()
}

/// A Markdown table and the two figures the targets are about (printed and returned).
fn report(cn: usize, runs: &[Vec<RunResult>; 4]) -> WorkloadFigures {
    let rows = [
        ("emulator direct", 1, merge(&runs[0])),
        ("through sidecar", 1, merge(&runs[1])),
        ("emulator direct", cn, merge(&runs[2])),
        ("through sidecar", cn, merge(&runs[3])),
    ];
    let kinds: Vec<String> = rows[0].2.samples.iter().map(|(k, _)| k.clone()).collect();
    let mut header = String::from("| target | concurrency |");
    let mut rule = String::from("| --- | ---: |");
    for k in &kinds {
        header.push_str(&format!(" {k} p50 | {k} p99 |"));
        rule.push_str(" ---: | ---: |");
    }
    println!("{header} requests/s | requests | errors |");
    println!("{rule} ---: | ---: | ---: |");
    for (name, c, r) in &rows {
        let mut line = format!("| {name} | {c} |");
        for k in &kinds {
            let s = kind(r, k);
            line.push_str(&format!(
                " {:.3} ms | {:.3} ms |",
                s.quantile_ms(0.5),
                s.quantile_ms(0.99)
            ));
        }
        println!(
            "{line} {:.0} | {} | {} |",
            r.throughput(),
            r.requests(),
            r.errors
        );
    }
    let added =
        |k: &str| kind(&rows[1].2, k).quantile_ms(0.5) - kind(&rows[0].2, k).quantile_ms(0.5);
    let all_added = rows[1].2.all().quantile_ms(0.5) - rows[0].2.all().quantile_ms(0.5);
    let per_kind: Vec<String> = kinds
        .iter()
        .map(|k| format!("{k} {:+.3} ms", added(k)))
        .collect();
    println!();
    println!(
        "- added at p50, concurrency 1: {}; all requests {:+.3} ms (target ≤ 0.5 ms)",
        per_kind.join(", "),
        all_added
    );
    println!(
        "- throughput at concurrency {cn}: {:.0} req/s through the sidecar vs {:.0} req/s direct = {:.0}% (target ≥ 50%)",
        rows[3].2.throughput(),
        rows[2].2.throughput(),
        100.0 * rows[3].2.throughput() / rows[2].2.throughput()
    );
    let finite = |x: f64| x.is_finite().then_some(x);
    WorkloadFigures {
        workload: Workload::LoginRefresh,
        title: "",
        rows: rows
            .iter()
            .map(|(name, c, r)| Row {
                target: if name.starts_with("emulator") {
                    "direct"
                } else {
                    "sidecar"
                },
                concurrency: *c,
                requests_per_s: r.throughput(),
                requests: r.requests(),
                errors: r.errors,
                seconds: r.elapsed.as_secs_f64(),
                latency: Latency::of(&r.all()),
                by_kind: kinds
                    .iter()
                    .map(|k| (k.clone(), Latency::of(&kind(r, k))))
                    .collect(),
            })
            .collect(),
        added_p50_ms: finite(all_added),
        added_p50_ms_by_kind: kinds
            .iter()
            .map(|k| (k.clone(), finite(added(k))))
            .collect(),
        throughput_ratio: report::ratio(Some(rows[3].2.throughput()), Some(rows[2].2.throughput())),
        throughput_ratio_by_round: Vec::new(),
    }
}
