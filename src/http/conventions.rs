//! The conventions every route follows (contract section 1), applied once around the whole
//! application:
//! - `X-Contract-Version: 1` on every response; any other value sent → 400
//!   `unsupported_contract_version`;
//! - `X-Request-Id` echoed when valid, else a new UUID; W3C `traceparent` continued;
//! - the request body bounded (413 `payload_too_large`), whether or not it has a length;
//! - every error, ours or poem's, rendered as problem+json with `requestId`;
//! - one access log line and the HTTP metrics per request, labelled by route template.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use actors::metric_names::{HTTP_REQUESTS_TOTAL, HTTP_REQUEST_DURATION_SECONDS};
use ipnet::IpNet;
use poem::http::{header, HeaderValue, StatusCode};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};
use tracing::Instrument;

use super::client_ip::{client_ip, forwarded_chain};
use super::context::{valid_request_id, RequestContext, TraceContext};
use super::problem::{from_poem_error, Problem, PROBLEM_CONTENT_TYPE};

pub const CONTRACT_VERSION: &str = "1";

/// The middleware's configuration.
#[derive(Clone)]
pub struct Conventions {
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<IpNet>>,
    /// Route templates known to the API, each with its methods (`GET, POST`); anything
    /// else is labelled `unmatched` so that a scan of random paths cannot explode the
    /// metrics' cardinality.
    pub routes: Arc<HashMap<String, String>>,
    /// The largest body any route accepts; each route may enforce a smaller one.
    pub max_body_bytes: usize,
}

impl<E: Endpoint> Middleware<E> for Conventions {
    type Output = ConventionsEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        ConventionsEndpoint {
            inner,
            config: self.clone(),
        }
    }
}

pub struct ConventionsEndpoint<E> {
    inner: E,
    config: Conventions,
}

impl<E: Endpoint> Endpoint for ConventionsEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        let ctx = Arc::new(self.context_of(&req));
        let method = req.method().as_str().to_owned();
        let route = self.route_label(req.uri().path());
        req.extensions_mut().insert(ctx.clone());

        let span = tracing::info_span!("request", request_id = %ctx.request_id, trace_id = %ctx.trace.trace_id);
        let response = async {
            if let Some(problem) = self.precheck(&mut req).await {
                return problem.into_response();
            }
            match self.inner.call(req).await {
                Ok(resp) => resp.into_response(),
                // A handler's `Err(ProblemResponse)`: poem-openapi wraps the response it
                // already rendered (status, problem body, Retry-After, WWW-Authenticate).
                Err(err) if err.is_from_response() => err.into_response(),
                Err(err) => {
                    let problem = from_poem_error(&err);
                    if problem.status.is_server_error() && problem.code == "internal_error" {
                        tracing::error!(error = %err, "request failed");
                    }
                    problem.into_response()
                }
            }
        }
        .instrument(span)
        .await;

        let mut response = finalize(response, &ctx).await;
        if response.status() == StatusCode::METHOD_NOT_ALLOWED {
            // RFC 9110: a 405 lists the methods the route supports.
            if let Some(allow) = self
                .config
                .routes
                .get(&route)
                .and_then(|m| HeaderValue::from_str(m).ok())
            {
                response.headers_mut().insert(header::ALLOW, allow);
            }
        }
        let headers = response.headers_mut();
        headers.insert(
            "x-contract-version",
            HeaderValue::from_static(CONTRACT_VERSION),
        );
        if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
            headers.insert("x-request-id", value);
        }

        let status = response.status().as_u16();
        let elapsed = started.elapsed().as_secs_f64();
        metrics::counter!(HTTP_REQUESTS_TOTAL, "method" => method.clone(), "route" => route.clone(), "status" => status.to_string()).increment(1);
        metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "method" => method.clone(), "route" => route.clone()).record(elapsed);
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            trace_id = %ctx.trace.trace_id,
            method = %method,
            route = %route,
            status,
            duration_ms = elapsed * 1000.0,
            client_ip = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            "request"
        );
        Ok(response)
    }
}

impl<E> ConventionsEndpoint<E> {
    fn context_of(&self, req: &Request) -> RequestContext {
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let request_id = header("x-request-id")
            .filter(|v| valid_request_id(v))
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let trace = header("traceparent")
            .and_then(TraceContext::parse)
            .unwrap_or_else(TraceContext::new_root);
        let peer = req.remote_addr().as_socket_addr().map(|a| a.ip());
        let xff = header("x-forwarded-for");
        RequestContext {
            request_id,
            trace,
            client_ip: client_ip(peer, xff, &self.config.trusted_proxies),
            forwarded_for: forwarded_chain(peer, xff),
            user_agent: header("user-agent").map(str::to_owned),
            upstream_problem: Default::default(),
        }
    }

    fn route_label(&self, path: &str) -> String {
        if self.config.routes.contains_key(path) {
            path.to_owned()
        } else {
            "unmatched".to_owned()
        }
    }

    /// Checks that need no handler: the contract version and the body size. The body is
    /// read here, within the limit, so that a body without `Content-Length` is bounded too.
    async fn precheck(&self, req: &mut Request) -> Option<Problem> {
        if let Some(version) = req.headers().get("x-contract-version") {
            if version.as_bytes() != CONTRACT_VERSION.as_bytes() {
                return Some(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "unsupported_contract_version",
                    "this service speaks contract version 1",
                ));
            }
        }
        let limit = self.config.max_body_bytes;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Some(Problem::payload_too_large(format!(
                "the request body is over {limit} bytes"
            )));
        }
        if declared == Some(0) {
            return None;
        }
        match req.take_body().into_bytes_limit(limit).await {
            Ok(bytes) => {
                req.set_body(bytes);
                None
            }
            Err(poem::error::ReadBodyError::PayloadTooLarge) => Some(Problem::payload_too_large(
                format!("the request body is over {limit} bytes"),
            )),
            Err(_) => Some(Problem::invalid_request(
                "the request body could not be read",
            )),
        }
    }
}

/// Makes every error a problem+json with `requestId`: rewrites problem bodies (ours and the
/// ones passed through from .NET), and converts any other error response into a problem.
async fn finalize(mut response: Response, ctx: &RequestContext) -> Response {
    let status = response.status();
    let is_problem = response
        .content_type()
        .is_some_and(|ct| ct.starts_with(PROBLEM_CONTENT_TYPE));
    let is_json = response
        .content_type()
        .is_some_and(|ct| ct.starts_with("application/json"));
    // Success answers, and the JSON bodies some routes define for an error status (the
    // readiness report), are left as they are.
    if !is_problem && (is_json || !(status.is_client_error() || status.is_server_error())) {
        return response;
    }
    let mut body: serde_json::Value = match ctx.take_upstream_problem() {
        Some(upstream) => upstream,
        None if is_problem => {
            let bytes = response.take_body().into_bytes().await.unwrap_or_default();
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
        }
        None => serde_json::Value::Null,
    };
    if !body.is_object() {
        let problem = from_poem_error(&poem::Error::from_status(status));
        body = serde_json::to_value(problem.body()).unwrap_or_default();
    }
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "requestId".to_owned(),
            serde_json::Value::String(ctx.request_id.clone()),
        );
    }
    response.set_body(serde_json::to_vec(&body).unwrap_or_default());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}
