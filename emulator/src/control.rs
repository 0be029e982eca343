//! Control routes under `/__emulator/`: the library API over HTTP, for a developer or a test
//! written in another language. They are never recorded, delayed or faulted.
//!
//! | route | effect |
//! | --- | --- |
//! | `GET /__emulator/state` | users, keys, faults, latencies, call counts |
//! | `POST /__emulator/reset` | back to the start-up state, faults and recordings cleared |
//! | `POST /__emulator/faults` `Fault` | inject a fault; `GET` lists, `DELETE` clears |
//! | `POST /__emulator/latency` `Latency` | inject latency; `GET` lists, `DELETE` clears |
//! | `POST /__emulator/outage` `{"seconds": 5}` | refuse connections that long, then listen again |
//! | `GET /__emulator/otp?challenge_id=…` or `?email=…` | `{"otp_code": "123456"}` |
//! | `POST /__emulator/users` `UserSpec` | add or replace a user; answers its `User` DTO |
//! | `POST /__emulator/users/status` `{"email", "status"}` | change a status (a ban revokes sessions) |
//! | `POST /__emulator/rotate-key` `{"rotation": "keep_old"\|"drop_old"}` | `{"kid": new}` |
//! | `PUT /__emulator/config` any JSON | replaces what `GET /config` serves |
//! | `GET /__emulator/preferences/{user_id}` | what was stored, or 404 |
//! | `GET /__emulator/calls` | `[{"method","path","count"}]` |
//! | `GET /__emulator/requests?path=…` | recorded requests, `Authorization` redacted; `DELETE` clears |
//! | `POST /__emulator/clock` `{"advance_secs": 600}` | moves the emulator's clock |
//! | `POST /__emulator/tokens` `{"email", "device_id"?}` | a `Tokens` DTO of a new session, no login |
//! | `POST /__emulator/mint` `{"email", "overrides"?, "signing"?}` | `{"token"}` (see `Signing`) |
//! | `POST /__emulator/sessions/{id}/revoke` | revokes a session |

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use poem::http::StatusCode;
use poem::web::{Data, Path, Query};
use poem::{get, handler, post, put, IntoResponse, Response, Route};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::faults::{Fault, Latency};
use crate::model::{AccountStatus, UserSpec};
use crate::problem::{json, Problem};
use crate::server::Inner;
use crate::state::Rotation;
use crate::tokens::Signing;

type State<'a> = Data<&'a Arc<Inner>>;

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("invalid body: {e}")))
}

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

macro_rules! try_parse {
    ($body:expr) => {
        match parse($body) {
            Ok(v) => v,
            Err(problem) => return problem.into_response(),
        }
    };
}

#[handler]
fn overview(state: State<'_>) -> Response {
    let users: Vec<Value> = state.backend.users().iter().map(|u| u.dto()).collect();
    json(
        200,
        &json!({
            "base_url": state.base_url(),
            "accepting_connections": state.is_listening(),
            "signing_kid": state.backend.signing_kid(),
            "published_kids": state.backend.published_kids(),
            "users": users,
            "faults": state.faults.faults(),
            "latencies": state.faults.latencies(),
            "calls": calls_json(&state),
        }),
    )
}

#[handler]
fn reset(state: State<'_>) -> Response {
    state.reset();
    no_content()
}

#[handler]
fn add_fault(state: State<'_>, body: Bytes) -> Response {
    let fault: Fault = try_parse!(&body);
    state.faults.add_fault(fault);
    no_content()
}

#[handler]
fn list_faults(state: State<'_>) -> Response {
    json(200, &json!(state.faults.faults()))
}

#[handler]
fn clear_faults(state: State<'_>) -> Response {
    state.faults.clear_faults();
    no_content()
}

#[handler]
fn add_latency(state: State<'_>, body: Bytes) -> Response {
    let latency: Latency = try_parse!(&body);
    state.faults.add_latency(latency);
    no_content()
}

#[handler]
fn list_latency(state: State<'_>) -> Response {
    json(200, &json!(state.faults.latencies()))
}

#[handler]
fn clear_latency(state: State<'_>) -> Response {
    state.faults.clear_latency();
    no_content()
}

#[derive(Deserialize)]
struct Outage {
    seconds: f64,
}

#[handler]
fn outage(state: State<'_>, body: Bytes) -> Response {
    let outage: Outage = try_parse!(&body);
    if !(outage.seconds.is_finite() && outage.seconds >= 0.0 && outage.seconds <= 3600.0) {
        return Problem::bad_request("seconds must be within 0..=3600").into_response();
    }
    let inner: Arc<Inner> = state.0.clone();
    tokio::spawn(async move {
        // Let this answer leave first: stopping the listener also closes open connections.
        tokio::time::sleep(Duration::from_millis(50)).await;
        inner.stop_listening().await;
        tokio::time::sleep(Duration::from_secs_f64(outage.seconds)).await;
        if let Err(e) = inner.listen() {
            tracing::error!(error = %e, "could not listen again after the outage");
        }
    });
    StatusCode::ACCEPTED.into_response()
}

#[derive(Deserialize)]
struct OtpQuery {
    challenge_id: Option<String>,
    email: Option<String>,
}

#[handler]
fn otp(state: State<'_>, Query(q): Query<OtpQuery>) -> Response {
    let code = match (q.challenge_id, q.email) {
        (Some(id), _) => state.backend.otp_for_challenge(&id),
        (None, Some(email)) => state.backend.current_otp(&email),
        (None, None) => {
            return Problem::bad_request("give challenge_id or email").into_response();
        }
    };
    match code {
        Some(c) => json(200, &json!({ "otp_code": c })),
        None => Problem::new(404, "not_found", "no such challenge or user").into_response(),
    }
}

