//! `GET`/`POST /user/preferences` against the .NET emulator (contract 7.2): policy wins and
//! is reported, .NET stores exactly what the user submitted, limits stop a request before
//! anything reaches .NET.

use std::time::Duration;

use emulator::{Emulator, EmulatorConfig, EmulatorHandle, Fault};
use serde_json::{json, Value};

use crate::helpers::TestApp;

const ALICE: &str = "alice@example.com";

struct Setup {
    app: TestApp,
    dotnet: EmulatorHandle,
    token: String,
    user_id: String,
}

async fn setup() -> Option<Setup> {
    let dotnet = Emulator::start(EmulatorConfig::default())
        .await
        .expect("the .NET emulator starts");
    let app = TestApp::builder().dotnet(&dotnet).spawn().await?;
    let tokens = dotnet.issue_tokens(ALICE, "test-device").unwrap();
    Some(Setup {
        token: tokens["access_token"].as_str().unwrap().to_owned(),
        user_id: dotnet.user_id(ALICE).unwrap(),
        app,
        dotnet,
    })
}

impl Setup {
    fn preferences_path(&self) -> String {
        format!("/users/{}/preferences", self.user_id)
    }

    async fn get(&self) -> reqwest::Response {
        self.app
            .client
            .get(self.app.url("/user/preferences"))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
    }

    async fn post_raw(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url("/user/preferences"))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, body: &Value) -> reqwest::Response {
        self.post_raw(body.to_string()).await
    }

    fn puts(&self) -> usize {
        self.dotnet
            .calls_with_method("PUT", &self.preferences_path())
    }
}

#[tokio::test]
async fn policy_wins_over_a_submitted_preference_and_the_path_is_listed() {
    let Some(s) = setup().await else {
        return;
    };
    // The emulator's policy enforces notifications.security.email = true.
    let submitted = json!({
        "notifications": {
            "security": {"email": false},
            "push": {"enabled": false}
        },
        "theme": "dark"
    });
    let resp = s.post(&submitted).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let prefs = &body["preferences"];
    assert_eq!(
        prefs["notifications"]["security"]["email"], true,
        "policy wins"
    );
    assert_eq!(
        prefs["notifications"]["security"]["push"], true,
        "default kept"
    );
    assert_eq!(
        prefs["notifications"]["push"]["enabled"], false,
        "user's choice"
    );
    assert_eq!(
        prefs["notifications"]["push"]["quietHours"],
        json!({"start": "22:00", "end": "07:00"}),
        "defaults merged key by key"
    );
    assert_eq!(prefs["theme"], "dark");
    assert_eq!(body["overridden"], json!(["notifications.security.email"]));

    // .NET holds exactly what the user submitted, not the effective object.
    assert_eq!(
        s.dotnet.stored_preferences(&s.user_id),
        Some(submitted.clone())
    );
    assert_eq!(s.puts(), 1);

    // GET answers the same shape for the stored object.
    let resp = s.get().await;
    assert_eq!(resp.status(), 200);
    let again: Value = resp.json().await.unwrap();
    assert_eq!(again, body);
}

#[tokio::test]
async fn nothing_saved_reads_as_defaults_under_policy() {
    let Some(s) = setup().await else {
        return;
    };
    let resp = s.get().await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let config = s.dotnet.config();
    let mut expected = json!({"notifications": config["notificationDefaults"].clone()});
    expected["notifications"]["security"]["email"] = json!(true);
    assert_eq!(body["preferences"], expected);
    assert_eq!(body["overridden"], json!([]));
    assert_eq!(s.dotnet.calls(&s.preferences_path()), 1);
}

#[tokio::test]
async fn a_value_equal_to_the_policy_is_not_an_override() {
    let Some(s) = setup().await else {
        return;
    };
    let resp = s
        .post(&json!({"notifications": {"security": {"email": true}}}))
        .await;
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["overridden"], json!([]));
}

#[tokio::test]
async fn too_large_is_413_and_nothing_reaches_dotnet() {
    let Some(s) = setup().await else {
        return;
    };
    let big = json!({"note": "x".repeat(16 * 1024)});
    let resp = s.post(&big).await;
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "payload_too_large");
    // Too large and too deep at once: the size is judged first.
    let mut deep_and_big = json!({"a": {"b": {"c": {"d": {"e": 1}}}}});
    deep_and_big["pad"] = json!("y".repeat(17 * 1024));
    assert_eq!(s.post(&deep_and_big).await.status(), 413);
    assert_eq!(s.puts(), 0);
}

