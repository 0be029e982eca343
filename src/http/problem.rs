//! The one place where errors become RFC 9457 problem details (`application/problem+json`).
//!
//! Handlers return [`Problem`] values (or the [`ProblemResponse`] they convert into, which is
//! what the OpenAPI document describes); poem's own errors (404, 405, unparsable bodies, body
//! limits) are turned into problems by [`from_poem_error`]. The `requestId` member is added by
//! the conventions middleware, which knows the request's id, so no handler has to.

use poem::http::StatusCode;
use poem::{IntoResponse, Response};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};

use actors::bridge::{UnavailableCause, UpstreamError, UpstreamResponse};

use super::context::RequestContext;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem details object, as the contract's clients read it.
#[derive(Debug, Clone, Object, serde::Serialize, serde::Deserialize)]
pub struct ProblemBody {
    /// A URI reference naming the problem type.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: String,
    /// A short, human-readable summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// A human-readable explanation of this occurrence.
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A stable snake_case machine code (CONTRACT.md section 8).
    pub code: String,
    /// The request's `X-Request-Id`.
    #[oai(rename = "requestId", skip_serializing_if_is_none)]
    #[serde(rename = "requestId", skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A problem with the headers some statuses carry.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: String,
    pub title: String,
    pub detail: Option<String>,
    /// Whole seconds, at least 1 (429 and 503).
    pub retry_after: Option<u64>,
    /// `RateLimit-Policy` and `RateLimit` fields (429 `rate_limited`).
    pub rate_limit: Option<(String, String)>,
    /// A body that .NET sent, passed through as it is (with `requestId` added later).
    pub passthrough: Option<serde_json::Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code: code.to_owned(),
            title: title_for(code, status),
            detail: Some(detail.into()),
            retry_after: None,
            rate_limit: None,
            passthrough: None,
        }
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", detail)
    }

    pub fn upstream_unavailable(detail: impl Into<String>, retry_after: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
            detail,
        )
        .retry_after(retry_after)
    }

    pub fn upstream_error(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_GATEWAY, "upstream_error", detail)
    }

    pub fn store_unavailable(retry_after: u64) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the durable store is unavailable",
        )
        .retry_after(retry_after)
    }

    /// 429 `backpressure`: `/events` sheds load while the consumers lag (contract 6).
    pub fn backpressure(retry_after: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "backpressure",
            "events are arriving faster than they are processed; retry after the advertised delay",
        )
        .retry_after(retry_after)
    }

    /// 429 `rate_limited`, with `Retry-After` and the `RateLimit-Policy` / `RateLimit`
    /// fields of the bucket closest to exhaustion (contract 6 and 12).
    pub fn rate_limited(
        detail: impl Into<String>,
        retry_after: u64,
        fields: Option<(String, String)>,
    ) -> Self {
        let mut problem = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
            .retry_after(retry_after);
        problem.rate_limit = fields;
        problem
    }

    /// An internal error: logged with an id by the caller, answered opaquely.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "an internal error occurred",
        )
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds.max(1));
        self
    }

    /// .NET's own problem body, passed through with its status (contract section 1).
    pub fn passthrough(status: StatusCode, body: serde_json::Value) -> Self {
        let code = body
            .get("code")
            .and_then(|c| c.as_str())
            .unwrap_or("upstream_problem")
            .to_owned();
        Problem {
            passthrough: Some(body),
            ..Self::new(status, &code, "")
        }
    }

    /// A call to .NET that got no usable answer (contract sections 9 and 12): 503
    /// `upstream_unavailable` with `Retry-After` (down, 5xx, timed out, circuit open), or
    /// 502 `upstream_error` (an answer that is not the contract).
    pub fn from_upstream(err: &UpstreamError) -> Self {
        match err {
            UpstreamError::Unavailable { retry_after, cause } => {
                let detail = match cause {
                    UnavailableCause::CircuitOpen => {
                        "the .NET backend is failing; calls are paused (circuit open)".to_owned()
                    }
                    UnavailableCause::ServerError(status) => {
                        format!("the .NET backend answered {status}")
                    }
                    UnavailableCause::Connect | UnavailableCause::Interrupted => {
                        "the .NET backend cannot be reached".to_owned()
                    }
                    UnavailableCause::BridgeRestarting => {
                        "the connection to the .NET backend is restarting".to_owned()
                    }
                };
                Self::upstream_unavailable(detail, *retry_after)
            }
            UpstreamError::Timeout => Self::upstream_unavailable(
                "the .NET backend did not answer in time",
                err.retry_after().unwrap_or(1),
            ),
            UpstreamError::BadGateway(detail) => {
                Self::upstream_error(format!("the .NET backend answered off-contract: {detail}"))
            }
        }
    }

    /// .NET's 4xx answer: its problem body passed through with its status (contract
    /// section 1), or 502 `upstream_error` when the body is not a problem object.
    pub fn from_upstream_rejection(resp: &UpstreamResponse) -> Self {
        let status = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let is_problem = resp.body.as_object().is_some_and(|body| {
            ["code", "title", "type"]
                .iter()
                .any(|k| body.get(*k).is_some_and(|v| v.is_string()))
        });
        if status.is_client_error() && is_problem {
            Self::passthrough(status, resp.body.clone())
        } else {
            Self::upstream_error(format!(
                "the .NET backend answered {} without a problem body",
                resp.status
            ))
        }
    }

    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            kind: format!(
                "https://sidecar.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title: self.title.clone(),
            status: self.status.as_u16(),
            detail: self.detail.clone().filter(|d| !d.is_empty()),
            code: self.code.clone(),
            request_id: None,
        }
    }
}

