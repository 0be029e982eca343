//! Contract sections 2, 9 and 12 through the auth routes: the circuit breaker (opening under
//! 5xx and under slow calls, failing fast while open, closing after half-open probes), the
//! retry rule (never a second send of a call that may have reached .NET), and refresh
//! coalescing.

use std::time::{Duration, Instant};

use emulator::{Fault, Latency};
use serde_json::{json, Value};

use crate::auth::{login, problem, str_of, tokens_of};
use crate::helpers::{assert_no_secrets_logged, TestApp};

#[tokio::test]
async fn the_breaker_opens_under_5xx_fails_fast_and_closes_after_probes() {
    let Some((app, dotnet)) = TestApp::builder()
        .env("CIRCUIT_MIN_CALLS", "4")
        .env("CIRCUIT_FAILURE_RATE", "50")
        .env("CIRCUIT_OPEN_SECONDS", "1")
        .env("CIRCUIT_HALF_OPEN_PROBES", "2")
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    dotnet.inject_fault(Fault::status(500).times(4).path("/auth/login"));
    for _ in 0..4 {
        let resp = login(&app, "alice@example.com").await;
        assert_eq!(resp.headers()["retry-after"], "1");
        problem(resp, 503, "upstream_unavailable").await;
    }
    assert_eq!(dotnet.calls("/auth/login"), 4);

    // Open: fails at once, nothing sent, Retry-After = the open interval left (≤ 1 s).
    let started = Instant::now();
    let resp = login(&app, "alice@example.com").await;
    let fast = started.elapsed();
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = problem(resp, 503, "upstream_unavailable").await;
    assert!(str_of(&body, "detail").contains("circuit open"), "{body}");
    assert!(fast < Duration::from_millis(200), "{fast:?}");
    assert_eq!(dotnet.calls("/auth/login"), 4, "no call while open");
    // Every route goes through the same breaker.
    let resp = app
        .post_json(
            "/auth/refresh",
            &json!({"refresh_token": "r", "device_id": "d"}),
        )
        .await;
    problem(resp, 503, "upstream_unavailable").await;
    assert_eq!(dotnet.calls("/auth/refresh"), 0);

    // After the open interval: two probes succeed and close it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..2 {
        assert_eq!(login(&app, "alice@example.com").await.status(), 200);
    }
    // Closed: more calls than there are probes go through, concurrently.
    let logins = (0..4).map(|_| login(&app, "alice@example.com"));
    for resp in futures::future::join_all(logins).await {
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(dotnet.calls("/auth/login"), 10);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("sidecar_circuit_state{upstream=\"dotnet\"}"));
}

