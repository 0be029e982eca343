//! `Aggregator`: a durable JetStream pull consumer (`AGGREGATOR_CONSUMER`, explicit acks)
//! that counts events per (user, event type, UTC day of `occurredAt`).
//!
//! Exactly-once effect under redelivery: per batch of messages, ONE transaction inserts the
//! batch's event ids into `aggregated_events` (`ON CONFLICT DO NOTHING RETURNING`) and adds
//! counts only for the ids that came back new. Messages are acked after the commit; a crash
//! before the ack redelivers them, and the ids are already there, so nothing is counted
//! twice. Each poll is bounded (the wait for messages and the transaction have timeouts),
//! so the actor's mailbox never waits long.
//!
//! Pipelined, because one fetch → commit → ack cycle at a time could not keep up with
//! ingestion (each stage waited for the others; ~9k events/s on the benchmark machine):
//! a feeder task drives the consumer's message stream (which keeps pull requests
//! outstanding) into a bounded channel, so the next messages arrive while a batch commits, and a batch's acks are sent by a task of their own while
//! the next batch commits (at most one such task at a time).

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::store::{CountKey, EventStore};
use super::stream::{ensure_stream, PublishedEvent};

pub enum AggregatorMsg {
    /// Fetch one batch, count it, ack it (the actor sends this to itself).
    Poll,
}

#[derive(Clone)]
pub struct AggregatorArgs {
    pub store: EventStore,
    pub jetstream: jetstream::Context,
    pub stream: String,
    pub consumer: String,
    pub max_age_days: u32,
    /// Most messages per fetch (and per transaction).
    pub batch: usize,
    /// How long a fetch waits for messages.
    pub fetch_wait: Duration,
    /// Bound of the transaction and of setting up the consumer.
    pub timeout: Duration,
}

#[derive(Clone)]
pub struct Aggregator;

pub struct AggregatorState {
    args: AggregatorArgs,
    messages: Option<Feed>,
    /// The previous batch's acks, still being sent.
    acking: Option<tokio::task::JoinHandle<()>>,
    /// Consecutive failures (drives the retry delay).
    failures: u32,
}

