//! Contract section 3 (auth proxied to .NET) and section 9 (the bridge), against the .NET
//! emulator: both login outcomes, MFA, rotation and replay, logout, the admin-MFA rule,
//! pass-through of .NET's refusals, bounds checked before any call, forwarded headers, and
//! no secret in any log line. The breaker, retries and coalescing are in `bridge.rs`;
//! caller identity in `identity.rs`.

use std::time::Duration;

use emulator::{EmulatorHandle, Fault, DEFAULT_PASSWORD};
use serde_json::{json, Value};

use crate::helpers::{assert_no_secrets_logged, TestApp};

pub async fn login(app: &TestApp, email: &str) -> reqwest::Response {
    app.post_json(
        "/auth/login",
        &json!({"email": email, "password": DEFAULT_PASSWORD, "device_id": "dev-1"}),
    )
    .await
}

/// Logs `email` in (a user without MFA) and returns the `tokens` object.
pub async fn tokens_of(app: &TestApp, email: &str) -> Value {
    let resp = login(app, email).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "AUTHENTICATED", "{body}");
    body["tokens"].clone()
}

pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Asserts a problem+json answer with `status` and `code`; returns its body.
pub async fn problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let actual = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(actual, status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["requestId"], request_id.as_str(), "{body}");
    body
}

fn assert_tokens(tokens: &Value) {
    for key in ["access_token", "refresh_token", "session_id"] {
        assert!(!str_of(tokens, key).is_empty());
    }
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 600);
    assert_eq!(tokens["refresh_expires_in"], 1_209_600);
}

async fn app() -> Option<(TestApp, EmulatorHandle)> {
    TestApp::with_emulator().await
}

#[tokio::test]
async fn a_user_without_mfa_is_authenticated() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let resp = login(&app, "alice@example.com").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(resp.headers()["x-contract-version"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "AUTHENTICATED");
    assert_tokens(&body["tokens"]);
    let user = &body["user"];
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(
        user["id"],
        dotnet.user_id("alice@example.com").unwrap().as_str()
    );
    assert_eq!(user["role"], "USER");
    assert_eq!(user["status"], "ACTIVE");
    assert_eq!(user["age_group"], "AGE_25_34");
    assert_eq!(user["mfa_enrolled"], false);
    assert!(dotnet.is_token_active(str_of(&body["tokens"], "access_token")));
    assert_no_secrets_logged(&[
        DEFAULT_PASSWORD,
        str_of(&body["tokens"], "access_token"),
        str_of(&body["tokens"], "refresh_token"),
    ]);
}

#[tokio::test]
async fn an_mfa_user_gets_a_challenge_then_tokens() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let resp = login(&app, "bob@example.com").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "MFA_REQUIRED", "{body}");
    assert_eq!(body["challenge_expires_in"], 300);
    assert!(body.get("tokens").is_none());
    let challenge = str_of(&body, "challenge_id").to_owned();

    let wrong = dotnet.wrong_otp_for_challenge(&challenge).unwrap();
    let resp = app
        .post_json(
            "/auth/mfa/verify",
            &json!({"challenge_id": challenge, "otp_code": wrong}),
        )
        .await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    problem(resp, 401, "invalid_otp").await;

    let otp = dotnet.otp_for_challenge(&challenge).unwrap();
    let resp = app
        .post_json(
            "/auth/mfa/verify",
            &json!({"challenge_id": challenge, "otp_code": otp}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "AUTHENTICATED");
    assert_tokens(&body["tokens"]);
    assert_eq!(body["user"]["mfa_enrolled"], true);
    assert_no_secrets_logged(&[
        &otp,
        &wrong,
        str_of(&body["tokens"], "access_token"),
        str_of(&body["tokens"], "refresh_token"),
    ]);
}

