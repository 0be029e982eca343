//! The outbox backlog as the controller reads it: accepted events not yet published to
//! JetStream. The events side owns the number (the relay's
//! [`crate::events::relay::OutboxBacklog`], refreshed from the table every sweep); this
//! trait is the seam between the two, so the controller needs no knowledge of how it is
//! tracked.

use futures::future::BoxFuture;

/// Where the controller reads the outbox backlog from.
pub trait BacklogSource: Send + Sync + 'static {
    /// Accepted events not yet published; `None` when it cannot be told right now (the
    /// level is then left out, like an unreachable NATS).
    fn pending(&self) -> BoxFuture<'_, Option<u64>>;
}

/// The relay's backlog counter.
impl BacklogSource for crate::events::relay::OutboxBacklog {
    fn pending(&self) -> BoxFuture<'_, Option<u64>> {
        let value = u64::try_from(self.get()).unwrap_or(0);
        Box::pin(async move { Some(value) })
    }
}

/// No outbox (tests of the lag alone): always 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBacklog;

impl BacklogSource for NoBacklog {
    fn pending(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async { Some(0) })
    }
}
