//! Token-bucket arithmetic for the `/events` abuse controls (contract sections 6 and 12).
//!
//! Requests are charged per user, per device and per client IP. The buckets normally live
//! in Redis, updated by a Lua script so that every replica sees the same counts, and fall
//! back to per-replica memory when Redis is unreachable. Both must compute exactly the same
//! thing, so the arithmetic lives here as pure functions and the Lua script mirrors the
//! algorithm below step by step.
//!
//! # The algorithm (mirror this in Lua)
//!
//! A bucket holds `tokens` (a double) and `updated_at_ms` (the last time it was touched, in
//! milliseconds). A limit has `rate` (tokens per second) and `burst` (capacity). `EPS` is
//! `1e-9` tokens; it absorbs floating-point drift so that a bucket refilled to exactly what
//! a request costs lets it through.
//!
//! 1. `cost` is the number of events charged; a negative or non-finite cost is taken as 0.
//! 2. Refill. A bucket that does not exist (or whose stored fields are not numbers) is full:
//!    `tokens = burst`, `updated_at = now`. Otherwise
//!    `elapsed = max(0, now - updated_at)` (a clock that steps back refills nothing),
//!    `tokens = min(burst, max(0, tokens) + elapsed * rate / 1000)`,
//!    `updated_at = max(updated_at, now)`.
//! 3. Decide. Allowed when `cost <= tokens + EPS`; then `tokens = max(0, tokens - cost)`.
//!    Otherwise denied and `tokens` stays as refilled: **a denied request charges nothing**.
//! 4. Report. `remaining = tokens`.
//!    `retry_after = 0` when allowed, else `max(1, ceil_secs(min(cost, burst) - tokens))`.
//!    `reset = ceil_secs(burst - tokens)` (seconds until the bucket is full again),
//!    where `ceil_secs(deficit) = max(0, ceil((deficit - EPS) / rate))`.
//! 5. Store `tokens` and `updated_at` (both, whether allowed or denied; storing the refilled
//!    value is equivalent to not storing, because refilling is linear and capped). A key may
//!    expire after `ceil(burst / rate) + 1` seconds: by then the bucket would be full, which
//!    is exactly what a missing key means.
//!
//! Several buckets charged by one request ([`take_all`]) are all-or-nothing: steps 1-3 run
//! for every bucket first, and only if every bucket allows are they all charged. In Lua
//! that is one script over all the keys, so no other request interleaves.
//!
//! # A cost larger than the burst
//!
//! Such a request can never succeed, however long the client waits (the bucket never holds
//! more than `burst`). It is denied like any other, with `retry_after` the time until the
//! bucket is full (retrying sooner is certainly pointless), and [`Decision::exceeds_burst`]
//! set so the caller can log it: it means a batch larger than the configured burst, which
//! is a configuration problem (burst below `EVENT_MAX_BATCH`) rather than client abuse.

use std::fmt;
use std::str::FromStr;

/// Floating-point slack, in tokens (see the module docs).
const EPS: f64 = 1e-9;

/// Largest value of a Structured Field Integer (RFC 8941: at most 15 digits).
const MAX_SF_INTEGER: u64 = 999_999_999_999_999;

/// A bucket's refill rate and capacity, e.g. `200/s:1000` (contract section 11).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limit {
    /// Tokens added per second.
    pub rate_per_sec: f64,
    /// Most tokens the bucket holds: the largest request that can pass after a quiet spell.
    pub burst: f64,
}

/// Why a limit setting could not be read. The messages are meant for the operator; the
/// settings layer prefixes the variable's name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("expected <rate>/<unit>:<burst>, e.g. 200/s:1000 (unit s, m or h), got {0:?}")]
    Malformed(String),
    #[error("the rate must be a positive number, got {0:?}")]
    Rate(String),
    #[error("the rate unit must be s, m or h, got {0:?}")]
    Unit(String),
    #[error("the burst must be a number of at least 1, got {0:?}")]
    Burst(String),
}

