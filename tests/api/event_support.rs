//! Helpers of the event tests: event bodies, posting, and reading back what reached
//! JetStream and the aggregates.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy};
use futures::StreamExt;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{json, Value};

use crate::helpers::TestApp;

/// A fresh stream name and Redis prefix for one test.
pub fn unique_names() -> (String, String) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (format!("T_{id}"), format!("t:{id}:"))
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A valid event with `id`, occurring now.
pub fn event(id: &str) -> Value {
    json!({
        "eventId": id,
        "eventType": "app.open",
        "occurredAt": chrono::Utc::now().to_rfc3339(),
        "device_id": "device-1",
        "payload": {"screen": "home", "n": 1}
    })
}

pub fn batch(ids: &[String]) -> Value {
    json!({ "events": ids.iter().map(|id| event(id)).collect::<Vec<_>>() })
}

pub fn token(user: &str) -> String {
    format!("test-user:{user}")
}

/// Posts `body` as `user` (test authenticator); returns status and JSON body.
pub async fn post_events(app: &TestApp, user: &str, body: &Value) -> (u16, Value) {
    post_events_as(app, &token(user), body).await
}

/// Posts `body` with a bearer token; returns status and JSON body.
pub async fn post_events_as(app: &TestApp, bearer: &str, body: &Value) -> (u16, Value) {
    let resp = app.post_json_bearer("/events", bearer, body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Ids answered `accepted` in a 200 body.
pub fn accepted_ids(body: &Value) -> Vec<String> {
    ids_with_status(body, "accepted")
}

pub fn ids_with_status(body: &Value, status: &str) -> Vec<String> {
    body["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter(|r| r["status"] == status)
                .map(|r| r["eventId"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every `Nats-Msg-Id` in `stream`, in stream order (checked against the body's eventId).
pub async fn stream_ids(nats_url: &str, stream: &str) -> Vec<String> {
    let client = async_nats::connect(nats_url).await.expect("nats connect");
    let js = jetstream::new(client);
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let total = s.info().await.unwrap().state.messages;
    if total == 0 {
        return Vec::new();
    }
    let consumer = s
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ids = Vec::new();
    while (ids.len() as u64) < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_millis(500))
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.to_string())
                .unwrap_or_else(|| panic!("no Nats-Msg-Id in {:?}", m.headers));
            let body: Value = serde_json::from_slice(&m.payload).unwrap();
            assert_eq!(body["eventId"], id.as_str(), "the body matches the header");
            assert!(m.subject.as_str().starts_with("events."));
            ids.push(id);
            got += 1;
        }
        if got == 0 {
            break;
        }
    }
    ids
}

/// Asserts that `stream` holds exactly `expected`, each once.
pub async fn assert_stream_is(nats_url: &str, stream: &str, expected: &[String]) {
    let ids = stream_ids(nats_url, stream).await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for id in &ids {
        *counts.entry(id.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "ids published twice: {repeated:?}");
    let missing: Vec<_> = expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "accepted ids missing from the stream: {missing:?}"
    );
    assert_eq!(ids.len(), expected.len(), "no id beyond the accepted ones");
}

/// Waits until the stream holds `n` messages.
pub async fn wait_stream_len(nats_url: &str, stream: &str, n: usize, within: Duration) -> bool {
    crate::helpers::eventually(within, || async {
        stream_ids(nats_url, stream).await.len() >= n
    })
    .await
}

/// (sum of counts in event_counts, rows of aggregated_events).
pub async fn aggregates(database_url: &str) -> (i64, i64) {
    let db = sea_orm::Database::connect(database_url).await.unwrap();
    let backend = db.get_database_backend();
    let one = |sql: &str| Statement::from_string(backend, sql.to_owned());
    let sum = db
        .query_one(one(
            "SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) AS n FROM event_counts",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    let ids = db
        .query_one(one("SELECT COUNT(*) AS n FROM aggregated_events"))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    let _ = db.close().await;
    (sum, ids)
}

/// Waits until the aggregates count exactly `n` events once each.
pub async fn wait_aggregates(database_url: &str, n: i64, within: Duration) -> (i64, i64) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = aggregates(database_url).await;
        if (last.0 >= n && last.1 >= n) || tokio::time::Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Unpublished outbox rows.
pub async fn outbox_pending(database_url: &str) -> i64 {
    let db = sea_orm::Database::connect(database_url).await.unwrap();
    let backend = db.get_database_backend();
    let n = db
        .query_one(Statement::from_string(
            backend,
            "SELECT CAST(COALESCE(SUM(event_count), 0) AS BIGINT) AS n FROM outbox_batches \
             WHERE published_at IS NULL",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    let _ = db.close().await;
    n
}
