//! [`BridgeHandle`]: what the rest of the service holds to call .NET. Cloneable, survives
//! the bridge's restarts (it reads the current incarnation's core at every call), and
//! retries where the contract allows it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backoff::ExponentialBackoff;
use reqwest::header::HeaderValue;

use super::actor::CoreCell;
use super::exchange::{Attempt, Prepared};
use super::request::{
    whole_seconds, UnavailableCause, UpstreamError, UpstreamRequest, UpstreamResponse,
};

/// Attempts per call at most, the first included.
const MAX_ATTEMPTS: u32 = 3;

/// A typed handle onto the `DotnetBridge` actor.
#[derive(Clone)]
pub struct BridgeHandle {
    cell: CoreCell,
    base_url: Arc<str>,
    /// `base_url` parsed once.
    base: reqwest::Url,
    user_agent: HeaderValue,
    backoff: BackoffSettings,
}

/// The pause between attempts (the `backoff` crate's exponential backoff with jitter).
#[derive(Clone, Copy, Debug)]
struct BackoffSettings {
    initial: Duration,
    max: Duration,
    max_elapsed: Duration,
}

impl BridgeHandle {
    /// `base_url` must be an absolute `http(s)` URL (the settings check it).
    pub(super) fn new(cell: CoreCell, base_url: &str) -> Result<Self, super::InvalidBaseUrl> {
        let base =
            reqwest::Url::parse(base_url).map_err(|err| super::InvalidBaseUrl(err.to_string()))?;
        Ok(Self {
            cell,
            base,
            base_url: Arc::from(base_url.trim_end_matches('/')),
            user_agent: HeaderValue::from_static(concat!("sidecar/", env!("CARGO_PKG_VERSION"))),
            backoff: BackoffSettings {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
                max_elapsed: Duration::from_secs(2),
            },
        })
    }

    /// `DOTNET_BASE_URL`, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Calls .NET: one attempt, and more only where contract section 2 allows (see
    /// [`super::Operation::retry_policy`]), with exponential backoff, at most three in all.
    ///
    /// `Ok` is any answer below 500 with a JSON (or empty) body, 4xx included;
    /// `Err` is a 5xx, a timeout, a connection failure, an open circuit or an answer that
    /// is not JSON.
    pub async fn call(&self, request: UpstreamRequest) -> Result<UpstreamResponse, UpstreamError> {
        let path = request.path.clone();
        let prepared = Prepared::new(&self.base, &self.user_agent, request)
            .ok_or_else(|| UpstreamError::BadGateway(format!("{path:?} does not make a URL")))?;
        let prepared = Arc::new(prepared);
        let policy = prepared.retry;
        let attempts = AtomicU32::new(0);
        let backoff = ExponentialBackoff {
            initial_interval: self.backoff.initial,
            max_interval: self.backoff.max,
            max_elapsed_time: Some(self.backoff.max_elapsed),
            ..ExponentialBackoff::default()
        };
        backoff::future::retry(backoff, || {
            let prepared = Arc::clone(&prepared);
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            async move {
                match self.attempt(prepared).await {
                    Ok(Attempt::Answer(resp)) => Ok(resp),
                    Ok(attempt) if n < MAX_ATTEMPTS && attempt.retryable(policy) => {
                        Err(backoff::Error::transient(attempt_error(attempt)))
                    }
                    Ok(attempt) => Err(backoff::Error::permanent(attempt_error(attempt))),
                    Err(err) => Err(backoff::Error::permanent(err)),
                }
            }
        })
        .await
    }

    /// One attempt on the current incarnation's core.
    async fn attempt(&self, prepared: Arc<Prepared>) -> Result<Attempt, UpstreamError> {
        let Some(core) = self.cell.get() else {
            return Err(UpstreamError::Unavailable {
                retry_after: 1,
                cause: UnavailableCause::BridgeRestarting,
            });
        };
        core.attempt(&prepared)
            .await
            .map_err(|rejected| UpstreamError::Unavailable {
                retry_after: whole_seconds(rejected.retry_after),
                cause: UnavailableCause::CircuitOpen,
            })
    }
}

/// What a failed attempt means to the caller (contract sections 9 and 12).
fn attempt_error(attempt: Attempt) -> UpstreamError {
    match attempt {
        Attempt::ServerError {
            status,
            retry_after,
        } => UpstreamError::Unavailable {
            retry_after: retry_after.unwrap_or(1).max(1),
            cause: UnavailableCause::ServerError(status),
        },
        Attempt::Connect => UpstreamError::Unavailable {
            retry_after: 1,
            cause: UnavailableCause::Connect,
        },
        Attempt::Interrupted => UpstreamError::Unavailable {
            retry_after: 1,
            cause: UnavailableCause::Interrupted,
        },
        Attempt::Timeout => UpstreamError::Timeout,
        Attempt::OffContract(detail) => UpstreamError::BadGateway(detail),
        // Not reached: answers are `Ok`; kept total rather than panicking.
        Attempt::Answer(resp) => {
            UpstreamError::BadGateway(format!("unexpected status {}", resp.status))
        }
    }
}