impl Limit {
    /// A validated limit: a positive finite rate and a finite burst of at least one token
    /// (a smaller burst could never admit even a single event).
    pub fn new(rate_per_sec: f64, burst: f64) -> Result<Self, LimitError> {
        if !(rate_per_sec.is_finite() && rate_per_sec > 0.0) {
            return Err(LimitError::Rate(rate_per_sec.to_string()));
        }
        if !(burst.is_finite() && burst >= 1.0) {
            return Err(LimitError::Burst(burst.to_string()));
        }
        Ok(Self {
            rate_per_sec,
            burst,
        })
    }

    /// Whole seconds to refill the bucket from empty, at least 1: the `w` of
    /// `RateLimit-Policy` (contract section 12).
    pub fn refill_secs(&self) -> u64 {
        ceil_secs(self.burst, self.rate_per_sec).max(1)
    }
}

impl FromStr for Limit {
    type Err = LimitError;

    /// Parses `<rate>/<unit>:<burst>` where unit is `s`, `m` or `h`; spaces around the
    /// parts are allowed. `60/m:10` is one token per second with a burst of ten.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || LimitError::Malformed(text.to_owned());
        let (rate_part, burst_part) = text.split_once(':').ok_or_else(malformed)?;
        let (amount_text, unit) = rate_part.split_once('/').ok_or_else(malformed)?;
        let (amount_text, unit, burst_text) = (amount_text.trim(), unit.trim(), burst_part.trim());
        let rate_error = || LimitError::Rate(amount_text.to_owned());
        let burst_error = || LimitError::Burst(burst_text.to_owned());
        let amount: f64 = amount_text.parse().map_err(|_| rate_error())?;
        let per_secs = match unit {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(LimitError::Unit(other.to_owned())),
        };
        let burst: f64 = burst_text.parse().map_err(|_| burst_error())?;
        if !(amount.is_finite() && amount > 0.0) {
            return Err(rate_error());
        }
        // Report problems in the operator's own spelling rather than as a computed number.
        Self::new(amount / per_secs, burst).map_err(|err| match err {
            LimitError::Rate(_) => rate_error(),
            _ => burst_error(),
        })
    }
}

impl fmt::Display for Limit {
    /// The per-second form, which parses back to the same limit.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s:{}", self.rate_per_sec, self.burst)
    }
}

/// One bucket's stored state.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BucketState {
    /// Tokens held at `updated_at_ms`, in `0..=burst`.
    tokens: f64,
    /// When `tokens` was computed, in Unix milliseconds.
    updated_at_ms: i64,
}

impl BucketState {
    /// A state read back from storage. A negative or non-finite token count is read as 0
    /// (it can only come from corruption, and 0 is the conservative reading).
    pub fn new(tokens: f64, updated_at_ms: i64) -> Self {
        let tokens = if tokens.is_finite() {
            tokens.max(0.0)
        } else {
            0.0
        };
        Self {
            tokens,
            updated_at_ms,
        }
    }

    /// Tokens held at [`Self::updated_at_ms`].
    pub fn tokens(&self) -> f64 {
        self.tokens
    }

    /// When the state was last computed, in Unix milliseconds.
    pub fn updated_at_ms(&self) -> i64 {
        self.updated_at_ms
    }

    /// Step 2 of the algorithm: the state at `now_ms`, nothing charged.
    fn refilled(state: Option<Self>, limit: &Limit, now_ms: i64) -> Self {
        let Some(state) = state else {
            return Self::new(limit.burst, now_ms);
        };
        let elapsed_ms = now_ms.saturating_sub(state.updated_at_ms).max(0) as f64;
        let tokens =
            (state.tokens.max(0.0) + elapsed_ms * limit.rate_per_sec / 1000.0).min(limit.burst);
        Self::new(tokens, state.updated_at_ms.max(now_ms))
    }
}

/// The outcome of charging one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// Whether the bucket had enough tokens (and, for a single bucket, was charged).
    pub allowed: bool,
    /// Tokens left after this decision (fractional; headers show it rounded down).
    pub remaining: f64,
    /// Whole seconds, rounded up, until the bucket holds enough tokens for this request:
    /// 0 when allowed, at least 1 when denied (contract section 12).
    pub retry_after_secs: u64,
    /// Whole seconds, rounded up, until the bucket is full again.
    pub reset_secs: u64,
    /// The cost is larger than the burst, so this request can never pass (module docs).
    pub exceeds_burst: bool,
}

