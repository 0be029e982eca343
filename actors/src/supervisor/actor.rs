//! The supervisor actor itself: it starts the children, reacts to their deaths
//! (`handle_supervisor_evt`), restarts them after a backoff, escalates, and shuts down.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use ractor::concurrency::JoinHandle;
use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, MessagingErr, RactorErr,
    SupervisionEvent, ACTIVE_STATES,
};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::health::{ChildStatus, SupervisorHealth};
use super::policy::{Backoff, RestartIntensity};
use super::{ChildSpec, StartError, RESTARTS_METRIC};

/// The supervisor's behaviour. Its only state lives in [`SupervisorState`].
pub(super) struct SupervisorActor;

/// What the supervisor is told through its mailbox (children's deaths arrive separately,
/// as ractor supervision events).
pub(super) enum SupervisorMsg {
    /// The backoff of child `child` (an index in start order) has elapsed: start it again,
    /// unless the tree is stopping by now.
    RestartDue { child: usize },
    /// Stop every child in reverse start order, each within `timeout`, then the supervisor.
    Shutdown { timeout: Duration },
}

/// The restart policy, fixed at build time.
#[derive(Debug, Clone, Copy)]
pub(super) struct Policy {
    pub(super) max_restarts: u32,
    pub(super) window: Duration,
    pub(super) backoff: Backoff,
    /// How long each child may take to stop on escalation, or when the supervisor is
    /// stopped other than through [`super::SupervisorHandle::shutdown`].
    pub(super) stop_timeout: Duration,
}

pub(super) struct SupervisorArgs {
    pub(super) specs: Vec<ChildSpec>,
    pub(super) policy: Policy,
    pub(super) health: SupervisorHealth,
}

pub(super) struct SupervisorState {
    /// In start order; index `i` is child `i` of `health` too.
    children: Vec<Child>,
    policy: Policy,
    health: SupervisorHealth,
    /// Set when shutdown or escalation begins. From then on every child exit is expected
    /// and nothing is restarted, even by a backoff timer that fires late.
    stopping: bool,
}

struct Child {
    spec: ChildSpec,
    /// The live incarnation; `None` while it waits for its restart, and once stopped.
    current: Option<ActorCell>,
    intensity: RestartIntensity,
    /// The backoff timer, aborted when the tree stops so that no restart outlives it.
    pending_restart: Option<JoinHandle<Result<(), MessagingErr<SupervisorMsg>>>>,
}

impl Actor for SupervisorActor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    /// Starts every child in order. If one fails, those already started are stopped and
    /// the tree does not start: a service that cannot start its actors must not run.
    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        args: SupervisorArgs,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        let SupervisorArgs {
            specs,
            policy,
            health,
        } = args;
        let children = specs
            .into_iter()
            .map(|spec| Child {
                spec,
                current: None,
                intensity: RestartIntensity::new(policy.max_restarts, policy.window),
                pending_restart: None,
            })
            .collect();
        let mut state = SupervisorState {
            children,
            policy,
            health,
            stopping: false,
        };
        for child in 0..state.children.len() {
            if let Err(err) = state.start_child(&myself, child).await {
                let name = state.children[child].spec.name().to_owned();
                error!(actor = %name, error = %err, "supervised actor failed to start");
                state.stopping = true;
                state
                    .stop_children(state.policy.stop_timeout, "start-up failed")
                    .await;
                return Err(Box::new(StartError::ChildFailed {
                    name,
                    reason: err.to_string(),
                }));
            }
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        message: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SupervisorMsg::RestartDue { child } => state.restart(&myself, child).await,
            SupervisorMsg::Shutdown { timeout } => {
                if !state.stopping {
                    info!("supervision tree shutting down");
                    state.stopping = true;
                    state.stop_children(timeout, "shutdown").await;
                    state.health.mark_stopped();
                }
                myself.stop(Some("shutdown".to_owned()));
            }
        }
        // Never `Err`: an error here would kill the supervisor, and with it every child.
        Ok(())
    }

    /// Replaces ractor's default, which stops the supervisor when any child exits.
    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, cause) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            // A permanent child is restarted even when it stops cleanly: it is expected to
            // run as long as the tree does.
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!("stopped ({})", reason.as_deref().unwrap_or("no reason")),
            ),
            _ => return Ok(()),
        };
        if state.stopping {
            // We asked for this exit (shutdown or escalation).
            return Ok(());
        }
        let Some(child) = state.index_of(cell.get_id()) else {
            debug!(actor_id = %cell.get_id(), "exit of an actor that is no current child");
            return Ok(());
        };
        // The cause is the error or panic message, never the message being handled.
        warn!(actor = %state.children[child].spec.name(), error = %cause, "supervised actor died");
        state.child_down(&myself, child).await;
        Ok(())
    }

    /// Covers a stop that did not come through `Shutdown` (someone stopped the supervisor's
    /// ref directly): the children are stopped in order rather than killed by ractor.
    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if !state.stopping {
            state.stopping = true;
            state
                .stop_children(state.policy.stop_timeout, "supervisor stopped")
                .await;
            state.health.mark_stopped();
        }
        Ok(())
    }
}

