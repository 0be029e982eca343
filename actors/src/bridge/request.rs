//! What a caller asks of .NET and what it gets back: [`UpstreamRequest`],
//! [`UpstreamResponse`] and [`UpstreamError`]. Plain data; no I/O here.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::Value;

/// Which contract call this is: the `operation` label of the upstream metrics, and what
/// decides whether a failed attempt may be retried (contract section 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Login,
    MfaVerify,
    Refresh,
    Logout,
    Introspect,
    Jwks,
    Config,
    PreferencesGet,
    PreferencesPut,
}

impl Operation {
    /// The metric label (one of [`crate::metric_names::UPSTREAM_OPERATIONS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Login => "login",
            Operation::MfaVerify => "mfa_verify",
            Operation::Refresh => "refresh",
            Operation::Logout => "logout",
            Operation::Introspect => "introspect",
            Operation::Jwks => "jwks",
            Operation::Config => "config",
            Operation::PreferencesGet => "preferences_get",
            Operation::PreferencesPut => "preferences_put",
        }
    }

    /// Reads with no effect at .NET (introspection, JWKS, GETs) may be retried after a
    /// connection failure or a 5xx. Everything else changes state at .NET (a refresh
    /// retried after .NET acted is a replay that revokes the session), so it is retried only
    /// when the connection failed before the request was written.
    pub fn retry_policy(self, method: &Method) -> RetryPolicy {
        match self {
            Operation::Introspect | Operation::Jwks => RetryPolicy::Idempotent,
            _ if *method == Method::GET || *method == Method::HEAD => RetryPolicy::Idempotent,
            _ => RetryPolicy::UnsentOnly,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a failed attempt may be made again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryPolicy {
    /// On a connection failure (before or after sending), a cut response, or a 5xx.
    Idempotent,
    /// Only when the connection failed before the request was written.
    UnsentOnly,
}

/// The client facts .NET should see (contract section 9), taken from the incoming request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardHeaders {
    /// `X-Request-Id`: the id of the client's request, so both logs share it.
    pub request_id: Option<String>,
    /// `traceparent` for the outgoing call: the client's trace id, a new span id.
    pub traceparent: Option<String>,
    /// `X-Forwarded-For`: the chain received plus our peer.
    pub forwarded_for: Option<String>,
    /// `User-Agent` of the client (the bridge's own when absent).
    pub user_agent: Option<String>,
}

/// One call to .NET, as a route (or the identity layer) describes it.
#[derive(Clone)]
pub struct UpstreamRequest {
    /// The metric label and the retry rule.
    pub operation: Operation,
    pub method: Method,
    /// A path under `DOTNET_BASE_URL` (`/auth/login`), or an absolute `http(s)://` URL
    /// (`JWT_JWKS_URL`).
    pub path: String,
    /// A JSON body, sent with `Content-Type: application/json`.
    pub body: Option<Value>,
    /// The whole `Authorization` value (`Bearer <token>`), where the route had one.
    /// Never logged: `Debug` hides it.
    pub authorization: Option<String>,
    pub forward: ForwardHeaders,
}

impl UpstreamRequest {
    pub fn new(operation: Operation, method: Method, path: impl Into<String>) -> Self {
        Self {
            operation,
            method,
            path: path.into(),
            body: None,
            authorization: None,
            forward: ForwardHeaders::default(),
        }
    }

    pub fn get(operation: Operation, path: impl Into<String>) -> Self {
        Self::new(operation, Method::GET, path)
    }

    pub fn post(operation: Operation, path: impl Into<String>, body: Value) -> Self {
        Self::new(operation, Method::POST, path).json(body)
    }

    pub fn put(operation: Operation, path: impl Into<String>, body: Value) -> Self {
        Self::new(operation, Method::PUT, path).json(body)
    }

    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn bearer(mut self, token: &str) -> Self {
        self.authorization = Some(format!("Bearer {token}"));
        self
    }

    pub fn forward(mut self, forward: ForwardHeaders) -> Self {
        self.forward = forward;
        self
    }
}

impl fmt::Debug for UpstreamRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies carry passwords and tokens; the Authorization header a token.
        f.debug_struct("UpstreamRequest")
            .field("operation", &self.operation)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("has_body", &self.body.is_some())
            .field("has_authorization", &self.authorization.is_some())
            .field("forward", &self.forward)
            .finish()
    }
}

