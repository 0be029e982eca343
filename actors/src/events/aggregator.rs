//! `Aggregator`: a durable JetStream pull consumer (`AGGREGATOR_CONSUMER`, explicit acks)
//! that counts events per (user, event type, UTC day of `occurredAt`).
//!
//! Exactly-once effect under redelivery: per fetched batch, ONE transaction inserts the
//! batch's event ids into `aggregated_events` (`ON CONFLICT DO NOTHING RETURNING`) and adds
//! counts only for the ids that came back new. Messages are acked after the commit; a crash
//! before the ack redelivers them, and the ids are already there, so nothing is counted
//! twice. Each poll is bounded (the fetch expires, the transaction has a timeout), so the
//! actor's mailbox never waits long.

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
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
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
            consumer: None,
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
                state.consumer = None;
                let delay = Duration::from_millis(200 << state.failures.min(4));
                myself.send_after(delay, || AggregatorMsg::Poll);
            }
        }
        Ok(())
    }
}

/// One fetch → count → ack cycle; returns how many messages it handled.
async fn poll(state: &mut AggregatorState) -> Result<usize, String> {
    let args = &state.args;
    if state.consumer.is_none() {
        let setup = async {
            ensure_stream(&args.jetstream, &args.stream, args.max_age_days)
                .await
                .map_err(|e| e.to_string())?;
            let stream = args
                .jetstream
                .get_stream(&args.stream)
                .await
                .map_err(|e| e.to_string())?;
            stream
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
                .map_err(|e| e.to_string())
        };
        let consumer = tokio::time::timeout(args.timeout, setup)
            .await
            .map_err(|_| "timed out setting up the consumer".to_owned())??;
        state.consumer = Some(consumer);
    }
    let Some(consumer) = &state.consumer else {
        return Ok(0);
    };
    let mut messages = consumer
        .fetch()
        .max_messages(args.batch)
        .expires(args.fetch_wait)
        .messages()
        .await
        .map_err(|e| e.to_string())?;
    let mut fetched = Vec::with_capacity(args.batch);
    let deadline = tokio::time::Instant::now() + args.fetch_wait + Duration::from_secs(1);
    while let Ok(Some(next)) = tokio::time::timeout_at(deadline, messages.next()).await {
        fetched.push(next.map_err(|e| e.to_string())?);
    }
    if fetched.is_empty() {
        return Ok(0);
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
    let acks = futures::future::join_all(fetched.iter().map(|m| m.ack())).await;
    if let Some(Err(err)) = acks.into_iter().find(Result::is_err) {
        // Counted already: a redelivery finds the ids and adds nothing.
        tracing::debug!(error = %err, "an ack failed after the commit");
    }
    Ok(n)
}
