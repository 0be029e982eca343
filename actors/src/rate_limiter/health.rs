//! Whether Redis is answering, as the rate limiter sees it, and how it finds out again.
//!
//! While Redis is *up*, every request runs the script (bounded by a short timeout). The
//! first failure marks it *down* (logged once, at warn) and wakes the prober; from then on
//! requests go straight to memory and pay no timeout. The prober asks Redis again after
//! 250 ms, doubling to 5 s, and the first answer marks it up again (logged once, at info).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// Shared between the request path and the prober.
#[derive(Debug)]
pub struct RedisHealth {
    up: AtomicBool,
    /// Wakes the prober when Redis goes down.
    went_down: Notify,
}

impl RedisHealth {
    pub fn new(up: bool) -> Self {
        Self {
            up: AtomicBool::new(up),
            went_down: Notify::new(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks Redis down; true (and one warn line) only for the request that saw it first.
    pub fn mark_down(&self, reason: &dyn std::fmt::Display) -> bool {
        let was_up = self.up.swap(false, Ordering::AcqRel);
        if was_up {
            tracing::warn!(
                error = %reason,
                "Redis is unreachable: rate limits are kept per replica in memory until it answers"
            );
            // A stored permit if the prober is not waiting yet, so the wake is never lost.
            self.went_down.notify_one();
        }
        was_up
    }

    /// Marks Redis up; true (and one info line) only on the transition.
    pub fn mark_up(&self) -> bool {
        let was_down = !self.up.swap(true, Ordering::AcqRel);
        if was_down {
            tracing::info!("Redis answers again: rate limits are shared across replicas again");
        }
        was_down
    }

    /// Resolves once Redis has been marked down (immediately if it went down since the
    /// last call).
    pub async fn wait_down(&self) {
        if !self.is_up() {
            return;
        }
        self.went_down.notified().await;
    }
}

/// Delays between probes while Redis is down: `first`, doubling, at most `cap`.
#[derive(Debug, Clone)]
pub struct ProbeBackoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl ProbeBackoff {
    pub const FIRST: Duration = Duration::from_millis(250);
    pub const CAP: Duration = Duration::from_secs(5);

    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            next: first,
        }
    }

    /// The wait before the next probe; each call doubles the one after, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// Back to `first` (after Redis answered).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

impl Default for ProbeBackoff {
    fn default() -> Self {
        Self::new(Self::FIRST, Self::CAP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = ProbeBackoff::default();
        let delays: Vec<u128> = (0..7).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, vec![250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn transitions_are_reported_once() {
        let h = RedisHealth::new(true);
        assert!(h.mark_down(&"boom"));
        assert!(!h.mark_down(&"boom again"), "already down");
        assert!(!h.is_up());
        assert!(h.mark_up());
        assert!(!h.mark_up(), "already up");
        assert!(h.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn the_prober_is_woken_even_if_it_was_not_waiting_yet() {
        let h = std::sync::Arc::new(RedisHealth::new(true));
        h.mark_down(&"gone");
        h.mark_up();
        // The permit stored by mark_down is still there for a prober that arrives late,
        // but wait_down only returns for real when Redis is down.
        h.mark_down(&"gone again");
        tokio::time::timeout(Duration::from_secs(1), h.wait_down())
            .await
            .expect("woken");
    }
}
