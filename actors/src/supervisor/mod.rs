//! An OTP-style supervisor on ractor, and handles to supervised actors that survive restarts.
//!
//! ractor links actors into a tree and tells a parent when a child starts, fails or stops,
//! but leaves the policy to the parent, and its default policy is to stop the parent when
//! any child exits. This module supplies the policy the sidecar needs (see `DESIGN.md` and
//! contract section 10).
//!
//! # Semantics
//!
//! - **One-for-one, permanent children.** Each child is described by a [`ChildSpec`] and
//!   started in order when the tree starts; if one fails to start, those already started
//!   are stopped and [`SupervisorBuilder::start`] fails. When a child dies (its handler
//!   returns `Err` or panics, or it stops without being asked), only that child is
//!   restarted, from its original arguments.
//! - **Backoff.** Unlike OTP, a restart waits: `base`, then twice that for each further
//!   restart within the intensity window, up to `cap` (100 ms doubling to 5 s by default),
//!   so a child whose dependency is down does not spin. The wait is a timer message, so the
//!   supervisor keeps handling other children and shutdown meanwhile.
//! - **Restart intensity and escalation.** As in OTP, at most `max_restarts` restarts within
//!   `window` (5 in 30 s by default; `SUPERVISOR_MAX_RESTARTS`, `SUPERVISOR_WINDOW_SECONDS`).
//!   The limit counts each child separately, as `DESIGN.md` words it, rather than the whole
//!   tree as OTP does: one database blip that restarts every dedupe shard once must not
//!   take the service down. A child that would exceed it *escalates*: the supervisor stops
//!   every child and itself, and [`SupervisorHealth`] reports the escalation. There is no
//!   parent supervisor to escalate to; the process plays that part: `/health/live` answers
//!   503, the binary exits non-zero, and Kubernetes restarts the pod. A failed restart
//!   counts like a death, so a child that cannot start ends in escalation too.
//! - **Handles survive restarts.** Callers never hold an `ActorRef`, which names one
//!   incarnation; they hold a [`Slot`], into which the supervisor writes the current one.
//!   While the child restarts, requests fail fast with [`CallError::Unavailable`].
//! - **Shutdown** ([`SupervisorHandle::shutdown`]) stops the children in reverse start order,
//!   each within a timeout (killed if it overruns), then the supervisor. A restart still
//!   waiting for its backoff is cancelled; nothing is spawned after shutdown.
//! - **Observability.** Each restart increments `sidecar_actor_restarts_total{actor}`, whose
//!   series start at zero for every child when the tree starts. Deaths are logged at warn
//!   with the error (never a message's contents), restarts at info with attempt and delay,
//!   escalation at error.
//!
//! Children are spawned without a ractor name: ractor's names are process-global and the
//! integration tests run many service instances in one process. A child's name lives in
//! the supervisor's bookkeeping, logs, metrics and health only.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use actors::supervisor::{CallError, ChildSpec, Slot, Supervisor};
//! use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
//!
//! #[derive(Clone)]
//! struct Counter;
//!
//! enum CounterMsg {
//!     /// Adds one and answers the new count.
//!     Increment(RpcReplyPort<u64>),
//! }
//!
//! impl Actor for Counter {
//!     type Msg = CounterMsg;
//!     type State = u64;
//!     type Arguments = u64;
//!
//!     async fn pre_start(&self, _: ActorRef<CounterMsg>, start: u64) -> Result<u64, ActorProcessingErr> {
//!         Ok(start)
//!     }
//!
//!     async fn handle(&self, _: ActorRef<CounterMsg>, msg: CounterMsg, count: &mut u64) -> Result<(), ActorProcessingErr> {
//!         let CounterMsg::Increment(reply) = msg;
//!         *count += 1;
//!         let _ = reply.send(*count);
//!         Ok(())
//!     }
//! }
//!
//! /// The typed handle the HTTP layer holds; it outlives any one incarnation of the actor.
//! #[derive(Clone)]
//! struct CounterHandle(Slot<CounterMsg>);
//!
//! impl CounterHandle {
//!     async fn increment(&self) -> Result<u64, CallError> {
//!         self.0.call(CounterMsg::Increment, Duration::from_secs(1)).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let slot = Slot::new();
//! let (tree, health) = Supervisor::builder()
//!     .intensity(5, Duration::from_secs(30))
//!     .backoff(Duration::from_millis(100), Duration::from_secs(5))
//!     .child(ChildSpec::actor("counter", Counter, 0, slot.clone()))
//!     .start()
//!     .await?;
//! let counter = CounterHandle(slot);
//! assert_eq!(counter.increment().await?, 1);
//! assert!(health.all_up());
//! // The binary also selects on `health.escalated()` to exit non-zero.
//! tree.shutdown(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```

