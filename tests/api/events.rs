//! `POST /events` (contract section 5) on the real services: answers, idempotency across
//! requests and replicas, the outbox to JetStream, aggregates, and the store being down.

use std::time::Duration;

use serde_json::{json, Value};

use crate::event_support::*;
use crate::helpers::{require, PrivateServer, Service, Store, TestApp};

/// An app on PostgreSQL with its own nats-server (and stream), test auth.
async fn app_with_nats(nats: &PrivateServer, stream: &str) -> Option<TestApp> {
    TestApp::builder()
        .store(Store::Postgres)
        .test_auth()
        .env("NATS_URL", nats.url())
        .env("EVENT_STREAM", stream)
        .spawn()
        .await
}

#[tokio::test]
async fn every_answer_of_section_5_1() {
    let Some(app) = TestApp::builder().test_auth().spawn().await else {
        return;
    };
    // No token: 401 problem.
    let resp = app.post_json("/events", &batch(&[new_id()])).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    // Whole-request failures change nothing.
    for (body, status, code) in [
        (json!([1]), 400, "invalid_request"),
        (json!({"events": "x"}), 400, "invalid_request"),
        (json!({"nothing": []}), 400, "invalid_request"),
        (json!({"events": []}), 422, "batch_size"),
        (
            json!({"events": vec![event(&new_id()); 501]}),
            422,
            "batch_size",
        ),
    ] {
        let (got, problem) = post_events(&app, "u1", &body).await;
        assert_eq!(got, status, "{problem}");
        assert_eq!(problem["code"], code);
        assert!(problem["requestId"].is_string());
    }
    let resp = app
        .client
        .post(app.url("/events"))
        .bearer_auth(token("u1"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = app
        .client
        .post(app.url("/events"))
        .bearer_auth(token("u1"))
        .header("content-type", "application/json")
        .body(vec![b' '; 1_048_577])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);

    // Per-event answers.
    let id = new_id();
    let upper = new_id().to_uppercase();
    let mut bad_type = event(&new_id());
    bad_type["eventType"] = json!("Bad Type");
    let mut future = event(&new_id());
    future["occurredAt"] = json!((chrono::Utc::now() + chrono::Duration::hours(25)).to_rfc3339());
    let mut old = event(&new_id());
    old["occurredAt"] = json!((chrono::Utc::now() - chrono::Duration::days(31)).to_rfc3339());
    let mut big = event(&new_id());
    big["payload"] = json!({"blob": "x".repeat(33 * 1024)});
    let mut not_uuid = event("not-a-uuid");
    not_uuid["extra"] = json!("ignored");
    let mut numeric_type = event(&new_id());
    numeric_type["eventType"] = json!(3);
    let mut repeat_changed = event(&id);
    repeat_changed["payload"] = json!({"other": true});
    let body = json!({"events": [
        event(&id), event(&upper), bad_type, future, old, big, not_uuid, numeric_type,
        json!("not an object"), event(&id), repeat_changed
    ]});
    let (status, answer) = post_events(&app, "u1", &body).await;
    assert_eq!(status, 200, "{answer}");
    let r = answer["results"].as_array().unwrap();
    assert_eq!(r.len(), 11);
    assert_eq!(r[0]["status"], "accepted");
    assert_eq!(r[0]["eventHash"].as_str().unwrap().len(), 64);
    assert!(r[0].get("hashMismatch").is_none() && r[0].get("reason").is_none());
    assert_eq!(r[1]["status"], "accepted");
    assert_eq!(r[1]["eventId"], upper.to_lowercase(), "ids are normalized");
    for (i, reason) in [
        (2, "invalid_event_type"),
        (3, "occurred_at_out_of_range"),
        (4, "occurred_at_out_of_range"),
        (5, "payload_too_large"),
        (6, "invalid_event"),
        (7, "invalid_event"),
        (8, "invalid_event"),
    ] {
        assert_eq!(r[i]["status"], "rejected", "{i}: {}", r[i]);
        assert_eq!(r[i]["reason"], reason, "{i}");
        assert!(r[i].get("eventHash").is_none());
    }
    assert_eq!(r[6]["eventId"], "not-a-uuid");
    assert_eq!(r[8]["eventId"], Value::Null);
    assert_eq!(r[9]["status"], "duplicate");
    assert!(r[9].get("hashMismatch").is_none());
    assert_eq!(r[10]["status"], "duplicate");
    assert_eq!(r[10]["hashMismatch"], true);
    assert_eq!(
        (
            &answer["accepted"],
            &answer["duplicates"],
            &answer["rejected"]
        ),
        (&json!(2), &json!(2), &json!(7))
    );

    // Across requests: the same id is a duplicate; a changed payload says so.
    let mut changed = event(&id);
    changed["payload"] = json!({"changed": 1});
    let (_, again) = post_events(&app, "u1", &json!({"events": [event(&id), changed]})).await;
    let r = again["results"].as_array().unwrap();
    assert_eq!(r[0]["status"], "duplicate");
    assert!(r[0].get("hashMismatch").is_none(), "{again}");
    assert_eq!(r[1]["status"], "duplicate");
    assert_eq!(r[1]["hashMismatch"], true);

    // The metrics count each outcome.
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("sidecar_events_total{outcome=\"accepted\"}"));
    assert!(metrics.contains("sidecar_outbox_pending"));
}

