//! `OutboxRelay`: publishes accepted events to JetStream and records, per batch, that they
//! are published.
//!
//! The outbox is the `events` table plus one `outbox_batches` row per group commit (see
//! the migration). A shard hands each committed batch to the relay in memory
//! ([`RelayMsg::Committed`]); the relay publishes every event with `Nats-Msg-Id = eventId`,
//! pipelined (all publishes sent, then all acks awaited), and then marks the whole batch
//! published with one `UPDATE` — one extra row write per batch, not per event. Events that
//! were acked are dropped from the held batch, so a retry republishes only the rest.
//!
//! The sweeper ([`RelayMsg::Sweep`], every second) refreshes `sidecar_outbox_pending` from
//! the table, and publishes batches left unpublished for longer than a grace period (a
//! crash between commit and publish, a restart, an outage longer than the relay holds in
//! memory, another replica that died). On PostgreSQL it locks them `FOR UPDATE SKIP
//! LOCKED`, so replicas do not sweep the same batch at once. A replay is harmless: JetStream
//! drops a repeated `Nats-Msg-Id` within its 2-minute duplicate window, and the aggregator
//! counts an id once, ever.
//!
//! NATS down: publishes fail or time out, the batches stay held (up to a bound, beyond
//! which the table keeps them for the sweeper), and the relay retries with exponential
//! backoff; publishing resumes by itself. No `NATS_URL`: events stay in the outbox, which
//! the relay says once in the log (and the application in `/health/ready`).
//!
//! On stop, the relay makes one bounded attempt to publish what it holds.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::publish::{publish_round, JetStreamLink};
use super::store::{CommittedBatch, EventStore};
use super::stream::ensure_stream;
use crate::metric_names::OUTBOX_PENDING;

pub enum RelayMsg {
    /// A batch a shard has just committed: publish it.
    Committed(CommittedBatch),
    /// Start publishing what is held (the relay sends this to itself after a backoff).
    Flush,
    /// A round of publishes ended (sent by the round's task): `rest` holds the batches
    /// not fully acknowledged, with only their unacknowledged events.
    RoundDone {
        batch_ids: Vec<i64>,
        /// Events acknowledged (they leave memory).
        published: usize,
        rest: Vec<CommittedBatch>,
        error: Option<String>,
    },
    /// Refresh the backlog gauge and publish batches left behind in the table (every
    /// `sweep_interval`, the relay sends this to itself).
    Sweep,
}

/// The outbox backlog (accepted, not yet published), shared with whoever needs it (the
/// backpressure controller, readiness). Refreshed from the table every sweep.
#[derive(Clone, Debug, Default)]
pub struct OutboxBacklog(Arc<AtomicI64>);

impl OutboxBacklog {
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
        metrics::gauge!(OUTBOX_PENDING).set(value as f64);
    }
}

#[derive(Clone)]
pub struct RelayArgs {
    pub store: EventStore,
    /// `None` when `NATS_URL` is unset: publishing is off.
    pub jetstream: Option<JetStreamLink>,
    pub stream: String,
    pub max_age_days: u32,
    pub backlog: OutboxBacklog,
    pub sweep_interval: Duration,
    /// A batch unpublished for longer than this is the sweeper's.
    pub sweep_grace: Duration,
    /// Bound of one round of publishes (and of each database call).
    pub publish_timeout: Duration,
    /// Most events held in memory (waiting or being published); beyond it, batches wait in
    /// the table for the sweeper.
    pub max_held_events: usize,
}

#[derive(Clone)]
pub struct OutboxRelay;

pub struct RelayState {
    args: RelayArgs,
    /// Committed batches waiting for a round.
    held: VecDeque<CommittedBatch>,
    /// Events held in memory: waiting in `held` or in a round being published.
    held_events: usize,
    /// Of those, the events waiting in `held` (not in a round).
    queued_events: usize,
    /// Batches of the rounds being published (the sweeper leaves them alone).
    in_flight: HashSet<i64>,
    rounds_in_flight: usize,
    retry_scheduled: bool,
    /// Consecutive failed rounds (drives the backoff); 0 when publishing works.
    failures: u32,
    stream_ready: bool,
}

