//! `bench startup`: how long the release binary takes from exec to `/health/ready` 200, and
//! its resident memory when idle, on the embedded defaults (SQLite, no Redis, no NATS) and
//! optionally on PostgreSQL. Each figure is the median of `--runs` fresh starts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::report::{self, Meta};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct Args {
    /// The sidecar binary to measure.
    #[arg(long, default_value = "target/release/sidecar")]
    binary: String,
    /// Fresh starts per configuration.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also measure on this PostgreSQL database URL.
    #[arg(long)]
    postgres: Option<String>,
    /// Also write the figures as one JSON object to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// `bench startup --json`.
#[derive(Serialize)]
struct StartupReport {
    meta: Meta,
    config: serde_json::Value,
    /// Size of the binary measured, bytes.
    binary_bytes: Option<u64>,
    stores: Vec<StoreFigures>,
}

/// One store's starts.
#[derive(Serialize)]
struct StoreFigures {
    store: &'static str,
    /// Median, exec to the first `/health/ready` 200.
    startup_ms: f64,
    /// Median VmRSS two seconds after ready, MiB.
    idle_rss_mib: f64,
    /// Every start, in order of size.
    startup_ms_all: Vec<f64>,
    idle_rss_mib_all: Vec<f64>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut report = StartupReport {
        meta: Meta::start("startup"),
        config: report::config_of(&args),
        binary_bytes: std::fs::metadata(&args.binary).ok().map(|m| m.len()),
        stores: Vec::new(),
    };
    println!(
        "| store | start-up to ready (median of {}) | idle RSS (median) |",
        args.runs
    );
    println!("| --- | --- | --- |");
    let mut configs = vec![("SQLite (embedded default)", None)];
    if let Some(url) = &args.postgres {
        configs.push(("PostgreSQL", Some(url.clone())));
    }
    for (name, url) in configs {
        let mut starts = Vec::new();
        let mut rss = Vec::new();
        for _ in 0..args.runs {
            let (start, kib) = measure_once(&args.binary, url.as_deref())?;
            starts.push(start);
            rss.push(kib);
        }
        starts.sort();
        rss.sort();
        let figures = StoreFigures {
            store: name,
            startup_ms: starts[starts.len() / 2].as_secs_f64() * 1000.0,
            idle_rss_mib: rss[rss.len() / 2] as f64 / 1024.0,
            startup_ms_all: starts.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
            idle_rss_mib_all: rss.iter().map(|&k| k as f64 / 1024.0).collect(),
        };
        println!(
            "| {name} | {:.0} ms | {:.1} MiB |",
            figures.startup_ms, figures.idle_rss_mib
        );
        report.stores.push(figures);
    }
    report.meta.finish();
    report::write(args.json.as_deref(), &report)
}

fn measure_once(binary: &str, database_url: Option<&str>) -> anyhow::Result<(Duration, u64)> {
    let dir =
        std::env::temp_dir().join(format!("sidecar-startup-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = database_url
        .map(str::to_owned)
        .unwrap_or_else(|| format!("sqlite://{}/s.db?mode=rwc", dir.display()));
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("SIDECAR_BIND", format!("127.0.0.1:{port}"))
        .env("DATABASE_URL", url)
        .env("APP_ENV", "prod")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot run {binary} (cargo build --release first)"))?;
    let mut ready = None;
    while started.elapsed() < Duration::from_secs(30) {
        if status(port, "/health/ready") == Some(200) {
            ready = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Idle: a moment after start-up, with nothing asked of it.
    std::thread::sleep(Duration::from_secs(2));
    let kib = rss_kib(child.id());
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    match (ready, kib) {
        (Some(ready), Some(kib)) => Ok((ready, kib)),
        _ => bail!("the sidecar did not become ready"),
    }
}

fn status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 32];
    let n = stream.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
