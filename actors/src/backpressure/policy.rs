//! The controller's decisions as plain functions: hysteresis between the watermarks, the
//! drain rate measured over a sliding window, and the `Retry-After` it implies.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Shortest and longest `Retry-After` a `backpressure` answer carries (contract section 6).
pub const MIN_RETRY_AFTER_SECS: u64 = 1;
pub const MAX_RETRY_AFTER_SECS: u64 = 60;

/// `BACKPRESSURE_HIGH` and `BACKPRESSURE_LOW`, in messages (low <= high).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    pub high: u64,
    pub low: u64,
}

/// Whether to shed after a reading (contract section 12): shedding starts when any known
/// level is above `high` and stops when every known level is below `low`; in between, the
/// previous state holds. An unknown level (NATS cannot be asked, the backlog cannot be
/// read) is left out: not being able to ask is not itself a reason to shed, nor to keep
/// shedding.
pub fn next_shedding(shedding: bool, levels: &[Option<u64>], marks: Watermarks) -> bool {
    let mut known = levels.iter().flatten();
    if shedding {
        !known.all(|&level| level < marks.low)
    } else {
        known.any(|&level| level > marks.high)
    }
}

/// How fast a level falls, in messages per second, measured over a sliding window of
/// readings (the net rate: consumption minus what is still being added).
#[derive(Debug, Clone)]
pub struct DrainRate {
    window: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl DrainRate {
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5);

    pub fn new(window: Duration) -> Self {
        Self {
            window,
            samples: VecDeque::new(),
        }
    }

