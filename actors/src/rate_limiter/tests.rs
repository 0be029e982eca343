//! The limiter without Redis: the in-memory store on tokio's paused clock, the plan of
//! charges, and the fallback path when Redis cannot be reached at all.

use std::net::IpAddr;
use std::time::Duration;

use super::*;

fn limits(user: &str, device: &str, ip: &str) -> Limits {
    Limits {
        user: user.parse().unwrap(),
        device: device.parse().unwrap(),
        ip: ip.parse().unwrap(),
    }
}

fn limiter(user: &str, device: &str, ip: &str) -> RateLimiter {
    RateLimiter::in_memory(RateLimiterConfig::new(limits(user, device, ip), "t:"))
}

fn addr(text: &str) -> Option<IpAddr> {
    Some(text.parse().unwrap())
}

#[tokio::test(start_paused = true)]
async fn memory_limits_refill_on_a_paused_clock() {
    let l = limiter("5/s:10", "1000/s:1000", "1000/s:1000");
    for _ in 0..10 {
        let v = l.check("u", addr("192.0.2.1"), &[], 1).await;
        assert!(v.allowed);
        assert_eq!(v.source, Source::Memory);
    }
    let denied = l.check("u", addr("192.0.2.1"), &[], 3).await;
    assert!(!denied.allowed);
    assert_eq!(
        denied.retry_after_secs, 1,
        "3 tokens at 5/s: 0.6 s, rounded up"
    );
    assert_eq!(denied.denied_scopes, vec![Scope::User]);
    assert_eq!(
        denied.rate_limit,
        Some(("\"user\";q=10;w=2".into(), "\"user\";r=0;t=1".into()))
    );

    tokio::time::advance(Duration::from_millis(599)).await;
    assert!(!l.check("u", addr("192.0.2.1"), &[], 3).await.allowed);
    tokio::time::advance(Duration::from_millis(1)).await;
    let later = l.check("u", addr("192.0.2.1"), &[], 3).await;
    assert!(later.allowed, "exactly when the tokens are there");
    assert_eq!(later.retry_after_secs, 0);
    assert_eq!(
        later.rate_limit,
        Some(("\"user\";q=10;w=2".into(), "\"user\";r=0;t=2".into()))
    );
}

#[tokio::test(start_paused = true)]
async fn costs_follow_the_contract() {
    let l = limiter("1000/s:1000", "1/s:5", "1/s:9");
    // A batch of 6 events: 3 from the phone, 2 from the watch, 1 without a device.
    let v = l
        .check(
            "u",
            addr("192.0.2.2"),
            &[("phone", 2), ("watch", 2), ("phone", 1)],
            6,
        )
        .await;
    assert!(v.allowed);
    // The IP bucket holds 3 now, the phone's 2, the watch's 3.
    let phone = l
        .check("other", addr("192.0.2.3"), &[("phone", 3)], 3)
        .await;
    assert_eq!(
        phone.denied_scopes,
        vec![Scope::Device],
        "repeats were summed"
    );
    let ip = l.check("other", addr("192.0.2.2"), &[], 4).await;
    assert_eq!(ip.denied_scopes, vec![Scope::Ip]);
    assert!(
        l.check("other", addr("192.0.2.2"), &[("watch", 3)], 3)
            .await
            .allowed
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_to_charge_is_free() {
    let l = limiter("1/s:1", "1/s:1", "1/s:1");
    let v = l.check("u", None, &[("phone", 0)], 0).await;
    assert_eq!(v, Verdict::free());
}

#[tokio::test(start_paused = true)]
async fn a_denial_names_every_short_scope_once() {
    let l = limiter("1/s:2", "1/s:2", "1/s:2");
    assert!(
        l.check("u", addr("192.0.2.4"), &[("a", 2)], 2)
            .await
            .allowed
    );
    let v = l
        .check("u", addr("192.0.2.4"), &[("a", 1), ("b", 1)], 2)
        .await;
    assert_eq!(v.denied_scopes, vec![Scope::User, Scope::Device, Scope::Ip]);
}

#[tokio::test(start_paused = true)]
async fn a_cost_above_the_burst_is_denied_with_the_time_to_fill() {
    let l = limiter("2/s:4", "1000/s:1000", "1000/s:1000");
    assert!(l.check("u", addr("192.0.2.5"), &[], 4).await.allowed);
    let v = l.check("u", addr("192.0.2.5"), &[], 10).await;
    assert!(!v.allowed);
    assert_eq!(v.retry_after_secs, 2, "until full; it can never pass");
}

#[tokio::test]
async fn an_unreachable_redis_falls_back_to_memory_and_keeps_probing() {
    let mut config = RateLimiterConfig::new(limits("1/s:2", "1000/s:1000", "1000/s:1000"), "t:");
    config.redis_timeout = Duration::from_millis(50);
    // Port 1 on loopback: connection refused.
    let l = RateLimiter::connect(config, "redis://127.0.0.1:1", Duration::from_millis(200))
        .await
        .expect("a well-formed URL");
    assert!(!l.redis_up());
    let started = tokio::time::Instant::now();
    let first = l.check("u", addr("192.0.2.6"), &[], 2).await;
    assert!(first.allowed);
    assert_eq!(first.source, Source::Fallback);
    let second = l.check("u", addr("192.0.2.6"), &[], 1).await;
    assert!(!second.allowed, "still limited");
    assert!(
        started.elapsed() < Duration::from_millis(40),
        "no request waits for a Redis known to be down"
    );
    assert!(matches!(
        RateLimiter::connect(
            RateLimiterConfig::new(limits("1/s:1", "1/s:1", "1/s:1"), "t:"),
            "not a url",
            Duration::from_millis(10),
        )
        .await,
        Err(RedisError::Config(_))
    ));
}
