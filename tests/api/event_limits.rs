//! Contract section 6 over HTTP: `POST /events` answers 429 `rate_limited` per user, device
//! and client IP (with honest `Retry-After` and the RateLimit fields), a client cannot pick
//! its IP bucket, malformed events cost nothing, Redis loss keeps the limits, and lag over
//! the high watermark answers 429 `backpressure` while auth is still served.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use emulator::DEFAULT_PASSWORD;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::event_support::{new_id, token, unique_names};
use crate::helpers::{eventually, require, PrivateServer, Service, TestApp, REDIS_URL};

/// A valid event with a fresh id, from `device` (none when `None`).
fn event(device: Option<&str>) -> Value {
    let mut e = json!({
        "eventId": new_id(),
        "eventType": "app.open",
        "occurredAt": chrono::Utc::now().to_rfc3339(),
        "payload": {"n": 1}
    });
    if let Some(device) = device {
        e["device_id"] = json!(device);
    }
    e
}

fn events(n: usize, device: Option<&str>) -> Value {
    json!({ "events": (0..n).map(|_| event(device)).collect::<Vec<_>>() })
}

/// An app on Redis with these limits (`rate/s:burst`) and test tokens.
fn limited(user: &str, device: &str, ip: &str) -> crate::helpers::TestAppBuilder {
    TestApp::builder()
        .test_auth()
        .env("REDIS_URL", REDIS_URL)
        .env("RATE_LIMIT_USER", user)
        .env("RATE_LIMIT_DEVICE", device)
        .env("RATE_LIMIT_IP", ip)
        .env("RATE_LIMIT_REDIS_TIMEOUT_MS", "500")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn retry_after(&self) -> u64 {
        self.header("retry-after")
            .expect("Retry-After")
            .parse()
            .expect("whole seconds")
    }
}

