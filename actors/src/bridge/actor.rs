//! The `DotnetBridge` actor: the owner of the HTTP client to .NET and of the circuit
//! breaker that guards it, and the [`BridgeCore`] it publishes for the hot path.
//!
//! The actor creates the core (one connection pool, one breaker) when it starts, publishes
//! it in a [`CoreCell`] that every [`super::BridgeHandle`] reads, and keeps the breaker's
//! gauge honest while no call comes (time alone moves an open breaker to half-open). Calls
//! never pass through its mailbox: a caller takes a permit from the breaker (a mutex held
//! for a few hundred nanoseconds, never across an `.await`), makes the exchange in its own
//! task, and records the outcome. See the module docs of [`super`] for why.
//!
//! A restarted bridge starts from its arguments: a fresh pool and a closed breaker.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use reqwest::header::HeaderValue;
use tokio::time::Instant;

use super::exchange::{exchange, Attempt, Prepared};
use super::BridgeConfig;
use crate::breaker::{CircuitBreaker, Rejected, Transition};
use crate::metric_names::{
    CIRCUIT_STATE, UPSTREAM_DOTNET, UPSTREAM_REQUESTS_TOTAL, UPSTREAM_REQUEST_DURATION_SECONDS,
};

/// How often an idle bridge lets the breaker notice that time alone changed its state
/// (open → half-open), so that the `sidecar_circuit_state` gauge does not lag.
const TICK: Duration = Duration::from_millis(500);

/// The bridge's messages.
pub enum BridgeMsg {
    /// Time passed; apply what time alone changes in the breaker.
    Tick,
}

/// Where the current incarnation's core is published for the handles.
#[derive(Clone, Default)]
pub struct CoreCell(Arc<RwLock<Option<Arc<BridgeCore>>>>);

impl CoreCell {
    /// The current core; `None` before the bridge first started or after it stopped.
    pub fn get(&self) -> Option<Arc<BridgeCore>> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set(&self, core: Option<Arc<BridgeCore>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = core;
    }
}

/// The arguments the bridge starts (and restarts) from.
#[derive(Clone)]
pub struct BridgeArgs {
    pub config: BridgeConfig,
    pub cell: CoreCell,
}

/// The client and the breaker of one incarnation of the bridge.
pub struct BridgeCore {
    /// The one connection pool to .NET.
    client: reqwest::Client,
    /// Admission and outcomes of every call; never locked across an `.await`.
    breaker: Mutex<CircuitBreaker>,
}

impl BridgeCore {
    fn breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One attempt: a permit from the breaker, the exchange, the outcome recorded and
    /// counted. `Err` when the breaker refused (nothing was sent).
    pub async fn attempt(&self, request: &Prepared) -> Result<Attempt, Rejected> {
        let operation = request.operation.as_str();
        let permit = match self.breaker().try_acquire(Instant::now()) {
            Ok(permit) => permit,
            Err(rejected) => {
                metrics::counter!(
                    UPSTREAM_REQUESTS_TOTAL,
                    "operation" => operation,
                    "outcome" => "short_circuited"
                )
                .increment(1);
                return Err(rejected);
            }
        };
        // If this future is dropped mid-exchange (the client hung up), the permit goes
        // unrecorded: the breaker counts an unrecorded probe as timed out.
        let started = Instant::now();
        let attempt = exchange(&self.client, request).await;
        let elapsed = started.elapsed();
        metrics::counter!(
            UPSTREAM_REQUESTS_TOTAL,
            "operation" => operation,
            "outcome" => attempt.metric_outcome()
        )
        .increment(1);
        metrics::histogram!(UPSTREAM_REQUEST_DURATION_SECONDS, "operation" => operation)
            .record(elapsed.as_secs_f64());
        self.breaker()
            .record(permit, attempt.breaker_outcome(), elapsed, Instant::now());
        Ok(attempt)
    }
}

/// The actor (stateless itself; restarts start from [`BridgeArgs`]).
#[derive(Clone)]
pub struct DotnetBridge;

pub struct BridgeState {
    core: Arc<BridgeCore>,
    cell: CoreCell,
}

impl Actor for DotnetBridge {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = BridgeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<BridgeMsg>,
        args: BridgeArgs,
    ) -> Result<BridgeState, ActorProcessingErr> {
        let client = build_client(&args.config)?;
        let breaker = CircuitBreaker::new(args.config.breaker.clone(), Instant::now())
            .with_observer(observe_transition);
        // A fresh incarnation starts closed; say so, in case the last one died open.
        metrics::gauge!(CIRCUIT_STATE, "upstream" => UPSTREAM_DOTNET).set(0.0);
        let core = Arc::new(BridgeCore {
            client,
            breaker: Mutex::new(breaker),
        });
        args.cell.set(Some(Arc::clone(&core)));
        myself.send_interval(TICK, || BridgeMsg::Tick);
        Ok(BridgeState {
            core,
            cell: args.cell,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BridgeMsg>,
        msg: BridgeMsg,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            BridgeMsg::Tick => state.core.breaker().poll(Instant::now()),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<BridgeMsg>,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        // Only if it is still ours (a successor may already have published its own).
        if state
            .cell
            .get()
            .is_some_and(|current| Arc::ptr_eq(&current, &state.core))
        {
            state.cell.set(None);
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