/// Events published per round at most (bounds one round's time and memory).
const ROUND_EVENTS: usize = 5_000;
/// Rounds published at once. One round at a time left JetStream idle while its acks came
/// back, and the relay fell behind ingestion (the table then held the backlog, and the
/// sweeper read it back from the database); a few rounds in flight keep the pipe full.
const MAX_ROUNDS_IN_FLIGHT: usize = 4;
/// Events that must be waiting before a second (third, fourth) round starts beside one in
/// flight.
const EXTRA_ROUND_EVENTS: usize = 1_000;

impl Actor for OutboxRelay {
    type Msg = RelayMsg;
    type State = RelayState;
    type Arguments = RelayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RelayMsg>,
        args: RelayArgs,
    ) -> Result<RelayState, ActorProcessingErr> {
        if args.jetstream.is_none() {
            tracing::warn!(
                "publishing is off: NATS_URL is unset; accepted events wait in the outbox"
            );
        }
        // The first sweep runs at once: it picks up whatever a previous run left behind.
        myself.cast(RelayMsg::Sweep)?;
        Ok(RelayState {
            args,
            held: VecDeque::new(),
            held_events: 0,
            queued_events: 0,
            in_flight: HashSet::new(),
            rounds_in_flight: 0,
            retry_scheduled: false,
            failures: 0,
            stream_ready: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RelayMsg>,
        msg: RelayMsg,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RelayMsg::Committed(batch) => {
                if state.args.jetstream.is_none() {
                    return Ok(());
                }
                if state.held_events + batch.events.len() > state.args.max_held_events {
                    // The table has it; the sweeper will publish it once NATS keeps up.
                    return Ok(());
                }
                state.held_events += batch.events.len();
                state.queued_events += batch.events.len();
                state.held.push_back(batch);
                if state.failures == 0 {
                    start_rounds(&myself, state).await;
                }
            }
            RelayMsg::Flush => {
                state.retry_scheduled = false;
                start_rounds(&myself, state).await;
                if state.failures > 0 && state.rounds_in_flight == 0 {
                    schedule_retry(&myself, state);
                }
            }
            RelayMsg::RoundDone {
                batch_ids,
                published,
                rest,
                error,
            } => {
                state.rounds_in_flight -= 1;
                state.held_events -= published;
                for id in &batch_ids {
                    state.in_flight.remove(id);
                }
                for b in rest.into_iter().rev() {
                    // Their events were counted in `held_events` all along.
                    state.queued_events += b.events.len();
                    state.held.push_front(b);
                }
                match error {
                    Some(err) => {
                        note_failure(state, &err);
                        schedule_retry(&myself, state);
                    }
                    None => {
                        if state.failures > 0 {
                            tracing::info!("publishing to JetStream resumed");
                        }
                        state.failures = 0;
                        start_rounds(&myself, state).await;
                    }
                }
            }
            RelayMsg::Sweep => {
                sweep(state).await;
                let next = state.args.sweep_interval;
                myself.send_after(next, || RelayMsg::Sweep);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<RelayMsg>,
        state: &mut RelayState,
    ) -> Result<(), ActorProcessingErr> {
        if state.args.jetstream.is_some() && !state.held.is_empty() {
            let held = state.held_events;
            publish_held_once(state).await;
            tracing::info!(
                events = held - state.held_events,
                left_in_outbox = state.held_events,
                "outbox relay flushed on stop"
            );
        }
        Ok(())
    }
}

fn schedule_retry(myself: &ActorRef<RelayMsg>, state: &mut RelayState) {
    if state.retry_scheduled {
        return;
    }
    let exp = state.failures.saturating_sub(1).min(6);
    let delay = Duration::from_millis(100 << exp).min(Duration::from_secs(5));
    state.retry_scheduled = true;
    myself.send_after(delay, || RelayMsg::Flush);
}

/// Makes sure the stream exists (once, and again after a failure).
async fn stream_ready(state: &mut RelayState, js: &JetStreamLink) -> bool {
    if state.stream_ready {
        return true;
    }
    match tokio::time::timeout(
        state.args.publish_timeout,
        ensure_stream(&js.jetstream, &state.args.stream, state.args.max_age_days),
    )
    .await
    {
        Ok(Ok(())) => state.stream_ready = true,
        Ok(Err(err)) => note_failure(state, &err.to_string()),
        Err(_) => note_failure(state, "timed out ensuring the stream"),
    }
    state.stream_ready
}

/// Takes the next round (up to `ROUND_EVENTS`) off the held queue.
fn next_round(state: &mut RelayState) -> Vec<CommittedBatch> {
    let mut round: Vec<CommittedBatch> = Vec::new();
    let mut events = 0;
    while let Some(b) = state.held.front() {
        if !round.is_empty() && events + b.events.len() > ROUND_EVENTS {
            break;
        }
        events += b.events.len();
        round.extend(state.held.pop_front());
    }
    state.queued_events -= events;
    round
}

/// Starts rounds while there is something held and room in flight: all the room when
/// publishing works, one probing round while it fails.
async fn start_rounds(myself: &ActorRef<RelayMsg>, state: &mut RelayState) {
    let Some(js) = state.args.jetstream.clone() else {
        return;
    };
    let limit = if state.failures > 0 {
        1
    } else {
        MAX_ROUNDS_IN_FLIGHT
    };
    while state.rounds_in_flight < limit && !state.held.is_empty() {
        // A round starts at once when none is in flight, so a lone event is published
        // without delay; further rounds only for a backlog. Under many small commits
        // (batch 1) several tiny rounds in flight each paid a subscription and an UPDATE
        // for a handful of events; now the commits that arrive during a round go out
        // together in the next.
        if state.rounds_in_flight > 0 && state.queued_events < EXTRA_ROUND_EVENTS {
            return;
        }
        if !stream_ready(state, &js).await {
            schedule_retry(myself, state);
            return;
        }
        let round = next_round(state);
        let batch_ids: Vec<i64> = round.iter().map(|b| b.batch_id).collect();
        state.in_flight.extend(batch_ids.iter().copied());
        state.rounds_in_flight += 1;
        let (js, store, timeout, myself) = (
            js.clone(),
            state.args.store.clone(),
            state.args.publish_timeout,
            myself.clone(),
        );
        tokio::spawn(async move {
            let events: usize = round.iter().map(|b| b.events.len()).sum();
            let (done, rest, error) = publish_round(&js, round, timeout).await;
            // Acknowledged events leave memory, including those of partly published batches.
            let published = events - rest.iter().map(|b| b.events.len()).sum::<usize>();
            mark_published(&store, &done, timeout).await;
            let msg = RelayMsg::RoundDone {
                batch_ids,
                published,
                rest,
                error,
            };
            // The relay gone (stopping): what was not published stays in the table for
            // the sweeper.
            let _ = myself.cast(msg);
        });
    }
}

/// Records the fully acknowledged batches published. If it fails, the sweeper republishes
/// them later (harmless) and marks them then.
async fn mark_published(store: &EventStore, done: &[CommittedBatch], timeout: Duration) {
    let ids: Vec<i64> = done.iter().map(|b| b.batch_id).collect();
    if ids.is_empty() {
        return;
    }
    match tokio::time::timeout(timeout, store.mark_published(&ids)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => tracing::warn!(error = %err, "could not mark batches published"),
        Err(_) => tracing::warn!("marking batches published timed out"),
    }
}

/// On stop: one bounded round of what is held, in this task.
async fn publish_held_once(state: &mut RelayState) {
    let Some(js) = state.args.jetstream.clone() else {
        return;
    };
    if !stream_ready(state, &js).await {
        return;
    }
    let round = next_round(state);
    let events: usize = round.iter().map(|b| b.events.len()).sum();
    let (done, rest, _) = publish_round(&js, round, state.args.publish_timeout).await;
    mark_published(&state.args.store, &done, state.args.publish_timeout).await;
    state.held_events -= events - rest.iter().map(|b| b.events.len()).sum::<usize>();
    for b in rest.into_iter().rev() {
        state.queued_events += b.events.len();
        state.held.push_front(b);
    }
}

fn note_failure(state: &mut RelayState, error: &str) {
    if state.failures == 0 {
        tracing::warn!(
            error,
            "publishing to JetStream failed; retrying with backoff"
        );
    }
    state.failures = state.failures.saturating_add(1);
    // A stream deleted behind our back is recreated on the next round.
    state.stream_ready = false;
}

/// Refreshes the backlog gauge; publishes batches the table holds past the grace period.
async fn sweep(state: &mut RelayState) {
    let store = state.args.store.clone();
    let timeout = state.args.publish_timeout;
    match tokio::time::timeout(timeout, store.pending_count()).await {
        Ok(Ok(n)) => state.args.backlog.set(n),
        Ok(Err(err)) => tracing::debug!(error = %err, "outbox backlog query failed"),
        Err(_) => tracing::debug!("outbox backlog query timed out"),
    }
    let Some(js) = state.args.jetstream.clone() else {
        return;
    };
    // While NATS fails, the retry loop of held batches is the probe; do not pile on.
    if state.failures > 0 || state.args.backlog.get() == 0 {
        return;
    }
    if !state.stream_ready {
        match tokio::time::timeout(
            timeout,
            ensure_stream(&js.jetstream, &state.args.stream, state.args.max_age_days),
        )
        .await
        {
            Ok(Ok(())) => state.stream_ready = true,
            _ => return,
        }
    }
    let held: Vec<i64> = state
        .held
        .iter()
        .map(|b| b.batch_id)
        .chain(state.in_flight.iter().copied())
        .collect();
    let older_than = Utc::now()
        - chrono::Duration::from_std(state.args.sweep_grace).unwrap_or(chrono::Duration::zero());
    let mut swept = 0usize;
    // A few rounds per sweep, each one bounded; the next sweep continues.
    for _ in 0..10 {
        let found =
            tokio::time::timeout(timeout, store.unpublished_batches(older_than, 50, &held)).await;
        let (tx, batches) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "outbox sweep query failed");
                return;
            }
            Err(_) => return,
        };
        if batches.is_empty() {
            break;
        }
        let count = batches.len();
        let (done, _rest, error) = publish_round(&js, batches, timeout).await;
        let ids: Vec<i64> = done.iter().map(|b| b.batch_id).collect();
        swept += done.len();
        let marked = async {
            // Inside the locking transaction on PostgreSQL, so the lock covers the mark.
            match tx {
                Some(mut tx) => {
                    if !ids.is_empty() {
                        sea_orm::sqlx::query(
                            "UPDATE outbox_batches SET published_at = $1 \
                             WHERE batch_id = ANY($2::bigint[])",
                        )
                        .bind(Utc::now())
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await
                }
                None => store
                    .mark_published(&ids)
                    .await
                    .map_err(|e| sea_orm::sqlx::Error::Protocol(e.to_string())),
            }
        };
        if let Ok(Err(err)) | Err(err) = tokio::time::timeout(timeout, marked)
            .await
            .map_err(|_| sea_orm::sqlx::Error::PoolTimedOut)
        {
            tracing::warn!(error = %err, "marking swept batches failed");
            return;
        }
        if let Some(err) = error {
            note_failure(state, &err);
            return;
        }
        if count < 50 {
            break;
        }
    }
    if swept > 0 {
        tracing::info!(
            batches = swept,
            "outbox sweeper published batches left behind"
        );
    }
}
