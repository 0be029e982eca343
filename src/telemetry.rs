//! Logs and metrics, set up in one place.
//!
//! Logs are one JSON object per line on stdout (`APP_ENV=dev` adds a human-readable copy on
//! stderr). The sink is a parameter so tests can capture every line and check that no secret
//! ever reaches one. Metrics go to one process-wide Prometheus recorder; every series the
//! contract names is created at zero by [`actors::metric_names::register_all`].

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::settings::AppEnv;

/// Installs the global log subscriber writing JSON lines to `sink`. Only the first call
/// in a process takes effect (tests start many applications in one process).
pub fn init_logs<W>(app_env: AppEnv, sink: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = || {
        EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| {
            EnvFilter::new("info,sqlx=warn,sea_orm=warn,async_nats=warn,fred=warn")
        })
    };
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(sink)
        .with_filter(filter());
    let human = (app_env == AppEnv::Dev).then(|| {
        tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(json)
        .with(human)
        .try_init();
}

/// Latency buckets (seconds) for every histogram: sub-millisecond up to the .NET timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
                .expect("static buckets are valid")
                .install_recorder()
                .expect("no other metrics recorder is installed")
        })
        .clone()
}
