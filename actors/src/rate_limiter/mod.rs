//! Token-bucket limits on `POST /events` (contract sections 6 and 12): per user, per
//! device and per client IP, shared across replicas through Redis, kept per replica in
//! memory while Redis is unreachable, never skipped.
//!
//! Map:
//! - [`RateLimiter`] (this file): the cloneable handle the HTTP layer holds, and
//!   [`RateLimiter::check`], which charges one request and returns a [`Verdict`].
//! - [`keys`]: bucket names (scope + digest of the value; IPv6 by /64).
//! - [`redis`]: the Lua script (`take_all.lua`), loaded once and called by SHA.
//! - [`memory`]: the bounded in-memory buckets.
//! - [`health`]: Redis up or down, transitions logged once, probing with backoff.
//!
//! # The hot path
//!
//! No actor sits in the way: `check` runs in the request's own task and makes one Redis
//! round trip (all buckets in one script call), bounded by a short timeout (100 ms by
//! default). The arithmetic is [`crate::token_bucket`]'s in both stores, so the verdict, the
//! `Retry-After` and the `RateLimit` fields are computed the same way whichever answered.
//!
//! # Denials stay off Redis
//!
//! Each replica keeps a copy (the *shadow*) of every bucket state Redis last answered, with
//! the offset of Redis's clock. Other replicas only ever take tokens, so the shadow refilled
//! to now is an upper bound of the true state: when even the shadow cannot pay for a
//! request, Redis could not either, and the request is denied here without a round trip
//! (`Source::Cached`). A flood is thus refused at the cost of a map lookup, while every
//! request that might pass still asks Redis. The shadow is dropped whenever Redis may have
//! lost its buckets (it was unreachable, or had lost the script).
//!
//! # When Redis fails
//!
//! The request that sees the failure is decided in memory, and Redis is marked down (one
//! warn line). Later requests go straight to memory, paying no timeout, and each such
//! decision counts in `sidecar_rate_limit_fallback_total`. A background prober asks Redis
//! again with backoff (250 ms doubling to 5 s); the first answer switches back (one info
//! line). While down, each replica enforces the configured limits on its own, so N
//! replicas let through up to N times the limit: degraded, never open. With `REDIS_URL`
//! unset, memory is simply the store (and nothing is counted as a fallback).
//!
//! A charge whose call timed out as Redis failed may still reach Redis once it is back (the
//! client had queued it): that bucket then holds a little less than it should. The error
//! is bounded by the requests of that moment and always on the strict side.

pub mod health;
pub mod keys;
pub mod memory;
pub mod redis;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::task::AbortHandle;

use crate::metric_names::{RATE_LIMITED_TOTAL, RATE_LIMIT_FALLBACK_TOTAL};
use crate::token_bucket::{Charge, Limit, Scope, TakeAll};

use self::health::{ProbeBackoff, RedisHealth};
use self::memory::MemoryBuckets;
use self::redis::{RedisError, ScriptAnswer, ScriptBuckets};

/// The three configured limits (`RATE_LIMIT_USER`, `RATE_LIMIT_DEVICE`, `RATE_LIMIT_IP`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub user: Limit,
    pub device: Limit,
    pub ip: Limit,
}

