//! Contract section 6 below HTTP: the running service's rate limiter against real Redis
//! (shared across replicas, per replica while Redis is gone) and its backpressure
//! controller against real JetStream consumers.

use std::net::IpAddr;
use std::time::Duration;

use actors::rate_limiter::Source;
use actors::token_bucket::Scope;
use async_nats::jetstream::{self, consumer::pull, stream};
use futures::StreamExt;

use crate::helpers::{
    captured_logs, eventually, require, PrivateServer, Service, Store, TestApp, REDIS_URL,
};

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

/// An app on Redis with the given limits (`rate/s:burst`) and, when `prefix` is set, those
/// Redis keys (two apps with one prefix are two replicas).
async fn app_with_limits(
    redis_url: &str,
    prefix: Option<&str>,
    user: &str,
    device: &str,
    ip_limit: &str,
) -> TestApp {
    let mut builder = TestApp::builder()
        .store(Store::Sqlite)
        .env("REDIS_URL", redis_url)
        .env("RATE_LIMIT_USER", user)
        .env("RATE_LIMIT_DEVICE", device)
        .env("RATE_LIMIT_IP", ip_limit)
        .env("RATE_LIMIT_REDIS_TIMEOUT_MS", "500");
    if let Some(prefix) = prefix {
        builder = builder.env("REDIS_KEY_PREFIX", prefix);
    }
    builder.spawn().await.expect("app")
}

fn prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn one_users_flood_is_limited_while_another_user_is_served() {
    if !require(Service::Redis) {
        return;
    }
    let app = app_with_limits(REDIS_URL, None, "5/s:10", "1000/s:1000", "1000/s:1000").await;
    let limiter = &app.abuse.limiter;
    for _ in 0..10 {
        let v = limiter
            .check("flooder", ip("198.51.100.1"), &[("phone", 1)], 1)
            .await;
        assert!(v.allowed);
        assert_eq!(v.source, Source::Redis);
    }
    let denied = limiter
        .check("flooder", ip("198.51.100.1"), &[("phone", 1)], 1)
        .await;
    assert!(!denied.allowed);
    assert_eq!(denied.denied_scopes, vec![Scope::User]);
    assert!(denied.retry_after_secs >= 1);
    let (policy, state) = denied.rate_limit.clone().expect("fields");
    assert_eq!(policy, "\"user\";q=10;w=2");
    assert!(state.starts_with("\"user\";r=0;t="), "{state}");

    let other = limiter
        .check("polite", ip("198.51.100.2"), &[("tablet", 1)], 1)
        .await;
    assert!(other.allowed, "another user is served");
}

#[tokio::test]
async fn the_device_scope_bites_on_its_own() {
    if !require(Service::Redis) {
        return;
    }
    let app = app_with_limits(REDIS_URL, None, "1000/s:1000", "2/s:4", "1000/s:1000").await;
    let limiter = &app.abuse.limiter;
    let v = limiter
        .check(
            "alice",
            ip("198.51.100.3"),
            &[("phone", 3), ("watch", 1)],
            4,
        )
        .await;
    assert!(v.allowed);
    let denied = limiter
        .check("alice", ip("198.51.100.3"), &[("phone", 2)], 2)
        .await;
    assert!(!denied.allowed);
    assert_eq!(denied.denied_scopes, vec![Scope::Device]);
    assert!(denied.rate_limit.unwrap().0.starts_with("\"device\""));
    // The same user from another device, and events without a device, are served.
    assert!(
        limiter
            .check("alice", ip("198.51.100.3"), &[("tablet", 2)], 2)
            .await
            .allowed
    );
    assert!(
        limiter
            .check("alice", ip("198.51.100.3"), &[], 3)
            .await
            .allowed
    );
}

