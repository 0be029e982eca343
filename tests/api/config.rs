//! `GET /config` against the .NET emulator (contract 7.1, issue 6 "Prove it"): single
//! flight, ETag round trips, refresh after the TTL, stale-if-error, the durable copy across a
//! restart, and 503 with nothing to serve.

use std::time::Duration;

use emulator::{Emulator, EmulatorConfig, EmulatorHandle, Latency};
use serde_json::{json, Value};

use crate::helpers::{
    create_postgres_database, eventually, postgres_url, tempdir, Service, TempDir, TestApp,
    POSTGRES_ADMIN_URL,
};

/// The ETag the contract defines for `config`.
fn etag_of(config: &Value) -> String {
    format!(
        "\"{}\"",
        &actors::canonical::canonical_sha256_hex(config)[..32]
    )
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn emulator() -> EmulatorHandle {
    Emulator::start(EmulatorConfig::default())
        .await
        .expect("the .NET emulator starts")
}

async fn get_config(app: &TestApp, if_none_match: Option<&str>) -> reqwest::Response {
    let mut req = app.client.get(app.url("/config"));
    if let Some(tags) = if_none_match {
        req = req.header("If-None-Match", tags);
    }
    req.send().await.expect("request sent")
}

#[tokio::test]
async fn a_hundred_concurrent_cold_requests_make_one_upstream_call() {
    let dotnet = emulator().await;
    // Slow enough that every request arrives while the first fetch is in flight.
    dotnet.add_latency(Latency::new(Duration::from_millis(500)).path("/config"));
    let Some(app) = TestApp::builder().dotnet(&dotnet).spawn().await else {
        return;
    };
    let answers = futures::future::join_all((0..100).map(|_| get_config(&app, None))).await;
    let expected = etag_of(&dotnet.config());
    for resp in answers {
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "etag"), Some(expected.as_str()));
        assert_eq!(header(&resp, "x-config-stale"), None);
        assert_eq!(resp.json::<Value>().await.unwrap(), dotnet.config());
    }
    assert_eq!(dotnet.calls("/config"), 1);
}

#[tokio::test]
async fn etag_round_trip_gives_304_without_a_body() {
    let dotnet = emulator().await;
    let Some(app) = TestApp::builder().dotnet(&dotnet).spawn().await else {
        return;
    };
    let first = get_config(&app, None).await;
    assert_eq!(first.status(), 200);
    let etag = header(&first, "etag").unwrap().to_owned();
    assert_eq!(etag, etag_of(&dotnet.config()));
    assert_eq!(header(&first, "cache-control"), Some("private, max-age=30"));
    assert!(header(&first, "content-type")
        .unwrap()
        .starts_with("application/json"));

    let weak = format!("W/{etag}");
    let list = format!("\"nope\", {weak}");
    for tags in [etag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let resp = get_config(&app, Some(tags)).await;
        assert_eq!(resp.status(), 304, "If-None-Match: {tags}");
        assert_eq!(header(&resp, "etag"), Some(etag.as_str()));
        assert_eq!(header(&resp, "cache-control"), Some("private, max-age=30"));
        assert_eq!(header(&resp, "x-contract-version"), Some("1"));
        assert!(resp.bytes().await.unwrap().is_empty(), "a 304 has no body");
    }
    let other = get_config(&app, Some("\"0000\", W/\"1111\"")).await;
    assert_eq!(other.status(), 200);
    assert_eq!(other.json::<Value>().await.unwrap(), dotnet.config());
    // The recorder is process-wide: lower bounds only.
    assert!(
        app.metric("sidecar_config_cache_total{result=\"hit\"}")
            .await
            >= 4.0
    );
}

#[tokio::test]
async fn extra_top_level_fields_pass_through_and_count_in_the_etag() {
    let dotnet = emulator().await;
    let mut config = dotnet.config();
    config["maintenance"] = json!({"window": "sunday 02:00"});
    dotnet.set_config(config.clone());
    let Some(app) = TestApp::builder().dotnet(&dotnet).spawn().await else {
        return;
    };
    let resp = get_config(&app, None).await;
    assert_eq!(header(&resp, "etag"), Some(etag_of(&config).as_str()));
    assert_eq!(resp.json::<Value>().await.unwrap(), config);
}