async fn post(app: &TestApp, user: &str, body: &Value, forwarded_for: Option<&str>) -> Answer {
    let mut req = app
        .client
        .post(app.url("/events"))
        .bearer_auth(token(user))
        .json(body);
    if let Some(xff) = forwarded_for {
        req = req.header("X-Forwarded-For", xff);
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.json().await.unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

fn assert_rate_limited(answer: &Answer, scope: &str) {
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert_eq!(answer.body["code"], "rate_limited", "{}", answer.body);
    assert_eq!(
        answer.header("content-type"),
        Some("application/problem+json")
    );
    assert!(answer.retry_after() >= 1);
    let policy = answer.header("ratelimit-policy").expect("RateLimit-Policy");
    assert!(policy.starts_with(&format!("\"{scope}\";q=")), "{policy}");
    let state = answer.header("ratelimit").expect("RateLimit");
    assert!(state.starts_with(&format!("\"{scope}\";r=")), "{state}");
    assert!(
        state.ends_with(&format!(";t={}", answer.retry_after())),
        "t is Retry-After on a denial: {state}"
    );
}

#[tokio::test]
async fn one_users_flood_is_refused_while_another_user_is_served() {
    if !require(Service::Redis) {
        return;
    }
    // 6 a minute: nothing refills noticeably while the test runs.
    let Some(app) = limited("6/m:10", "1000/s:1000", "1000/s:1000")
        .spawn()
        .await
    else {
        return;
    };
    for i in 0..5 {
        let ok = post(&app, "flooder", &events(2, Some("phone")), None).await;
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert_eq!(ok.body["accepted"], 2);
        assert_eq!(ok.header("ratelimit-policy"), Some("\"user\";q=10;w=100"));
        let r = 8 - 2 * i;
        assert!(
            ok.header("ratelimit")
                .is_some_and(|v| v.starts_with(&format!("\"user\";r={r};t="))),
            "{:?}",
            ok.header("ratelimit")
        );
    }
    let refused = post(&app, "flooder", &events(1, Some("phone")), None).await;
    assert_rate_limited(&refused, "user");
    assert_eq!(
        app.get("/metrics").await.status(),
        200,
        "other routes are untouched"
    );

    let other = post(&app, "polite", &events(3, Some("tablet")), None).await;
    assert_eq!(other.status, 200, "another user is served: {}", other.body);
    assert_eq!(other.body["accepted"], 3);
}

#[tokio::test]
async fn retry_after_is_honest() {
    if !require(Service::Redis) {
        return;
    }
    let Some(app) = limited("2/s:4", "1000/s:1000", "1000/s:1000").spawn().await else {
        return;
    };
    assert_eq!(post(&app, "eve", &events(4, None), None).await.status, 200);
    let refused = post(&app, "eve", &events(3, None), None).await;
    assert_rate_limited(&refused, "user");
    // 3 events at 2/s: 2 s, or 1 s if half a second passed since the bucket emptied.
    assert!((1..=2).contains(&refused.retry_after()));
    tokio::time::sleep(Duration::from_secs(refused.retry_after())).await;
    let later = post(&app, "eve", &events(3, None), None).await;
    assert_eq!(
        later.status, 200,
        "waiting Retry-After is enough: {}",
        later.body
    );
}

#[tokio::test]
async fn the_device_scope_bites_on_its_own() {
    if !require(Service::Redis) {
        return;
    }
    let Some(app) = limited("1000/s:1000", "6/m:4", "1000/s:1000").spawn().await else {
        return;
    };
    let mixed = json!({"events": [event(Some("phone")), event(Some("phone")), event(Some("phone")), event(Some("watch")), event(None)]});
    assert_eq!(post(&app, "dana", &mixed, None).await.status, 200);
    let refused = post(&app, "dana", &events(2, Some("phone")), None).await;
    assert_rate_limited(&refused, "device");
    // The same user's other device, and events without a device, are served.
    assert_eq!(
        post(&app, "dana", &events(3, Some("watch")), None)
            .await
            .status,
        200
    );
    assert_eq!(
        post(&app, "dana", &events(10, None), None).await.status,
        200
    );
}

#[tokio::test]
async fn the_ip_scope_bites_and_a_client_cannot_pick_its_bucket() {
    if !require(Service::Redis) {
        return;
    }
    // The test client (127.0.0.1) plays the trusted proxy in front of the clients.
    let Some(app) = limited("1000/s:1000", "1000/s:1000", "6/m:4")
        .env("TRUSTED_PROXIES", "127.0.0.1/32")
        .spawn()
        .await
    else {
        return;
    };
    let client = Some("198.51.100.7");
    assert_eq!(post(&app, "u1", &events(2, None), client).await.status, 200);
    assert_eq!(post(&app, "u2", &events(2, None), client).await.status, 200);
    let refused = post(&app, "u3", &events(1, None), client).await;
    assert_rate_limited(&refused, "ip");
    // A client behind the proxy that writes its own X-Forwarded-For only adds hops to the
    // left of what the proxy appends: its real address still decides.
    let forged = post(
        &app,
        "u3",
        &events(1, None),
        Some("203.0.113.99, 198.51.100.7"),
    )
    .await;
    assert_rate_limited(&forged, "ip");
    let other = post(&app, "u3", &events(1, None), Some("198.51.100.8")).await;
    assert_eq!(other.status, 200, "another client address: {}", other.body);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_escape_its_bucket_with_x_forwarded_for() {
    if !require(Service::Redis) {
        return;
    }
    // No trusted proxies: the socket peer is the client, whatever the header says.
    let Some(app) = limited("1000/s:1000", "1000/s:1000", "6/m:3").spawn().await else {
        return;
    };
    for (i, xff) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
        let answer = post(&app, &format!("r{i}"), &events(1, None), Some(xff)).await;
        assert_eq!(answer.status, 200);
    }
    let refused = post(&app, "r9", &events(1, None), Some("192.0.2.250")).await;
    assert_rate_limited(&refused, "ip");
}

#[tokio::test]
async fn malformed_events_cost_nothing() {
    if !require(Service::Redis) {
        return;
    }
    let Some(app) = limited("6/m:3", "1000/s:1000", "1000/s:1000").spawn().await else {
        return;
    };
    let bad =
        json!({"eventId": "not-a-uuid", "eventType": "x", "occurredAt": "now", "payload": {}});
    let mut batch = vec![event(None), event(None)];
    batch.extend(std::iter::repeat_n(bad.clone(), 8));
    let answer = post(&app, "mia", &json!({ "events": batch }), None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        (
            answer.body["accepted"].clone(),
            answer.body["rejected"].clone()
        ),
        (json!(2), json!(8))
    );
    assert!(answer
        .header("ratelimit")
        .is_some_and(|v| v.starts_with("\"user\";r=1;")));
    // A batch of nothing but malformed events is judged and charged nothing.
    let all_bad = post(&app, "mia", &json!({"events": vec![bad; 20]}), None).await;
    assert_eq!(all_bad.status, 200);
    assert_eq!(all_bad.body["rejected"], 20);
    assert_eq!(post(&app, "mia", &events(1, None), None).await.status, 200);
    assert_rate_limited(&post(&app, "mia", &events(1, None), None).await, "user");
}

#[tokio::test]
async fn redis_killed_keeps_the_limits_and_its_return_shares_them_again() {
    let mut redis = PrivateServer::redis().await;
    let (_, prefix) = unique_names();
    let replica = || {
        TestApp::builder()
            .test_auth()
            .env("REDIS_URL", redis.url())
            .env("REDIS_KEY_PREFIX", prefix.clone())
            .env("RATE_LIMIT_USER", "6/m:4")
            .env("RATE_LIMIT_REDIS_TIMEOUT_MS", "500")
            .spawn()
    };
    let (Some(a), Some(b)) = (replica().await, replica().await) else {
        return;
    };
    assert_eq!(post(&a, "zoe", &events(4, None), None).await.status, 200);
    assert_rate_limited(&post(&b, "zoe", &events(1, None), None).await, "user");

    redis.kill();
    // From memory now, per replica: still limited, never skipped.
    assert_eq!(post(&a, "zoe", &events(4, None), None).await.status, 200);
    assert_rate_limited(&post(&a, "zoe", &events(1, None), None).await, "user");
    assert!(!a.abuse.limiter.redis_up());

    redis.restart().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            a.abuse.limiter.redis_up() && b.abuse.limiter.redis_up()
        })
        .await
    );
    assert_eq!(post(&b, "zoe", &events(4, None), None).await.status, 200);
    assert_rate_limited(&post(&a, "zoe", &events(1, None), None).await, "user");
}