#[tokio::test]
async fn an_admin_who_did_mfa_is_let_in() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let body: Value = login(&app, "admin@example.com").await.json().await.unwrap();
    let challenge = str_of(&body, "challenge_id").to_owned();
    let otp = dotnet.otp_for_challenge(&challenge).unwrap();
    let resp = app
        .post_json(
            "/auth/mfa/verify",
            &json!({"challenge_id": challenge, "otp_code": otp}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user"]["role"], "ADMIN");
}

#[tokio::test]
async fn refresh_rotates_and_a_replay_revokes_the_family() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let first = tokens_of(&app, "alice@example.com").await;
    let refresh = |token: String| {
        let app = &app;
        async move {
            app.post_json(
                "/auth/refresh",
                &json!({"refresh_token": token, "device_id": "dev-1"}),
            )
            .await
        }
    };
    let resp = refresh(str_of(&first, "refresh_token").to_owned()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    let second = body["tokens"].clone();
    assert_tokens(&second);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(second["session_id"], first["session_id"], "same family");

    // The spent token again: a replay. .NET revokes the family; its answer passes through.
    let resp = refresh(str_of(&first, "refresh_token").to_owned()).await;
    let body = problem(resp, 401, "refresh_token_reused").await;
    assert_eq!(
        body["detail"],
        "this refresh token was already used; the session is revoked"
    );
    // Both tokens of the family are dead: the newest refresh token and every access token.
    let resp = refresh(str_of(&second, "refresh_token").to_owned()).await;
    problem(resp, 401, "invalid_refresh_token").await;
    assert!(!dotnet.is_token_active(str_of(&first, "access_token")));
    assert!(!dotnet.is_token_active(str_of(&second, "access_token")));
    assert!(dotnet.is_session_revoked(str_of(&first, "session_id")));
    assert_no_secrets_logged(&[
        str_of(&first, "refresh_token"),
        str_of(&second, "refresh_token"),
        str_of(&second, "access_token"),
    ]);
}

#[tokio::test]
async fn logout_ends_the_session_at_dotnet() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let tokens = tokens_of(&app, "alice@example.com").await;
    let session = str_of(&tokens, "session_id");
    let resp = app
        .post_json_bearer(
            "/auth/logout",
            str_of(&tokens, "access_token"),
            &json!({"session_id": session}),
        )
        .await;
    assert_eq!(resp.status(), 204);
    assert_eq!(resp.headers()["x-contract-version"], "1");
    assert!(dotnet.is_session_revoked(session));
    let forwarded = dotnet.last_headers("/auth/logout").unwrap();
    assert_eq!(
        forwarded["authorization"],
        format!("Bearer {}", str_of(&tokens, "access_token")).as_str(),
        "the caller's Authorization is forwarded"
    );

    // Without a bearer: 401 with the challenge header, and no call to .NET.
    let calls = dotnet.calls("/auth/logout");
    let resp = app
        .post_json("/auth/logout", &json!({"session_id": session}))
        .await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    problem(resp, 401, "unauthorized").await;
    assert_eq!(dotnet.calls("/auth/logout"), calls);
}

#[tokio::test]
async fn a_rogue_admin_without_mfa_is_refused_and_logged_out() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let resp = login(&app, "rogue-admin@example.com").await;
    let body = problem(resp, 403, "mfa_required_for_admin").await;
    let text = body.to_string();
    assert!(!text.contains("access_token") && !text.contains("refresh_token"));

    // .NET saw one logout, for the session it had just opened, with the withheld token.
    assert_eq!(dotnet.calls("/auth/logout"), 1);
    let logout = dotnet.last_request("/auth/logout").unwrap();
    let session = logout.json().unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(dotnet.is_session_revoked(&session));
    let withheld = logout
        .header("authorization")
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    assert!(!dotnet.is_token_active(&withheld));
    assert_eq!(
        logout.header("x-request-id"),
        dotnet
            .last_headers("/auth/login")
            .unwrap()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
    );
    // Logged at warn, without the token.
    let logs = crate::helpers::captured_logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("admin login without MFA refused")
                && l.contains(&session)
                && l.contains("\"WARN\"")),
        "a warn line names the refused session"
    );
    assert_no_secrets_logged(&[&withheld, DEFAULT_PASSWORD]);
}

#[tokio::test]
async fn the_admin_rule_can_be_turned_off() {
    let Some((app, dotnet)) = TestApp::builder()
        .env("ENFORCE_ADMIN_MFA", "false")
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let resp = login(&app, "rogue-admin@example.com").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user"]["role"], "ADMIN");
    assert_eq!(dotnet.calls("/auth/logout"), 0);
}

