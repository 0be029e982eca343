//! Where the config comes from: [`ConfigSource`], implemented over the .NET bridge
//! ([`BridgeConfigSource`]) and by fakes in the tests.

use std::time::Duration;

use serde_json::Value;

use crate::bridge::{BridgeHandle, Operation, UpstreamError, UpstreamRequest};

/// Fetches the current `/config` from .NET.
///
/// Implementations bound their own time (the bridge's call timeout); the cache adds a
/// backstop of its own so that a hung fetch can never block later refreshes.
#[async_trait::async_trait]
pub trait ConfigSource: Send + Sync + 'static {
    /// The config object as .NET sent it (the cache checks its shape).
    async fn fetch(&self) -> Result<Value, FetchError>;
}

/// Why a fetch brought no good config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// .NET could not be asked or did not answer: down, timed out, a 5xx, or the circuit is
    /// open. `retry_after` is the bridge's hint (.NET's `Retry-After`, or the open interval
    /// left), when it has one.
    #[error(".NET is unavailable")]
    Unavailable { retry_after: Option<Duration> },
    /// .NET answered, but not with a config of the contract's shape.
    #[error(".NET answered something that is not a config: {0}")]
    Invalid(String),
}

impl FetchError {
    /// The upstream's hint of when to ask again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Unavailable { retry_after } => *retry_after,
            FetchError::Invalid(_) => None,
        }
    }
}

/// [`ConfigSource`] over the .NET bridge: `GET /config` (operation `config`), through the
/// breaker, retried as an idempotent read where the bridge allows it.
#[derive(Clone)]
pub struct BridgeConfigSource {
    bridge: BridgeHandle,
}

impl BridgeConfigSource {
    pub fn new(bridge: BridgeHandle) -> Self {
        BridgeConfigSource { bridge }
    }
}

#[async_trait::async_trait]
impl ConfigSource for BridgeConfigSource {
    async fn fetch(&self) -> Result<Value, FetchError> {
        // A refresh serves every client at once, so it is nobody's request: no client ids
        // are forwarded and .NET sees a trace of its own.
        let request = UpstreamRequest::get(Operation::Config, "/config");
        match self.bridge.call(request).await {
            Ok(response) if response.status == 200 => Ok(response.body),
            Ok(response) => Err(FetchError::Invalid(format!(
                ".NET answered {} to GET /config",
                response.status
            ))),
            Err(UpstreamError::Unavailable { retry_after, .. }) => Err(FetchError::Unavailable {
                retry_after: Some(Duration::from_secs(retry_after)),
            }),
            Err(UpstreamError::Timeout) => Err(FetchError::Unavailable { retry_after: None }),
            Err(UpstreamError::BadGateway(detail)) => Err(FetchError::Invalid(detail)),
        }
    }
}
