//! The chaos suite (issue 8): three sidecar replicas (real processes) on a PostgreSQL, Redis
//! and NATS of their own, in front of the .NET emulator, under a load of event batches with
//! duplicates and client retries, while faults strike at random moments: a replica killed
//! with SIGKILL and restarted, NATS, Redis and PostgreSQL stopped and restarted, the emulator
//! failing or slow. At the end it reconciles what clients were told against the database,
//! the stream and the aggregates, and prints the figures.
//!
//! Bounded in time: `CHAOS_SECONDS` (default 40) of load; `CHAOS_SEED` replays a run.
//! Needs `initdb`/`pg_ctl` (PostgreSQL server binaries), `nats-server` and `redis-server`;
//! without them it says which is missing and is skipped, except under `CI=true`.

mod cluster;
mod load;
mod reconcile;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use cluster::Cluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_nothing_accepted_is_lost_or_doubled() {
    let Some(mut cluster) = Cluster::start(3).await else {
        return;
    };
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    println!(
        "chaos: seed {seed}, {seconds} s of load on {} replicas",
        cluster.replicas.len()
    );

    let load = load::Load::start(&cluster, 8).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut timeline = Vec::new();
    // Let the load settle before the first fault.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Every kind of fault strikes once per round, in a random order.
    let mut schedule = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        if schedule.is_empty() {
            schedule = cluster::Fault::round(&mut rng, cluster.replicas.len());
        }
        let fault = schedule.pop().unwrap();
        let at = started.elapsed();
        let outage = Duration::from_millis(rng.gen_range(1_000..3_000));
        println!(
            "chaos: t={:>5.1}s {fault:?} for {:.1}s",
            at.as_secs_f64(),
            outage.as_secs_f64()
        );
        timeline.push((at, fault.clone()));
        cluster.inject(&fault).await;
        tokio::time::sleep(outage).await;
        cluster.heal(&fault).await;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1_500..4_000))).await;
    }
    let report = load.stop().await;

    // Everything recovers by itself: every replica ready again.
    assert!(
        cluster.all_ready(Duration::from_secs(60)).await,
        "every replica recovered to ready"
    );
    let outcome = reconcile::reconcile(&cluster, &report).await;
    println!("{}", outcome.summary(&report, timeline.len()));
    cluster.write_timeline(&timeline, &report);
    outcome.assert_clean();
    assert!(
        report.forbidden_answers.is_empty(),
        "answers the contract does not allow: {:?}",
        &report.forbidden_answers[..report.forbidden_answers.len().min(5)]
    );
}