impl Limits {
    fn of(&self, scope: Scope) -> &Limit {
        match scope {
            Scope::User => &self.user,
            Scope::Device => &self.device,
            Scope::Ip => &self.ip,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RateLimiterConfig {
    pub limits: Limits,
    /// Prefix of every Redis key (`REDIS_KEY_PREFIX`), so several services or test runs can
    /// share one Redis.
    pub key_prefix: String,
    /// How long a request waits for Redis before it is decided in memory.
    pub redis_timeout: Duration,
    /// Most buckets the in-memory store holds.
    pub memory_capacity: usize,
}

impl RateLimiterConfig {
    pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);
    pub const DEFAULT_MEMORY_CAPACITY: usize = 100_000;

    pub fn new(limits: Limits, key_prefix: impl Into<String>) -> Self {
        Self {
            limits,
            key_prefix: key_prefix.into(),
            redis_timeout: Self::DEFAULT_REDIS_TIMEOUT,
            memory_capacity: Self::DEFAULT_MEMORY_CAPACITY,
        }
    }
}

/// Which store decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The shared buckets in Redis.
    Redis,
    /// Denied from this replica's copy of the shared buckets, without asking Redis (see
    /// the module docs: the copy can only overestimate the tokens).
    Cached,
    /// This replica's memory, because Redis is unreachable.
    Fallback,
    /// This replica's memory, because no Redis is configured.
    Memory,
    /// Nothing was charged (a request with no valid events).
    Free,
}

/// The answer for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub allowed: bool,
    /// Whole seconds until enough tokens: 0 when allowed, at least 1 when denied.
    pub retry_after_secs: u64,
    /// `RateLimit-Policy` and `RateLimit` field values of the bucket closest to exhaustion
    /// (contract section 12); `None` when nothing was charged.
    pub rate_limit: Option<(String, String)>,
    /// The scopes whose bucket was short (empty when allowed), each once.
    pub denied_scopes: Vec<Scope>,
    /// Denied because the request costs more than a bucket can ever hold: it can never
    /// pass as it is, and the client should split it.
    pub exceeds_burst: bool,
    pub source: Source,
}

impl Verdict {
    fn free() -> Self {
        Self {
            allowed: true,
            retry_after_secs: 0,
            rate_limit: None,
            denied_scopes: Vec::new(),
            exceeds_burst: false,
            source: Source::Free,
        }
    }
}