#[tokio::test]
async fn the_ip_scope_bites_on_its_own() {
    if !require(Service::Redis) {
        return;
    }
    let app = app_with_limits(REDIS_URL, None, "1000/s:1000", "1000/s:1000", "2/s:6").await;
    let limiter = &app.abuse.limiter;
    // Three users behind one address share its bucket.
    for user in ["u1", "u2", "u3"] {
        assert!(limiter.check(user, ip("203.0.113.7"), &[], 2).await.allowed);
    }
    let denied = limiter.check("u4", ip("203.0.113.7"), &[], 1).await;
    assert!(!denied.allowed);
    assert_eq!(denied.denied_scopes, vec![Scope::Ip]);
    assert!(
        limiter.check("u4", ip("203.0.113.8"), &[], 1).await.allowed,
        "another address is served"
    );
    // IPv6 clients share their /64.
    assert!(
        limiter
            .check("v6", ip("2001:db8:5:6::1"), &[], 6)
            .await
            .allowed
    );
    let same_64 = limiter.check("v6b", ip("2001:db8:5:6::ffff"), &[], 1).await;
    assert_eq!(same_64.denied_scopes, vec![Scope::Ip]);
}

#[tokio::test]
async fn retry_after_is_honest() {
    if !require(Service::Redis) {
        return;
    }
    let app = app_with_limits(REDIS_URL, None, "2/s:4", "1000/s:1000", "1000/s:1000").await;
    let limiter = &app.abuse.limiter;
    assert!(limiter.check("eve", ip("192.0.2.1"), &[], 4).await.allowed);
    let denied = limiter.check("eve", ip("192.0.2.1"), &[], 3).await;
    assert!(!denied.allowed);
    // 3 tokens at 2/s: 2 s (rounded up from 1.5).
    assert_eq!(denied.retry_after_secs, 2);
    tokio::time::sleep(Duration::from_secs(denied.retry_after_secs)).await;
    let later = limiter.check("eve", ip("192.0.2.1"), &[], 3).await;
    assert!(later.allowed, "waiting Retry-After is enough");
}

#[tokio::test]
async fn limits_are_shared_across_replicas() {
    if !require(Service::Redis) {
        return;
    }
    let shared = prefix();
    let a = app_with_limits(
        REDIS_URL,
        Some(&shared),
        "1/s:6",
        "1000/s:1000",
        "1000/s:1000",
    )
    .await;
    let b = app_with_limits(
        REDIS_URL,
        Some(&shared),
        "1/s:6",
        "1000/s:1000",
        "1000/s:1000",
    )
    .await;
    assert!(
        a.abuse
            .limiter
            .check("sam", ip("192.0.2.9"), &[], 4)
            .await
            .allowed
    );
    let on_b = b.abuse.limiter.check("sam", ip("192.0.2.10"), &[], 4).await;
    assert!(!on_b.allowed, "replica b sees what replica a charged");
    assert!(
        b.abuse
            .limiter
            .check("sam", ip("192.0.2.10"), &[], 2)
            .await
            .allowed
    );
}

