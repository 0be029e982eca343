//! [`BackpressureController`]: the supervised actor that reads the lag and publishes whether
//! `/events` sheds.
//!
//! Every `poll_every` it asks JetStream for the info of each named consumer (concurrently,
//! each bounded by `ask_timeout`) and reads the outbox backlog; a consumer's lag is
//! `num_pending + num_ack_pending`, the lag is the largest of them. It then applies
//! [`next_shedding`], estimates the `Retry-After` from the measured drain rates, and
//! publishes a [`BackpressureState`] through the watch channel the handler reads. The
//! readings are the only I/O and are bounded, so one message is handled at a time and the
//! next reading is scheduled after the previous one ends (no pile-up when NATS is slow).
//!
//! A restarted controller starts from the published state, so a restart neither starts nor
//! stops shedding by itself.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::backlog::BacklogSource;
use super::policy::{next_shedding, retry_after_secs, DrainRate, Watermarks};
use super::{BackpressurePublisher, BackpressureState};
use crate::metric_names::{BACKPRESSURE_ACTIVE, QUEUE_LAG};

#[derive(Clone)]
pub struct BackpressureController;

/// What the controller is started (and restarted) with.
#[derive(Clone)]
pub struct ControllerArgs {
    /// JetStream, or `None` when `NATS_URL` is unset (the backlog alone then counts).
    pub jetstream: Option<jetstream::Context>,
    /// The events stream (`EVENT_STREAM`).
    pub stream: String,
    /// Durable consumers whose lag counts (`BACKPRESSURE_CONSUMERS`).
    pub consumers: Vec<String>,
    pub marks: Watermarks,
    pub backlog: Arc<dyn BacklogSource>,
    /// Where the state goes; it outlives the actor's incarnations.
    pub publisher: BackpressurePublisher,
    /// Time between readings.
    pub poll_every: Duration,
    /// Longest wait for one consumer's info.
    pub ask_timeout: Duration,
}

impl ControllerArgs {
    pub const DEFAULT_POLL_EVERY: Duration = Duration::from_millis(500);
    pub const DEFAULT_ASK_TIMEOUT: Duration = Duration::from_secs(1);
}

/// The controller's messages.
pub enum ControllerMsg {
    /// Take a reading and schedule the next one (the actor sends it to itself).
    Tick,
    /// Take a reading now and answer with the state it led to (tests, diagnostics); does
    /// not change the schedule.
    PollNow(RpcReplyPort<BackpressureState>),
}

pub struct ControllerState {
    args: ControllerArgs,
    shedding: bool,
    lag_rate: DrainRate,
    backlog_rate: DrainRate,
    /// Consumers already reported missing (logged once until they appear).
    missing: HashSet<String>,
    /// Whether NATS answered the last reading (transitions are logged once).
    nats_answered: bool,
}

/// What asking for one consumer's info gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerReading {
    /// `num_pending + num_ack_pending`.
    Lag(u64),
    /// The consumer (or the stream) does not exist: logged, not counted.
    Missing,
    /// NATS did not answer (down, timed out, no JetStream).
    Unreachable(String),
}

impl Actor for BackpressureController {
    type Msg = ControllerMsg;
    type State = ControllerState;
    type Arguments = ControllerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ControllerMsg>,
        args: ControllerArgs,
    ) -> Result<ControllerState, ActorProcessingErr> {
        let shedding = args.publisher.current().shedding;
        if args.jetstream.is_none() {
            tracing::info!("NATS_URL is unset: backpressure watches the outbox backlog alone");
        }
        myself.cast(ControllerMsg::Tick)?;
        Ok(ControllerState {
            args,
            shedding,
            lag_rate: DrainRate::default(),
            backlog_rate: DrainRate::default(),
            missing: HashSet::new(),
            nats_answered: true,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ControllerMsg>,
        msg: ControllerMsg,
        state: &mut ControllerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ControllerMsg::Tick => {
                poll(state).await;
                // The timer task ends with the actor: a send to a dead actor just fails.
                myself.send_after(state.args.poll_every, || ControllerMsg::Tick);
            }
            ControllerMsg::PollNow(reply) => {
                let current = poll(state).await;
                let _ = reply.send(current);
            }
        }
        Ok(())
    }
}

