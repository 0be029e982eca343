//! The `DotnetBridge` actor: the single owner of the HTTP client to .NET and of the circuit
//! breaker that guards it.
//!
//! The actor decides and records; it never waits on the network. A [`BridgeMsg::Call`] asks
//! the breaker for a permit; if one is granted, the exchange runs in a task of its own on a
//! clone of the client (a handle onto the one shared pool), and that task answers the
//! caller and sends the outcome back as [`BridgeMsg::Record`]. So calls run concurrently,
//! while every admission and every outcome passes through one mailbox in order: the
//! breaker needs no lock and sees exactly what happened.
//!
//! The exchange runs in its own task rather than the caller's so that a client that hangs
//! up mid-call cannot cut a login or a refresh half-way (.NET would act, nobody would hear
//! the answer), and so that the breaker always learns the outcome.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use reqwest::header::HeaderValue;
use tokio::time::Instant;

use super::exchange::{exchange, Attempt, Prepared};
use super::BridgeConfig;
use crate::breaker::{CircuitBreaker, Outcome, Permit, Rejected, Transition};
use crate::metric_names::{
    CIRCUIT_STATE, UPSTREAM_DOTNET, UPSTREAM_REQUESTS_TOTAL, UPSTREAM_REQUEST_DURATION_SECONDS,
};

/// How often an idle bridge lets the breaker notice that time alone changed its state
/// (open → half-open), so that the `sidecar_circuit_state` gauge does not lag.
const TICK: Duration = Duration::from_millis(500);

/// The bridge's messages.
pub enum BridgeMsg {
    /// Make one attempt of this request if the breaker admits it. The answer is the
    /// attempt's result, or the breaker's refusal (nothing was sent).
    Call(Arc<Prepared>, RpcReplyPort<Result<Attempt, Rejected>>),
    /// An attempt made under `permit` ended: tell the breaker.
    Record {
        permit: Permit,
        outcome: Outcome,
        elapsed: Duration,
    },
    /// Time passed; apply what time alone changes in the breaker.
    Tick,
}

/// The actor (stateless itself; restarts start from [`BridgeConfig`]).
#[derive(Clone)]
pub struct DotnetBridge;

pub struct BridgeState {
    /// The one connection pool to .NET; cloned per exchange (an `Arc` inside).
    client: reqwest::Client,
    breaker: CircuitBreaker,
}

impl Actor for DotnetBridge {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = BridgeConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<BridgeMsg>,
        config: BridgeConfig,
    ) -> Result<BridgeState, ActorProcessingErr> {
        let client = build_client(&config)?;
        let breaker = CircuitBreaker::new(config.breaker.clone(), Instant::now())
            .with_observer(observe_transition);
        // A fresh incarnation starts closed; say so, in case the last one died open.
        metrics::gauge!(CIRCUIT_STATE, "upstream" => UPSTREAM_DOTNET).set(0.0);
        myself.send_interval(TICK, || BridgeMsg::Tick);
        Ok(BridgeState { client, breaker })
    }

    async fn handle(
        &self,
        myself: ActorRef<BridgeMsg>,
        msg: BridgeMsg,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BridgeMsg::Call(request, reply) => match state.breaker.try_acquire(Instant::now()) {
                Err(rejected) => {
                    metrics::counter!(
                        UPSTREAM_REQUESTS_TOTAL,
                        "operation" => request.operation.as_str(),
                        "outcome" => "short_circuited"
                    )
                    .increment(1);
                    let _ = reply.send(Err(rejected));
                }
                Ok(permit) => {
                    let client = state.client.clone();
                    tokio::spawn(async move {
                        let started = Instant::now();
                        let attempt = exchange(&client, &request).await;
                        let elapsed = started.elapsed();
                        let operation = request.operation.as_str();
                        metrics::counter!(
                            UPSTREAM_REQUESTS_TOTAL,
                            "operation" => operation,
                            "outcome" => attempt.metric_outcome()
                        )
                        .increment(1);
                        metrics::histogram!(UPSTREAM_REQUEST_DURATION_SECONDS, "operation" => operation)
                            .record(elapsed.as_secs_f64());
                        // If the bridge died meanwhile, its successor has a fresh breaker
                        // that never issued this permit: nothing to record.
                        let _ = myself.cast(BridgeMsg::Record {
                            permit,
                            outcome: attempt.breaker_outcome(),
                            elapsed,
                        });
                        let _ = reply.send(Ok(attempt));
                    });
                }
            },
            BridgeMsg::Record {
                permit,
                outcome,
                elapsed,
            } => state
                .breaker
                .record(permit, outcome, elapsed, Instant::now()),
            BridgeMsg::Tick => state.breaker.poll(Instant::now()),
        }
        Ok(())
    }
}

fn build_client(config: &BridgeConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        // A redirect is not the contract; it is reported, never followed.
        .redirect(reqwest::redirect::Policy::none())
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(HeaderValue::from_static(concat!(
            "sidecar/",
            env!("CARGO_PKG_VERSION")
        )))
        .build()
}

/// Every state change: the gauge, and one log line (warn when it opens).
fn observe_transition(t: &Transition) {
    metrics::gauge!(CIRCUIT_STATE, "upstream" => UPSTREAM_DOTNET).set(t.to.as_metric());
    let reason = format!("{:?}", t.reason);
    match t.to {
        crate::breaker::BreakerState::Open => tracing::warn!(
            upstream = UPSTREAM_DOTNET,
            from = %t.from,
            to = %t.to,
            reason = %reason,
            "circuit breaker opened: calls to .NET fail fast"
        ),
        _ => tracing::info!(
            upstream = UPSTREAM_DOTNET,
            from = %t.from,
            to = %t.to,
            reason = %reason,
            "circuit breaker changed state"
        ),
    }
}