#[tokio::test]
async fn a_failed_probe_reopens_the_breaker() {
    let Some((app, dotnet)) = TestApp::builder()
        .env("CIRCUIT_MIN_CALLS", "2")
        .env("CIRCUIT_OPEN_SECONDS", "1")
        .env("CIRCUIT_HALF_OPEN_PROBES", "1")
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    dotnet.inject_fault(Fault::status(503).times(3).path("/auth/login"));
    for _ in 0..2 {
        problem(
            login(&app, "alice@example.com").await,
            503,
            "upstream_unavailable",
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The probe fails: open again, for a fresh interval.
    problem(
        login(&app, "alice@example.com").await,
        503,
        "upstream_unavailable",
    )
    .await;
    assert_eq!(dotnet.calls("/auth/login"), 3);
    problem(
        login(&app, "alice@example.com").await,
        503,
        "upstream_unavailable",
    )
    .await;
    assert_eq!(dotnet.calls("/auth/login"), 3, "open again");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(login(&app, "alice@example.com").await.status(), 200);
}

#[tokio::test]
async fn the_breaker_opens_under_slow_calls() {
    let Some((app, dotnet)) = TestApp::builder()
        .env("DOTNET_SLOW_CALL_SECONDS", "0.2")
        .env("CIRCUIT_SLOW_CALL_RATE", "80")
        .env("CIRCUIT_MIN_CALLS", "3")
        .env("CIRCUIT_OPEN_SECONDS", "5")
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    dotnet.add_latency(
        Latency::new(Duration::from_millis(300))
            .times(3)
            .path("/auth/login"),
    );
    for _ in 0..3 {
        // Slow, but answered: the client gets its tokens.
        assert_eq!(login(&app, "alice@example.com").await.status(), 200);
    }
    let resp = login(&app, "alice@example.com").await;
    let retry_after: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((4..=5).contains(&retry_after), "{retry_after}");
    problem(resp, 503, "upstream_unavailable").await;
    assert_eq!(dotnet.calls("/auth/login"), 3);
}

#[tokio::test]
async fn a_refresh_that_timed_out_after_reaching_dotnet_is_not_sent_again() {
    let Some((app, dotnet)) = TestApp::builder()
        .env("DOTNET_TIMEOUT_SECONDS", "1")
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let tokens = tokens_of(&app, "alice@example.com").await;
    // .NET rotates the token, then its answer is late past our timeout.
    dotnet.add_latency(
        Latency::new(Duration::from_millis(1500))
            .times(1)
            .path("/auth/refresh")
            .after_processing(),
    );
    let refresh = json!({"refresh_token": tokens["refresh_token"], "device_id": "dev-1"});
    let started = Instant::now();
    let resp = app.post_json("/auth/refresh", &refresh).await;
    assert!(started.elapsed() < Duration::from_millis(1400));
    assert_eq!(resp.headers()["retry-after"], "1");
    problem(resp, 503, "upstream_unavailable").await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        dotnet.calls("/auth/refresh"),
        1,
        "a second send would be a replay that revokes the session"
    );
    // .NET did act: the token is spent (presenting it again is the client's replay).
    problem(
        app.post_json("/auth/refresh", &refresh).await,
        401,
        "refresh_token_reused",
    )
    .await;
}

#[tokio::test]
async fn a_state_changing_call_is_retried_when_the_connection_was_refused() {
    let Some((app, dotnet)) = TestApp::with_emulator().await else {
        return;
    };
    let body: Value = login(&app, "bob@example.com").await.json().await.unwrap();
    let challenge = str_of(&body, "challenge_id").to_owned();
    let otp = dotnet.otp_for_challenge(&challenge).unwrap();
    // No other test makes an MFA verify fail, so this series is ours alone.
    let series = r#"sidecar_upstream_requests_total{operation="mfa_verify",outcome="failure"}"#;
    let before = app.metric(series).await;

    dotnet.refuse_connections().await;
    let verify = {
        let (client, url) = (app.client.clone(), app.url("/auth/mfa/verify"));
        let body = json!({"challenge_id": challenge, "otp_code": otp});
        tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap() })
    };
    // Once the first attempt has been refused, .NET comes back before the retry.
    let deadline = Instant::now() + Duration::from_secs(2);
    while app.metric(series).await <= before {
        assert!(Instant::now() < deadline, "the first attempt never failed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    dotnet.accept_connections().await.unwrap();
    let resp = verify.await.unwrap();
    assert_eq!(resp.status(), 200, "retried after the refused connection");
    assert_eq!(dotnet.calls("/auth/mfa/verify"), 1, "sent once");
}

#[tokio::test]
async fn dotnet_down_is_503_with_retry_after_1() {
    let Some((app, dotnet)) = TestApp::with_emulator().await else {
        return;
    };
    dotnet.refuse_connections().await;
    let resp = login(&app, "alice@example.com").await;
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = problem(resp, 503, "upstream_unavailable").await;
    assert!(
        str_of(&body, "detail").contains("cannot be reached"),
        "{body}"
    );
}

#[tokio::test]
async fn identical_concurrent_refreshes_share_one_call() {
    let Some((app, dotnet)) = TestApp::with_emulator().await else {
        return;
    };
    let tokens = tokens_of(&app, "alice@example.com").await;
    // Slow enough for every request to arrive while the first is in flight.
    dotnet.add_latency(
        Latency::new(Duration::from_millis(400))
            .times(1)
            .path("/auth/refresh"),
    );
    let body = json!({"refresh_token": tokens["refresh_token"], "device_id": "dev-1"});
    let requests = (0..8).map(|_| app.post_json("/auth/refresh", &body));
    let answers = futures::future::join_all(requests).await;
    let mut pairs = Vec::new();
    for resp in answers {
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        pairs.push(body["tokens"].clone());
    }
    assert!(
        pairs.iter().all(|p| *p == pairs[0]),
        "every waiter got the same pair"
    );
    assert_eq!(dotnet.calls("/auth/refresh"), 1);
    assert!(!dotnet.is_session_revoked(str_of(&tokens, "session_id")));

    // Nothing kept: the same token afterwards is a real replay.
    problem(
        app.post_json("/auth/refresh", &body).await,
        401,
        "refresh_token_reused",
    )
    .await;
    assert_eq!(dotnet.calls("/auth/refresh"), 2);
    // A different device_id is a different request: not coalesced with another in flight.
    assert_no_secrets_logged(&[
        str_of(&tokens, "refresh_token"),
        str_of(&pairs[0], "refresh_token"),
    ]);
}