mod actor;
mod health;
mod policy;
mod slot;
mod spec;
#[cfg(test)]
mod tests;

use std::time::Duration;

use ractor::{Actor, ActorRef, SpawnErr};
use tracing::warn;

use actor::{Policy, SupervisorActor, SupervisorArgs, SupervisorMsg};
pub use health::{ChildReport, ChildStatus, SupervisorHealth, TreeState};
use policy::Backoff;
pub use policy::{DEFAULT_BACKOFF_BASE, DEFAULT_BACKOFF_CAP, DEFAULT_MAX_RESTARTS, DEFAULT_WINDOW};
pub use slot::{CallError, Slot, Unavailable};
pub use spec::ChildSpec;

/// The counter of restarts, labelled `actor` (contract section 10).
pub const RESTARTS_METRIC: &str = crate::metric_names::ACTOR_RESTARTS_TOTAL;

/// How long each child may take to stop when the tree escalates.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Entry point: `Supervisor::builder()`. The supervisor actor itself is private; the tree is
/// driven through [`SupervisorHandle`] and observed through [`SupervisorHealth`].
#[derive(Debug)]
pub struct Supervisor;

impl Supervisor {
    /// A builder with the default policy and no children.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder::default()
    }
}

/// Configures and starts a supervision tree.
#[derive(Debug)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct SupervisorBuilder {
    policy: Policy,
    children: Vec<ChildSpec>,
}

impl Default for SupervisorBuilder {
    fn default() -> Self {
        Self {
            policy: Policy {
                max_restarts: DEFAULT_MAX_RESTARTS,
                window: DEFAULT_WINDOW,
                backoff: Backoff {
                    base: DEFAULT_BACKOFF_BASE,
                    cap: DEFAULT_BACKOFF_CAP,
                },
                stop_timeout: DEFAULT_STOP_TIMEOUT,
            },
            children: Vec::new(),
        }
    }
}

impl SupervisorBuilder {
    /// Each child may be restarted at most `max_restarts` times within any `window`; the
    /// next death escalates. `max_restarts = 0` escalates on the first death.
    pub fn intensity(mut self, max_restarts: u32, window: Duration) -> Self {
        self.policy.max_restarts = max_restarts;
        self.policy.window = window;
        self
    }

    /// The first restart within the window waits `base`, each further one twice as long as
    /// the one before, never more than `cap`.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.policy.backoff = Backoff { base, cap };
        self
    }

    /// How long each child may take to stop on escalation before it is killed.
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.policy.stop_timeout = timeout;
        self
    }

    /// Adds a child; children start in the order they are added and stop in reverse.
    pub fn child(mut self, spec: ChildSpec) -> Self {
        self.children.push(spec);
        self
    }

    /// Starts the supervisor and every child, in order; returns once all are started.
    pub async fn start(self) -> Result<(SupervisorHandle, SupervisorHealth), StartError> {
        let names: Vec<String> = self.children.iter().map(|c| c.name().to_owned()).collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(StartError::DuplicateChild(name.clone()));
            }
        }
        // Contract 10: every series exists from start-up, at zero.
        for name in &names {
            metrics::counter!(RESTARTS_METRIC, "actor" => name.clone()).increment(0);
        }
        let health = SupervisorHealth::new(&names);
        let args = SupervisorArgs {
            specs: self.children,
            policy: self.policy,
            health: health.clone(),
        };
        let (supervisor, join) = Actor::spawn(None, SupervisorActor, args)
            .await
            .map_err(StartError::from_spawn)?;
        // The supervisor's task ending is the one signal that covers every way it can end,
        // including a kill or a bug; `health` turns it into Stopped or Escalated.
        let watcher = health.clone();
        tokio::spawn(async move {
            let _ = join.await;
            watcher.mark_exited();
        });
        let handle = SupervisorHandle {
            supervisor,
            health: health.clone(),
        };
        Ok((handle, health))
    }
}

