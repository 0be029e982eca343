//! Contract section 1: headers on every response, problem+json on every error.

use crate::helpers::TestApp;
use serde_json::{json, Value};

async fn assert_problem(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["x-contract-version"], "1");
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["requestId"], request_id.as_str());
    assert!(
        body["type"].is_string() && body["title"].is_string(),
        "{body}"
    );
    body
}

#[tokio::test]
async fn every_response_carries_contract_version_and_request_id() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    let resp = app.get("/meta/enums").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-contract-version"], "1");
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(
        uuid::Uuid::parse_str(id).is_ok(),
        "a generated id is a UUID: {id}"
    );
}

#[tokio::test]
async fn a_valid_client_request_id_is_echoed_and_an_invalid_one_replaced() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    let resp = app
        .client
        .get(app.url("/meta/enums"))
        .header("X-Request-Id", "client-id_1.2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-id_1.2");
    let resp = app
        .client
        .get(app.url("/meta/enums"))
        .header("X-Request-Id", "bad id!")
        .send()
        .await
        .unwrap();
    assert_ne!(resp.headers()["x-request-id"], "bad id!");
    let resp = app
        .client
        .get(app.url("/nope"))
        .header("X-Request-Id", "err-id")
        .send()
        .await
        .unwrap();
    let body = assert_problem(resp, 404, "not_found").await;
    assert_eq!(body["requestId"], "err-id");
}

#[tokio::test]
async fn another_contract_version_is_refused() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    let resp = app
        .client
        .get(app.url("/meta/enums"))
        .header("X-Contract-Version", "2")
        .send()
        .await
        .unwrap();
    assert_problem(resp, 400, "unsupported_contract_version").await;
    let resp = app
        .client
        .get(app.url("/meta/enums"))
        .header("X-Contract-Version", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_problems() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    assert_problem(app.get("/no/such/route").await, 404, "not_found").await;
    let resp = app
        .client
        .delete(app.url("/meta/enums"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["allow"],
        "GET",
        "a 405 lists the allowed methods"
    );
    assert_problem(resp, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_or_without_a_length() {
    let Some(app) = TestApp::builder()
        .env("EVENT_MAX_BODY_BYTES", "70000")
        .spawn()
        .await
    else {
        return;
    };
    let big = vec![b'x'; 80_000];
    let resp = app
        .client
        .post(app.url("/meta/enums"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413, "payload_too_large").await;
    // Chunked: no Content-Length to trust.
    let stream = futures::stream::iter(
        big.chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = app
        .client
        .post(app.url("/meta/enums"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(resp, 413, "payload_too_large").await;
}

#[tokio::test]
async fn enums_are_exact_and_in_order() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    let body: Value = app.get("/meta/enums").await.json().await.unwrap();
    assert_eq!(
        body,
        json!({
            "AccountStatus": ["ACTIVE", "PENDING_VERIFICATION", "SUSPENDED", "BANNED", "DELETED"],
            "UserRole": ["USER", "MODERATOR", "ADMIN", "SUPER_ADMIN"],
            "AgeGroup": ["UNDER_13", "AGE_13_17", "AGE_18_24", "AGE_25_34", "AGE_35_44", "AGE_45_PLUS", "UNKNOWN"]
        })
    );
}

#[tokio::test]
async fn openapi_documents_every_route_and_docs_render() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/meta/enums", "get"),
        ("/health/live", "get"),
        ("/health/ready", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
        ("/docs", "get"),
    ] {
        assert!(
            spec["paths"][path][method].is_object(),
            "{path} {method} missing from the document"
        );
        let responses = &spec["paths"][path][method]["responses"];
        assert!(
            responses["400"]["content"]["application/problem+json"].is_object(),
            "{path}: problems documented"
        );
        let headers = responses["200"]["headers"]
            .as_object()
            .expect("headers documented");
        for name in ["x-request-id", "x-contract-version"] {
            assert!(
                headers.keys().any(|k| k.eq_ignore_ascii_case(name)),
                "{path}: {name} documented"
            );
        }
    }
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("SwaggerUIBundle"));
}

#[tokio::test]
async fn metrics_label_by_route_template_not_raw_path() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    app.get("/meta/enums").await;
    app.get("/random/path/12345").await;
    let text = app.get("/metrics").await.text().await.unwrap();
    assert!(
        text.contains("http_requests_total{method=\"GET\",route=\"/meta/enums\",status=\"200\"}"),
        "{text}"
    );
    assert!(text.contains("route=\"unmatched\""));
    assert!(!text.contains("/random/path/12345"));
    assert!(text.contains("http_request_duration_seconds_bucket"));
    for series in [
        "sidecar_events_total{outcome=\"accepted\"}",
        "sidecar_events_total{outcome=\"duplicate\"}",
        "sidecar_events_total{outcome=\"rejected\"}",
        "sidecar_circuit_state{upstream=\"dotnet\"}",
        "sidecar_outbox_pending",
        "sidecar_backpressure_active",
        "sidecar_rate_limited_total{scope=\"user\"}",
        "sidecar_upstream_requests_total{operation=\"refresh\",outcome=\"short_circuited\"}",
    ] {
        assert!(text.contains(series), "{series} present from start-up");
    }
}

#[tokio::test]
async fn access_log_lines_are_json_with_request_and_trace_ids() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    app.client
        .get(app.url("/meta/enums"))
        .header("X-Request-Id", "log-check-1")
        .header("traceparent", trace)
        .send()
        .await
        .unwrap();
    let logs = crate::helpers::captured_logs();
    let line = logs
        .lines()
        .find(|l| l.contains("log-check-1"))
        .expect("an access log line");
    let entry: Value = serde_json::from_str(line).expect("JSON");
    assert_eq!(entry["request_id"], "log-check-1");
    assert_eq!(entry["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(entry["route"], "/meta/enums");
    assert_eq!(entry["status"], 200);
}

/// Found by schemathesis: a rejected event's `eventId` is `null` (contract 5.1), so the
/// schema must allow it; and malformed items are per-event rejections, so the request
/// schema must not promise that every item is an `Event`.
#[tokio::test]
async fn event_schemas_admit_what_the_contract_answers() {
    let Some(app) = TestApp::spawn().await else {
        return;
    };
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    let schemas = &spec["components"]["schemas"];
    assert_eq!(
        schemas["EventResult"]["properties"]["eventId"]["nullable"],
        true
    );
    assert!(schemas["EventBatch"]["properties"]["events"]["items"]
        .get("$ref")
        .is_none());
}