#[tokio::test]
async fn a_change_at_dotnet_shows_within_the_ttl_and_one_refresh() {
    let dotnet = emulator().await;
    let Some(app) = TestApp::builder()
        .dotnet(&dotnet)
        .env("CONFIG_TTL_SECONDS", "0.3")
        .spawn()
        .await
    else {
        return;
    };
    let before = get_config(&app, None).await;
    let old_etag = header(&before, "etag").unwrap().to_owned();
    let mut changed = dotnet.config();
    changed["featureFlags"]["darkMode"] = json!(true);
    dotnet.set_config(changed.clone());
    let changed_at = tokio::time::Instant::now();

    // The first request after the TTL is answered from memory and starts the refresh; the
    // refresh's answer is what the next request sees.
    let new_etag = etag_of(&changed);
    let seen = eventually(Duration::from_secs(5), || async {
        let resp = get_config(&app, None).await;
        header(&resp, "etag") == Some(new_etag.as_str())
    })
    .await;
    assert!(seen, "the change never showed");
    assert!(
        changed_at.elapsed() < Duration::from_millis(300) + Duration::from_secs(2),
        "took {:?}",
        changed_at.elapsed()
    );
    let resp = get_config(&app, Some(&old_etag)).await;
    assert_eq!(resp.status(), 200, "the old ETag no longer matches");
    assert_eq!(resp.json::<Value>().await.unwrap(), changed);
}

/// A database that outlives the apps started on it (a restart keeps the store).
struct SharedDatabase {
    url: String,
    postgres: Option<String>,
    _dir: TempDir,
}

impl SharedDatabase {
    async fn new() -> SharedDatabase {
        let dir = tempdir();
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        let pg_up = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:5432".parse().unwrap(),
            Duration::from_millis(300),
        )
        .is_ok();
        if ci || pg_up {
            assert!(crate::helpers::require(Service::Postgres));
            let name = create_postgres_database().await;
            SharedDatabase {
                url: postgres_url(&name),
                postgres: Some(name),
                _dir: dir,
            }
        } else {
            SharedDatabase {
                url: format!("sqlite://{}/shared.db?mode=rwc", dir.path.display()),
                postgres: None,
                _dir: dir,
            }
        }
    }
}

impl Drop for SharedDatabase {
    fn drop(&mut self) {
        if let Some(name) = self.postgres.take() {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok(db) = sea_orm::Database::connect(POSTGRES_ADMIN_URL).await {
                        use sea_orm::ConnectionTrait;
                        let _ = db
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                });
            });
        }
    }
}

