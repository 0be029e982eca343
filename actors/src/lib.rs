//! The sidecar's actors and the pure logic they are built on.
//!
//! Map of the crate:
//! - [`supervisor`]: an OTP-style one-for-one supervisor on ractor (restart with backoff,
//!   restart intensity, escalation) and the [`supervisor::Slot`] handles that survive restarts.
//! - [`canonical`]: RFC 8785 canonical JSON and the contract's `eventHash`.
//! - [`merge`]: preferences merged under server policy (defaults < user < enforced).
//! - [`token_bucket`]: token-bucket arithmetic shared by the Redis script and the in-memory
//!   fallback.
//! - [`metric_names`]: every exported metric, described in one place, with its zero series.
//! - [`events`]: the event path: validation, dedupe shards, outbox relay, aggregator, janitor.
//! - [`breaker`]: the circuit-breaker state machine used by the .NET bridge.
//! - [`rate_limiter`]: the `/events` token buckets, shared in Redis (one Lua script) with an
//!   in-memory fallback; a cloneable handle called from the request task.
//! - [`backpressure`]: the controller actor that watches JetStream consumer lag and the
//!   outbox backlog, and the signal `/events` reads without a round trip.
//! - [`bridge`]: the `DotnetBridge` actor (HTTP client + breaker + retries) and its
//!   [`bridge::BridgeHandle`], through which every call to .NET goes.
//! - [`single_flight`]: identical concurrent requests sharing one execution (refresh
//!   coalescing, JWKS and introspection fetches).
//! - [`config_cache`]: the `ConfigCache` actor (TTL, single-flight refresh, stale-if-error,
//!   the copy kept in the durable store) and its typed handle.
//!
//! Pure logic is plain functions and small structs with unit tests beside them; actors own
//! I/O and state, and each exposes a small cloneable typed handle.

pub mod backpressure;
pub mod breaker;
pub mod bridge;
pub mod canonical;
pub mod config_cache;
pub mod events;
pub mod merge;
pub mod metric_names;
pub mod rate_limiter;
pub mod single_flight;
pub mod supervisor;
pub mod token_bucket;
