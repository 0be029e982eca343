//! The circuit-breaker state machine guarding calls to .NET (contract sections 9, 11, 12).
//!
//! When .NET is failing or crawling, sending it more traffic only deepens the hole and ties
//! up our own request tasks. The breaker watches the outcomes of recent calls and, past a
//! threshold, fails calls at once (503 `upstream_unavailable` with `Retry-After`) for an
//! open interval; then it lets a few probes through and lets their outcome decide.
//!
//! - **Closed**: every call goes through. Outcomes are counted in a sliding window of the
//!   last `window` (per-second buckets, so O(1) per call). It opens when the window holds
//!   at least `min_calls` calls and at least `failure_rate_pct` % of them failed, or at
//!   least `slow_call_rate_pct` % of them were slow (slower than `slow_call`, whatever
//!   their outcome).
//! - **Open**: every call is rejected with the time left until half-open.
//! - **HalfOpen**: exactly `half_open_probes` probes are let through; others are rejected.
//!   One failed or slow probe reopens it (for a fresh interval); all probes succeeding
//!   close it.
//!
//! Every state change starts a new *generation*, restarts the window's counts, and is
//! reported to the observer (for the log line and the `sidecar_circuit_state` gauge). A
//! [`Permit`] carries the generation it was issued in, and an outcome recorded with a
//! permit from an earlier generation is ignored: a slow call that started while closed and
//! ends after the breaker opened must not be counted as a half-open probe.
//!
//! What counts as a failure is the caller's decision: a timeout, a connection error or a
//! 5xx is [`Outcome::Failure`]; a 4xx is an answer, so [`Outcome::Success`] (section 9).
//!
//! Decisions where the contract is silent:
//! - A probe permit that is dropped without being recorded (the request was cancelled)
//!   must not wedge the breaker half-open forever. Once every probe has been issued and the
//!   last one is older than [`BreakerConfig::call_timeout`], the missing outcomes are
//!   treated as timeouts, i.e. failures, and the breaker reopens.
//! - A call rejected while half-open (all probes out) is told to retry after 1 s: the
//!   probes settle within one call timeout, usually far sooner.
//! - `min_calls` and `half_open_probes` of 0 act as 1, and a window shorter than a second
//!   acts as one second (the window's resolution); the window and the open interval are
//!   capped at one day.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// Longest window kept, in one-second buckets (bounds memory for an absurd setting).
const MAX_WINDOW_SECS: u64 = 86_400;

/// Longest open interval honoured (an absurd setting must not overflow the clock).
const MAX_OPEN_FOR: Duration = Duration::from_secs(86_400);

/// What a call rejected while half-open is told (see the module docs).
const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Thresholds and intervals; `Default` is the contract's defaults (section 11).
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Open when at least this percentage of the calls in the window failed.
    pub failure_rate_pct: f64,
    /// Fewest calls in the window before a rate is judged at all.
    pub min_calls: u32,
    /// How far back the closed state looks.
    pub window: Duration,
    /// How long the breaker stays open before probing.
    pub open_for: Duration,
    /// Probes let through half-open; all must succeed to close.
    pub half_open_probes: u32,
    /// A call longer than this is slow, even when it succeeded.
    pub slow_call: Duration,
    /// Open when at least this percentage of the calls in the window were slow.
    pub slow_call_rate_pct: f64,
    /// The bound on one call (`DOTNET_TIMEOUT_SECONDS`): a probe not recorded within it
    /// is counted as timed out.
    pub call_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_rate_pct: 50.0,
            min_calls: 10,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(15),
            half_open_probes: 3,
            slow_call: Duration::from_secs(5),
            slow_call_rate_pct: 80.0,
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// The breaker's state, as logged and exported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// The `sidecar_circuit_state` gauge value: 0 closed, 1 half-open, 2 open.
    pub fn as_metric(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    /// `closed`, `half_open` or `open`, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a call ended, as far as the breaker is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An answer, including a 4xx.
    Success,
    /// A timeout, a connection error or a 5xx.
    Failure,
}

