//! The outbox backlog as the controller reads it: accepted events not yet published to
//! JetStream. The events side owns the number; this trait is the seam between the two, so
//! the controller needs no knowledge of how it is tracked.

use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;

/// Where the controller reads the outbox backlog from.
pub trait OutboxBacklog: Send + Sync + 'static {
    /// Accepted events not yet published; `None` when it cannot be told right now (the
    /// level is then left out, like an unreachable NATS).
    fn pending(&self) -> BoxFuture<'_, Option<u64>>;
}

/// A counter the outbox keeps up to date.
impl OutboxBacklog for AtomicU64 {
    fn pending(&self) -> BoxFuture<'_, Option<u64>> {
        let value = self.load(Ordering::Relaxed);
        Box::pin(async move { Some(value) })
    }
}

/// A value the outbox publishes through a watch channel.
impl OutboxBacklog for tokio::sync::watch::Receiver<u64> {
    fn pending(&self) -> BoxFuture<'_, Option<u64>> {
        let value = *self.borrow();
        Box::pin(async move { Some(value) })
    }
}

/// No outbox (tests of the lag alone): always 0.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBacklog;

impl OutboxBacklog for NoBacklog {
    fn pending(&self) -> BoxFuture<'_, Option<u64>> {
        Box::pin(async { Some(0) })
    }
}