/// Charges `cost` tokens to one bucket at `now_ms`; see the module docs for the exact
/// steps. Returns the state to store (whether allowed or not) and the decision.
pub fn take(
    state: Option<BucketState>,
    limit: &Limit,
    now_ms: i64,
    cost: f64,
) -> (BucketState, Decision) {
    let cost = sanitize_cost(cost);
    let refilled = BucketState::refilled(state, limit, now_ms);
    let allowed = has_enough(&refilled, cost);
    let after = if allowed {
        charged(&refilled, cost)
    } else {
        refilled
    };
    (after, decide(&after, limit, cost, allowed))
}

/// Which bucket a charge goes to: the `RateLimit` policy name and the metric label
/// (`sidecar_rate_limited_total{scope}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    User,
    Device,
    Ip,
}

impl Scope {
    /// `user`, `device` or `ip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Device => "device",
            Scope::Ip => "ip",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One bucket charged by a request.
#[derive(Clone, Copy, Debug)]
pub struct Charge<'a> {
    pub scope: Scope,
    pub limit: &'a Limit,
    /// The bucket's stored state; `None` when it does not exist yet (it starts full).
    pub state: Option<BucketState>,
    /// Tokens this request costs this bucket.
    pub cost: f64,
}

/// The outcome of charging several buckets at once.
#[derive(Clone, Debug, PartialEq)]
pub struct TakeAll {
    /// Every bucket had enough tokens, and all were charged. When false, none was.
    pub allowed: bool,
    /// The state to store for each charge, in the order given.
    pub states: Vec<BucketState>,
    /// Each bucket's own verdict, in the order given: `allowed` says whether that bucket
    /// alone had enough (count the denied ones in `sidecar_rate_limited_total{scope}`);
    /// `remaining` reflects the joint outcome.
    pub decisions: Vec<Decision>,
    /// The bucket closest to exhaustion, which the `RateLimit` fields report: when denied,
    /// the denying bucket with the longest wait (its `retry_after_secs` is the request's
    /// `Retry-After`, as every bucket must have enough); when allowed, the bucket with the
    /// fewest tokens left. Ties go to the earlier charge. `None` only for no charges.
    pub reported: Option<usize>,
}

impl TakeAll {
    /// The decision of the [`Self::reported`] bucket.
    pub fn reported_decision(&self) -> Option<&Decision> {
        self.reported.and_then(|i| self.decisions.get(i))
    }