impl Actor for Aggregator {
    type Msg = AggregatorMsg;
    type State = AggregatorState;
    type Arguments = AggregatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<AggregatorMsg>,
        args: AggregatorArgs,
    ) -> Result<AggregatorState, ActorProcessingErr> {
        myself.cast(AggregatorMsg::Poll)?;
        Ok(AggregatorState {
            args,
            messages: None,
            acking: None,
            failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<AggregatorMsg>,
        msg: AggregatorMsg,
        state: &mut AggregatorState,
    ) -> Result<(), ActorProcessingErr> {
        let AggregatorMsg::Poll = msg;
        match poll(state).await {
            Ok(_) => {
                if state.failures > 0 {
                    tracing::info!("aggregator resumed");
                }
                state.failures = 0;
                myself.cast(AggregatorMsg::Poll)?;
            }
            Err(err) => {
                if state.failures == 0 {
                    tracing::warn!(error = %err, "aggregator poll failed; retrying");
                }
                state.failures = state.failures.saturating_add(1);
                state.messages = None;
                let delay = Duration::from_millis(200 << state.failures.min(4));
                myself.send_after(delay, || AggregatorMsg::Poll);
            }
        }
        Ok(())
    }
}

/// The consumer's messages, pulled by a task of their own into a bounded channel (the
/// stream asks JetStream for more only while it is polled). Dropping it stops the task.
struct Feed {
    rx: tokio::sync::mpsc::Receiver<Result<jetstream::Message, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    fn start(mut messages: pull::Stream, capacity: usize) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(capacity);
        let task = tokio::spawn(async move {
            while let Some(next) = messages.next().await {
                let failed = next.is_err();
                if tx.send(next.map_err(|e| e.to_string())).await.is_err() || failed {
                    return;
                }
            }
        });
        Self { rx, task }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long a batch waits for more messages after its first.
const LINGER: Duration = Duration::from_millis(20);

/// One batch: wait for messages, count them in one transaction, hand the acks to a task;
/// returns how many messages it handled.
async fn poll(state: &mut AggregatorState) -> Result<usize, String> {
    let args = &state.args;
    if state.messages.is_none() {
        let setup = async {
            ensure_stream(&args.jetstream, &args.stream, args.max_age_days)
                .await
                .map_err(|e| e.to_string())?;
            let stream = args
                .jetstream
                .get_stream(&args.stream)
                .await
                .map_err(|e| e.to_string())?;
            let consumer = stream
                .get_or_create_consumer(
                    &args.consumer,
                    pull::Config {
                        durable_name: Some(args.consumer.clone()),
                        ack_policy: AckPolicy::Explicit,
                        // Short, so that deliveries lost with a NATS restart come back soon; a
                        // redelivery of a counted id adds nothing.
                        ack_wait: Duration::from_secs(5),
                        max_ack_pending: 100_000,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())?;
            consumer
                .stream()
                .max_messages_per_batch(args.batch * 2)
                .expires(args.fetch_wait * 4)
                .heartbeat(args.fetch_wait)
                .messages()
                .await
                .map_err(|e| e.to_string())
        };
        let messages = tokio::time::timeout(args.timeout, setup)
            .await
            .map_err(|_| "timed out setting up the consumer".to_owned())??;
        state.messages = Some(Feed::start(messages, args.batch * 2));
    }
    let Some(messages) = &mut state.messages else {
        return Ok(0);
    };
    let mut fetched = Vec::with_capacity(args.batch);
    // Wait for the first message; then take whatever else has already arrived.
    match tokio::time::timeout(args.fetch_wait, messages.rx.recv()).await {
        Err(_) | Ok(None) => return Ok(0),
        Ok(Some(next)) => fetched.push(next.map_err(|e| e.to_string())?),
    }
    // A transaction costs about the same for 100 ids as for 1,000 (the commit dominates),
    // so a batch lingers a little for more messages (the stream hands them over ~100 at a
    // time). When the consumer is idle this adds at most `LINGER` to a count's delay.
    let linger = tokio::time::Instant::now() + LINGER;
    while fetched.len() < args.batch {
        match tokio::time::timeout_at(linger, messages.rx.recv()).await {
            Ok(Some(next)) => fetched.push(next.map_err(|e| e.to_string())?),
            Ok(None) | Err(_) => break,
        }
    }
    let mut counted = Vec::with_capacity(fetched.len());
    for message in &fetched {
        match serde_json::from_slice::<PublishedEvent>(&message.payload) {
            Ok(e) => counted.push((
                e.event_id,
                CountKey {
                    user_id: e.user_id,
                    event_type: e.event_type,
                    day: e.occurred_at.date_naive(),
                },
            )),
            Err(err) => {
                tracing::warn!(subject = %message.subject, error = %err, "aggregator skips a message that is not an event");
            }
        }
    }
    tokio::time::timeout(args.timeout, args.store.aggregate(&counted))
        .await
        .map_err(|_| "the aggregate transaction timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let n = fetched.len();
    if let Some(previous) = state.acking.take() {
        // One batch of acks in flight at a time: a slow NATS slows the aggregator down
        // instead of piling up ack tasks.
        let _ = previous.await;
    }
    state.acking = Some(tokio::spawn(async move {
        // One after another: an ack is a publish queued on the connection, ready at once;
        // `join_all` over a thousand of them cost more in wake-ups than the acks themselves.
        for message in &fetched {
            if let Err(err) = message.ack().await {
                // Counted already: a redelivery finds the ids and adds nothing.
                tracing::debug!(error = %err, "an ack failed after the commit");
                break;
            }
        }
    }));
    Ok(n)
}
