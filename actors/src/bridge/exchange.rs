//! One HTTP exchange with .NET, and what it amounts to: [`Prepared`] is a request built
//! once (URL, headers, serialized body) and sent as many times as the retry rule allows;
//! [`exchange`] sends it once and classifies the result as an [`Attempt`].

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use serde_json::Value;

use super::request::{Operation, RetryPolicy, UpstreamRequest, UpstreamResponse};
use crate::breaker::Outcome;

/// Largest body read from .NET; a bigger one is not the contract.
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A request ready to send (and to resend on a permitted retry).
pub struct Prepared {
    pub operation: Operation,
    pub retry: RetryPolicy,
    pub method: Method,
    /// Parsed once: reqwest would otherwise parse (and IDNA-process) a string per send.
    pub url: reqwest::Url,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
}

impl Prepared {
    /// Builds the URL (`path` under `base_url`, or `path` itself when absolute) and the
    /// headers: the forwarded ones, `Authorization`, `Accept`, and `Content-Type` for a body.
    /// `None` when the URL does not parse.
    pub fn new(
        base_url: &reqwest::Url,
        default_user_agent: &HeaderValue,
        req: UpstreamRequest,
    ) -> Option<Self> {
        let url = join(base_url, &req.path)?;
        let mut headers = HeaderMap::with_capacity(8);
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, application/problem+json"),
        );
        let mut put = |name: &'static str, value: Option<&str>| {
            if let Some(v) = value.and_then(|v| HeaderValue::from_str(v).ok()) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        put("x-request-id", req.forward.request_id.as_deref());
        put("traceparent", req.forward.traceparent.as_deref());
        put("x-forwarded-for", req.forward.forwarded_for.as_deref());
        put("user-agent", req.forward.user_agent.as_deref());
        if let Some(auth) = req.authorization.as_deref() {
            if let Ok(mut v) = HeaderValue::from_str(auth) {
                v.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, v);
            }
        }
        if !headers.contains_key(reqwest::header::USER_AGENT) {
            headers.insert(reqwest::header::USER_AGENT, default_user_agent.clone());
        }
        let body = req.body.map(|v| {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            // Serializing a `Value` cannot fail (its map keys are strings).
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        });
        Some(Prepared {
            operation: req.operation,
            retry: req.operation.retry_policy(&req.method),
            method: req.method,
            url,
            headers,
            body,
        })
    }
}

/// `path` (with an optional `?query`) under `base`'s path, or `path` itself when it is an
/// absolute `http(s)://` URL.
pub fn join(base: &reqwest::Url, path: &str) -> Option<reqwest::Url> {
    if path.starts_with("http://") || path.starts_with("https://") {
        return reqwest::Url::parse(path).ok();
    }
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut url = base.clone();
    let prefix = base.path().trim_end_matches('/');
    url.set_path(&format!("{prefix}/{}", path.trim_start_matches('/')));
    url.set_query(query);
    Some(url)
}

/// How one exchange ended.
#[derive(Debug)]
pub enum Attempt {
    /// A status below 300, or a 4xx, with a JSON (or empty) body.
    Answer(UpstreamResponse),
    /// A 5xx; its `Retry-After` in whole seconds, when it sent one.
    ServerError {
        status: u16,
        retry_after: Option<u64>,
    },
    /// The connection failed before the request was written: safe to retry anything.
    Connect,
    /// No answer within the call timeout. .NET may have acted.
    Timeout,
    /// The connection broke after the request may have been written.
    Interrupted,
    /// An answer that is not the contract (not JSON, too big, a redirect).
    OffContract(String),
}

impl Attempt {
    /// What the breaker makes of it: timeouts, connection errors and 5xx are failures;
    /// any answer, even an off-contract one, shows that .NET is up (contract section 9).
    pub fn breaker_outcome(&self) -> Outcome {
        match self {
            Attempt::Answer(_) | Attempt::OffContract(_) => Outcome::Success,
            Attempt::ServerError { .. }
            | Attempt::Connect
            | Attempt::Timeout
            | Attempt::Interrupted => Outcome::Failure,
        }
    }

    /// The `outcome` label of `sidecar_upstream_requests_total`.
    pub fn metric_outcome(&self) -> &'static str {
        match self {
            Attempt::Answer(r) if r.is_client_error() => "client_error",
            Attempt::Answer(_) => "success",
            Attempt::Timeout => "timeout",
            Attempt::ServerError { .. }
            | Attempt::Connect
            | Attempt::Interrupted
            | Attempt::OffContract(_) => "failure",
        }
    }

    /// Whether another attempt may be made under `policy` (contract section 2).
    pub fn retryable(&self, policy: RetryPolicy) -> bool {
        match self {
            Attempt::Connect => true,
            Attempt::ServerError { .. } | Attempt::Interrupted => policy == RetryPolicy::Idempotent,
            Attempt::Answer(_) | Attempt::Timeout | Attempt::OffContract(_) => false,
        }
    }
}

/// Sends `req` once on `client` (whose own timeout bounds the whole exchange).
pub async fn exchange(client: &reqwest::Client, req: &Prepared) -> Attempt {
    let mut builder = client
        .request(req.method.clone(), req.url.clone())
        .headers(req.headers.clone());
    if let Some(body) = &req.body {
        builder = builder.body(body.clone());
    }
    let mut resp = match builder.send().await {
        Ok(resp) => resp,
        Err(err) => return classify_error(&err),
    };
    let status = resp.status().as_u16();
    if status >= 500 {
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The body of a 5xx is not passed on; dropping the response discards it.
        return Attempt::ServerError {
            status,
            retry_after,
        };
    }
    if !(200..300).contains(&status) && !(400..500).contains(&status) {
        return Attempt::OffContract(format!("unexpected status {status}"));
    }
    if resp
        .content_length()
        .is_some_and(|len| len > MAX_RESPONSE_BYTES as u64)
    {
        return Attempt::OffContract("the body is over 1 MiB".into());
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(0) as usize);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Attempt::OffContract("the body is over 1 MiB".into());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(err) => return classify_error(&err),
        }
    }
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => v,
            Err(_) => return Attempt::OffContract(format!("the status {status} body is not JSON")),
        }
    };
    Attempt::Answer(UpstreamResponse {
        status,
        headers: std::mem::take(resp.headers_mut()),
        body: value,
    })
}