    /// Adds a reading; readings older than the window (counted from this one) are dropped.
    /// A reading is kept just past the window's start so that the span stays close to it.
    pub fn record(&mut self, at: Instant, level: u64) {
        self.samples.push_back((at, level));
        while self.samples.len() > 2 {
            let second = self.samples[1].0;
            if at.saturating_duration_since(second) >= self.window {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Forgets every reading (the level could not be read).
    pub fn clear(&mut self) {
        self.samples.clear();
    }

    /// Messages per second by which the level fell from the oldest to the newest reading
    /// (negative while it grows); `None` with fewer than two readings or no time between
    /// them.
    pub fn per_sec(&self) -> Option<f64> {
        let (&(first_at, first), &(last_at, last)) = (self.samples.front()?, self.samples.back()?);
        let secs = last_at.saturating_duration_since(first_at).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        Some((first as f64 - last as f64) / secs)
    }
}

impl Default for DrainRate {
    fn default() -> Self {
        Self::new(Self::DEFAULT_WINDOW)
    }
}

/// The wait before `/events` is likely to accept again: the time for every level to fall
/// from where it is to `low` at its measured drain rate, rounded up and clamped to
/// 1..=60 s. A level that is not falling (or whose rate is unknown) gives the maximum.
/// `levels` pairs each known level with its drain rate.
pub fn retry_after_secs(levels: &[(u64, Option<f64>)], low: u64) -> u64 {
    levels
        .iter()
        .map(|&(level, rate)| {
            let excess = level.saturating_sub(low) as f64;
            if excess <= 0.0 {
                return MIN_RETRY_AFTER_SECS;
            }
            match rate {
                Some(rate) if rate > 0.0 => {
                    let secs = (excess / rate).ceil();
                    // `as` saturates; the clamp does the rest.
                    (secs as u64).clamp(MIN_RETRY_AFTER_SECS, MAX_RETRY_AFTER_SECS)
                }
                _ => MAX_RETRY_AFTER_SECS,
            }
        })
        .max()
        .unwrap_or(MIN_RETRY_AFTER_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: Watermarks = Watermarks { high: 100, low: 10 };

    #[test]
    fn starts_above_high_only() {
        assert!(
            !next_shedding(false, &[Some(100), Some(0)], MARKS),
            "at HIGH"
        );
        assert!(next_shedding(false, &[Some(101), Some(0)], MARKS));
        assert!(
            next_shedding(false, &[Some(0), Some(101)], MARKS),
            "the backlog alone"
        );
    }

    #[test]
    fn holds_between_the_watermarks() {
        for level in [10, 50, 100] {
            assert!(next_shedding(true, &[Some(level), Some(0)], MARKS));
            assert!(!next_shedding(false, &[Some(level), Some(0)], MARKS));
        }
    }

    #[test]
    fn stops_when_both_are_below_low() {
        assert!(!next_shedding(true, &[Some(9), Some(9)], MARKS));
        assert!(
            next_shedding(true, &[Some(9), Some(10)], MARKS),
            "the backlog still at LOW"
        );
        assert!(next_shedding(true, &[Some(500), Some(0)], MARKS));
    }

    #[test]
    fn an_unknown_lag_is_neither_a_reason_to_shed_nor_to_keep_shedding() {
        assert!(!next_shedding(false, &[None, Some(5)], MARKS));
        assert!(!next_shedding(true, &[None, Some(5)], MARKS));
        assert!(
            next_shedding(false, &[None, Some(101)], MARKS),
            "the backlog alone"
        );
        assert!(next_shedding(true, &[None, Some(50)], MARKS));
        assert!(!next_shedding(true, &[None, None], MARKS));
        assert!(!next_shedding(false, &[None, None], MARKS));
    }

    #[test]
    fn equal_watermarks_still_work() {
        let marks = Watermarks { high: 10, low: 10 };
        assert!(next_shedding(false, &[Some(11)], marks));
        assert!(next_shedding(true, &[Some(10)], marks));
        assert!(!next_shedding(true, &[Some(9)], marks));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_rate_over_the_window() {
        let mut rate = DrainRate::new(Duration::from_secs(5));
        let start = Instant::now();
        rate.record(start, 1_000);
        assert_eq!(rate.per_sec(), None, "one reading");
        for i in 1..=10u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            rate.record(Instant::now(), 1_000 - 50 * i);
        }
        assert_eq!(rate.per_sec(), Some(50.0));
        // Now it grows again: the rate turns negative as old readings leave the window.
        for i in 1..=10u64 {
            tokio::time::advance(Duration::from_secs(1)).await;
            rate.record(Instant::now(), 500 + 20 * i);
        }
        assert_eq!(rate.per_sec(), Some(-20.0));
        rate.clear();
        assert_eq!(rate.per_sec(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_rate_needs_time_between_readings() {
        let mut rate = DrainRate::default();
        let now = Instant::now();
        rate.record(now, 10);
        rate.record(now, 5);
        assert_eq!(rate.per_sec(), None);
    }

    #[test]
    fn retry_after_from_the_drain_rate() {
        // 1,010 messages, 10 to go below LOW... 1,000 above LOW at 100/s: 10 s.
        assert_eq!(retry_after_secs(&[(1_010, Some(100.0))], 10), 10);
        assert_eq!(
            retry_after_secs(&[(1_011, Some(100.0))], 10),
            11,
            "rounded up"
        );
        assert_eq!(
            retry_after_secs(&[(11, Some(1_000.0))], 10),
            1,
            "at least 1"
        );
        assert_eq!(
            retry_after_secs(&[(1_000_000, Some(1.0))], 10),
            60,
            "at most 60"
        );
        assert_eq!(retry_after_secs(&[(500, Some(-5.0))], 10), 60, "growing");
        assert_eq!(retry_after_secs(&[(500, None)], 10), 60, "unknown");
        assert_eq!(retry_after_secs(&[(5, None)], 10), 1, "already below LOW");
        assert_eq!(retry_after_secs(&[], 10), 1);
    }

    #[test]
    fn retry_after_waits_for_the_slowest_level() {
        let levels = [(210, Some(100.0)), (110, Some(10.0))];
        assert_eq!(retry_after_secs(&levels, 10), 10);
    }
}