/// Leave to make one call; hand it back to [`CircuitBreaker::record`] with the outcome.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a permit must be handed back to CircuitBreaker::record"]
pub struct Permit {
    /// The generation (state period) the permit was issued in.
    generation: u64,
    /// Issued half-open, so its outcome decides the breaker's next state.
    probe: bool,
}

impl Permit {
    /// Whether this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

/// The call was not attempted because the breaker is open (or half-open with every probe
/// already out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry after {retry_after:?}")]
pub struct Rejected {
    /// How long until the breaker may let a call through again.
    pub retry_after: Duration,
}

/// Why the breaker changed state; for the log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransitionReason {
    /// Closed → open: the failure rate reached the threshold.
    FailureRate { failures: u32, calls: u32 },
    /// Closed → open: the slow-call rate reached the threshold.
    SlowCallRate { slow: u32, calls: u32 },
    /// Open → half-open: the open interval passed.
    OpenIntervalElapsed,
    /// Half-open → open: a probe failed.
    ProbeFailed,
    /// Half-open → open: a probe succeeded but was slow.
    ProbeSlow,
    /// Half-open → open: a probe was never recorded within the call timeout.
    ProbeTimedOut,
    /// Half-open → closed: every probe succeeded.
    ProbesSucceeded,
}

/// A state change, as handed to the observer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub reason: TransitionReason,
    pub at: Instant,
}

type Observer = Box<dyn FnMut(&Transition) + Send>;

/// A circuit breaker for one upstream. Not shared by itself: keep it behind the owner's
/// lock or inside an actor. Time is always passed in (`now`), so it runs on tokio's paused
/// clock in tests.
pub struct CircuitBreaker {
    config: BreakerConfig,
    phase: Phase,
    /// Bumped at every state change; permits from older generations are ignored.
    generation: u64,
    /// Told about every state change.
    observer: Option<Observer>,
}

