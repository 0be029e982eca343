//! The machine-readable side of every subcommand: `--json <PATH>` writes ONE JSON object
//! with the figures the subcommand prints, the configuration it ran with, and when and on
//! how loaded a machine it ran (`bench/run-all.sh` collects these; `bench/report/render.py`
//! turns them into BENCHMARKS.md and its pictures). Latencies are in milliseconds, rates per
//! second. No secret (token, password) ever goes into a report.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::load::Samples;

/// When the run happened and how busy the machine was around it.
#[derive(Serialize, Clone, Debug)]
pub struct Meta {
    /// The subcommand (`ingest`, `auth`, ...).
    pub benchmark: &'static str,
    /// RFC 3339, UTC, when the subcommand started.
    pub started_utc: String,
    pub finished_utc: Option<String>,
    /// `/proc/loadavg` (1, 5, 15 minutes) at the start and at the end.
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    /// CPUs this process may run on.
    pub cpus: usize,
}

impl Meta {
    pub fn start(benchmark: &'static str) -> Meta {
        Meta {
            benchmark,
            started_utc: now_utc(),
            finished_utc: None,
            loadavg_start: loadavg(),
            loadavg_end: None,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        }
    }

    pub fn finish(&mut self) {
        self.finished_utc = Some(now_utc());
        self.loadavg_end = loadavg();
    }
}

fn now_utc() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The machine's load average (1, 5, 15 min), from `/proc/loadavg`.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Latency percentiles in milliseconds (nearest rank), and how many samples they are of.
#[derive(Serialize, Clone, Copy, Debug, Default)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
}

impl Latency {
    pub fn of(samples: &Samples) -> Latency {
        let q = samples.quantiles_ms(&[0.5, 0.9, 0.99, 0.999]);
        // NaN (no samples) becomes null.
        let v = |i: usize| q.get(i).copied().filter(|x| x.is_finite());
        Latency {
            count: samples.len(),
            p50_ms: v(0),
            p90_ms: v(1),
            p99_ms: v(2),
            p999_ms: v(3),
        }
    }

    /// From latencies already sorted, with the percentile function of the caller.
    pub fn of_sorted(
        sorted: &[Duration],
        percentile: impl Fn(&[Duration], f64) -> Duration,
    ) -> Latency {
        let ms =
            |p: f64| (!sorted.is_empty()).then(|| percentile(sorted, p).as_secs_f64() * 1000.0);
        Latency {
            count: sorted.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
        }
    }
}

/// `a / b`, or `None` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

/// Writes `report` as one pretty-printed JSON object to `path`, if there is one.
pub fn write(path: Option<&Path>, report: &impl Serialize) -> anyhow::Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("figures written to {}", path.display());
    Ok(())
}

/// The configuration a subcommand ran with, as JSON, with any password in a URL masked.
pub fn config_of(args: &impl Serialize) -> serde_json::Value {
    let mut value = serde_json::to_value(args).unwrap_or_default();
    mask_passwords(&mut value);
    value
}