#[tokio::test]
async fn dotnet_refusals_pass_through_verbatim_with_the_request_id() {
    let Some((app, _dotnet)) = app().await else {
        return;
    };
    let resp = app
        .client
        .post(app.url("/auth/login"))
        .header("X-Request-Id", "banned-1")
        .json(
            &json!({"email": "banned@example.com", "password": DEFAULT_PASSWORD, "device_id": "d"}),
        )
        .send()
        .await
        .unwrap();
    let body = problem(resp, 403, "account_banned").await;
    // Exactly .NET's problem, plus requestId.
    assert_eq!(
        body,
        json!({
            "type": "https://dotnet.local/problems/account-banned",
            "title": "Forbidden",
            "status": 403,
            "detail": "this account is banned",
            "code": "account_banned",
            "requestId": "banned-1",
        })
    );

    let resp = app
        .post_json(
            "/auth/login",
            &json!({"email": "alice@example.com", "password": "wrong", "device_id": "d"}),
        )
        .await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    problem(resp, 401, "invalid_credentials").await;
}

#[tokio::test]
async fn out_of_bounds_fields_never_reach_dotnet() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let long = "x".repeat(1025);
    for body in [
        json!({"email": "no-at-sign", "password": "p", "device_id": "d"}),
        json!({"email": "a@", "password": "p", "device_id": "d"}),
        json!({"email": format!("{}@example.com", "a".repeat(250)), "password": "p", "device_id": "d"}),
        json!({"email": "alice@example.com", "password": "", "device_id": "d"}),
        json!({"email": "alice@example.com", "password": long, "device_id": "d"}),
        json!({"email": "alice@example.com", "password": "p", "device_id": ""}),
        json!({"email": "alice@example.com", "password": "p", "device_id": "d".repeat(129)}),
        json!({"email": "alice@example.com", "password": 12345, "device_id": "d"}),
        json!({"email": "alice@example.com", "device_id": "d"}),
        json!(["alice@example.com"]),
    ] {
        let resp = app.post_json("/auth/login", &body).await;
        assert_eq!(resp.status(), 400, "{body}");
        problem(resp, 400, "invalid_request").await;
    }
    let resp = app
        .client
        .post(app.url("/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(resp, 400, "invalid_request").await;
    assert_eq!(dotnet.calls("/auth/login"), 0);

    // An OTP that is not exactly 6 ASCII digits never reaches .NET.
    for otp in ["12345", "1234567", "12345a", "١٢٣٤٥٦", " 123456", ""] {
        let resp = app
            .post_json(
                "/auth/mfa/verify",
                &json!({"challenge_id": "c-1", "otp_code": otp}),
            )
            .await;
        problem(resp, 400, "invalid_request").await;
    }
    let resp = app
        .post_json(
            "/auth/mfa/verify",
            &json!({"challenge_id": "", "otp_code": "123456"}),
        )
        .await;
    problem(resp, 400, "invalid_request").await;
    assert_eq!(dotnet.calls("/auth/mfa/verify"), 0);

    for body in [
        json!({"refresh_token": "r".repeat(4097), "device_id": "d"}),
        json!({"refresh_token": "", "device_id": "d"}),
        json!({"refresh_token": "r", "device_id": ""}),
    ] {
        let resp = app.post_json("/auth/refresh", &body).await;
        problem(resp, 400, "invalid_request").await;
    }
    assert_eq!(dotnet.calls("/auth/refresh"), 0);
    // A password sent with the wrong type is not echoed.
    let resp = app
        .post_json(
            "/auth/login",
            &json!({"email": "alice@example.com", "password": 987654321, "device_id": "d"}),
        )
        .await;
    let body = problem(resp, 400, "invalid_request").await;
    assert!(!body.to_string().contains("987654321"), "{body}");
    assert_no_secrets_logged(&["987654321"]);
}

#[tokio::test]
async fn answers_that_are_not_the_contract_are_502() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    for body in [
        "not json at all",
        r#"{"status": "WEIRD"}"#,
        r#"{"status": "MFA_REQUIRED"}"#,
        r#"{"status": "AUTHENTICATED", "tokens": {}, "user": {}}"#,
    ] {
        dotnet.inject_fault(
            Fault::status(200)
                .times(1)
                .path("/auth/login")
                .body("application/json", body),
        );
        let resp = login(&app, "alice@example.com").await;
        problem(resp, 502, "upstream_error").await;
    }
    // A user whose role is not in the closed set.
    let tokens = dotnet.issue_tokens("alice@example.com", "d").unwrap();
    let answer = json!({"status": "AUTHENTICATED", "tokens": tokens, "user": {
        "id": "u", "email": "alice@example.com", "role": "OWNER", "status": "ACTIVE",
        "age_group": "AGE_25_34", "mfa_enrolled": false}});
    dotnet.inject_fault(
        Fault::status(200)
            .times(1)
            .path("/auth/login")
            .body("application/json", answer.to_string()),
    );
    problem(
        login(&app, "alice@example.com").await,
        502,
        "upstream_error",
    )
    .await;
    // A 4xx without a problem body.
    dotnet.inject_fault(
        Fault::status(404)
            .times(1)
            .path("/auth/login")
            .body("text/html", "<h1>nope</h1>"),
    );
    problem(
        login(&app, "alice@example.com").await,
        502,
        "upstream_error",
    )
    .await;
    assert_no_secrets_logged(&[str_of(&tokens, "access_token")]);
}