#[tokio::test]
async fn redis_down_keeps_limits_in_memory_and_redis_back_shares_them_again() {
    if !require(Service::Redis) {
        return;
    }
    let mut redis = PrivateServer::redis().await;
    let shared = prefix();
    let a = app_with_limits(
        &redis.url(),
        Some(&shared),
        "1/s:5",
        "1000/s:1000",
        "1000/s:1000",
    )
    .await;
    let b = app_with_limits(
        &redis.url(),
        Some(&shared),
        "1/s:5",
        "1000/s:1000",
        "1000/s:1000",
    )
    .await;
    let (la, lb) = (&a.abuse.limiter, &b.abuse.limiter);
    assert!(la.redis_up() && lb.redis_up());

    redis.kill();
    // Per replica now: each enforces the limit from its own memory, never skipping it.
    for limiter in [la, lb] {
        let mut allowed = 0;
        for _ in 0..8 {
            let v = limiter.check("mallory", ip("192.0.2.20"), &[], 1).await;
            assert_ne!(v.source, Source::Redis);
            allowed += u32::from(v.allowed);
        }
        assert_eq!(allowed, 5, "the burst, from memory");
        let denied = limiter.check("mallory", ip("192.0.2.20"), &[], 1).await;
        assert!(!denied.allowed);
        assert_eq!(denied.source, Source::Fallback);
        assert_eq!(denied.denied_scopes, vec![Scope::User]);
        assert!(!limiter.redis_up());
    }
    let logs = captured_logs();
    assert!(
        logs.contains("Redis is unreachable"),
        "the fallback is logged"
    );

    redis.restart().await;
    assert!(
        eventually(Duration::from_secs(15), || async {
            la.redis_up() && lb.redis_up()
        })
        .await,
        "both replicas go back to Redis by themselves"
    );
    assert!(captured_logs().contains("Redis answers again"));
    // Shared again. (A user of its own: a charge that timed out at the moment Redis died
    // may still have reached it after the restart, which errs on the strict side.)
    let on_a = la.check("trudy", ip("192.0.2.20"), &[], 5).await;
    assert!(on_a.allowed, "{on_a:?}");
    assert_eq!(on_a.source, Source::Redis);
    let on_b = lb.check("trudy", ip("192.0.2.21"), &[], 1).await;
    assert!(!on_b.allowed, "replica b sees replica a's charge again");
    assert_eq!(on_b.source, Source::Redis);

    let metrics = a.get("/metrics").await.text().await.unwrap();
    let fallbacks = metric_value(&metrics, "sidecar_rate_limit_fallback_total");
    assert!(
        fallbacks >= 18.0,
        "fallback decisions are counted: {fallbacks}"
    );
    let ready: serde_json::Value = a.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
}

#[tokio::test]
async fn a_flood_is_refused_from_the_shadow_without_asking_redis() {
    let mut redis = PrivateServer::redis().await;
    let app = app_with_limits(&redis.url(), None, "2/s:3", "1000/s:1000", "1000/s:1000").await;
    let limiter = &app.abuse.limiter;
    let first = limiter.check("flood", ip("192.0.2.50"), &[], 3).await;
    assert!(first.allowed);
    assert_eq!(first.source, Source::Redis);
    let denied = limiter.check("flood", ip("192.0.2.50"), &[], 3).await;
    assert!(!denied.allowed);
    assert_eq!(
        denied.source,
        Source::Cached,
        "Redis would say no: not asked"
    );
    assert_eq!(denied.denied_scopes, vec![Scope::User]);
    assert_eq!(denied.retry_after_secs, 2, "3 tokens at 2/s");
    assert!(denied.rate_limit.is_some());

    // With Redis gone, the flood is still refused without a round trip: nobody even
    // notices Redis is gone until a request that might pass asks it.
    redis.kill();
    for _ in 0..50 {
        let v = limiter.check("flood", ip("192.0.2.50"), &[], 3).await;
        assert_eq!((v.allowed, v.source), (false, Source::Cached));
    }
    assert!(limiter.redis_up());
    tokio::time::sleep(Duration::from_secs(denied.retry_after_secs)).await;
    let later = limiter.check("flood", ip("192.0.2.50"), &[], 3).await;
    assert_eq!(later.source, Source::Fallback, "asked Redis, found it gone");
    assert!(!limiter.redis_up());
}

#[tokio::test]
async fn a_service_started_while_redis_is_down_limits_in_memory_then_switches() {
    let mut redis = PrivateServer::redis().await;
    let url = redis.url();
    redis.kill();
    let app = app_with_limits(&url, None, "1/s:3", "1000/s:1000", "1000/s:1000").await;
    let limiter = &app.abuse.limiter;
    assert!(!limiter.redis_up());
    let ready: serde_json::Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "degraded, not down: {ready}");
    let v = limiter.check("x", ip("192.0.2.30"), &[], 3).await;
    assert!(v.allowed);
    assert_eq!(v.source, Source::Fallback);
    assert!(!limiter.check("x", ip("192.0.2.30"), &[], 1).await.allowed);
    redis.restart().await;
    assert!(eventually(Duration::from_secs(15), || async { limiter.redis_up() }).await);
    assert_eq!(
        limiter.check("x", ip("192.0.2.30"), &[], 1).await.source,
        Source::Redis
    );
}

