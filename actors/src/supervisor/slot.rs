//! [`Slot`]: a handle to a supervised actor that survives its restarts.
//!
//! An `ActorRef` names one incarnation of an actor; once that incarnation dies, the ref is
//! dead forever, and a caller that kept it would keep failing after the supervisor has
//! restarted the actor. A `Slot` is the place the supervisor writes the *current*
//! incarnation into, so callers look the actor up at call time instead.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort, ACTIVE_STATES};

/// The actor is not there to take the message: it is restarting, or the tree has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the actor is unavailable (restarting or stopped)")]
pub struct Unavailable;

/// Why a request through a [`Slot`] got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The actor is restarting or stopped; nothing was sent. Safe to retry later.
    #[error("the actor is unavailable (restarting or stopped)")]
    Unavailable,
    /// The actor did not answer in time. It may still act on the request.
    #[error("the actor did not answer in time")]
    Timeout,
    /// The actor dropped the request without answering, typically because it failed while
    /// handling it (the supervisor restarts it). It may have acted on part of the request.
    #[error("the actor failed before answering")]
    Failed,
}

impl From<Unavailable> for CallError {
    fn from(_: Unavailable) -> Self {
        Self::Unavailable
    }
}

/// The current incarnation of a supervised actor whose messages are `M`.
///
/// Cloning is cheap and every clone sees the same actor. The supervisor fills the slot
/// when the child starts, empties it when the child dies, and fills it again on restart.
pub struct Slot<M> {
    current: Arc<RwLock<Option<ActorRef<M>>>>,
}

impl<M: Message> Slot<M> {
    /// An empty slot, to hand to a [`ChildSpec`](super::ChildSpec) and to the callers.
    pub fn new() -> Self {
        Self {
            current: Arc::new(RwLock::new(None)),
        }
    }

    /// The live actor, or [`Unavailable`] while it restarts or after the tree stopped.
    ///
    /// Also refuses an actor that is stopping but whose death the supervisor has not yet
    /// processed, so the ref returned was alive a moment ago. Do not keep it: ask again
    /// for every request.
    pub fn get(&self) -> Result<ActorRef<M>, Unavailable> {
        // A poisoned lock only means a writer panicked between two plain assignments; the
        // value inside is still a whole `Option`.
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        match current.as_ref() {
            Some(actor) if ACTIVE_STATES.contains(&actor.get_status()) => Ok(actor.clone()),
            _ => Err(Unavailable),
        }
    }

    /// True when [`Slot::get`] would return an actor.
    pub fn is_available(&self) -> bool {
        self.get().is_ok()
    }

    /// Sends `msg` without waiting for an answer.
    pub fn cast(&self, msg: M) -> Result<(), Unavailable> {
        // A send error means the actor died since `get`: the same thing to the caller.
        self.get()?.cast(msg).map_err(|_| Unavailable)
    }

    /// Sends the request `build(reply)` and waits up to `timeout` for the answer.
    ///
    /// Domain errors belong in the reply (`RpcReplyPort<Result<T, E>>`): an `Err` returned
    /// from an actor's `handle` kills the actor.
    pub async fn call<R, F>(&self, build: F, timeout: Duration) -> Result<R, CallError>
    where
        F: FnOnce(RpcReplyPort<R>) -> M,
        R: Send + 'static,
    {
        let actor = self.get()?;
        match actor.call(build, Some(timeout)).await {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(CallError::Timeout),
            Ok(CallResult::SenderError) => Err(CallError::Failed),
            Err(_send_failed) => Err(CallError::Unavailable),
        }
    }

    /// Points the slot at `actor`. The supervisor does this; call it yourself only to wire
    /// an unsupervised actor (a test double, say) behind a handle.
    pub fn set(&self, actor: ActorRef<M>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Some(actor);
    }

    /// Empties the slot, so callers get [`Unavailable`] rather than a dead actor.
    pub fn clear(&self) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl<M: Message> Default for Slot<M> {
    fn default() -> Self {
        Self::new()
    }
}

// Derived `Clone` and `Debug` would needlessly require `M: Clone` and `M: Debug`.
impl<M> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self {
            current: Arc::clone(&self.current),
        }
    }
}

impl<M> std::fmt::Debug for Slot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Slot").field("current", &*current).finish()
    }
}