#[tokio::test]
async fn accepted_events_reach_the_stream_once_and_are_counted_once() {
    if !require(Service::Postgres) {
        return;
    }
    let nats = PrivateServer::nats().await;
    let (stream, prefix) = unique_names();
    let redis = PrivateServer::redis().await;
    // The real caller identity: JWTs issued by the .NET emulator, verified locally.
    let Some((app, _dotnet)) = TestApp::builder()
        .store(Store::Postgres)
        .jwt_of_default_emulator()
        .env("NATS_URL", nats.url())
        .env("REDIS_URL", redis.url())
        .env("REDIS_KEY_PREFIX", prefix)
        .env("EVENT_STREAM", &stream)
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let tokens = crate::auth::tokens_of(&app, "alice@example.com").await;
    let access = crate::auth::str_of(&tokens, "access_token").to_owned();
    let ids: Vec<String> = (0..50).map(|_| new_id()).collect();
    let (status, first) = post_events_as(&app, &access, &batch(&ids)).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["accepted"], 50);
    // A retried batch adds nothing: answered duplicate (from Redis or the table).
    for _ in 0..2 {
        let (_, again) = post_events_as(&app, &access, &batch(&ids)).await;
        assert_eq!(again["duplicates"], 50, "{again}");
    }
    assert!(wait_stream_len(&nats.url(), &stream, 50, Duration::from_secs(10)).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_stream_is(&nats.url(), &stream, &ids).await;
    let (sum, counted) = wait_aggregates(&app.database_url, 50, Duration::from_secs(10)).await;
    assert_eq!((sum, counted), (50, 50));
    // The batch is marked published: the backlog drains to zero.
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            outbox_pending(&app.database_url).await == 0
        })
        .await
    );
    let ready: Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    // Events are attributed to the token's subject, never to a body field.
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    use sea_orm::{ConnectionTrait, Statement};
    let users = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT DISTINCT user_id FROM events".to_owned(),
        ))
        .await
        .unwrap();
    assert_eq!(users.len(), 1);
    let user: String = users[0].try_get_by_index(0).unwrap();
    assert!(!user.is_empty() && !user.starts_with("test-user"), "{user}");
}

#[tokio::test]
async fn twenty_concurrent_requests_with_the_same_ids_accept_each_once() {
    if !require(Service::Postgres) {
        return;
    }
    let nats = PrivateServer::nats().await;
    let (stream, _) = unique_names();
    let Some(app) = app_with_nats(&nats, &stream).await else {
        return;
    };
    let ids: Vec<String> = (0..100).map(|_| new_id()).collect();
    let body = batch(&ids);
    let answers = futures::future::join_all((0..20).map(|_| post_events(&app, "bob", &body))).await;
    let mut accepted = Vec::new();
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        accepted.extend(accepted_ids(answer));
    }
    accepted.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        accepted, expected,
        "exactly 100 accepted in total, each once"
    );
    assert!(wait_stream_len(&nats.url(), &stream, 100, Duration::from_secs(10)).await);
    assert_stream_is(&nats.url(), &stream, &ids).await;
}

