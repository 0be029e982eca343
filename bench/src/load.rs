//! The load loop shared by every benchmark: `concurrency` workers, each running one
//! scenario iteration after another for a fixed time, every request's latency recorded.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Latencies of one kind of request, in microseconds.
#[derive(Default, Clone)]
pub struct Samples {
    micros: Vec<u64>,
}

impl Samples {
    pub fn record(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    pub fn extend(&mut self, other: &Samples) {
        self.micros.extend_from_slice(&other.micros);
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// The `q` quantile (0..=1) in milliseconds, nearest-rank.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64 / 1000.0
    }

    /// Several quantiles (0..=1) in milliseconds, nearest-rank, sorting once.
    pub fn quantiles_ms(&self, qs: &[f64]) -> Vec<f64> {
        let mut sorted = self.micros.clone();
        sorted.sort_unstable();
        qs.iter()
            .map(|&q| {
                if sorted.is_empty() {
                    return f64::NAN;
                }
                let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
                sorted[rank - 1] as f64 / 1000.0
            })
            .collect()
    }
}

/// What one run measured.
pub struct RunResult {
    /// Per request kind, in the scenario's order.
    pub samples: Vec<(String, Samples)>,
    pub errors: u64,
    pub elapsed: Duration,
}

impl RunResult {
    pub fn requests(&self) -> usize {
        self.samples.iter().map(|(_, s)| s.len()).sum()
    }

    pub fn throughput(&self) -> f64 {
        self.requests() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn all(&self) -> Samples {
        let mut all = Samples::default();
        for (_, s) in &self.samples {
            all.extend(s);
        }
        all
    }
}

/// One worker's record: latencies per request kind and errors.
#[derive(Default)]
pub struct Recorder {
    pub kinds: Vec<(String, Samples)>,
    pub errors: u64,
}

impl Recorder {
    pub fn record(&mut self, kind: &str, d: Duration) {
        match self.kinds.iter_mut().find(|(k, _)| k == kind) {
            Some((_, s)) => s.record(d),
            None => {
                let mut s = Samples::default();
                s.record(d);
                self.kinds.push((kind.to_owned(), s));
            }
        }
    }
}

/// Runs `iteration` from `concurrency` workers for `duration` (after `warmup`, unrecorded).
pub async fn run<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
    iteration: F,
) -> RunResult
where
    F: Fn(reqwest::Client) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Recorder> + Send,
{
    let iteration = Arc::new(iteration);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency * 2)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let warm_until = Instant::now() + warmup;
    let mut warmers = Vec::new();
    for _ in 0..concurrency {
        let (client, iteration) = (client.clone(), Arc::clone(&iteration));
        warmers.push(tokio::spawn(async move {
            while Instant::now() < warm_until {
                iteration(client.clone()).await;
            }
        }));
    }
    for w in warmers {
        let _ = w.await;
    }
    let mut workers = Vec::new();
    let started = Instant::now();
    let until = started + duration;
    for _ in 0..concurrency {
        let (client, iteration) = (client.clone(), Arc::clone(&iteration));
        workers.push(tokio::spawn(async move {
            let mut total = Recorder::default();
            while Instant::now() < until {
                let r = iteration(client.clone()).await;
                total.errors += r.errors;
                for (kind, s) in r.kinds {
                    match total.kinds.iter_mut().find(|(k, _)| *k == kind) {
                        Some((_, t)) => t.extend(&s),
                        None => total.kinds.push((kind, s)),
                    }
                }
            }
            total
        }));
    }
    let mut merged = Recorder::default();
    for w in workers {
        let r = w.await.expect("worker");
        merged.errors += r.errors;
        for (kind, s) in r.kinds {
            match merged.kinds.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, t)) => t.extend(&s),
                None => merged.kinds.push((kind, s)),
            }
        }
    }
    RunResult {
        samples: merged.kinds,
        errors: merged.errors,
        elapsed: started.elapsed(),
    }
}