#[tokio::test]
async fn too_deep_or_not_an_object_is_400_and_nothing_reaches_dotnet() {
    let Some(s) = setup().await else {
        return;
    };
    for bad in [
        json!({"a": {"b": {"c": {"d": {}}}}}).to_string(),
        json!({"a": {"b": {"c": [[1]]}}}).to_string(),
        json!([1, 2]).to_string(),
        "\"text\"".to_owned(),
        "{not json".to_owned(),
        String::new(),
    ] {
        let resp = s.post_raw(bad.clone()).await;
        assert_eq!(resp.status(), 400, "{bad}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "invalid_request", "{bad}");
    }
    assert_eq!(s.puts(), 0);
    // Exactly at the depth limit is fine.
    let ok = s.post(&json!({"a": {"b": {"c": [1]}}})).await;
    assert_eq!(ok.status(), 200);
    assert_eq!(s.puts(), 1);
}

#[tokio::test]
async fn preferences_need_a_bearer() {
    let Some(s) = setup().await else {
        return;
    };
    let resp = s.app.get("/user/preferences").await;
    assert_eq!(resp.status(), 401);
    let resp = s
        .app
        .post_json("/user/preferences", &json!({"theme": "dark"}))
        .await;
    assert_eq!(resp.status(), 401);
    assert_eq!(s.puts(), 0);
}

#[tokio::test]
async fn a_refusal_from_dotnet_is_passed_through() {
    let Some(s) = setup().await else {
        return;
    };
    s.dotnet.inject_fault(
        Fault::status(403).path(s.preferences_path()).body(
            "application/problem+json",
            json!({"type": "about:blank", "title": "Forbidden", "status": 403,
                       "code": "forbidden", "detail": "not yours"})
            .to_string(),
        ),
    );
    let resp = s.post(&json!({"theme": "dark"})).await;
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "forbidden");
    assert!(body["requestId"].is_string());
}

#[tokio::test]
async fn dotnet_failing_the_write_is_503_upstream_unavailable() {
    let Some(s) = setup().await else {
        return;
    };
    s.dotnet
        .inject_fault(Fault::status(500).path(s.preferences_path()).times(1));
    let resp = s.post(&json!({"theme": "dark"})).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
}

#[tokio::test]
async fn no_config_means_503_and_nothing_is_saved() {
    let Some(s) = setup().await else {
        return;
    };
    // .NET answers everything but /config: the cache never gets a good copy.
    s.dotnet.inject_fault(Fault::status(503).path("/config"));
    // The warm-up fetch may already have succeeded; start a second app that never did.
    let Some(app) = TestApp::builder().dotnet(&s.dotnet).spawn().await else {
        return;
    };
    let resp = app
        .client
        .post(app.url("/user/preferences"))
        .bearer_auth(&s.token)
        .json(&json!({"theme": "dark"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "upstream_unavailable");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(s.puts(), 0);
    assert_eq!(s.dotnet.stored_preferences(&s.user_id), None);
}

#[tokio::test]
async fn the_token_and_request_id_are_forwarded_to_dotnet() {
    let Some(s) = setup().await else {
        return;
    };
    let resp = s
        .app
        .client
        .post(s.app.url("/user/preferences"))
        .bearer_auth(&s.token)
        .header("x-request-id", "prefs-req-1")
        .json(&json!({"theme": "dark"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = s.dotnet.last_headers(&s.preferences_path()).unwrap();
    assert_eq!(headers.get("x-request-id").unwrap(), "prefs-req-1");
    assert!(headers.contains_key("authorization"));
}

#[tokio::test]
async fn the_openapi_document_describes_both_routes_with_the_bearer_scheme() {
    let Some(s) = setup().await else {
        return;
    };
    let spec: Value = s.app.get("/openapi.json").await.json().await.unwrap();
    let path = &spec["paths"]["/user/preferences"];
    for method in ["get", "post"] {
        let op = &path[method];
        assert!(
            op["security"].as_array().is_some_and(|s| !s.is_empty()),
            "{method}"
        );
        for status in ["200", "401", "503"] {
            assert!(op["responses"][status].is_object(), "{method} {status}");
        }
    }
    let body = &path["post"]["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["type"], "object");
    assert!(path["post"]["responses"]["413"].is_object());
    assert!(path["post"]["responses"]["400"].is_object());
    let view = &spec["components"]["schemas"]["PreferencesView"];
    assert!(view["properties"]["preferences"].is_object());
    assert_eq!(view["properties"]["overridden"]["type"], "array");
}