    /// The `RateLimit-Policy` and `RateLimit` field values for the reported bucket.
    pub fn header_fields(&self, charges: &[Charge<'_>]) -> Option<(String, String)> {
        let index = self.reported?;
        let charge = charges.get(index)?;
        let decision = self.decisions.get(index)?;
        Some((
            rate_limit_policy_field(charge.scope, charge.limit),
            rate_limit_field(charge.scope, decision),
        ))
    }
}

/// Charges every bucket or none: a request passes only when each bucket has enough tokens,
/// and a denied request costs nothing anywhere. An empty `charges` is allowed.
pub fn take_all(charges: &[Charge<'_>], now_ms: i64) -> TakeAll {
    let refilled: Vec<(BucketState, f64, bool)> = charges
        .iter()
        .map(|c| {
            let cost = sanitize_cost(c.cost);
            let state = BucketState::refilled(c.state, c.limit, now_ms);
            (state, cost, has_enough(&state, cost))
        })
        .collect();
    let allowed = refilled.iter().all(|&(_, _, enough)| enough);

    let mut states = Vec::with_capacity(charges.len());
    let mut decisions = Vec::with_capacity(charges.len());
    for (charge, &(state, cost, enough)) in charges.iter().zip(&refilled) {
        let after = if allowed {
            charged(&state, cost)
        } else {
            state
        };
        states.push(after);
        decisions.push(decide(&after, charge.limit, cost, enough));
    }
    let reported = closest_to_exhaustion(&decisions, allowed);
    TakeAll {
        allowed,
        states,
        decisions,
        reported,
    }
}

/// `RateLimit-Policy` field value (draft-ietf-httpapi-ratelimit-headers-09 section 3):
/// `"user";q=1000;w=5`, where `q` is the burst and `w` the seconds to refill from empty.
pub fn rate_limit_policy_field(scope: Scope, limit: &Limit) -> String {
    format!(
        "\"{}\";q={};w={}",
        scope.as_str(),
        sf_integer(limit.burst.floor()),
        limit.refill_secs().min(MAX_SF_INTEGER)
    )
}

/// `RateLimit` field value (draft-09 section 4): `"user";r=<remaining>;t=<seconds>`.
///
/// `r` is the whole tokens left. `t` is the seconds until the bucket is full again, except
/// on a denial, where it equals `Retry-After`: the draft asks that both name the same point
/// in time when a response carries both.
pub fn rate_limit_field(scope: Scope, decision: &Decision) -> String {
    let t = if decision.allowed {
        decision.reset_secs
    } else {
        decision.retry_after_secs
    };
    format!(
        "\"{}\";r={};t={}",
        scope.as_str(),
        sf_integer(decision.remaining.floor()),
        t.min(MAX_SF_INTEGER)
    )
}

fn sanitize_cost(cost: f64) -> f64 {
    if cost.is_finite() && cost > 0.0 {
        cost
    } else {
        0.0
    }
}

fn has_enough(state: &BucketState, cost: f64) -> bool {
    cost <= state.tokens + EPS
}

fn charged(state: &BucketState, cost: f64) -> BucketState {
    BucketState::new((state.tokens - cost).max(0.0), state.updated_at_ms)
}

/// Step 4 of the algorithm, for a bucket already charged (or not) as decided.
fn decide(after: &BucketState, limit: &Limit, cost: f64, allowed: bool) -> Decision {
    let retry_after_secs = if allowed {
        0
    } else {
        ceil_secs(cost.min(limit.burst) - after.tokens, limit.rate_per_sec).max(1)
    };
    Decision {
        allowed,
        remaining: after.tokens,
        retry_after_secs,
        reset_secs: ceil_secs(limit.burst - after.tokens, limit.rate_per_sec),
        exceeds_burst: cost > limit.burst + EPS,
    }
}

/// Whole seconds, rounded up, to refill `deficit` tokens at `rate` per second.
/// Saturates instead of panicking for a zero or absurd rate (only reachable by building a
/// [`Limit`] by hand).
fn ceil_secs(deficit: f64, rate_per_sec: f64) -> u64 {
    let secs = ((deficit - EPS) / rate_per_sec).ceil();
    if secs.is_nan() || secs <= 0.0 {
        0
    } else {
        // `as` saturates at u64::MAX for huge or infinite values.
        secs as u64
    }
}

/// A non-negative Structured Field Integer from a whole-valued double.
fn sf_integer(value: f64) -> u64 {
    if value.is_nan() || value <= 0.0 {
        0
    } else {
        (value as u64).min(MAX_SF_INTEGER)
    }
}

fn closest_to_exhaustion(decisions: &[Decision], allowed: bool) -> Option<usize> {
    let candidates = decisions
        .iter()
        .enumerate()
        .filter(|(_, d)| allowed || !d.allowed);
    if allowed {
        // Fewest tokens left; `min_by` keeps the first of equals.
        candidates
            .min_by(|a, b| a.1.remaining.total_cmp(&b.1.remaining))
            .map(|(i, _)| i)
    } else {
        // Longest wait; keep the first of equals by reversing the comparison under min_by.
        candidates
            .min_by(|a, b| b.1.retry_after_secs.cmp(&a.1.retry_after_secs))
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limit(rate: f64, burst: f64) -> Limit {
        Limit::new(rate, burst).expect("valid limit")
    }

    fn state(tokens: f64, at: i64) -> Option<BucketState> {
        Some(BucketState::new(tokens, at))
    }

    // ----- parsing -----

    #[test]
    fn parses_the_contract_defaults() {
        assert_eq!("200/s:1000".parse(), Ok(limit(200.0, 1000.0)));
        assert_eq!("2000/s:10000".parse(), Ok(limit(2000.0, 10000.0)));
    }

    #[test]
    fn parses_minutes_hours_fractions_and_spaces() {
        assert_eq!("60/m:10".parse(), Ok(limit(1.0, 10.0)));
        assert_eq!("7200/h:5".parse(), Ok(limit(2.0, 5.0)));
        assert_eq!(" 0.5 / s : 2.5 ".parse(), Ok(limit(0.5, 2.5)));
    }

    #[test]
    fn rejects_malformed_settings_with_useful_messages() {
        let cases = [
            ("", LimitError::Malformed(String::new())),
            ("200", LimitError::Malformed("200".into())),
            ("200/s", LimitError::Malformed("200/s".into())),
            ("200:1000", LimitError::Malformed("200:1000".into())),
            ("abc/s:1000", LimitError::Rate("abc".into())),
            ("0/s:1000", LimitError::Rate("0".into())),
            ("-5/s:1000", LimitError::Rate("-5".into())),
            ("inf/s:1000", LimitError::Rate("inf".into())),
            ("NaN/s:1000", LimitError::Rate("NaN".into())),
            ("200/d:1000", LimitError::Unit("d".into())),
            ("200/:1000", LimitError::Unit(String::new())),
            ("200/s:", LimitError::Burst(String::new())),
            ("200/s:lots", LimitError::Burst("lots".into())),
            ("200/s:0", LimitError::Burst("0".into())),
            ("200/s:0.5", LimitError::Burst("0.5".into())),
            ("200/s:inf", LimitError::Burst("inf".into())),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Limit>(), Err(expected), "{text:?}");
        }
        let message = "200/x:1"
            .parse::<Limit>()
            .expect_err("bad unit")
            .to_string();
        assert_eq!(message, "the rate unit must be s, m or h, got \"x\"");
        let message = "fast".parse::<Limit>().expect_err("malformed").to_string();
        assert_eq!(
            message,
            "expected <rate>/<unit>:<burst>, e.g. 200/s:1000 (unit s, m or h), got \"fast\""
        );
    }

    #[test]
    fn display_round_trips() {
        for text in ["200/s:1000", "60/m:10", "1/h:1"] {
            let parsed: Limit = text.parse().expect("valid");
            assert_eq!(parsed.to_string().parse::<Limit>(), Ok(parsed));
        }
        assert_eq!(limit(200.0, 1000.0).to_string(), "200/s:1000");
    }

    #[test]
    fn refill_secs_rounds_up_and_is_at_least_one() {
        assert_eq!(limit(200.0, 1000.0).refill_secs(), 5);
        assert_eq!(limit(3.0, 10.0).refill_secs(), 4);
        assert_eq!(limit(1000.0, 1.0).refill_secs(), 1);
    }

    // ----- a single bucket -----

    #[test]
    fn a_new_bucket_starts_full() {
        let (after, d) = take(None, &limit(10.0, 100.0), 5_000, 30.0);
        assert!(d.allowed);
        assert_eq!(after, BucketState::new(70.0, 5_000));
        assert_eq!(d.remaining, 70.0);
        assert_eq!(d.retry_after_secs, 0);
        assert_eq!(d.reset_secs, 3);
        assert!(!d.exceeds_burst);
    }

    #[test]
    fn refills_linearly_and_caps_at_burst() {
        let l = limit(10.0, 100.0);
        let (after, _) = take(state(0.0, 0), &l, 1_500, 0.0);
        assert_eq!(after.tokens(), 15.0);
        let (after, _) = take(state(0.0, 0), &l, 60_000, 0.0);
        assert_eq!(after.tokens(), 100.0);
        assert_eq!(after.updated_at_ms(), 60_000);
    }

    #[test]
    fn exactly_enough_is_allowed() {
        let l = limit(10.0, 100.0);
        let (after, d) = take(state(5.0, 0), &l, 500, 10.0);
        assert!(d.allowed, "5 + 0.5 s * 10/s = 10 tokens");
        assert_eq!(after.tokens(), 0.0);
        assert_eq!(d.reset_secs, 10);
    }

    #[test]
    fn float_drift_does_not_deny_an_exact_refill() {
        // 0.1 s at 3/s is 0.30000000000000004 tokens in floating point; 0.3 must pass.
        let l = limit(3.0, 10.0);
        let (_, d) = take(state(0.0, 0), &l, 100, 0.3);
        assert!(d.allowed);
    }

    #[test]
    fn denied_charges_nothing_and_says_when_to_retry() {
        let l = limit(10.0, 100.0);
        let (after, d) = take(state(4.0, 0), &l, 0, 25.0);
        assert!(!d.allowed);
        assert_eq!(after, BucketState::new(4.0, 0));
        assert_eq!(d.remaining, 4.0);
        assert_eq!(
            d.retry_after_secs, 3,
            "21 tokens at 10/s is 2.1 s, rounded up"
        );
        assert_eq!(d.reset_secs, 10);
        // And it is honest: after 3 s the same request passes.
        let (_, later) = take(Some(after), &l, 3_000, 25.0);
        assert!(later.allowed);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let l = limit(1000.0, 100.0);
        let (_, d) = take(state(0.0, 0), &l, 0, 1.0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, 1);
    }

    #[test]
    fn a_cost_above_the_burst_never_passes() {
        let l = limit(10.0, 100.0);
        let (after, d) = take(None, &l, 0, 101.0);
        assert!(!d.allowed);
        assert!(d.exceeds_burst);
        assert_eq!(after.tokens(), 100.0, "a full bucket is left untouched");
        assert_eq!(d.retry_after_secs, 1, "already full: the minimum");
        let (_, d) = take(state(40.0, 0), &l, 0, 500.0);
        assert_eq!(
            d.retry_after_secs, 6,
            "time to fill the bucket: 60 tokens at 10/s"
        );
        let (_, much_later) = take(state(40.0, 0), &l, 1_000_000, 500.0);
        assert!(!much_later.allowed);
    }

    #[test]
    fn zero_negative_and_nan_costs_are_free() {
        let l = limit(10.0, 100.0);
        for cost in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            let (after, d) = take(state(0.0, 0), &l, 0, cost);
            assert!(d.allowed, "{cost}");
            assert_eq!(after.tokens(), 0.0, "{cost}");
        }
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing_later() {
        let l = limit(10.0, 100.0);
        let (after, _) = take(state(0.0, 10_000), &l, 9_000, 0.0);
        assert_eq!(after, BucketState::new(0.0, 10_000));
        let (after, _) = take(Some(after), &l, 10_500, 0.0);
        assert_eq!(after.tokens(), 5.0);
    }

    #[test]
    fn corrupt_or_extreme_state_does_not_panic() {
        let l = limit(10.0, 100.0);
        let (after, _) = take(state(f64::NAN, 0), &l, 0, 1.0);
        assert_eq!(after.tokens(), 0.0);
        let (after, d) = take(state(1e300, i64::MIN), &l, i64::MAX, 1.0);
        assert!(d.allowed);
        assert_eq!(after.tokens(), 99.0);
        let hand_built = Limit {
            rate_per_sec: 0.0,
            burst: 10.0,
        };
        let (_, d) = take(state(0.0, 0), &hand_built, 1_000, 1.0);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_secs, u64::MAX);
    }

    // ----- several buckets -----

    fn charge(scope: Scope, limit: &Limit, state: Option<BucketState>, cost: f64) -> Charge<'_> {
        Charge {
            scope,
            limit,
            state,
            cost,
        }
    }