#[handler]
fn add_user(state: State<'_>, body: Bytes) -> Response {
    let spec: UserSpec = try_parse!(&body);
    if !spec.email.contains('@') {
        return Problem::bad_request("email must contain @").into_response();
    }
    json(201, &state.backend.add_user(spec).dto())
}

#[derive(Deserialize)]
struct StatusChange {
    email: String,
    status: AccountStatus,
}

#[handler]
fn user_status(state: State<'_>, body: Bytes) -> Response {
    let change: StatusChange = try_parse!(&body);
    if state.backend.set_user_status(&change.email, change.status) {
        no_content()
    } else {
        Problem::new(404, "not_found", "no such user").into_response()
    }
}

#[derive(Deserialize)]
struct Rotate {
    #[serde(default = "keep_old")]
    rotation: Rotation,
}

fn keep_old() -> Rotation {
    Rotation::KeepOld
}

#[handler]
fn rotate_key(state: State<'_>, body: Bytes) -> Response {
    let rotate: Rotate = if body.is_empty() {
        Rotate {
            rotation: Rotation::KeepOld,
        }
    } else {
        try_parse!(&body)
    };
    json(
        200,
        &json!({ "kid": state.backend.rotate_signing_key(rotate.rotation) }),
    )
}

#[handler]
fn set_config(state: State<'_>, body: Bytes) -> Response {
    let config: Value = try_parse!(&body);
    state.backend.set_remote_config(config);
    no_content()
}

#[handler]
fn preferences(state: State<'_>, Path(user_id): Path<String>) -> Response {
    match state.backend.stored_preferences(&user_id) {
        Some(v) => json(200, &v),
        None => Problem::new(404, "not_found", "nothing stored").into_response(),
    }
}

fn calls_json(inner: &Inner) -> Value {
    inner
        .recorder
        .counts()
        .into_iter()
        .map(|(method, path, count)| json!({"method": method, "path": path, "count": count}))
        .collect()
}

#[handler]
fn calls(state: State<'_>) -> Response {
    json(200, &calls_json(&state))
}

#[derive(Deserialize)]
struct RequestsQuery {
    path: Option<String>,
}

#[handler]
fn requests(state: State<'_>, Query(q): Query<RequestsQuery>) -> Response {
    let list: Vec<Value> = state
        .recorder
        .all(q.path.as_deref())
        .into_iter()
        .map(|r| {
            let headers: serde_json::Map<String, Value> = r
                .headers
                .iter()
                .map(|(name, value)| {
                    // Over HTTP, show that a credential was forwarded, never the credential.
                    let shown = if name == "authorization" {
                        let v = value.to_str().unwrap_or("");
                        match v.split_once(' ') {
                            Some((scheme, _)) => format!("{scheme} [redacted]"),
                            None => "[redacted]".to_string(),
                        }
                    } else {
                        String::from_utf8_lossy(value.as_bytes()).into_owned()
                    };
                    (name.to_string(), Value::String(shown))
                })
                .collect();
            json!({
                "method": r.method,
                "path": r.path,
                "query": r.query,
                "headers": headers,
                "body_bytes": r.body.len(),
            })
        })
        .collect();
    json(200, &Value::Array(list))
}

#[handler]
fn clear_requests(state: State<'_>) -> Response {
    state.recorder.clear();
    no_content()
}

#[derive(Deserialize)]
struct Clock {
    advance_secs: i64,
}

#[handler]
fn clock(state: State<'_>, body: Bytes) -> Response {
    let clock: Clock = try_parse!(&body);
    state.backend.advance_clock(clock.advance_secs);
    json(200, &json!({ "now": state.backend.now() }))
}

#[derive(Deserialize)]
struct IssueTokens {
    email: String,
    #[serde(default = "default_device")]
    device_id: String,
}

fn default_device() -> String {
    "emulator-control".to_string()
}

#[handler]
fn tokens(state: State<'_>, body: Bytes) -> Response {
    let req: IssueTokens = try_parse!(&body);
    match state.backend.issue_tokens(&req.email, &req.device_id) {
        Ok(t) => json(200, &t),
        Err(e) => Problem::new(404, "not_found", e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct Mint {
    email: String,
    #[serde(default)]
    overrides: Value,
    #[serde(default)]
    signing: Signing,
}

#[handler]
fn mint(state: State<'_>, body: Bytes) -> Response {
    let req: Mint = try_parse!(&body);
    match state
        .backend
        .mint_access_token_with(&req.email, &req.overrides, &req.signing)
    {
        Ok(token) => json(200, &json!({ "token": token })),
        Err(e) => Problem::bad_request(e.to_string()).into_response(),
    }
}

#[handler]
fn revoke_session(state: State<'_>, Path(id): Path<String>) -> Response {
    if state.backend.revoke_session(&id) {
        no_content()
    } else {
        Problem::new(404, "not_found", "no such session").into_response()
    }
}

pub fn routes() -> Route {
    Route::new()
        .at("/state", get(overview))
        .at("/reset", post(reset))
        .at(
            "/faults",
            post(add_fault).get(list_faults).delete(clear_faults),
        )
        .at(
            "/latency",
            post(add_latency).get(list_latency).delete(clear_latency),
        )
        .at("/outage", post(outage))
        .at("/otp", get(otp))
        .at("/users", post(add_user))
        .at("/users/status", post(user_status))
        .at("/rotate-key", post(rotate_key))
        .at("/config", put(set_config))
        .at("/preferences/:user_id", get(preferences))
        .at("/calls", get(calls))
        .at("/requests", get(requests).delete(clear_requests))
        .at("/clock", post(clock))
        .at("/tokens", post(tokens))
        .at("/mint", post(mint))
        .at("/sessions/:id/revoke", post(revoke_session))
}
