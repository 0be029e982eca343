//! The arithmetic of restarting: how many restarts a window allows (OTP's restart intensity)
//! and how long to wait before each one (exponential backoff). Plain structs over
//! [`Instant`]s, so they are tested without actors or clocks.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Restarts a child may have within [`DEFAULT_WINDOW`] before the tree escalates
/// (`SUPERVISOR_MAX_RESTARTS`).
pub const DEFAULT_MAX_RESTARTS: u32 = 5;
/// The sliding window restarts are counted in (`SUPERVISOR_WINDOW_SECONDS`).
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);
/// Delay before the first restart in a window; it doubles for each further one.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(100);
/// The delay never grows past this.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(5);

/// OTP's restart intensity for one child: at most `max_restarts` restarts within any
/// `window`. The restart that would exceed it is refused, and the caller escalates.
#[derive(Debug, Clone)]
pub(super) struct RestartIntensity {
    max_restarts: u32,
    window: Duration,
    /// When each restart still inside the window was granted, oldest first. Never longer
    /// than `max_restarts`, so memory stays bounded however long the child lives.
    granted: VecDeque<Instant>,
}

impl RestartIntensity {
    pub(super) fn new(max_restarts: u32, window: Duration) -> Self {
        Self {
            max_restarts,
            window,
            granted: VecDeque::new(),
        }
    }

    /// Asks for one more restart at `now`.
    ///
    /// Returns the ordinal of this restart among those in the window (1 for the first one),
    /// which also drives the backoff, or `None` when it would exceed the intensity.
    pub(super) fn try_restart(&mut self, now: Instant) -> Option<u32> {
        while let Some(&oldest) = self.granted.front() {
            if now.saturating_duration_since(oldest) >= self.window {
                self.granted.pop_front();
            } else {
                break;
            }
        }
        if self.granted.len() >= self.max_restarts as usize {
            return None;
        }
        self.granted.push_back(now);
        // Bounded by `max_restarts`, a u32, so the conversion cannot truncate.
        Some(self.granted.len() as u32)
    }
}

/// Exponential backoff between restarts: `base`, `2 * base`, `4 * base`, ... up to `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Backoff {
    pub(super) base: Duration,
    pub(super) cap: Duration,
}

impl Backoff {
    /// The delay before the `nth` restart (1-based) within the intensity window. Keying it to
    /// the restarts *in the window*, rather than to all restarts ever, means a child that
    /// has been stable for a window starts again from `base`.
    pub(super) fn delay(&self, nth: u32) -> Duration {
        // 2^31 times any base is already past every sensible cap; saturate instead of overflow.
        let doublings = nth.saturating_sub(1).min(31);
        self.base.saturating_mul(1u32 << doublings).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn intensity_grants_max_restarts_then_refuses() {
        let t0 = Instant::now();
        let mut intensity = RestartIntensity::new(3, ms(1_000));
        assert_eq!(intensity.try_restart(t0), Some(1));
        assert_eq!(intensity.try_restart(t0 + ms(10)), Some(2));
        assert_eq!(intensity.try_restart(t0 + ms(20)), Some(3));
        assert_eq!(intensity.try_restart(t0 + ms(30)), None);
    }

    #[test]
    fn intensity_forgets_restarts_older_than_the_window() {
        let t0 = Instant::now();
        let mut intensity = RestartIntensity::new(2, ms(200));
        assert_eq!(intensity.try_restart(t0), Some(1));
        assert_eq!(intensity.try_restart(t0 + ms(100)), Some(2));
        // The first restart is exactly one window old: it no longer counts.
        assert_eq!(intensity.try_restart(t0 + ms(200)), Some(2));
        // Spread out, restarts never accumulate however many there are.
        for i in 1..=20 {
            assert_eq!(intensity.try_restart(t0 + ms(200 + 250 * i)), Some(1));
        }
    }

    #[test]
    fn zero_intensity_refuses_every_restart() {
        let mut intensity = RestartIntensity::new(0, ms(1_000));
        assert_eq!(intensity.try_restart(Instant::now()), None);
    }

    #[test]
    fn backoff_doubles_from_base_up_to_cap() {
        let backoff = Backoff {
            base: ms(100),
            cap: ms(5_000),
        };
        let delays: Vec<_> = (1..=8).map(|n| backoff.delay(n)).collect();
        assert_eq!(
            delays,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000].map(ms)
        );
        assert_eq!(backoff.delay(0), ms(100));
        assert_eq!(backoff.delay(u32::MAX), ms(5_000));
    }
}