fn title_for(code: &str, status: StatusCode) -> String {
    match code {
        "invalid_request" => "Invalid request",
        "unsupported_contract_version" => "Unsupported contract version",
        "unauthorized" => "Unauthorized",
        "refresh_token_reused" => "Refresh token reused",
        "mfa_required_for_admin" => "MFA required for admin",
        "payload_too_large" => "Payload too large",
        "batch_size" => "Batch size out of range",
        "rate_limited" => "Rate limited",
        "backpressure" => "Backpressure",
        "upstream_error" => "Upstream error",
        "upstream_unavailable" => "Upstream unavailable",
        "store_unavailable" => "Store unavailable",
        "not_found" => "Not found",
        "method_not_allowed" => "Method not allowed",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
    .to_owned()
}

/// Every error answer of the contract, as the OpenAPI document describes it. Each variant
/// says when it happens; not every route can produce every one.
#[derive(ApiResponse, Debug)]
#[oai(
    header(
        name = "X-Contract-Version",
        ty = "String",
        description = "Always `1`."
    ),
    header(
        name = "X-Request-Id",
        ty = "String",
        description = "The client's request id, or a new UUID."
    )
)]
pub enum ProblemResponse {
    /// `invalid_request` (bad JSON, wrong shape, bounds) or `unsupported_contract_version`.
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<ProblemBody>),
    /// `unauthorized` (missing, malformed, expired or inactive bearer token) or
    /// `refresh_token_reused` passed through from .NET.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(
        Json<ProblemBody>,
        #[oai(header = "WWW-Authenticate")] Option<String>,
    ),
    /// `mfa_required_for_admin`, or a 403 passed through from .NET (e.g. a banned account).
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<ProblemBody>),
    /// `payload_too_large`: the body or one event's payload is over its limit.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<ProblemBody>),
    /// `batch_size`: 0 events, or more than `EVENT_MAX_BATCH`.
    #[oai(status = 422, content_type = "application/problem+json")]
    Unprocessable(Json<ProblemBody>),
    /// `rate_limited` (a token bucket is empty) or `backpressure` (consumers lag): `/events` only.
    #[oai(status = 429, content_type = "application/problem+json")]
    TooManyRequests(
        Json<ProblemBody>,
        /// Whole seconds until a retry can succeed.
        #[oai(header = "Retry-After")]
        Option<u64>,
        /// draft-ietf-httpapi-ratelimit-headers-09 policy of the bucket closest to exhaustion.
        #[oai(header = "RateLimit-Policy")]
        Option<String>,
        /// draft-ietf-httpapi-ratelimit-headers-09 state of that bucket.
        #[oai(header = "RateLimit")]
        Option<String>,
    ),
    /// Any other client error that .NET answered, passed through with its status.
    #[oai(status_range = "4XX", content_type = "application/problem+json")]
    OtherClientError(StatusCode, Json<ProblemBody>),
    /// An internal error (answered opaquely; the log has the details under the request id).
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<ProblemBody>),
    /// `upstream_error`: .NET answered something that is not the contract.
    #[oai(status = 502, content_type = "application/problem+json")]
    BadGateway(Json<ProblemBody>),
    /// `upstream_unavailable` (.NET down, timed out, or the circuit is open) or
    /// `store_unavailable` (the durable store is down).
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(
        Json<ProblemBody>,
        #[oai(header = "Retry-After")] Option<u64>,
    ),
}