#[tokio::test]
async fn a_dotnet_5xx_is_503_with_its_retry_after_and_no_body() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    dotnet.inject_fault(
        Fault::status(500)
            .times(1)
            .path("/auth/login")
            .retry_after("7")
            .body("application/problem+json", r#"{"code": "secret_internal"}"#),
    );
    let resp = login(&app, "alice@example.com").await;
    assert_eq!(resp.headers()["retry-after"], "7");
    let body = problem(resp, 503, "upstream_unavailable").await;
    assert!(!body.to_string().contains("secret_internal"));
    assert_eq!(
        dotnet.calls("/auth/login"),
        1,
        "a login is not retried on 5xx"
    );

    let in_20s = chrono::Utc::now() + chrono::Duration::seconds(20);
    dotnet.inject_fault(
        Fault::status(503)
            .times(1)
            .path("/auth/login")
            .retry_after(in_20s.format("%a, %d %b %Y %H:%M:%S GMT").to_string()),
    );
    let resp = login(&app, "alice@example.com").await;
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((18..=21).contains(&secs), "{secs}");
    problem(resp, 503, "upstream_unavailable").await;

    // Without a Retry-After: 1 s.
    dotnet.inject_fault(Fault::status(502).times(1).path("/auth/login"));
    let resp = login(&app, "alice@example.com").await;
    assert_eq!(resp.headers()["retry-after"], "1");
}

#[tokio::test]
async fn dotnet_sees_the_request_id_trace_client_and_user_agent() {
    let Some((app, dotnet)) = app().await else {
        return;
    };
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let resp = app
        .client
        .post(app.url("/auth/login"))
        .header("X-Request-Id", "fwd-1")
        .header("traceparent", format!("00-{trace_id}-{parent}-01"))
        .header("X-Forwarded-For", "203.0.113.7")
        .header("User-Agent", "test-agent/1.0")
        .json(
            &json!({"email": "alice@example.com", "password": DEFAULT_PASSWORD, "device_id": "d"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = dotnet.last_headers("/auth/login").unwrap();
    assert_eq!(h["x-request-id"], "fwd-1");
    let tp = h["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(parts[2], parent, "a new span");
    assert_eq!(parts[2].len(), 16);
    assert_eq!(
        h["x-forwarded-for"], "203.0.113.7, 127.0.0.1",
        "the chain with our peer appended"
    );
    assert_eq!(h["user-agent"], "test-agent/1.0");
    assert!(
        h.get("authorization").is_none(),
        "login has no Authorization"
    );

    // Without a client traceparent, a new trace still reaches .NET.
    let resp = login(&app, "alice@example.com").await;
    assert_eq!(resp.status(), 200);
    let h = dotnet.last_headers("/auth/login").unwrap();
    assert!(emulator_traceparent_ok(h["traceparent"].to_str().unwrap()));
    assert!(h.contains_key("x-request-id"));
}

fn emulator_traceparent_ok(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    parts.len() == 4 && parts[0] == "00" && parts[1].len() == 32 && parts[2].len() == 16
}

#[tokio::test]
async fn the_auth_routes_are_in_the_openapi_document() {
    let Some((app, _dotnet)) = app().await else {
        return;
    };
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    for path in [
        "/auth/login",
        "/auth/mfa/verify",
        "/auth/refresh",
        "/auth/logout",
    ] {
        assert!(spec["paths"][path]["post"].is_object(), "{path}");
    }
    let logout = &spec["paths"]["/auth/logout"]["post"];
    assert!(
        logout["security"].is_array(),
        "logout needs the bearer scheme"
    );
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["LoginAnswer"]["discriminator"]["propertyName"],
        "status"
    );
    assert_eq!(
        schemas["MfaVerifyRequest"]["properties"]["otp_code"]["pattern"],
        "^[0-9]{6}$"
    );
    let _ = Duration::ZERO;
}