    #[test]
    fn take_all_charges_every_bucket_when_all_have_enough() {
        let (user, ip) = (limit(10.0, 100.0), limit(100.0, 1000.0));
        let charges = [
            charge(Scope::User, &user, state(50.0, 0), 20.0),
            charge(Scope::Ip, &ip, state(900.0, 0), 20.0),
        ];
        let out = take_all(&charges, 0);
        assert!(out.allowed);
        assert_eq!(
            out.states,
            vec![BucketState::new(30.0, 0), BucketState::new(880.0, 0)]
        );
        assert_eq!(
            out.reported,
            Some(0),
            "the user bucket has fewer tokens left"
        );
        assert_eq!(out.reported_decision().map(|d| d.remaining), Some(30.0));
    }

    #[test]
    fn take_all_charges_nothing_when_one_bucket_is_short() {
        let (user, device, ip) = (limit(10.0, 100.0), limit(10.0, 100.0), limit(100.0, 1000.0));
        let charges = [
            charge(Scope::User, &user, state(50.0, 0), 20.0),
            charge(Scope::Device, &device, state(5.0, 0), 20.0),
            charge(Scope::Ip, &ip, state(900.0, 0), 20.0),
        ];
        let out = take_all(&charges, 1_000);
        assert!(!out.allowed);
        assert_eq!(
            out.states,
            vec![
                BucketState::new(60.0, 1_000),
                BucketState::new(15.0, 1_000),
                BucketState::new(1000.0, 1_000)
            ],
            "refilled only"
        );
        assert_eq!(
            out.decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(),
            vec![true, false, true]
        );
        assert_eq!(out.reported, Some(1));
        let decision = out.reported_decision().expect("reported");
        assert_eq!(decision.retry_after_secs, 1, "5 tokens short at 10/s");
    }