#[tokio::test]
async fn dotnet_down_serves_stale_and_a_restart_still_serves_it_from_the_store() {
    let dotnet = emulator().await;
    let db = SharedDatabase::new().await;
    let start = || {
        TestApp::builder()
            .dotnet(&dotnet)
            .database_url(db.url.clone())
            .env("CONFIG_TTL_SECONDS", "0.2")
            .env("CONFIG_MAX_STALE_SECONDS", "600")
            // Failed fetches during the outage may open the breaker; keep it short.
            .env("CIRCUIT_OPEN_SECONDS", "1")
            .spawn()
    };
    let Some(app) = start().await else {
        return;
    };
    let fresh = get_config(&app, None).await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(header(&fresh, "x-config-stale"), None);
    let etag = header(&fresh, "etag").unwrap().to_owned();

    dotnet.refuse_connections().await;
    let stale = eventually(Duration::from_secs(10), || async {
        let resp = get_config(&app, None).await;
        header(&resp, "x-config-stale") == Some("true")
    })
    .await;
    assert!(stale, "never marked stale while .NET is down");
    assert!(
        app.metric("sidecar_config_cache_total{result=\"stale\"}")
            .await
            >= 1.0
    );
    let resp = get_config(&app, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "etag"), Some(etag.as_str()));
    assert_eq!(resp.json::<Value>().await.unwrap(), dotnet.config());
    // A stale copy still answers conditional requests.
    let resp = get_config(&app, Some(&etag)).await;
    assert_eq!(resp.status(), 304);
    assert_eq!(header(&resp, "x-config-stale"), Some("true"));

    // Restart during the outage: the new instance has only the durable copy.
    app.shutdown().await;
    let Some(restarted) = start().await else {
        return;
    };
    let resp = get_config(&restarted, None).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-config-stale"), Some("true"));
    assert_eq!(header(&resp, "etag"), Some(etag.as_str()));
    assert_eq!(resp.json::<Value>().await.unwrap(), dotnet.config());

    // .NET back: fresh again.
    dotnet.accept_connections().await.unwrap();
    let fresh_again = eventually(Duration::from_secs(20), || async {
        let resp = get_config(&restarted, None).await;
        resp.status() == 200 && header(&resp, "x-config-stale").is_none()
    })
    .await;
    assert!(fresh_again, "never fresh again after .NET came back");
}

#[tokio::test]
async fn stale_is_served_no_longer_than_max_stale() {
    let dotnet = emulator().await;
    let Some(app) = TestApp::builder()
        .dotnet(&dotnet)
        .env("CONFIG_TTL_SECONDS", "0.2")
        .env("CONFIG_MAX_STALE_SECONDS", "1")
        .spawn()
        .await
    else {
        return;
    };
    assert_eq!(get_config(&app, None).await.status(), 200);
    dotnet.refuse_connections().await;
    let gone = eventually(Duration::from_secs(10), || async {
        get_config(&app, None).await.status() == 503
    })
    .await;
    assert!(gone, "a copy past TTL + max stale was still served");
}

#[tokio::test]
async fn no_config_ever_is_503_upstream_unavailable() {
    let dotnet = emulator().await;
    dotnet.refuse_connections().await;
    let Some(app) = TestApp::builder().dotnet(&dotnet).spawn().await else {
        return;
    };
    let resp = get_config(&app, None).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        header(&resp, "content-type"),
        Some("application/problem+json")
    );
    let retry_after: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(header(&resp, "etag"), None);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
    assert_eq!(body["status"], 503);
    assert!(body["requestId"].is_string());
    assert!(
        app.metric("sidecar_config_cache_total{result=\"miss\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_config_that_is_not_the_contract_is_502_when_nothing_good_is_held() {
    let dotnet = emulator().await;
    dotnet.set_config(json!({"policy": "not an object"}));
    let Some(app) = TestApp::builder().dotnet(&dotnet).spawn().await else {
        return;
    };
    let resp = get_config(&app, None).await;
    assert_eq!(resp.status(), 502);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_error");
}

#[tokio::test]
async fn the_openapi_document_declares_the_config_headers() {
    let dotnet = emulator().await;
    let Some(app) = TestApp::builder().dotnet(&dotnet).spawn().await else {
        return;
    };
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    let responses = &spec["paths"]["/config"]["get"]["responses"];
    for status in ["200", "304"] {
        let headers = responses[status]["headers"]
            .as_object()
            .unwrap_or_else(|| panic!("{status} has no headers"));
        let names: Vec<String> = headers.keys().map(|k| k.to_ascii_lowercase()).collect();
        for wanted in [
            "etag",
            "cache-control",
            "x-config-stale",
            "x-contract-version",
        ] {
            assert!(
                names.contains(&wanted.to_owned()),
                "{status} lacks {wanted}"
            );
        }
    }
    assert!(responses["503"].is_object());
    let params = spec["paths"]["/config"]["get"]["parameters"]
        .as_array()
        .unwrap();
    assert!(params.iter().any(|p| p["name"]
        .as_str()
        .unwrap()
        .eq_ignore_ascii_case("if-none-match")));
}