/// One reading: ask, decide, publish.
async fn poll(state: &mut ControllerState) -> BackpressureState {
    let now = Instant::now();
    let readings = match &state.args.jetstream {
        Some(js) => {
            read_consumers(
                js,
                &state.args.stream,
                &state.args.consumers,
                state.args.ask_timeout,
            )
            .await
        }
        None => Vec::new(),
    };
    let lag = combine(state, &readings);
    let backlog = state.args.backlog.pending().await;

    match lag {
        Some(level) => state.lag_rate.record(now, level),
        None => state.lag_rate.clear(),
    }
    match backlog {
        Some(level) => state.backlog_rate.record(now, level),
        None => state.backlog_rate.clear(),
    }
    let marks = state.args.marks;
    let shedding = next_shedding(state.shedding, &[lag, backlog], marks);
    let retry_after = if shedding {
        let levels: Vec<(u64, Option<f64>)> = [
            lag.map(|l| (l, state.lag_rate.per_sec())),
            backlog.map(|b| (b, state.backlog_rate.per_sec())),
        ]
        .into_iter()
        .flatten()
        .collect();
        retry_after_secs(&levels, marks.low)
    } else {
        0
    };
    if shedding != state.shedding {
        if shedding {
            tracing::warn!(
                lag,
                backlog,
                high = marks.high,
                "backpressure: /events sheds load until the lag and the outbox backlog fall below the low watermark"
            );
        } else {
            tracing::info!(
                lag,
                backlog,
                low = marks.low,
                "backpressure: /events accepts again"
            );
        }
        state.shedding = shedding;
    }
    metrics::gauge!(BACKPRESSURE_ACTIVE).set(if shedding { 1.0 } else { 0.0 });
    let published = BackpressureState {
        shedding,
        retry_after_secs: retry_after,
        lag,
        backlog,
    };
    state.args.publisher.publish(published);
    published
}

/// The lag: the largest known consumer lag. Sets the per-consumer gauges and logs missing
/// consumers and NATS reachability once per change.
fn combine(state: &mut ControllerState, readings: &[(String, ConsumerReading)]) -> Option<u64> {
    let mut lag = None;
    let mut unreachable = None;
    let mut answered = false;
    for (consumer, reading) in readings {
        match reading {
            ConsumerReading::Lag(value) => {
                answered = true;
                lag = lag.max(Some(*value));
                metrics::gauge!(QUEUE_LAG, "consumer" => consumer.clone()).set(*value as f64);
                if state.missing.remove(consumer) {
                    tracing::info!(consumer = %consumer, "backpressure: the consumer exists now and its lag counts");
                }
            }
            ConsumerReading::Missing => {
                answered = true;
                metrics::gauge!(QUEUE_LAG, "consumer" => consumer.clone()).set(0.0);
                if state.missing.insert(consumer.clone()) {
                    tracing::warn!(
                        consumer = %consumer,
                        stream = %state.args.stream,
                        "backpressure: the consumer does not exist; its lag is not counted"
                    );
                }
            }
            ConsumerReading::Unreachable(error) => unreachable = Some(error.clone()),
        }
    }
    if let Some(error) = unreachable.filter(|_| !answered) {
        if state.nats_answered {
            tracing::warn!(
                error = %error,
                "backpressure: NATS cannot be asked for the consumer lag; the outbox backlog alone counts"
            );
        }
        state.nats_answered = false;
    } else if !readings.is_empty() {
        if !state.nats_answered {
            tracing::info!("backpressure: NATS answers again; the consumer lag counts again");
        }
        state.nats_answered = true;
    }
    lag
}

/// Asks for every consumer's info at once, each bounded by `timeout`.
pub async fn read_consumers(
    js: &jetstream::Context,
    stream: &str,
    consumers: &[String],
    timeout: Duration,
) -> Vec<(String, ConsumerReading)> {
    let asks = consumers.iter().map(|name| async move {
        let reading = match tokio::time::timeout(timeout, consumer_lag(js, stream, name)).await {
            Ok(reading) => reading,
            Err(_) => ConsumerReading::Unreachable(format!("no answer within {timeout:?}")),
        };
        (name.clone(), reading)
    });
    futures::future::join_all(asks).await
}

async fn consumer_lag(js: &jetstream::Context, stream: &str, consumer: &str) -> ConsumerReading {
    let stream = match js.get_stream_no_info(stream).await {
        Ok(stream) => stream,
        // Only an invalid name fails here; settings validate the stream name, so this is
        // a consumer that cannot exist.
        Err(_) => return ConsumerReading::Missing,
    };
    match stream.consumer_info(consumer).await {
        Ok(info) => {
            ConsumerReading::Lag(info.num_pending.saturating_add(info.num_ack_pending as u64))
        }
        Err(err) => match err.kind() {
            ConsumerInfoErrorKind::NotFound
            | ConsumerInfoErrorKind::StreamNotFound
            | ConsumerInfoErrorKind::InvalidName => ConsumerReading::Missing,
            _ => ConsumerReading::Unreachable(err.to_string()),
        },
    }
}