/// The state with the data only that state needs.
#[derive(Debug)]
enum Phase {
    Closed {
        window: CallWindow,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        issued: u32,
        succeeded: u32,
        last_issued_at: Option<Instant>,
    },
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("config", &self.config)
            .field("phase", &self.phase)
            .field("generation", &self.generation)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker whose window starts at `now`.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        let window = CallWindow::new(window_secs(config.window), now);
        Self {
            config,
            phase: Phase::Closed { window },
            generation: 0,
            observer: None,
        }
    }

    /// Calls `observer` on every state change (log it, set the gauge).
    pub fn with_observer(mut self, observer: impl FnMut(&Transition) + Send + 'static) -> Self {
        self.observer = Some(Box::new(observer));
        self
    }

    /// The thresholds this breaker runs with.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state a call arriving at `now` would find: an open breaker whose interval has
    /// passed reads as half-open (and half-open with overdue probes as open) even before
    /// [`Self::try_acquire`] or [`Self::poll`] makes the change.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.due_transition(now) {
            Some((to, _)) => to,
            None => self.phase_state(),
        }
    }

    /// Applies the changes that time alone causes (open → half-open, overdue probes →
    /// open), so an idle breaker's gauge does not lag. Called by every other method too.
    pub fn poll(&mut self, now: Instant) {
        if let Some((to, reason)) = self.due_transition(now) {
            self.transition(to, reason, now);
        }
    }

    /// Asks leave to make a call at `now`.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        self.poll(now);
        let generation = self.generation;
        let probes = self.config.half_open_probes.max(1);
        match &mut self.phase {
            Phase::Closed { .. } => Ok(Permit {
                generation,
                probe: false,
            }),
            Phase::Open { until } => Err(Rejected {
                retry_after: until.saturating_duration_since(now),
            }),
            Phase::HalfOpen {
                issued,
                last_issued_at,
                ..
            } if *issued < probes => {
                *issued += 1;
                *last_issued_at = Some(now);
                Ok(Permit {
                    generation,
                    probe: true,
                })
            }
            Phase::HalfOpen { .. } => Err(Rejected {
                retry_after: HALF_OPEN_RETRY_AFTER,
            }),
        }
    }

    /// Records how the call made under `permit` went: its outcome and how long it took.
    /// A permit from an earlier generation is ignored.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, elapsed: Duration, now: Instant) {
        self.poll(now);
        if permit.generation != self.generation {
            return;
        }
        let failed = outcome == Outcome::Failure;
        let slow = elapsed > self.config.slow_call;
        let next = match &mut self.phase {
            Phase::Closed { window } => {
                window.record(now, failed, slow);
                trip_reason(&self.config, window.totals()).map(|r| (BreakerState::Open, r))
            }
            Phase::HalfOpen { succeeded, .. } => {
                if failed {
                    Some((BreakerState::Open, TransitionReason::ProbeFailed))
                } else if slow {
                    Some((BreakerState::Open, TransitionReason::ProbeSlow))
                } else {
                    *succeeded += 1;
                    (*succeeded >= self.config.half_open_probes.max(1))
                        .then_some((BreakerState::Closed, TransitionReason::ProbesSucceeded))
                }
            }
            // No permit is ever issued in this generation.
            Phase::Open { .. } => None,
        };
        if let Some((to, reason)) = next {
            self.transition(to, reason, now);
        }
    }

    fn phase_state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed { .. } => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// The change that the passage of time alone makes due at `now`, if any.
    fn due_transition(&self, now: Instant) -> Option<(BreakerState, TransitionReason)> {
        match self.phase {
            Phase::Open { until } if now >= until => Some((
                BreakerState::HalfOpen,
                TransitionReason::OpenIntervalElapsed,
            )),
            Phase::HalfOpen {
                issued,
                last_issued_at: Some(last),
                ..
            } if issued >= self.config.half_open_probes.max(1)
                && now.saturating_duration_since(last) >= self.config.call_timeout =>
            {
                Some((BreakerState::Open, TransitionReason::ProbeTimedOut))
            }
            _ => None,
        }
    }

    fn transition(&mut self, to: BreakerState, reason: TransitionReason, now: Instant) {
        let from = self.phase_state();
        self.generation = self.generation.wrapping_add(1);
        self.phase = match to {
            BreakerState::Closed => Phase::Closed {
                window: CallWindow::new(window_secs(self.config.window), now),
            },
            BreakerState::Open => Phase::Open {
                // Bounded so that an absurd setting cannot overflow the clock; were the
                // addition ever to fail, probing at once is the harmless fallback.
                until: now
                    .checked_add(self.config.open_for.min(MAX_OPEN_FOR))
                    .unwrap_or(now),
            },
            BreakerState::HalfOpen => Phase::HalfOpen {
                issued: 0,
                succeeded: 0,
                last_issued_at: None,
            },
        };
        if let Some(observer) = self.observer.as_mut() {
            observer(&Transition {
                from,
                to,
                reason,
                at: now,
            });
        }
    }
}

/// Whether the closed window's counts call for opening ("at least" thresholds).
fn trip_reason(config: &BreakerConfig, totals: Counts) -> Option<TransitionReason> {
    let calls = totals.calls;
    if calls == 0 || calls < config.min_calls {
        return None;
    }
    let reached = |count: u32, pct: f64| f64::from(count) * 100.0 >= pct * f64::from(calls);
    if reached(totals.failures, config.failure_rate_pct) {
        Some(TransitionReason::FailureRate {
            failures: totals.failures,
            calls,
        })
    } else if reached(totals.slow, config.slow_call_rate_pct) {
        Some(TransitionReason::SlowCallRate {
            slow: totals.slow,
            calls,
        })
    } else {
        None
    }
}

/// The window length in whole seconds: rounded up, at least 1, at most a day.
fn window_secs(window: Duration) -> usize {
    let secs = window
        .as_secs()
        .saturating_add(u64::from(window.subsec_nanos() > 0));
    usize::try_from(secs.clamp(1, MAX_WINDOW_SECS)).unwrap_or(1)
}

/// Call counts of one second, or of the whole window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    calls: u32,
    failures: u32,
    slow: u32,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.calls = self.calls.saturating_add(other.calls);
        self.failures = self.failures.saturating_add(other.failures);
        self.slow = self.slow.saturating_add(other.slow);
    }

    fn subtract(&mut self, other: Counts) {
        self.calls = self.calls.saturating_sub(other.calls);
        self.failures = self.failures.saturating_sub(other.failures);
        self.slow = self.slow.saturating_sub(other.slow);
    }
}