impl SupervisorState {
    fn index_of(&self, id: ActorId) -> Option<usize> {
        self.children.iter().position(|child| {
            child
                .current
                .as_ref()
                .is_some_and(|cell| cell.get_id() == id)
        })
    }

    /// Starts a fresh incarnation of `child`, linked to the supervisor.
    async fn start_child(
        &mut self,
        myself: &ActorRef<SupervisorMsg>,
        child: usize,
    ) -> Result<(), ActorProcessingErr> {
        let supervisor = myself.get_cell();
        let entry = &mut self.children[child];
        // The start function is caller code: its panic must not take the supervisor down.
        let started = AssertUnwindSafe(entry.spec.start(supervisor.clone()))
            .catch_unwind()
            .await;
        let cell = match started {
            Ok(result) => result?,
            Err(panic) => return Err(panic_message(panic).into()),
        };
        let linked = cell.try_get_supervisor().map(|s| s.get_id()) == Some(supervisor.get_id());
        if !linked && ACTIVE_STATES.contains(&cell.get_status()) {
            warn!(actor = %entry.spec.name(), "start function did not link the child; linking it");
            cell.link(supervisor);
        }
        entry.current = Some(cell);
        self.health.set_status(child, ChildStatus::Up);
        Ok(())
    }

    /// `child` died unexpectedly (or failed to restart): schedule its restart, or escalate
    /// if that restart would exceed its intensity.
    async fn child_down(&mut self, myself: &ActorRef<SupervisorMsg>, child: usize) {
        let entry = &mut self.children[child];
        entry.current = None;
        entry.spec.clear_slot();
        self.health.set_status(child, ChildStatus::Restarting);
        let Some(attempt) = entry.intensity.try_restart(Instant::now()) else {
            return self.escalate(myself, child).await;
        };
        let delay = self.policy.backoff.delay(attempt);
        info!(
            actor = %entry.spec.name(),
            attempt,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "restarting supervised actor after backoff"
        );
        // Waiting in a timer task, not here, keeps the mailbox open: other children's
        // deaths and a shutdown are handled while this child waits.
        entry.pending_restart =
            Some(myself.send_after(delay, move || SupervisorMsg::RestartDue { child }));
    }

    async fn restart(&mut self, myself: &ActorRef<SupervisorMsg>, child: usize) {
        let entry = &mut self.children[child];
        if self.stopping || entry.current.is_some() {
            return;
        }
        entry.pending_restart = None;
        let name = entry.spec.name().to_owned();
        self.health.record_restart(child);
        metrics::counter!(RESTARTS_METRIC, "actor" => name.clone()).increment(1);
        match self.start_child(myself, child).await {
            Ok(()) => info!(actor = %name, "supervised actor restarted"),
            Err(err) => {
                warn!(actor = %name, error = %err, "supervised actor failed to restart");
                // A failed start counts against the intensity like any death, so a child
                // that cannot start at all ends in escalation rather than retrying forever.
                self.child_down(myself, child).await;
            }
        }
    }

    /// OTP's escalation: the tree gives up. Stop every child, tell the process (through
    /// `health`), and stop the supervisor; the binary turns this into 503 on `/health/live`
    /// and a non-zero exit, and Kubernetes restarts the pod.
    async fn escalate(&mut self, myself: &ActorRef<SupervisorMsg>, child: usize) {
        let name = self.children[child].spec.name().to_owned();
        let reason = format!(
            "actor {name} needed more than {} restarts within {:?}",
            self.policy.max_restarts, self.policy.window
        );
        error!(
            actor = %name,
            max_restarts = self.policy.max_restarts,
            window_ms = u64::try_from(self.policy.window.as_millis()).unwrap_or(u64::MAX),
            "restart intensity exceeded; stopping the supervision tree"
        );
        self.stopping = true;
        self.stop_children(self.policy.stop_timeout, "escalation")
            .await;
        self.health.mark_escalated(reason.clone());
        myself.stop(Some(reason));
    }

    /// Stops every child in reverse start order (later children may depend on earlier
    /// ones), each within `timeout`; one that overruns is killed. Pending restarts are
    /// cancelled first, so nothing is spawned behind our back.
    async fn stop_children(&mut self, timeout: Duration, reason: &str) {
        for (index, child) in self.children.iter_mut().enumerate().rev() {
            if let Some(timer) = child.pending_restart.take() {
                timer.abort();
            }
            // Empty the slot first: callers get `Unavailable`, not a stopping actor.
            child.spec.clear_slot();
            if let Some(cell) = child.current.take() {
                match cell
                    .stop_and_wait(Some(reason.to_owned()), Some(timeout))
                    .await
                {
                    Ok(()) => {}
                    Err(RactorErr::Timeout) => {
                        warn!(actor = %child.spec.name(), ?timeout, "actor did not stop in time; killing it");
                        cell.kill();
                    }
                    // Its stop channel is gone: it is already stopped or stopping.
                    Err(_) => {}
                }
            }
            self.health.set_status(index, ChildStatus::Stopped);
        }
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => format!("start function panicked: {message}"),
        Err(panic) => match panic.downcast::<&str>() {
            Ok(message) => format!("start function panicked: {message}"),
            Err(_) => "start function panicked".to_owned(),
        },
    }
}