fn mask_passwords(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            // scheme://user:password@host -> scheme://user:***@host
            if let Some((scheme, rest)) = s.split_once("://") {
                if let Some((userinfo, host)) = rest.split_once('@') {
                    if let Some((user, _)) = userinfo.split_once(':') {
                        *s = format!("{scheme}://{user}:***@{host}");
                    }
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(mask_passwords),
        serde_json::Value::Object(map) => map.values_mut().for_each(mask_passwords),
        _ => {}
    }
}

/// One load phase of `bench ingest`.
#[derive(Serialize, Clone, Debug)]
pub struct IngestPhase {
    pub requests: u64,
    pub accepted_events: u64,
    pub duplicate_events: u64,
    pub errors: u64,
    pub seconds: f64,
    pub accepted_events_per_s: f64,
    /// Accepted plus duplicates: every event the sidecar judged.
    pub judged_events_per_s: f64,
    pub requests_per_s: f64,
    pub latency: Latency,
}

impl IngestPhase {
    pub fn new(
        requests: u64,
        accepted: u64,
        duplicates: u64,
        errors: u64,
        elapsed: Duration,
        latency: Latency,
    ) -> IngestPhase {
        let secs = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        IngestPhase {
            requests,
            accepted_events: accepted,
            duplicate_events: duplicates,
            errors,
            seconds: elapsed.as_secs_f64(),
            accepted_events_per_s: accepted as f64 / secs,
            judged_events_per_s: (accepted + duplicates) as f64 / secs,
            requests_per_s: requests as f64 / secs,
            latency,
        }
    }
}

/// `bench ingest --json`.
#[derive(Serialize, Debug)]
pub struct IngestReport {
    pub meta: Meta,
    pub config: serde_json::Value,
    /// Raw PostgreSQL ceiling (rows/s), before and after the sidecar's peak phase, and
    /// their mean (what the ratio uses).
    pub pg_ceiling_before_rows_per_s: Option<f64>,
    pub pg_ceiling_after_rows_per_s: Option<f64>,
    pub pg_ceiling_rows_per_s: Option<f64>,
    /// Raw JetStream ceiling (messages/s).
    pub nats_ceiling_msgs_per_s: Option<f64>,
    /// Closed loop at `--concurrency`.
    pub peak: Option<IngestPhase>,
    /// Open loop at 80% of the peak request rate.
    pub at_80_percent: Option<IngestPhase>,
    pub at_80_percent_offered_requests_per_s: Option<f64>,
    /// Outbox backlog + aggregator lag when the peak phase stopped, how long publishing and
    /// aggregation took to catch up, and the accepted events/s over peak + drain (what the
    /// whole pipeline sustains on this machine).
    pub backlog_after_peak: Option<f64>,
    pub drain_seconds: Option<f64>,
    pub sustained_events_per_s: Option<f64>,
    /// Open loop at 80% of the sustained request rate, from a drained start.
    pub at_80_percent_sustained: Option<IngestPhase>,
    pub at_80_percent_sustained_offered_requests_per_s: Option<f64>,
    /// Peak accepted events/s over the ceilings.
    pub vs_pg_ceiling: Option<f64>,
    pub vs_nats_ceiling: Option<f64>,
    /// VmHWM of the whole bench process (sidecar + load generator + emulator), MB.
    pub peak_rss_mb: Option<f64>,
    /// VmHWM of the sidecar's own process, MB (with `--sidecar-binary`).
    pub sidecar_rss_mb: Option<f64>,
}

impl IngestReport {
    pub fn new(args: &impl Serialize) -> IngestReport {
        IngestReport {
            meta: Meta::start("ingest"),
            config: config_of(args),
            pg_ceiling_before_rows_per_s: None,
            pg_ceiling_after_rows_per_s: None,
            pg_ceiling_rows_per_s: None,
            nats_ceiling_msgs_per_s: None,
            peak: None,
            at_80_percent: None,
            at_80_percent_offered_requests_per_s: None,
            backlog_after_peak: None,
            drain_seconds: None,
            sustained_events_per_s: None,
            at_80_percent_sustained: None,
            at_80_percent_sustained_offered_requests_per_s: None,
            vs_pg_ceiling: None,
            vs_nats_ceiling: None,
            peak_rss_mb: None,
            sidecar_rss_mb: None,
        }
    }

    /// Computes the ratios and stamps the end, then writes to `path` (if any).
    pub fn finish(&mut self, path: Option<&Path>) -> anyhow::Result<()> {
        let accepted = self.peak.as_ref().map(|p| p.accepted_events_per_s);
        self.pg_ceiling_rows_per_s = match (
            self.pg_ceiling_before_rows_per_s,
            self.pg_ceiling_after_rows_per_s,
        ) {
            (Some(a), Some(b)) => Some((a + b) / 2.0),
            (a, b) => a.or(b),
        };
        self.vs_pg_ceiling = ratio(accepted, self.pg_ceiling_rows_per_s);
        self.vs_nats_ceiling = ratio(accepted, self.nats_ceiling_msgs_per_s);
        self.meta.finish();
        write(path, self)
    }
}
