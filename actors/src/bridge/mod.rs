//! The bridge to .NET (contract section 9): one actor owning the HTTP client and the
//! circuit breaker, and a typed handle the rest of the service calls.
//!
//! - [`request`]: what a caller asks ([`UpstreamRequest`], with its [`Operation`] and the
//!   [`ForwardHeaders`]) and gets ([`UpstreamResponse`] or [`UpstreamError`]).
//! - [`exchange`]: one HTTP exchange and its classification (answer, 5xx, connect failure,
//!   timeout, cut connection, off-contract), `Retry-After` parsing.
//! - [`actor`]: the `DotnetBridge` actor: breaker admission and outcomes, metrics; the
//!   exchanges themselves run concurrently in tasks of their own.
//! - [`handle`]: [`BridgeHandle::call`], with the retry rule of contract section 2.
//!
//! ```ignore
//! let (spec, bridge) = bridge::child_spec(BridgeConfig { .. });
//! let (tree, health) = Supervisor::builder().child(spec).start().await?;
//! let answer = bridge
//!     .call(UpstreamRequest::get(Operation::Config, "/config").forward(forward))
//!     .await?;
//! ```
//!
//! Why an actor and not an `Arc<Mutex<CircuitBreaker>>`: the breaker's decisions must see
//! every admission and outcome in one order, its state must survive nothing but the actor
//! (a restart starts closed, with a fresh connection pool), and the supervisor must be able
//! to restart it like any other child. The cost is one mailbox round trip and one cast per
//! attempt, a few microseconds; the exchange itself never runs inside the actor, so calls
//! are never serialized (see `BENCHMARKS.md`).

pub mod actor;
pub mod exchange;
pub mod handle;
pub mod request;

use std::time::Duration;

pub use actor::{BridgeMsg, DotnetBridge};
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
    let slot = Slot::new();
    let handle = BridgeHandle::new(slot.clone(), &config.base_url, config.timeout)?;
    Ok((
        ChildSpec::actor(ACTOR_NAME, DotnetBridge, config, slot),
        handle,
    ))
}