fn classify_error(err: &reqwest::Error) -> Attempt {
    if err.is_connect() {
        // Refused, unreachable, DNS, TLS handshake, or a connect timeout: nothing was sent.
        Attempt::Connect
    } else if err.is_timeout() {
        Attempt::Timeout
    } else {
        // Reset mid-request or mid-response, a body error: it may have reached .NET.
        Attempt::Interrupted
    }
}

/// A `Retry-After` value in whole seconds (rounded up, at least 1): either delta-seconds or
/// an HTTP date (RFC 9110 §10.2.3), which is turned into the seconds left from `now`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs.max(1));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::UNIX_EPOCH
        + Duration::from_secs(u64::try_from(at.timestamp()).ok()?)
        + Duration::from_nanos(u64::from(at.timestamp_subsec_nanos()));
    let left = at.duration_since(now).unwrap_or(Duration::ZERO);
    Some(super::request::whole_seconds(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21 07:28:00
        assert_eq!(parse_retry_after("3", now), Some(3));
        assert_eq!(parse_retry_after(" 0 ", now), Some(1));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(30)
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(1),
            "a date in the past is at least 1 s"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn only_safe_failures_are_retried() {
        use RetryPolicy::*;
        assert!(Attempt::Connect.retryable(UnsentOnly));
        assert!(Attempt::Connect.retryable(Idempotent));
        let e5xx = Attempt::ServerError {
            status: 500,
            retry_after: None,
        };
        assert!(e5xx.retryable(Idempotent));
        assert!(!e5xx.retryable(UnsentOnly));
        assert!(Attempt::Interrupted.retryable(Idempotent));
        assert!(!Attempt::Interrupted.retryable(UnsentOnly));
        assert!(!Attempt::Timeout.retryable(Idempotent));
        assert!(!Attempt::Timeout.retryable(UnsentOnly));
        assert!(!Attempt::OffContract("x".into()).retryable(Idempotent));
    }

    #[test]
    fn outcomes_for_breaker_and_metrics() {
        let answer = |status| {
            Attempt::Answer(UpstreamResponse {
                status,
                headers: HeaderMap::new(),
                body: Value::Null,
            })
        };
        assert_eq!(answer(200).metric_outcome(), "success");
        assert_eq!(answer(401).metric_outcome(), "client_error");
        assert_eq!(answer(401).breaker_outcome(), Outcome::Success);
        assert_eq!(Attempt::Timeout.metric_outcome(), "timeout");
        assert_eq!(Attempt::Timeout.breaker_outcome(), Outcome::Failure);
        let e5xx = Attempt::ServerError {
            status: 503,
            retry_after: Some(2),
        };
        assert_eq!(e5xx.metric_outcome(), "failure");
        assert_eq!(e5xx.breaker_outcome(), Outcome::Failure);
        assert_eq!(Attempt::Connect.breaker_outcome(), Outcome::Failure);
    }

    #[test]
    fn prepared_requests_carry_the_forwarded_headers() {
        use super::super::request::ForwardHeaders;
        let ua = HeaderValue::from_static("sidecar/test");
        let req = UpstreamRequest::post(
            Operation::Refresh,
            "/auth/refresh",
            serde_json::json!({"refresh_token": "r"}),
        )
        .bearer("t")
        .forward(ForwardHeaders {
            request_id: Some("rid".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            forwarded_for: Some("10.0.0.1, 127.0.0.1".into()),
            user_agent: None,
        });
        let base = reqwest::Url::parse("http://dotnet:5000").unwrap();
        let p = Prepared::new(&base, &ua, req).unwrap();
        assert_eq!(p.url.as_str(), "http://dotnet:5000/auth/refresh");
        assert_eq!(p.retry, RetryPolicy::UnsentOnly);
        assert_eq!(p.headers["x-request-id"], "rid");
        assert_eq!(p.headers["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(p.headers["user-agent"], "sidecar/test");
        assert_eq!(p.headers["authorization"], "Bearer t");
        assert!(p.headers["authorization"].is_sensitive());
        assert_eq!(p.headers["content-type"], "application/json");
        let abs = Prepared::new(
            &base,
            &ua,
            UpstreamRequest::get(Operation::Jwks, "https://idp.example/jwks.json"),
        )
        .unwrap();
        assert_eq!(abs.url.as_str(), "https://idp.example/jwks.json");
        assert!(abs.body.is_none());
    }

    #[test]
    fn paths_join_under_the_base_path() {
        let base = reqwest::Url::parse("http://dotnet:5000/api/").unwrap();
        assert_eq!(
            join(&base, "/users/u1/preferences").unwrap().as_str(),
            "http://dotnet:5000/api/users/u1/preferences"
        );
        assert_eq!(
            join(&base, "/config?x=1").unwrap().as_str(),
            "http://dotnet:5000/api/config?x=1"
        );
        let root = reqwest::Url::parse("http://dotnet:5000").unwrap();
        assert_eq!(
            join(&root, "/auth/login").unwrap().as_str(),
            "http://dotnet:5000/auth/login"
        );
    }
}