#[tokio::test]
async fn lag_over_high_sheds_events_but_not_auth_until_it_drains_below_low() {
    let nats = PrivateServer::nats().await;
    let (stream, _) = unique_names();
    // A consumer of the test's own that counts for backpressure and acks only when told.
    let slow = format!("slow_{}", uuid::Uuid::new_v4().simple());
    let Some((app, _dotnet)) = TestApp::builder()
        .test_auth()
        .env("NATS_URL", nats.url())
        .env("EVENT_STREAM", &stream)
        .env("BACKPRESSURE_HIGH", "50")
        .env("BACKPRESSURE_LOW", "10")
        .env("BACKPRESSURE_CONSUMERS", &slow)
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let consumer = js
        .get_stream(&stream)
        .await
        .expect("the service created the stream")
        .create_consumer(pull::Config {
            durable_name: Some(slow.clone()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();

    // 60 events reach the stream; the slow consumer has not acked any.
    let first = post(&app, "ivy", &events(60, None), None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["accepted"], 60);
    assert!(
        eventually(Duration::from_secs(15), || async {
            post(&app, "ivy", &events(1, None), None).await.status == 429
        })
        .await,
        "lag over HIGH sheds /events"
    );
    let shed = post(&app, "ivy", &events(1, None), None).await;
    assert_eq!(shed.status, 429);
    assert_eq!(shed.body["code"], "backpressure", "{}", shed.body);
    assert!((1..=60).contains(&shed.retry_after()));
    assert!(shed.header("ratelimit-policy").is_none());
    // Auth, meta and the rest are never shed.
    let login = app
        .post_json(
            "/auth/login",
            &json!({"email": "alice@example.com", "password": DEFAULT_PASSWORD, "device_id": "d1"}),
        )
        .await;
    assert_eq!(login.status(), 200);
    assert_eq!(app.get("/meta/enums").await.status(), 200);

    // The consumer catches up (everything, including what was accepted before shedding
    // began): below LOW, /events accepts again.
    let mut messages = consumer.messages().await.unwrap();
    let mut acked = 0;
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        message.unwrap().ack().await.unwrap();
        acked += 1;
    }
    assert!(acked >= 60, "{acked}");
    assert!(
        eventually(Duration::from_secs(15), || async {
            post(&app, "ivy", &events(1, None), None).await.status == 200
        })
        .await,
        "lag below LOW accepts again"
    );
    assert_eq!(app.abuse.backpressure.shedding(), None);
}
