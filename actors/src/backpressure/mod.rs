//! Lag-driven backpressure on `POST /events` (contract sections 6 and 12).
//!
//! Map:
//! - this file: [`BackpressureState`], what the controller publishes; [`BackpressureSignal`],
//!   what the handler reads (a watch channel: no round trip, no lock held across an
//!   await); [`BackpressurePublisher`], the sending half that outlives controller restarts;
//!   [`BackpressureHandle`], a typed handle to ask for a reading now.
//! - [`controller`]: the supervised actor that polls the JetStream consumers' info and the
//!   outbox backlog.
//! - [`policy`]: hysteresis, drain rate and `Retry-After`, as plain functions.
//! - [`backlog`]: [`BacklogSource`], the seam through which the events side reports the
//!   outbox backlog.
//!
//! Only `/events` reads the signal: auth, config and preference routes are never shed.

pub mod backlog;
pub mod controller;
pub mod policy;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

pub use self::backlog::{BacklogSource, NoBacklog};
pub use self::controller::{BackpressureController, ControllerArgs, ControllerMsg};
pub use self::policy::Watermarks;
use crate::supervisor::{CallError, Slot};

/// The controller's latest reading and decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackpressureState {
    /// `/events` answers 429 `backpressure` while this is true.
    pub shedding: bool,
    /// Whole seconds (1..=60) to put in `Retry-After` while shedding; 0 otherwise.
    pub retry_after_secs: u64,
    /// The largest lag of the named consumers; `None` when NATS could not be asked (or no
    /// named consumer exists).
    pub lag: Option<u64>,
    /// The outbox backlog; `None` when it could not be read.
    pub backlog: Option<u64>,
}

/// The sending half of the state: created once with the service, handed to every
/// incarnation of the controller.
#[derive(Clone, Debug)]
pub struct BackpressurePublisher {
    tx: Arc<watch::Sender<BackpressureState>>,
}

impl BackpressurePublisher {
    pub fn current(&self) -> BackpressureState {
        *self.tx.borrow()
    }

    /// Publishes `state`; readers are woken only when it changed.
    pub fn publish(&self, state: BackpressureState) {
        self.tx.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }
}

/// What the `/events` handler reads on every request: a shared read of the last published
/// state.
#[derive(Clone, Debug)]
pub struct BackpressureSignal {
    rx: watch::Receiver<BackpressureState>,
}

impl BackpressureSignal {
    /// A new signal (not shedding) and the publisher that drives it.
    pub fn channel() -> (BackpressurePublisher, BackpressureSignal) {
        let (tx, rx) = watch::channel(BackpressureState::default());
        (BackpressurePublisher { tx: Arc::new(tx) }, Self { rx })
    }

    /// The last published state.
    pub fn current(&self) -> BackpressureState {
        *self.rx.borrow()
    }

    /// `Some(retry_after_secs)` while `/events` must shed, else `None`.
    pub fn shedding(&self) -> Option<u64> {
        let state = self.current();
        state.shedding.then_some(state.retry_after_secs.max(1))
    }

    /// Waits until a published state satisfies `condition` (tests).
    pub async fn wait_for(
        &mut self,
        condition: impl FnMut(&BackpressureState) -> bool,
    ) -> BackpressureState {
        let seen = self.rx.wait_for(condition).await.map(|state| *state);
        // The publisher lives as long as the service; gone means shutting down.
        seen.unwrap_or_else(|_| self.current())
    }
}

/// A handle to the supervised controller that survives its restarts.
#[derive(Clone, Debug)]
pub struct BackpressureHandle {
    slot: Slot<ControllerMsg>,
}

impl BackpressureHandle {
    pub fn new(slot: Slot<ControllerMsg>) -> Self {
        Self { slot }
    }

    /// Takes a reading now and returns the state it led to.
    pub async fn poll_now(&self, timeout: Duration) -> Result<BackpressureState, CallError> {
        self.slot.call(ControllerMsg::PollNow, timeout).await
    }
}