#[tokio::test]
async fn two_replicas_on_one_database_accept_each_id_once() {
    if !require(Service::Postgres) {
        return;
    }
    let nats = PrivateServer::nats().await;
    let redis = PrivateServer::redis().await;
    let (stream, prefix) = unique_names();
    let spawn = |url: Option<String>| {
        let mut b = TestApp::builder()
            .store(Store::Postgres)
            .test_auth()
            .env("NATS_URL", nats.url())
            .env("REDIS_URL", redis.url())
            .env("REDIS_KEY_PREFIX", prefix.clone())
            .env("EVENT_STREAM", stream.clone());
        if let Some(url) = url {
            b = b.database_url(url);
        }
        b.spawn()
    };
    let Some(a) = spawn(None).await else { return };
    let b = spawn(Some(a.database_url.clone())).await.unwrap();
    let ids: Vec<String> = (0..300).map(|_| new_id()).collect();
    // Overlapping windows of 100 ids, sent to both replicas at once.
    let bodies: Vec<Value> = (0..=200)
        .step_by(50)
        .map(|start| batch(&ids[start..start + 100]))
        .collect();
    let mut calls = Vec::new();
    for body in &bodies {
        calls.push(post_events(&a, "carol", body));
        calls.push(post_events(&b, "carol", body));
    }
    let answers = futures::future::join_all(calls).await;
    let mut accepted = Vec::new();
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        accepted.extend(accepted_ids(answer));
    }
    let mut sorted = accepted.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), accepted.len(), "no id accepted twice");
    assert_eq!(accepted.len(), 300, "every id accepted once");
    assert!(wait_stream_len(&nats.url(), &stream, 300, Duration::from_secs(15)).await);
    assert_stream_is(&nats.url(), &stream, &ids).await;
    let (sum, counted) = wait_aggregates(&a.database_url, 300, Duration::from_secs(15)).await;
    assert_eq!((sum, counted), (300, 300));
}

#[tokio::test]
async fn store_down_answers_503_and_claims_nothing() {
    let Some(app) = TestApp::builder()
        .store(Store::Postgres)
        .test_auth()
        .spawn()
        .await
    else {
        return;
    };
    let name = app.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sea_orm::Database::connect(crate::helpers::POSTGRES_ADMIN_URL)
        .await
        .unwrap();
    use sea_orm::ConnectionTrait;
    admin
        .execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
    let resp = app
        .post_json_bearer("/events", &token("dave"), &batch(&[new_id(), new_id()]))
        .await;
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "store_unavailable");
    assert!(problem.get("results").is_none());
}

#[tokio::test]
async fn event_id_and_hash_mode_reports_a_same_hash_new_id_as_duplicate() {
    let Some(app) = TestApp::builder()
        .test_auth()
        .env("EVENT_DEDUPE_MODE", "eventIdAndHash")
        .spawn()
        .await
    else {
        return;
    };
    let (a, b, c) = (new_id(), new_id(), new_id());
    let same = |id: &str| {
        json!({"eventId": id, "eventType": "tap", "occurredAt": chrono::Utc::now().to_rfc3339(),
               "payload": {"x": 1}})
    };
    let (_, first) = post_events(&app, "erin", &json!({"events": [same(&a)]})).await;
    assert_eq!(first["accepted"], 1);
    let (_, second) = post_events(&app, "erin", &json!({"events": [same(&b), same(&a)]})).await;
    let r = second["results"].as_array().unwrap();
    assert_eq!(r[0]["status"], "duplicate", "{second}");
    assert!(r[0].get("hashMismatch").is_none());
    assert_eq!(r[1]["status"], "duplicate");
    // Another user has another hash: accepted.
    let (_, other) = post_events(&app, "frank", &json!({"events": [same(&c)]})).await;
    assert_eq!(other["accepted"], 1);
    // The not-stored id is still new when its hash differs.
    let mut changed = same(&b);
    changed["payload"] = json!({"x": 2});
    let (_, third) = post_events(&app, "erin", &json!({"events": [changed]})).await;
    assert_eq!(third["accepted"], 1, "{third}");
}

#[tokio::test]
async fn embedded_sqlite_accepts_into_the_outbox_with_publishing_off() {
    let Some(app) = TestApp::builder()
        .store(Store::Sqlite)
        .test_auth()
        .spawn()
        .await
    else {
        return;
    };
    let ids: Vec<String> = (0..30).map(|_| new_id()).collect();
    let (status, answer) = post_events(&app, "gina", &batch(&ids)).await;
    assert_eq!(status, 200);
    assert_eq!(answer["accepted"], 30);
    let (_, again) = post_events(&app, "gina", &batch(&ids)).await;
    assert_eq!(again["duplicates"], 30);
    assert_eq!(outbox_pending(&app.database_url).await, 30);
    let ready: Value = app.get("/health/ready").await.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    let publishing = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "publishing")
        .cloned()
        .unwrap();
    assert_eq!(
        publishing["detail"], "publishing is off: NATS_URL is unset",
        "{ready}"
    );
    assert!(crate::helpers::captured_logs().contains("publishing is off: NATS_URL is unset"));
}