/// The rate limiter: cheap to clone, safe to share; every clone charges the same buckets.
#[derive(Clone)]
pub struct RateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    config: RateLimiterConfig,
    redis: Option<ScriptBuckets>,
    health: Arc<RedisHealth>,
    memory: MemoryBuckets,
    /// The last bucket states Redis answered (Redis's clock), dropped when Redis may have
    /// lost its own.
    shadow: Arc<MemoryBuckets>,
    /// Redis's clock minus [`Inner::clock`], as of the last answer; `i64::MIN` when unknown.
    redis_offset_ms: AtomicI64,
    /// A cost above a burst means a misconfiguration (burst below `EVENT_MAX_BATCH`); it is
    /// logged once.
    warned_exceeds_burst: AtomicBool,
    /// The prober and fred's connection task, stopped when the last handle goes.
    tasks: Vec<AbortHandle>,
    /// The in-memory clock: wall time at construction plus tokio's monotonic time since,
    /// so a wall clock that steps does not refill or drain the buckets (and tests can pause
    /// it).
    clock: MonotonicClock,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RateLimiter {
    /// Per-replica limits only (`REDIS_URL` unset).
    pub fn in_memory(config: RateLimiterConfig) -> Self {
        tracing::info!("REDIS_URL is unset: rate limits are kept per replica");
        let shadow = Arc::new(MemoryBuckets::new(1));
        Self::build(
            config,
            None,
            Arc::new(RedisHealth::new(false)),
            shadow,
            Vec::new(),
        )
    }

    /// Limits shared through Redis at `redis_url`. Waits up to `connect_within` for a first
    /// answer; a Redis that is not there yet is not an error: the limiter starts in memory
    /// and switches to Redis when it answers. Only a malformed URL fails.
    pub async fn connect(
        config: RateLimiterConfig,
        redis_url: &str,
        connect_within: Duration,
    ) -> Result<Self, RedisError> {
        let redis = ScriptBuckets::new(redis_url, config.redis_timeout)?;
        let connection = redis.start_connection();
        let up = redis.wait_connected(connect_within).await && redis.probe().await.is_ok();
        let health = Arc::new(RedisHealth::new(true));
        if !up {
            health.mark_down(&"no answer at start-up");
        }
        let shadow = Arc::new(MemoryBuckets::new(config.memory_capacity));
        let prober = tokio::spawn(probe_while_down(
            health.clone(),
            redis.clone(),
            shadow.clone(),
        ));
        let tasks = vec![connection, prober.abort_handle()];
        Ok(Self::build(config, Some(redis), health, shadow, tasks))
    }

    fn build(
        config: RateLimiterConfig,
        redis: Option<ScriptBuckets>,
        health: Arc<RedisHealth>,
        shadow: Arc<MemoryBuckets>,
        tasks: Vec<AbortHandle>,
    ) -> Self {
        let memory = MemoryBuckets::new(config.memory_capacity);
        Self {
            inner: Arc::new(Inner {
                config,
                redis,
                health,
                memory,
                shadow,
                redis_offset_ms: AtomicI64::new(i64::MIN),
                warned_exceeds_burst: AtomicBool::new(false),
                tasks,
                clock: MonotonicClock::new(),
            }),
        }
    }

    /// Charges one request: `total` tokens to the user's and the IP's buckets, and
    /// `devices[i].1` to device `devices[i].0`'s bucket (repeated devices are summed; a
    /// device with 0 events is not charged). `total` counts valid events only: malformed
    /// ones cost nothing (contract section 12). Counts the denial per scope in
    /// `sidecar_rate_limited_total`.
    pub async fn check(
        &self,
        user: &str,
        ip: Option<IpAddr>,
        devices: &[(&str, u32)],
        total: u32,
    ) -> Verdict {
        let plan = self.plan(user, ip, devices, total);
        if plan.charges.is_empty() {
            return Verdict::free();
        }
        let inner = &self.inner;
        let (outcome, source) = match &inner.redis {
            None => (self.take_in_memory(&plan), Source::Memory),
            Some(redis) if inner.health.is_up() => match self.known_denial(&plan) {
                Some(outcome) => (outcome, Source::Cached),
                None => match redis.take_all(&plan.keys, &plan.charges, None).await {
                    Ok(answer) => {
                        self.learn(&plan, &answer);
                        (answer.outcome, Source::Redis)
                    }
                    Err(err) => {
                        inner.health.mark_down(&err);
                        (self.take_in_memory(&plan), Source::Fallback)
                    }
                },
            },
            Some(_) => (self.take_in_memory(&plan), Source::Fallback),
        };
        if source == Source::Fallback {
            metrics::counter!(RATE_LIMIT_FALLBACK_TOTAL).increment(1);
        }
        self.verdict(&plan, &outcome, source)
    }

    /// Whether the shared buckets are in use right now (false while falling back).
    pub fn redis_up(&self) -> bool {
        self.inner.redis.is_some() && self.inner.health.is_up()
    }

    /// Closes the Redis connection (at shutdown).
    pub async fn close(&self) {
        if let Some(redis) = &self.inner.redis {
            redis.close().await;
        }
    }

    fn plan<'a>(
        &'a self,
        user: &str,
        ip: Option<IpAddr>,
        devices: &[(&str, u32)],
        total: u32,
    ) -> Plan<'a> {
        let config = &self.inner.config;
        let prefix = config.key_prefix.as_str();
        let mut plan = Plan::default();
        let mut add = |scope: Scope, value: &str, cost: u32| {
            if cost > 0 {
                plan.keys.push(keys::bucket_key(prefix, scope, value));
                plan.charges.push(Charge {
                    scope,
                    limit: config.limits.of(scope),
                    state: None,
                    cost: f64::from(cost),
                });
            }
        };
        add(Scope::User, user, total);
        let mut per_device: Vec<(&str, u32)> = devices.to_vec();
        per_device.sort_unstable_by(|a, b| a.0.cmp(b.0));
        per_device.dedup_by(|later, first| {
            let same = later.0 == first.0;
            if same {
                first.1 = first.1.saturating_add(later.1);
            }
            same
        });
        for (device, n) in per_device {
            add(Scope::Device, device, n);
        }
        add(Scope::Ip, &keys::ip_bucket_value(ip), total);
        plan
    }

    /// The shadow's answer at Redis's estimated now, when it is a denial (which Redis
    /// would give too); `None` when Redis must be asked.
    fn known_denial(&self, plan: &Plan<'_>) -> Option<TakeAll> {
        let offset = self.inner.redis_offset_ms.load(Ordering::Relaxed);
        if offset == i64::MIN {
            return None;
        }
        let redis_now = self.inner.clock.now_ms().saturating_add(offset);
        let outcome = self.inner.shadow.peek(&plan.keys, &plan.charges, redis_now);
        (!outcome.allowed).then_some(outcome)
    }

    /// Copies what Redis answered into the shadow.
    fn learn(&self, plan: &Plan<'_>, answer: &ScriptAnswer) {
        let inner = &self.inner;
        if answer.reloaded {
            // Redis restarted or was flushed: what the shadow holds may be stricter than
            // Redis's own buckets now.
            inner.shadow.clear();
        }
        let offset = answer.now_ms.saturating_sub(inner.clock.now_ms());
        inner.redis_offset_ms.store(offset, Ordering::Relaxed);
        inner.shadow.put(
            &plan.keys,
            &plan.charges,
            &answer.outcome.states,
            answer.now_ms,
        );
    }

    fn take_in_memory(&self, plan: &Plan<'_>) -> TakeAll {
        self.inner
            .memory
            .take_all(&plan.keys, &plan.charges, self.inner.clock.now_ms())
    }

    fn verdict(&self, plan: &Plan<'_>, outcome: &TakeAll, source: Source) -> Verdict {
        let reported = outcome.reported_decision();
        let exceeds_burst = !outcome.allowed
            && outcome
                .decisions
                .iter()
                .any(|d| !d.allowed && d.exceeds_burst);
        if exceeds_burst
            && !self
                .inner
                .warned_exceeds_burst
                .swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                "a request costs more than a bucket's burst and can never pass: \
                 a RATE_LIMIT_* burst is below EVENT_MAX_BATCH"
            );
        }
        let mut denied_scopes: Vec<Scope> = Vec::new();
        if !outcome.allowed {
            for (charge, decision) in plan.charges.iter().zip(&outcome.decisions) {
                if !decision.allowed && !denied_scopes.contains(&charge.scope) {
                    denied_scopes.push(charge.scope);
                }
            }
            for scope in &denied_scopes {
                metrics::counter!(RATE_LIMITED_TOTAL, "scope" => scope.as_str()).increment(1);
            }
        }
        Verdict {
            allowed: outcome.allowed,
            retry_after_secs: reported
                .map(|d| d.retry_after_secs)
                .filter(|_| !outcome.allowed)
                .unwrap_or(0),
            rate_limit: outcome.header_fields(&plan.charges),
            denied_scopes,
            exceeds_burst,
            source,
        }
    }
}

/// The buckets one request charges, in order: user, devices (by name), IP.
#[derive(Default)]
struct Plan<'a> {
    keys: Vec<String>,
    charges: Vec<Charge<'a>>,
}

/// Probes Redis with backoff whenever it is marked down, until it answers. Redis may have
/// lost its buckets meanwhile, so the shadow is dropped before it is trusted again.
async fn probe_while_down(
    health: Arc<RedisHealth>,
    redis: ScriptBuckets,
    shadow: Arc<MemoryBuckets>,
) {
    let mut backoff = ProbeBackoff::default();
    loop {
        health.wait_down().await;
        while !health.is_up() {
            tokio::time::sleep(backoff.next_delay()).await;
            if redis.probe().await.is_ok() {
                shadow.clear();
                health.mark_up();
            }
        }
        backoff.reset();
    }
}

/// Unix milliseconds that only move forward, at tokio's pace.
struct MonotonicClock {
    start_unix_ms: i64,
    start: tokio::time::Instant,
}

impl MonotonicClock {
    fn new() -> Self {
        let start_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self {
            start_unix_ms,
            start: tokio::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> i64 {
        let elapsed = i64::try_from(self.start.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.start_unix_ms.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests;