/// Controls a running supervision tree. Cloneable; dropping it does not stop the tree.
#[derive(Clone)]
pub struct SupervisorHandle {
    supervisor: ActorRef<SupervisorMsg>,
    health: SupervisorHealth,
}

impl SupervisorHandle {
    /// Stops the children in reverse start order, each within `timeout` (a child that
    /// overruns is killed), then the supervisor. A restart waiting for its backoff is
    /// cancelled. Returns at once if the tree has already stopped or escalated.
    ///
    /// The supervisor finishes what it is doing first (a restart in progress, say); if the
    /// whole shutdown takes longer than `timeout` per child plus one, the supervisor is
    /// killed, which kills any child still running, and [`ShutdownError::TimedOut`] is
    /// returned.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), ShutdownError> {
        self.health.request_shutdown();
        if self.health.has_exited() {
            return Ok(());
        }
        // A failed send means the supervisor is stopping on its own; the wait covers it.
        let _ = self.supervisor.cast(SupervisorMsg::Shutdown { timeout });
        let stages = u32::try_from(self.health.child_count())
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let budget = timeout.saturating_mul(stages);
        if tokio::time::timeout(budget, self.wait()).await.is_ok() {
            return Ok(());
        }
        warn!(?budget, "supervision tree did not stop in time; killing it");
        self.supervisor.kill();
        let _ = tokio::time::timeout(timeout, self.wait()).await;
        Err(ShutdownError::TimedOut(budget))
    }

    /// Resolves once the supervisor has exited, for whatever reason.
    pub async fn wait(&self) {
        self.health.wait_exited().await;
    }

    /// The tree's health (the same view [`SupervisorBuilder::start`] returned).
    pub fn health(&self) -> &SupervisorHealth {
        &self.health
    }
}

impl std::fmt::Debug for SupervisorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorHandle")
            .field("supervisor", &self.supervisor.get_id())
            .field("health", &self.health)
            .finish()
    }
}

/// Why a supervision tree did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Two children share a name; names key the health report and the restart metric.
    #[error("two supervised children are named {0:?}")]
    DuplicateChild(String),
    /// A child failed to start the first time; the children before it were stopped.
    #[error("supervised actor {name} failed to start: {reason}")]
    ChildFailed {
        /// The child's name.
        name: String,
        /// Its start error or panic message.
        reason: String,
    },
    /// The supervisor actor itself failed to start.
    #[error("the supervisor failed to start: {0}")]
    Supervisor(String),
}

impl StartError {
    fn from_spawn(err: SpawnErr) -> Self {
        match err {
            // `pre_start` boxes a `StartError` when a child fails; unbox it.
            SpawnErr::StartupFailed(inner) => match inner.downcast::<StartError>() {
                Ok(start_error) => *start_error,
                Err(other) => Self::Supervisor(other.to_string()),
            },
            other => Self::Supervisor(other.to_string()),
        }
    }
}

/// Why a shutdown was not orderly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShutdownError {
    /// The tree did not stop within the budget and was killed.
    #[error("the supervision tree did not stop within {0:?} and was killed")]
    TimedOut(Duration),
}
