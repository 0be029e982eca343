//! Where the config comes from: [`ConfigSource`], implemented over the .NET bridge by the
//! application and by fakes in the tests.

use std::time::Duration;

use serde_json::Value;

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