/// A ring of per-second buckets covering the last `len` seconds, with running totals, so
/// recording a call costs O(1) amortized whatever the traffic.
#[derive(Debug)]
struct CallWindow {
    /// Second 0 of the window.
    origin: Instant,
    /// Bucket `s % len` holds the counts of second `s` (for the last `len` seconds).
    buckets: Vec<Counts>,
    /// The latest second recorded; buckets after it are stale.
    head: u64,
    /// Sum of all buckets.
    totals: Counts,
}

impl CallWindow {
    fn new(len: usize, origin: Instant) -> Self {
        Self {
            origin,
            buckets: vec![Counts::default(); len.max(1)],
            head: 0,
            totals: Counts::default(),
        }
    }

    fn totals(&self) -> Counts {
        self.totals
    }

    fn record(&mut self, now: Instant, failed: bool, slow: bool) {
        let second = now.saturating_duration_since(self.origin).as_secs();
        self.advance_to(second);
        // A `now` older than the head (callers racing on the lock) counts as the head.
        let index = self.index(self.head);
        let call = Counts {
            calls: 1,
            failures: u32::from(failed),
            slow: u32::from(slow),
        };
        if let Some(bucket) = self.buckets.get_mut(index) {
            bucket.add(call);
            self.totals.add(call);
        }
    }

    /// Moves the head to `second`, emptying the buckets of the seconds that fell out.
    fn advance_to(&mut self, second: u64) {
        if second <= self.head {
            return;
        }
        let len = self.buckets.len() as u64;
        let expired = (second - self.head).min(len);
        for s in (second - expired + 1)..=second {
            let index = self.index(s);
            if let Some(bucket) = self.buckets.get_mut(index) {
                self.totals.subtract(*bucket);
                *bucket = Counts::default();
            }
        }
        self.head = second;
    }

    fn index(&self, second: u64) -> usize {
        // The remainder is below `buckets.len()`, which is a usize.
        (second % self.buckets.len() as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::advance;

    const MS: Duration = Duration::from_millis(1);
    const FAST: Duration = Duration::from_millis(20);
    const SLOW: Duration = Duration::from_secs(6);

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::default(), Instant::now())
    }