    #[test]
    fn take_all_reports_the_longest_wait_among_denials() {
        let (fast, slow) = (limit(100.0, 100.0), limit(1.0, 100.0));
        let charges = [
            charge(Scope::User, &fast, state(0.0, 0), 50.0),
            charge(Scope::Ip, &slow, state(40.0, 0), 50.0),
        ];
        let out = take_all(&charges, 0);
        assert!(!out.allowed);
        assert_eq!(out.reported, Some(1));
        assert_eq!(
            out.reported_decision().map(|d| d.retry_after_secs),
            Some(10)
        );
        let (policy, limit_field) = out.header_fields(&charges).expect("fields");
        assert_eq!(policy, "\"ip\";q=100;w=100");
        assert_eq!(limit_field, "\"ip\";r=40;t=10");
    }

    #[test]
    fn take_all_ties_go_to_the_first_charge() {
        let l = limit(10.0, 100.0);
        let charges = [
            charge(Scope::User, &l, state(10.0, 0), 5.0),
            charge(Scope::Device, &l, state(10.0, 0), 5.0),
        ];
        assert_eq!(take_all(&charges, 0).reported, Some(0));
    }

    #[test]
    fn take_all_of_nothing_is_allowed() {
        let out = take_all(&[], 0);
        assert!(out.allowed);
        assert!(out.states.is_empty());
        assert_eq!(out.reported, None);
        assert_eq!(out.header_fields(&[]), None);
    }

