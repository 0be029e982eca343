//! The .NET side of the contract over HTTP (sections 3 and 9), and the wrapper that records
//! requests and applies injected faults and latency.
//!
//! Handlers are thin: they read the raw body (so a malformed one becomes a problem+json 400, not
//! poem's plain-text error) and hand it to [`crate::state::Backend`].

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use poem::http::{header, HeaderMap, StatusCode};
use poem::web::{Data, Path};
use poem::{get, handler, post, Endpoint, EndpointExt, IntoResponse, Request, Response, Route};

use crate::control;
use crate::faults::RecordedRequest;
use crate::problem::{json, Problem};
use crate::server::Inner;

type State<'a> = Data<&'a Arc<Inner>>;

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

fn answer(result: Result<serde_json::Value, Problem>) -> Response {
    match result {
        Ok(v) => json(200, &v),
        Err(p) => p.into_response(),
    }
}

#[handler]
fn login(state: State<'_>, body: Bytes) -> Response {
    answer(state.backend.login(&body))
}

#[handler]
fn mfa_verify(state: State<'_>, body: Bytes) -> Response {
    answer(state.backend.verify_mfa(&body))
}

#[handler]
fn refresh(state: State<'_>, body: Bytes) -> Response {
    answer(state.backend.refresh(&body))
}

#[handler]
fn logout(state: State<'_>, headers: &HeaderMap, body: Bytes) -> Response {
    match state.backend.logout(authorization(headers), &body) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => p.into_response(),
    }
}

#[handler]
fn introspect(state: State<'_>, body: Bytes) -> Response {
    answer(state.backend.introspect(&body))
}

#[handler]
fn jwks(state: State<'_>) -> Response {
    json(200, &state.backend.jwks())
}

#[handler]
fn config(state: State<'_>) -> Response {
    json(200, &state.backend.remote_config())
}

#[handler]
fn get_preferences(state: State<'_>, Path(user_id): Path<String>, headers: &HeaderMap) -> Response {
    if let Err(p) = state
        .backend
        .authorize_preferences(authorization(headers), &user_id)
    {
        return p.into_response();
    }
    match state.backend.stored_preferences(&user_id) {
        Some(v) => json(200, &v),
        None => {
            Problem::new(404, "not_found", "no preferences saved for this user").into_response()
        }
    }
}

#[handler]
fn put_preferences(
    state: State<'_>,
    Path(user_id): Path<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let result = state
        .backend
        .authorize_preferences(authorization(headers), &user_id)
        .and_then(|()| state.backend.put_preferences(&user_id, &body));
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(p) => p.into_response(),
    }
}

/// The whole application: contract routes, control routes, recording and faults.
pub fn app(inner: Arc<Inner>) -> impl Endpoint<Output = Response> {
    let routes = Route::new()
        .at("/auth/login", post(login))
        .at("/auth/mfa/verify", post(mfa_verify))
        .at("/auth/refresh", post(refresh))
        .at("/auth/logout", post(logout))
        .at("/auth/introspect", post(introspect))
        .at("/.well-known/jwks.json", get(jwks))
        .at("/config", get(config))
        .at(
            "/users/:user_id/preferences",
            get(get_preferences).put(put_preferences),
        )
        .nest("/__emulator", control::routes())
        .data(inner.clone())
        .map_to_response();
    Instrumented { routes, inner }
}

/// Records every contract request, then applies the injected latency and fault.
struct Instrumented<E> {
    routes: E,
    inner: Arc<Inner>,
}

impl<E: Endpoint<Output = Response>> Instrumented<E> {
    /// Routing errors (404, 405) and extractor errors become problem+json too.
    async fn run(&self, req: Request) -> Response {
        match self.routes.call(req).await {
            Ok(resp) => resp,
            Err(e) => {
                let status = e.status();
                let code = match status {
                    StatusCode::NOT_FOUND => "not_found",
                    StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
                    s if s.is_client_error() => "invalid_request",
                    _ => "internal_error",
                };
                Problem::new(status.as_u16(), code, e.to_string()).into_response()
            }
        }
    }
}

impl<E: Endpoint<Output = Response>> Endpoint for Instrumented<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let path = req.uri().path().to_string();
        if path == "/__emulator" || path.starts_with("/__emulator/") {
            return Ok(self.run(req).await);
        }
        let started = Instant::now();
        let method = req.method().as_str().to_string();
        let body = req.take_body().into_bytes().await?;
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string();
        self.inner.recorder.record(RecordedRequest {
            method: method.clone(),
            path: path.clone(),
            query: req.uri().query().map(str::to_string),
            headers: req.headers().clone(),
            body: body.clone(),
            received_at: SystemTime::now(),
        });
        req.set_body(body);

        let (fault, latency) = self.inner.faults.take(&method, &path);
        if let Some(l) = latency.as_ref().filter(|l| !l.after_processing) {
            tokio::time::sleep(l.delay()).await;
        }
        let resp = match &fault {
            None => self.run(req).await,
            Some(f) => {
                if f.after_processing {
                    let _ = self.run(req).await;
                }
                f.response()
            }
        };
        if let Some(l) = latency.as_ref().filter(|l| l.after_processing) {
            tokio::time::sleep(l.delay()).await;
        }
        // Method, path and status only: bodies and Authorization carry secrets.
        tracing::info!(
            %method,
            %path,
            status = resp.status().as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            request_id = %request_id,
            injected_fault = fault.is_some(),
            "request"
        );
        Ok(resp)
    }
}