impl From<Problem> for ProblemResponse {
    fn from(p: Problem) -> Self {
        let body = match &p.passthrough {
            // A pass-through body keeps every member .NET sent; it is re-read as ours only
            // for the OpenAPI shape (unknown members survive in the middleware's rewrite).
            Some(raw) => {
                serde_json::from_value::<ProblemBody>(raw.clone()).unwrap_or_else(|_| p.body())
            }
            None => p.body(),
        };
        let body = Json(body);
        match p.status.as_u16() {
            400 => Self::BadRequest(body),
            401 => Self::Unauthorized(body, Some("Bearer".to_owned())),
            403 => Self::Forbidden(body),
            413 => Self::PayloadTooLarge(body),
            422 => Self::Unprocessable(body),
            429 => {
                let (policy, state) = p.rate_limit.clone().unzip();
                Self::TooManyRequests(body, p.retry_after.or(Some(1)), policy, state)
            }
            502 => Self::BadGateway(body),
            503 => Self::Unavailable(body, p.retry_after.or(Some(1))),
            _ if p.status.is_client_error() => Self::OtherClientError(p.status, body),
            _ => Self::Internal(body),
        }
    }
}

/// Answers `problem`, making sure a body passed through from .NET reaches the client
/// verbatim (the conventions middleware adds only `requestId`).
pub fn respond(ctx: &RequestContext, problem: Problem) -> ProblemResponse {
    if let Some(body) = &problem.passthrough {
        ctx.set_upstream_problem(body.clone());
    }
    ProblemResponse::from(problem)
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        IntoResponse::into_response(ProblemResponse::from(self))
    }
}

impl poem::error::ResponseError for Problem {
    fn status(&self) -> StatusCode {
        self.status
    }
    fn as_response(&self) -> Response {
        self.clone().into_response()
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.code)
    }
}

impl std::error::Error for Problem {}

/// Turns any error poem or poem-openapi raised (no route, wrong method, unparsable body,
/// missing security scheme, body limit) into a problem, so no plain-text error escapes.
pub fn from_poem_error(err: &poem::Error) -> Problem {
    if let Some(problem) = err.downcast_ref::<Problem>() {
        return problem.clone();
    }
    let status = err.status();
    let detail = sanitize_detail(&err.to_string());
    match status {
        StatusCode::NOT_FOUND => Problem::new(status, "not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => Problem::new(
            status,
            "method_not_allowed",
            "method not allowed on this route",
        ),
        StatusCode::UNAUTHORIZED => Problem::unauthorized("a valid bearer token is required"),
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::payload_too_large("the request body is over the limit")
        }
        StatusCode::BAD_REQUEST
        | StatusCode::UNSUPPORTED_MEDIA_TYPE
        | StatusCode::UNPROCESSABLE_ENTITY => Problem::invalid_request(detail),
        s if s.is_server_error() => Problem::internal(),
        s => Problem::new(s, "invalid_request", detail),
    }
}

/// poem's parse errors may quote the input; keep the message short and free of control
/// characters so that nothing a client sent is echoed at length.
pub(crate) fn sanitize_detail(message: &str) -> String {
    // poem-openapi's type errors quote the offending value (`..., found "hunter2".`): a
    // password or a token sent with the wrong type must not come back or reach a log.
    let message = match message.find(", found ") {
        Some(at) => format!("{}, found a value of another type", &message[..at]),
        None => message.to_owned(),
    };
    let cleaned: String = message
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect();
    if cleaned.is_empty() {
        "the request could not be understood".to_owned()
    } else {
        cleaned
    }
}