#[tokio::test]
async fn denials_are_counted_per_scope() {
    if !require(Service::Redis) {
        return;
    }
    let app = app_with_limits(REDIS_URL, None, "1/s:1", "1/s:1", "1/s:1").await;
    let limiter = &app.abuse.limiter;
    let before = app.get("/metrics").await.text().await.unwrap();
    assert!(
        limiter
            .check("c", ip("192.0.2.40"), &[("d", 1)], 1)
            .await
            .allowed
    );
    let denied = limiter.check("c", ip("192.0.2.40"), &[("d", 1)], 1).await;
    assert_eq!(
        denied.denied_scopes,
        vec![Scope::User, Scope::Device, Scope::Ip]
    );
    let after = app.get("/metrics").await.text().await.unwrap();
    for scope in ["user", "device", "ip"] {
        let name = format!("sidecar_rate_limited_total{{scope=\"{scope}\"}}");
        assert!(
            metric_value(&after, &name) >= metric_value(&before, &name) + 1.0,
            "{name}"
        );
    }
}

// ----- backpressure -----

/// The events stream (subjects `events.>`, as the service requires) on a test's own NATS,
/// with the durable pull consumer `consumer`: a consumer of the test's, not the service's
/// aggregator, so that the test decides when it acks.
async fn stream_with_consumer(
    nats_url: &str,
    name: &str,
    consumer: &str,
) -> (jetstream::Context, pull::Stream) {
    // A nats-server that has just started may reset the first connection while JetStream
    // comes up: retry briefly.
    let mut attempt = 0;
    let client = loop {
        match async_nats::connect(nats_url).await {
            Ok(client) => break client,
            Err(err) if attempt < 30 => {
                attempt += 1;
                let _ = err;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(err) => panic!("nats: {err:?}"),
        }
    };
    let js = jetstream::new(client);
    let stream = js
        .create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec!["events.>".to_owned()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(consumer.into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let messages = consumer.messages().await.expect("messages");
    (js, messages)
}

/// `n` messages on the events stream (not events: the service's aggregator skips them).
async fn publish(js: &jetstream::Context, n: usize) {
    for i in 0..n {
        js.publish("events.test", format!("{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

fn stream_name() -> String {
    format!("BP_{}", uuid::Uuid::new_v4().simple())
}

async fn app_on_nats(nats_url: &str, stream: &str, consumers: &str) -> TestApp {
    TestApp::builder()
        .store(Store::Sqlite)
        .env("NATS_URL", nats_url)
        .env("EVENT_STREAM", stream)
        .env("BACKPRESSURE_HIGH", "50")
        .env("BACKPRESSURE_LOW", "10")
        .env("BACKPRESSURE_CONSUMERS", consumers)
        .spawn()
        .await
        .expect("app")
}

#[tokio::test]
async fn a_consumer_that_stops_acking_drives_backpressure_until_it_drains() {
    let nats = PrivateServer::nats().await;
    let name = stream_name();
    // A consumer name of its own: metrics are process-wide and other tests run alongside.
    let consumer = format!("agg_{}", uuid::Uuid::new_v4().simple());
    let (js, mut messages) = stream_with_consumer(&nats.url(), &name, &consumer).await;
    let app = app_on_nats(&nats.url(), &name, &consumer).await;
    let signal = app.abuse.backpressure.clone();

    publish(&js, 40).await;
    let state = app
        .abuse
        .controller
        .poll_now(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(state.lag, Some(40));
    assert!(!state.shedding, "below HIGH");

    // The consumer takes messages and stops acking: they stay in ack-pending.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(messages.next().await.unwrap().unwrap());
    }
    publish(&js, 20).await;
    let state = app
        .abuse
        .controller
        .poll_now(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(state.lag, Some(60), "pending plus ack-pending");
    assert!(state.shedding);
    assert!((1..=60).contains(&state.retry_after_secs));
    assert_eq!(signal.shedding(), Some(state.retry_after_secs));
    // Other routes are never shed.
    assert_eq!(app.get("/meta/enums").await.status(), 200);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert_eq!(
        metric_value(
            &metrics,
            &format!("sidecar_queue_lag{{consumer=\"{consumer}\"}}")
        ),
        60.0
    );
    // Its value is process-wide (every app of this test binary sets it): presence only.
    assert!(metrics.contains("\nsidecar_backpressure_active "));

    // Draining to between the watermarks: still shedding (hysteresis).
    for m in held.drain(..) {
        m.double_ack().await.unwrap();
    }
    for _ in 0..25 {
        messages
            .next()
            .await
            .unwrap()
            .unwrap()
            .double_ack()
            .await
            .unwrap();
    }
    // Acks are fire-and-forget: the server may count them a moment later.
    let mut state = None;
    for _ in 0..50 {
        let polled = app
            .abuse
            .controller
            .poll_now(Duration::from_secs(5))
            .await
            .unwrap();
        let done = polled.lag == Some(15);
        state = Some(polled);
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let state = state.unwrap();
    assert_eq!(state.lag, Some(15));
    assert!(state.shedding, "15 is not below LOW");

    // Below LOW: accepted again, and the periodic poll sees it by itself.
    for _ in 0..10 {
        messages
            .next()
            .await
            .unwrap()
            .unwrap()
            .double_ack()
            .await
            .unwrap();
    }
    let mut watcher = app.abuse.backpressure.clone();
    let state = tokio::time::timeout(Duration::from_secs(10), watcher.wait_for(|s| !s.shedding))
        .await
        .expect("the controller notices by itself");
    assert_eq!(state.lag, Some(5));
    assert_eq!(app.abuse.backpressure.shedding(), None);
}

#[tokio::test]
async fn nats_unreachable_is_not_a_reason_to_shed() {
    let mut nats = PrivateServer::nats().await;
    let name = stream_name();
    let consumer = format!("slow_{}", uuid::Uuid::new_v4().simple());
    let (js, _messages) = stream_with_consumer(&nats.url(), &name, &consumer).await;
    let app = app_on_nats(&nats.url(), &name, &consumer).await;
    publish(&js, 60).await;
    let state = app
        .abuse
        .controller
        .poll_now(Duration::from_secs(5))
        .await
        .unwrap();
    assert!(state.shedding);

    nats.kill();
    let state = app
        .abuse
        .controller
        .poll_now(Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(state.lag, None, "the lag cannot be read");
    assert_eq!(state.backlog, Some(0));
    assert!(!state.shedding, "the backlog alone counts, and it is empty");
    assert!(captured_logs().contains("NATS cannot be asked for the consumer lag"));

    nats.restart().await;
    // The stream survives the restart (file storage): the lag is back, and so is shedding.
    let mut watcher = app.abuse.backpressure.clone();
    let state = tokio::time::timeout(Duration::from_secs(20), watcher.wait_for(|s| s.shedding))
        .await
        .expect("shedding again once NATS answers");
    assert_eq!(state.lag, Some(60));
}

#[tokio::test]
async fn a_missing_consumer_is_logged_and_not_counted() {
    let nats = PrivateServer::nats().await;
    let name = stream_name();
    let consumer = format!("slow_{}", uuid::Uuid::new_v4().simple());
    let (js, _messages) = stream_with_consumer(&nats.url(), &name, &consumer).await;
    let app = app_on_nats(&nats.url(), &name, &format!("{consumer},ghost_consumer")).await;
    publish(&js, 3).await;
    let state = app
        .abuse
        .controller
        .poll_now(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(state.lag, Some(3));
    let _ = app
        .abuse
        .controller
        .poll_now(Duration::from_secs(5))
        .await
        .unwrap();
    let logs = captured_logs();
    let lines = logs
        .lines()
        .filter(|l| l.contains("ghost_consumer") && l.contains("does not exist"))
        .count();
    assert_eq!(lines, 1, "logged once, not on every poll");
}

/// The value of the first sample named exactly `series` (name plus labels) in a Prometheus
/// text exposition; 0 when absent.
fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}