/// .NET's answer with a status below 500 and a JSON (or empty) body. A 4xx is an answer
/// too: the caller decides what it means (pass a problem through, read a 404 as empty).
#[derive(Clone)]
pub struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderMap,
    /// The parsed body; `Value::Null` when it was empty (a 204).
    pub body: Value,
}

impl UpstreamResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn is_client_error(&self) -> bool {
        (400..500).contains(&self.status)
    }
}

impl fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The body may hold tokens.
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why a call got no usable answer. Each maps to one contract answer (section 9):
/// [`UpstreamError::Unavailable`] and [`UpstreamError::Timeout`] to 503
/// `upstream_unavailable` with `Retry-After`, [`UpstreamError::BadGateway`] to 502
/// `upstream_error`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// .NET is unavailable: it answered 5xx, could not be reached, or the circuit is open.
    #[error(".NET is unavailable ({cause})")]
    Unavailable {
        /// Whole seconds, at least 1: .NET's own `Retry-After` on a 5xx, the open
        /// interval left when the circuit is open, else 1.
        retry_after: u64,
        cause: UnavailableCause,
    },
    /// .NET did not answer within `DOTNET_TIMEOUT_SECONDS`. It may have acted.
    #[error(".NET did not answer in time")]
    Timeout,
    /// .NET answered something that is not the contract (the text says what, never a
    /// value from the body).
    #[error(".NET answered off-contract: {0}")]
    BadGateway(String),
}

impl UpstreamError {
    /// The `Retry-After` the client should get (whole seconds, at least 1), if any.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            UpstreamError::Unavailable { retry_after, .. } => Some((*retry_after).max(1)),
            UpstreamError::Timeout => Some(1),
            UpstreamError::BadGateway(_) => None,
        }
    }
}

/// Why .NET counts as unavailable, for the problem's detail and the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnavailableCause {
    /// The breaker is open (or half-open with every probe out): nothing was sent.
    CircuitOpen,
    /// .NET answered this 5xx status.
    ServerError(u16),
    /// The connection could not be made (refused, reset, DNS).
    Connect,
    /// The connection broke after the request may have been sent.
    Interrupted,
    /// The bridge itself is restarting.
    BridgeRestarting,
}

impl fmt::Display for UnavailableCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnavailableCause::CircuitOpen => f.write_str("circuit open"),
            UnavailableCause::ServerError(status) => write!(f, "status {status}"),
            UnavailableCause::Connect => f.write_str("connection failed"),
            UnavailableCause::Interrupted => f.write_str("connection interrupted"),
            UnavailableCause::BridgeRestarting => f.write_str("bridge restarting"),
        }
    }
}

/// Whole seconds for a `Retry-After`: rounded up, at least 1 (contract section 12).
pub fn whole_seconds(d: Duration) -> u64 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_follows_the_contract() {
        use Operation::*;
        for op in [Login, MfaVerify, Refresh, Logout, PreferencesPut] {
            assert_eq!(
                op.retry_policy(&Method::POST),
                RetryPolicy::UnsentOnly,
                "{op}"
            );
        }
        assert_eq!(
            PreferencesPut.retry_policy(&Method::PUT),
            RetryPolicy::UnsentOnly
        );
        assert_eq!(
            Introspect.retry_policy(&Method::POST),
            RetryPolicy::Idempotent
        );
        for op in [Jwks, Config, PreferencesGet] {
            assert_eq!(op.retry_policy(&Method::GET), RetryPolicy::Idempotent);
        }
    }

    #[test]
    fn whole_seconds_round_up_to_at_least_one() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let req = UpstreamRequest::post(
            Operation::Login,
            "/auth/login",
            serde_json::json!({"password": "hunter2"}),
        )
        .bearer("tok.en.x");
        let shown = format!("{req:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok.en.x"),
            "{shown}"
        );
    }
}