    // ----- header fields -----

    #[test]
    fn policy_field_matches_the_contract_example() {
        let l: Limit = "200/s:1000".parse().expect("valid");
        assert_eq!(
            rate_limit_policy_field(Scope::User, &l),
            "\"user\";q=1000;w=5"
        );
        assert_eq!(
            rate_limit_policy_field(Scope::Device, &l),
            "\"device\";q=1000;w=5"
        );
        let l: Limit = "2000/s:10000".parse().expect("valid");
        assert_eq!(rate_limit_policy_field(Scope::Ip, &l), "\"ip\";q=10000;w=5");
    }

    #[test]
    fn ratelimit_field_uses_reset_when_allowed_and_retry_after_when_denied() {
        let l = limit(10.0, 100.0);
        let (_, allowed) = take(state(50.0, 0), &l, 0, 0.5);
        assert_eq!(rate_limit_field(Scope::User, &allowed), "\"user\";r=49;t=6");
        let (_, denied) = take(state(2.0, 0), &l, 0, 30.0);
        assert_eq!(rate_limit_field(Scope::User, &denied), "\"user\";r=2;t=3");
    }

    #[test]
    fn ratelimit_fields_stay_within_structured_field_integers() {
        let huge = Limit {
            rate_per_sec: 1e-30,
            burst: 1e300,
        };
        assert_eq!(
            rate_limit_policy_field(Scope::Ip, &huge),
            "\"ip\";q=999999999999999;w=999999999999999"
        );
    }