#[tokio::test]
async fn janitor_removes_expired_published_events_only() {
    let Some(app) = TestApp::builder().test_auth().spawn().await else {
        return;
    };
    let published: Vec<String> = (0..5).map(|_| new_id()).collect();
    let unpublished: Vec<String> = (0..5).map(|_| new_id()).collect();
    let (_, a) = post_events(&app, "hank", &batch(&published)).await;
    let (_, b) = post_events(&app, "hank", &batch(&unpublished)).await;
    assert_eq!(
        (a["accepted"].clone(), b["accepted"].clone()),
        (json!(5), json!(5))
    );
    // Age both batches past the retention; mark only the first one published.
    let db = sea_orm::Database::connect(&app.database_url).await.unwrap();
    use sea_orm::{ConnectionTrait, Statement};
    let backend = db.get_database_backend();
    let postgres = app.database_url.starts_with("postgres");
    let (old, cast) = if postgres {
        ("now() - interval '40 days'", "::uuid")
    } else {
        ("'2000-01-01T00:00:00.000000Z'", "")
    };
    // A request's events are split over the shards, so over several batches.
    let first = format!(
        "event_id IN ({})",
        published
            .iter()
            .map(|id| format!("'{id}'{cast}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    db.execute(Statement::from_string(
        backend,
        format!("UPDATE outbox_batches SET created_at = {old}"),
    ))
    .await
    .unwrap();
    db.execute(Statement::from_string(
        backend,
        format!(
            "UPDATE outbox_batches SET published_at = {old} WHERE batch_id IN \
             (SELECT batch_id FROM events WHERE {first})"
        ),
    ))
    .await
    .unwrap();
    let count = |sql: &'static str| {
        let db = &db;
        async move {
            db.query_one(Statement::from_string(backend, sql.to_owned()))
                .await
                .unwrap()
                .unwrap()
                .try_get_by_index::<i64>(0)
                .unwrap()
        }
    };
    let gone = crate::helpers::eventually(Duration::from_secs(15), || async {
        count("SELECT COUNT(*) FROM events").await == 5
    })
    .await;
    let logs = crate::helpers::captured_logs();
    let janitor: Vec<&str> = logs.lines().filter(|l| l.contains("janitor")).collect();
    assert!(
        gone,
        "the published, expired events were removed: {janitor:?}"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM outbox_batches b WHERE NOT EXISTS \
             (SELECT 1 FROM events e WHERE e.batch_id = b.batch_id)"
        )
        .await,
        0,
        "emptied batch rows are removed"
    );
    // The unpublished ones stay, so they are still duplicates.
    let (_, again) = post_events(&app, "hank", &batch(&unpublished)).await;
    assert_eq!(again["duplicates"], 5);
}

/// A round with more events than the client's ack channel holds (a sweeper round can send
/// up to 200,000; the channel holds 65,536 by default, here 512) is acknowledged whole:
/// the relay keeps at most `max_pending` publishes unanswered, so no ack overflows.
#[tokio::test]
async fn a_round_larger_than_the_ack_channel_is_acknowledged_whole() {
    use actors::events::publish::{publish_round, JetStreamLink};
    use actors::events::store::{CommittedBatch, EventRow};

    let nats = PrivateServer::nats().await;
    let client = async_nats::ConnectOptions::new()
        .subscription_capacity(512)
        .connect(nats.url())
        .await
        .unwrap();
    let jetstream = async_nats::jetstream::new(client.clone());
    let (stream, _) = unique_names();
    actors::events::stream::ensure_stream(&jetstream, &stream, 1)
        .await
        .unwrap();
    let user: std::sync::Arc<str> = "u-round".into();
    let batches: Vec<CommittedBatch> = (0..4)
        .map(|b| CommittedBatch {
            batch_id: b,
            received_at: chrono::Utc::now(),
            events: (0..1_000)
                .map(|_| EventRow {
                    event_id: uuid::Uuid::new_v4(),
                    user_id: user.clone(),
                    device_id: None,
                    event_type: "app.open".into(),
                    occurred_at: chrono::Utc::now(),
                    event_hash: "00".repeat(32),
                    payload: "{}".into(),
                })
                .collect(),
        })
        .collect();
    let mut link = JetStreamLink::new(client, jetstream);
    link.max_pending = 256;
    let (done, rest, error) = publish_round(&link, batches, Duration::from_secs(20)).await;
    assert_eq!(error, None);
    assert_eq!((done.len(), rest.len()), (4, 0));
    assert!(wait_stream_len(&nats.url(), &stream, 4_000, Duration::from_secs(10)).await);
}
