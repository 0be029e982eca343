//! The bridge to .NET (contract section 9): one actor owning the HTTP client and the
//! circuit breaker, and a typed handle the rest of the service calls.
//!
//! - [`request`]: what a caller asks ([`UpstreamRequest`], with its [`Operation`] and the
//!   [`ForwardHeaders`]) and gets ([`UpstreamResponse`] or [`UpstreamError`]).
//! - [`exchange`]: one HTTP exchange and its classification (answer, 5xx, connect failure,
//!   timeout, cut connection, off-contract), `Retry-After` parsing.
//! - [`actor`]: the `DotnetBridge` actor, which owns the client and the breaker (the
//!   [`actor::BridgeCore`] of its incarnation) and keeps the breaker's gauge current;
//!   counts every attempt.
//! - [`handle`]: [`BridgeHandle::call`], with the retry rule of contract section 2.
//!
//! ```ignore
//! let (spec, bridge) = bridge::child_spec(BridgeConfig { .. })?;
//! let (tree, health) = Supervisor::builder().child(spec).start().await?;
//! let answer = bridge
//!     .call(UpstreamRequest::get(Operation::Config, "/config").forward(forward))
//!     .await?;
//! ```
//!
//! Why the calls do not go through the actor's mailbox: a first version sent every attempt
//! to the actor (admission), which spawned the exchange and got the outcome back as a
//! message. It was correct, but every call in the process then queued on one mailbox and
//! hopped across four tasks instead of one. Measured side by side (BENCHMARKS.md) the
//! direct version adds about 10 µs less per call at p50 with the same throughput; more to
//! the point, it has no single queue that becomes the ceiling at high rates. Now the actor
//! owns the lifecycle (it builds the pool and the breaker, publishes them, rebuilds both
//! when restarted, ticks the gauge) and the breaker sits behind a mutex held only to admit
//! or record, never across an `.await`; the exchange runs in the caller's task. The breaker
//! is still one per upstream and sees every admission and outcome; an attempt whose caller
//! hangs up mid-exchange goes unrecorded, which the breaker treats as a timed-out probe when
//! it matters (half-open).

pub mod actor;
pub mod exchange;
pub mod handle;
pub mod request;

use std::time::Duration;

pub use actor::{BridgeArgs, BridgeCore, BridgeMsg, CoreCell, DotnetBridge};
pub use handle::BridgeHandle;
pub use request::{
    ForwardHeaders, Operation, RetryPolicy, UnavailableCause, UpstreamError, UpstreamRequest,
    UpstreamResponse,
};
/// The HTTP method of an [`UpstreamRequest`] (reqwest's, re-exported).
pub use reqwest::Method;

use crate::breaker::BreakerConfig;
use crate::supervisor::{ChildSpec, Slot};

/// The supervised child's name (logs, health, `sidecar_actor_restarts_total{actor}`).
pub const ACTOR_NAME: &str = "dotnet_bridge";

/// `DOTNET_BASE_URL` does not parse as a URL.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the .NET base URL does not parse: {0}")]
pub struct InvalidBaseUrl(pub String);

/// How the bridge starts (and restarts).
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// `DOTNET_BASE_URL`, without a trailing slash.
    pub base_url: String,
    /// `DOTNET_TIMEOUT_SECONDS`: bounds each exchange, connecting included.
    pub timeout: Duration,
    /// Thresholds of the breaker (`CIRCUIT_*`, `DOTNET_SLOW_CALL_SECONDS`).
    pub breaker: BreakerConfig,
}

/// The supervisor's spec for the bridge, and the handle callers use. Fails when
/// `base_url` is not an absolute URL.
pub fn child_spec(config: BridgeConfig) -> Result<(ChildSpec, BridgeHandle), InvalidBaseUrl> {
    let cell = CoreCell::default();
    let handle = BridgeHandle::new(cell.clone(), &config.base_url)?;
    let args = BridgeArgs { config, cell };
    Ok((
        ChildSpec::actor(ACTOR_NAME, DotnetBridge, args, Slot::new()),
        handle,
    ))
}
