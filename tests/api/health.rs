//! Contract section 10: liveness, readiness, and their relation to the store.

use crate::helpers::{Store, TestApp};
use serde_json::Value;

#[tokio::test]
async fn live_and_ready_on_the_embedded_defaults() {
    let Some(app) = TestApp::builder().store(Store::Sqlite).spawn().await else {
        return;
    };
    let live = app.get("/health/live").await;
    assert_eq!(live.status(), 200);
    let ready = app.get("/health/ready").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert!(body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "store" && c["ready"] == true));
}

#[tokio::test]
async fn ready_on_postgres() {
    let Some(app) = TestApp::builder().store(Store::Postgres).spawn().await else {
        return;
    };
    assert_eq!(app.get("/health/ready").await.status(), 200);
}

#[tokio::test]
async fn not_ready_names_the_store_when_it_is_gone() {
    let Some(app) = TestApp::builder().store(Store::Postgres).spawn().await else {
        return;
    };
    // Kill every connection of this test's database: the pool cannot answer the ping.
    let name = app.database_url.rsplit('/').next().unwrap().to_owned();
    let admin = sea_orm::Database::connect(crate::helpers::POSTGRES_ADMIN_URL)
        .await
        .unwrap();
    use sea_orm::ConnectionTrait;
    admin
        .execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .await
        .unwrap();
    let resp = app.get("/health/ready").await;
    assert_eq!(resp.status(), 503);
    assert_eq!(
        resp.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "not_ready");
    assert!(
        body["notReady"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == "store"),
        "{body}"
    );
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    if !crate::helpers::require(crate::helpers::Service::Postgres) {
        return;
    }
    let name = crate::helpers::create_postgres_database().await;
    let url = crate::helpers::postgres_url(&name);
    let start = || TestApp::builder().database_url(url.clone()).spawn();
    let (a, b, c) = tokio::join!(start(), start(), start());
    for app in [a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(app.get("/health/ready").await.status(), 200);
    }
}