    /// A breaker that logs its transitions into the returned list.
    fn observed() -> (CircuitBreaker, Arc<Mutex<Vec<Transition>>>) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let b = breaker().with_observer(move |t| sink.lock().expect("not poisoned").push(*t));
        (b, log)
    }

    fn reasons(log: &Arc<Mutex<Vec<Transition>>>) -> Vec<(BreakerState, TransitionReason)> {
        log.lock()
            .expect("not poisoned")
            .iter()
            .map(|t| (t.to, t.reason))
            .collect()
    }

    /// Makes one call at the current (paused) time.
    fn call(b: &mut CircuitBreaker, outcome: Outcome, elapsed: Duration) {
        let now = Instant::now();
        let permit = b.try_acquire(now).expect("admitted");
        b.record(permit, outcome, elapsed, now);
    }

    fn calls(b: &mut CircuitBreaker, n: usize, outcome: Outcome, elapsed: Duration) {
        for _ in 0..n {
            call(b, outcome, elapsed);
        }
    }

    /// Trips a default breaker open at the current time.
    fn trip(b: &mut CircuitBreaker) {
        calls(b, 10, Outcome::Failure, FAST);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
    }

    #[test]
    fn defaults_are_the_contracts() {
        let c = BreakerConfig::default();
        assert_eq!(c.failure_rate_pct, 50.0);
        assert_eq!(c.min_calls, 10);
        assert_eq!(c.window, Duration::from_secs(30));
        assert_eq!(c.open_for, Duration::from_secs(15));
        assert_eq!(c.half_open_probes, 3);
        assert_eq!(c.slow_call, Duration::from_secs(5));
        assert_eq!(c.slow_call_rate_pct, 80.0);
        assert_eq!(c.call_timeout, Duration::from_secs(10));
    }

    #[test]
    fn state_metric_and_names() {
        assert_eq!(BreakerState::Closed.as_metric(), 0.0);
        assert_eq!(BreakerState::HalfOpen.as_metric(), 1.0);
        assert_eq!(BreakerState::Open.as_metric(), 2.0);
        assert_eq!(BreakerState::HalfOpen.to_string(), "half_open");
    }

    #[tokio::test(start_paused = true)]
    async fn opens_at_exactly_the_failure_threshold() {
        let (mut b, log) = observed();
        calls(&mut b, 5, Outcome::Failure, FAST);
        calls(&mut b, 4, Outcome::Success, FAST);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed,
            "9 calls < min_calls"
        );
        call(&mut b, Outcome::Success, FAST);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open,
            "5 of 10 is 50 %"
        );
        assert_eq!(
            reasons(&log),
            vec![(
                BreakerState::Open,
                TransitionReason::FailureRate {
                    failures: 5,
                    calls: 10
                }
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn stays_closed_just_below_the_threshold() {
        let mut b = breaker();
        calls(&mut b, 4, Outcome::Failure, FAST);
        calls(&mut b, 6, Outcome::Success, FAST);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed,
            "4 of 10 is 40 %"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn never_opens_below_min_calls() {
        let mut b = breaker();
        calls(&mut b, 9, Outcome::Failure, FAST);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_on_slow_calls_even_when_they_succeed() {
        let (mut b, log) = observed();
        calls(&mut b, 2, Outcome::Success, FAST);
        calls(&mut b, 7, Outcome::Success, SLOW);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
        call(&mut b, Outcome::Success, SLOW);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open,
            "8 of 10 slow is 80 %"
        );
        assert_eq!(
            reasons(&log),
            vec![(
                BreakerState::Open,
                TransitionReason::SlowCallRate { slow: 8, calls: 10 }
            )]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn exactly_the_slow_threshold_is_not_slow() {
        let mut b = breaker();
        calls(&mut b, 10, Outcome::Success, Duration::from_secs(5));
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_fast_while_open_with_the_time_left() {
        let mut b = breaker();
        trip(&mut b);
        advance(Duration::from_secs(5)).await;
        assert_eq!(
            b.try_acquire(Instant::now()),
            Err(Rejected {
                retry_after: Duration::from_secs(10)
            })
        );
        advance(Duration::from_millis(9_999)).await;
        assert_eq!(
            b.try_acquire(Instant::now()),
            Err(Rejected { retry_after: MS })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_the_probes() {
        let (mut b, log) = observed();
        trip(&mut b);
        advance(Duration::from_secs(15)).await;
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::HalfOpen,
            "reads half-open already"
        );
        let now = Instant::now();
        let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire(now).expect("probe")).collect();
        assert!(probes.iter().all(Permit::is_probe));
        assert_eq!(
            b.try_acquire(now),
            Err(Rejected {
                retry_after: HALF_OPEN_RETRY_AFTER
            })
        );
        assert_eq!(
            reasons(&log).last(),
            Some(&(
                BreakerState::HalfOpen,
                TransitionReason::OpenIntervalElapsed
            ))
        );
        for p in probes {
            b.record(p, Outcome::Success, FAST, now);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_probes_succeeding_close_it_with_a_fresh_window() {
        let (mut b, log) = observed();
        trip(&mut b);
        advance(Duration::from_secs(15)).await;
        let now = Instant::now();
        let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire(now).expect("probe")).collect();
        let mut probes = probes.into_iter();
        for p in probes.by_ref().take(2) {
            b.record(p, Outcome::Success, FAST, now);
            assert_eq!(b.state(now), BreakerState::HalfOpen);
        }
        for p in probes {
            b.record(p, Outcome::Success, FAST, now);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
        assert_eq!(
            reasons(&log).last(),
            Some(&(BreakerState::Closed, TransitionReason::ProbesSucceeded))
        );
        // The ten failures that opened it are gone: nine more do not reopen it.
        calls(&mut b, 9, Outcome::Failure, FAST);
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn one_failed_probe_reopens_for_a_fresh_interval() {
        let (mut b, log) = observed();
        trip(&mut b);
        advance(Duration::from_secs(15)).await;
        let now = Instant::now();
        let first = b.try_acquire(now).expect("probe");
        let second = b.try_acquire(now).expect("probe");
        b.record(first, Outcome::Success, FAST, now);
        b.record(second, Outcome::Failure, FAST, now);
        assert_eq!(b.state(now), BreakerState::Open);
        assert_eq!(
            b.try_acquire(now),
            Err(Rejected {
                retry_after: Duration::from_secs(15)
            })
        );
        assert_eq!(
            reasons(&log).last(),
            Some(&(BreakerState::Open, TransitionReason::ProbeFailed))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_slow_probe_reopens() {
        let (mut b, log) = observed();
        trip(&mut b);
        advance(Duration::from_secs(15)).await;
        call(&mut b, Outcome::Success, SLOW);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        assert_eq!(
            reasons(&log).last(),
            Some(&(BreakerState::Open, TransitionReason::ProbeSlow))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn old_generation_permits_are_ignored() {
        let mut b = breaker();
        // A call starts while closed and is still running when the breaker trips.
        let straggler = b.try_acquire(Instant::now()).expect("closed");
        let straggler_success = b.try_acquire(Instant::now()).expect("closed");
        trip(&mut b);
        advance(Duration::from_secs(15)).await;
        let now = Instant::now();
        let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire(now).expect("probe")).collect();
        // Its failure must not reopen the breaker, nor its success count as a probe's.
        b.record(straggler, Outcome::Failure, SLOW, now);
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        b.record(straggler_success, Outcome::Success, FAST, now);
        let mut probes = probes.into_iter();
        for p in probes.by_ref().take(2) {
            b.record(p, Outcome::Success, FAST, now);
        }
        assert_eq!(
            b.state(now),
            BreakerState::HalfOpen,
            "only two real probes reported"
        );
        for p in probes {
            b.record(p, Outcome::Success, FAST, now);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides() {
        let mut b = breaker();
        calls(&mut b, 9, Outcome::Failure, FAST);
        advance(Duration::from_secs(29)).await;
        calls(&mut b, 1, Outcome::Success, FAST);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Open,
            "9 of 10 within 30 s"
        );

        let mut b = breaker();
        calls(&mut b, 9, Outcome::Failure, FAST);
        advance(Duration::from_secs(30)).await;
        calls(&mut b, 9, Outcome::Success, FAST);
        call(&mut b, Outcome::Failure, FAST);
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed,
            "the old failures left the window: 1 of 10"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_slides_second_by_second() {
        let mut b = breaker();
        // A success every second for 40 s, plus a failure in each of the first 4 seconds:
        // 4 of the first 10 calls failed (40 %), and by the end the failures have slid out
        // and the window holds exactly the last 30 seconds' 30 calls.
        for second in 0..40 {
            call(&mut b, Outcome::Success, FAST);
            if second < 4 {
                call(&mut b, Outcome::Failure, FAST);
            }
            advance(Duration::from_secs(1)).await;
        }
        assert_eq!(
            b.state(Instant::now()),
            BreakerState::Closed,
            "4 failures of 30+"
        );
        match &b.phase {
            Phase::Closed { window } => assert_eq!(window.totals().calls, 30),
            other => panic!("expected closed, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unrecorded_probes_time_out_and_reopen() {
        let (mut b, log) = observed();
        trip(&mut b);
        advance(Duration::from_secs(15)).await;
        let now = Instant::now();
        for _ in 0..3 {
            // Requests cancelled mid-call: their permits are dropped unrecorded.
            drop(b.try_acquire(now).expect("probe"));
        }
        advance(Duration::from_secs(9)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::HalfOpen);
        advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        b.poll(Instant::now());
        assert_eq!(
            reasons(&log).last(),
            Some(&(BreakerState::Open, TransitionReason::ProbeTimedOut))
        );
        assert_eq!(
            b.try_acquire(Instant::now()),
            Err(Rejected {
                retry_after: Duration::from_secs(15)
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn observer_sees_the_whole_cycle() {
        let (mut b, log) = observed();
        trip(&mut b);
        advance(Duration::from_secs(15)).await;
        calls(&mut b, 3, Outcome::Success, FAST);
        let log = log.lock().expect("not poisoned");
        let path: Vec<(BreakerState, BreakerState)> = log.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            path,
            vec![
                (BreakerState::Closed, BreakerState::Open),
                (BreakerState::Open, BreakerState::HalfOpen),
                (BreakerState::HalfOpen, BreakerState::Closed),
            ]
        );
        assert!(log.windows(2).all(|w| w[0].at <= w[1].at));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_settings_act_as_one() {
        let config = BreakerConfig {
            min_calls: 0,
            half_open_probes: 0,
            window: Duration::ZERO,
            ..BreakerConfig::default()
        };
        let mut b = CircuitBreaker::new(config, Instant::now());
        call(&mut b, Outcome::Failure, FAST);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        advance(Duration::from_secs(15)).await;
        let now = Instant::now();
        let probe = b.try_acquire(now).expect("one probe");
        assert!(b.try_acquire(now).is_err());
        b.record(probe, Outcome::Success, FAST, now);
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[test]
    fn window_seconds_round_up_and_are_bounded() {
        assert_eq!(window_secs(Duration::ZERO), 1);
        assert_eq!(window_secs(Duration::from_millis(1500)), 2);
        assert_eq!(window_secs(Duration::from_secs(30)), 30);
        assert_eq!(window_secs(Duration::MAX), 86_400);
    }

    #[test]
    fn absurd_durations_never_panic() {
        let config = BreakerConfig {
            open_for: Duration::MAX,
            window: Duration::MAX,
            min_calls: 1,
            ..BreakerConfig::default()
        };
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(config, t0);
        let permit = b.try_acquire(t0).expect("closed");
        b.record(permit, Outcome::Failure, Duration::MAX, t0);
        assert_eq!(
            b.try_acquire(t0),
            Err(Rejected {
                retry_after: MAX_OPEN_FOR
            })
        );
    }

    #[test]
    fn a_time_going_backwards_never_panics() {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(BreakerConfig::default(), t0 + Duration::from_secs(100));
        let permit = b.try_acquire(t0).expect("closed");
        b.record(permit, Outcome::Failure, FAST, t0);
        let permit = b
            .try_acquire(t0 + Duration::from_secs(200))
            .expect("closed");
        b.record(permit, Outcome::Failure, FAST, t0 + Duration::from_secs(50));
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Step {
            Wait(u64),
            Acquire,
            Finish {
                index: usize,
                failed: bool,
                slow: bool,
            },
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (0u64..20_000).prop_map(Step::Wait),
                Just(Step::Acquire),
                (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(|(index, failed, slow)| {
                    Step::Finish {
                        index,
                        failed,
                        slow,
                    }
                }),
            ]
        }

        proptest! {
            /// Whatever happens, half-open never has more probes out than configured,
            /// open never admits, and nothing panics.
            #[test]
            fn admission_invariants(steps in prop::collection::vec(step(), 0..200)) {
                let t0 = Instant::now();
                let mut now = t0;
                let mut b = CircuitBreaker::new(BreakerConfig::default(), t0);
                let mut outstanding: Vec<Permit> = Vec::new();
                for step in steps {
                    match step {
                        Step::Wait(ms) => now += Duration::from_millis(ms),
                        Step::Acquire => {
                            let before = b.state(now);
                            match b.try_acquire(now) {
                                Ok(permit) => {
                                    prop_assert_ne!(before, BreakerState::Open);
                                    outstanding.push(permit);
                                }
                                Err(rejected) => {
                                    prop_assert_ne!(before, BreakerState::Closed);
                                    prop_assert!(rejected.retry_after <= Duration::from_secs(15));
                                }
                            }
                        }
                        Step::Finish { index, failed, slow } if !outstanding.is_empty() => {
                            let permit = outstanding.swap_remove(index % outstanding.len());
                            let outcome = if failed { Outcome::Failure } else { Outcome::Success };
                            let elapsed = if slow { SLOW } else { FAST };
                            b.record(permit, outcome, elapsed, now);
                        }
                        Step::Finish { .. } => {}
                    }
                    if let Phase::HalfOpen { issued, succeeded, .. } = b.phase {
                        prop_assert!(issued <= 3);
                        prop_assert!(succeeded <= issued);
                        let current = outstanding
                            .iter()
                            .filter(|p| p.generation == b.generation)
                            .count();
                        prop_assert!(current <= 3);
                    }
                }
            }
        }
    }
}