    #[test]
    fn scope_names() {
        assert_eq!(Scope::User.to_string(), "user");
        assert_eq!(Scope::Device.as_str(), "device");
        assert_eq!(Scope::Ip.as_str(), "ip");
    }

    // ----- property tests -----

    fn any_limit() -> impl Strategy<Value = Limit> {
        (0.01f64..5000.0, 1.0f64..20_000.0).prop_map(|(rate, burst)| limit(rate, burst))
    }

    fn secs_to_ms(secs: u64) -> i64 {
        i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
    }

    /// A sequence of (milliseconds elapsed, cost) steps.
    fn steps() -> impl Strategy<Value = Vec<(i64, f64)>> {
        prop::collection::vec((0i64..5_000, 0.0f64..3000.0), 1..40)
    }

    proptest! {
        #[test]
        fn tokens_stay_within_zero_and_burst(l in any_limit(), steps in steps()) {
            let (mut s, mut now) = (None, 0i64);
            for (dt, cost) in steps {
                now += dt;
                let (after, d) = take(s, &l, now, cost);
                prop_assert!(after.tokens() >= 0.0);
                prop_assert!(after.tokens() <= l.burst);
                prop_assert_eq!(d.remaining, after.tokens());
                s = Some(after);
            }
        }

        #[test]
        fn a_denied_take_charges_nothing(
            l in any_limit(), tokens in 0.0f64..20_000.0, cost in 0.0f64..30_000.0,
            dt in 0i64..10_000, later_cost in 0.0f64..30_000.0,
        ) {
            let start = state(tokens.min(l.burst), 0);
            let (after, d) = take(start, &l, dt, cost);
            if !d.allowed {
                // Whatever happens next is the same as if the denied request never came.
                let (with, dw) = take(Some(after), &l, dt + 1_000, later_cost);
                let (without, dwo) = take(start, &l, dt + 1_000, later_cost);
                prop_assert_eq!(dw.allowed, dwo.allowed);
                prop_assert!((with.tokens() - without.tokens()).abs() < 1e-6);
            }
        }

        #[test]
        fn retry_after_is_enough_and_reset_fills(
            l in any_limit(), tokens in 0.0f64..20_000.0, cost in 0.0f64..20_000.0,
        ) {
            let start = state(tokens.min(l.burst), 0);
            let (after, d) = take(start, &l, 0, cost);
            if !d.allowed {
                prop_assert!(d.retry_after_secs >= 1);
                let ms = secs_to_ms(d.retry_after_secs);
                let (_, later) = take(Some(after), &l, ms, cost);
                prop_assert!(later.allowed || d.exceeds_burst);
            }
            let ms = secs_to_ms(d.reset_secs);
            let (full, _) = take(Some(after), &l, ms, 0.0);
            prop_assert!(full.tokens() >= l.burst - 1e-6);
        }

        #[test]
        fn take_all_is_all_or_nothing(
            limits in prop::collection::vec((any_limit(), 0.0f64..1.0, 0.0f64..3000.0), 1..4),
            now in 0i64..10_000,
        ) {
            let charges: Vec<Charge<'_>> = limits
                .iter()
                .map(|(l, fill, cost)| charge(Scope::User, l, state(l.burst * fill, 0), *cost))
                .collect();
            let out = take_all(&charges, now);
            prop_assert_eq!(out.allowed, out.decisions.iter().all(|d| d.allowed));
            for (i, c) in charges.iter().enumerate() {
                let (alone, d) = take(c.state, c.limit, now, c.cost);
                if out.allowed {
                    prop_assert_eq!(out.states[i], alone);
                } else {
                    let (untouched, _) = take(c.state, c.limit, now, 0.0);
                    prop_assert_eq!(out.states[i], untouched);
                }
                prop_assert_eq!(d.allowed, out.decisions[i].allowed);
            }
            let reported = out.reported_decision().expect("non-empty");
            prop_assert_eq!(reported.allowed, out.allowed);
            if !out.allowed {
                let longest = out.decisions.iter().map(|d| d.retry_after_secs).max();
                prop_assert_eq!(Some(reported.retry_after_secs), longest);
            }
        }
    }
}
