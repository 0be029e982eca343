//! The emulator exercised over HTTP, as the sidecar sees it.

use std::time::Duration;

use emulator::{
    AccountStatus, Emulator, EmulatorConfig, EmulatorHandle, Fault, Latency, Role, Rotation,
    Signing, UserSpec, DEFAULT_PASSWORD, KID_EC_1, KID_ROGUE, KID_RSA_1, KID_RSA_2,
};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use serde_json::{json, Value};

async fn start() -> EmulatorHandle {
    Emulator::start(EmulatorConfig::default()).await.unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(emu: &EmulatorHandle, path: &str, body: Value) -> (u16, Value) {
    let resp = client()
        .post(format!("{}{}", emu.base_url(), path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn login(emu: &EmulatorHandle, email: &str) -> (u16, Value) {
    post(
        emu,
        "/auth/login",
        json!({"email": email, "password": DEFAULT_PASSWORD, "device_id": "dev-1"}),
    )
    .await
}

async fn introspect(emu: &EmulatorHandle, token: &str) -> Value {
    let (status, body) = post(emu, "/auth/introspect", json!({ "token": token })).await;
    assert_eq!(status, 200);
    body
}

async fn refresh(emu: &EmulatorHandle, refresh_token: &str) -> (u16, Value) {
    post(
        emu,
        "/auth/refresh",
        json!({"refresh_token": refresh_token, "device_id": "dev-1"}),
    )
    .await
}

fn assert_problem(body: &Value, status: u16, code: &str) {
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
}

/// Verifies `token` against the JWKS the emulator serves, as the sidecar would.
async fn verify_with_jwks(emu: &EmulatorHandle, token: &str) -> Result<Value, String> {
    let jwks: JwkSet = client()
        .get(format!("{}/.well-known/jwks.json", emu.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks.find(&kid).ok_or(format!("kid {kid} not in JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[emu.issuer()]);
    v.set_audience(&[emu.audience()]);
    jsonwebtoken::decode::<Value>(token, &key, &v)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn login_without_mfa_is_authenticated_with_a_verifiable_jwt() {
    let emu = start().await;
    let (status, body) = login(&emu, "alice@example.com").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "AUTHENTICATED");
    let t = &body["tokens"];
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["expires_in"], 600);
    assert_eq!(t["refresh_expires_in"], 1_209_600);
    assert!(t["refresh_token"].as_str().unwrap().len() >= 32);
    let user = &body["user"];
    assert_eq!(user["email"], "alice@example.com");
    assert_eq!(user["role"], "USER");
    assert_eq!(user["status"], "ACTIVE");
    assert_eq!(user["age_group"], "AGE_25_34");
    assert_eq!(user["mfa_enrolled"], false);
    assert_eq!(user["id"], emu.user_id("alice@example.com").unwrap());

    let access = t["access_token"].as_str().unwrap();
    let header = jsonwebtoken::decode_header(access).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.kid.as_deref(), Some(KID_RSA_1));
    let claims = verify_with_jwks(&emu, access).await.unwrap();
    assert_eq!(claims["sub"], user["id"]);
    assert_eq!(claims["sid"], t["session_id"]);
    assert_eq!(claims["role"], "USER");
    assert_eq!(claims["age_group"], "AGE_25_34");
    assert_eq!(claims["iss"], "https://dotnet.local");
    assert_eq!(claims["aud"], "sidecar");
    let iat = claims["iat"].as_i64().unwrap();
    assert_eq!(claims["nbf"].as_i64().unwrap(), iat);
    assert_eq!(claims["exp"].as_i64().unwrap(), iat + 600);
}

#[tokio::test]
async fn login_errors_and_statuses() {
    let emu = start().await;
    let (status, body) = post(
        &emu,
        "/auth/login",
        json!({"email": "alice@example.com", "password": "wrong", "device_id": "d"}),
    )
    .await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "invalid_credentials");
    let (status, body) = login(&emu, "nobody@example.com").await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "invalid_credentials");
    let (status, body) = login(&emu, "deleted@example.com").await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "invalid_credentials");
    let (status, body) = login(&emu, "banned@example.com").await;
    assert_eq!(status, 403);
    assert_problem(&body, 403, "account_banned");
    let (status, body) = login(&emu, "suspended@example.com").await;
    assert_eq!(status, 403);
    assert_problem(&body, 403, "account_suspended");
    let (status, body) = login(&emu, "pending@example.com").await;
    assert_eq!(status, 200);
    assert_eq!(body["user"]["status"], "PENDING_VERIFICATION");
    // The misconfigured admin: tokens without a challenge.
    let (status, body) = login(&emu, "rogue-admin@example.com").await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "AUTHENTICATED");
    assert_eq!(body["user"]["role"], "ADMIN");
    // Malformed body.
    let resp = client()
        .post(format!("{}/auth/login", emu.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = client()
        .post(format!("{}/auth/login", emu.base_url()))
        .json(&json!({"email": "alice@example.com", "password": "x", "device_id": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

#[tokio::test]
async fn mfa_challenge_right_and_wrong_codes() {
    let emu = start().await;
    for email in ["bob@example.com", "admin@example.com", "root@example.com"] {
        let (status, body) = login(&emu, email).await;
        assert_eq!(status, 200);
        assert_eq!(body["status"], "MFA_REQUIRED", "{email}");
        assert_eq!(body["challenge_expires_in"], 300);
    }
    let (_, body) = login(&emu, "bob@example.com").await;
    let challenge = body["challenge_id"].as_str().unwrap().to_string();

    let wrong = emu.wrong_otp_for_challenge(&challenge).unwrap();
    let (status, body) = post(
        &emu,
        "/auth/mfa/verify",
        json!({"challenge_id": challenge, "otp_code": wrong}),
    )
    .await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "invalid_otp");

    let code = emu.otp_for_challenge(&challenge).unwrap();
    assert_eq!(code, emu.current_otp("bob@example.com").unwrap());
    let (status, body) = post(
        &emu,
        "/auth/mfa/verify",
        json!({"challenge_id": challenge, "otp_code": code}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "AUTHENTICATED");
    assert_eq!(body["user"]["email"], "bob@example.com");
    assert_eq!(body["user"]["mfa_enrolled"], true);
    assert!(
        verify_with_jwks(&emu, body["tokens"]["access_token"].as_str().unwrap())
            .await
            .is_ok()
    );

    // Single use.
    let (status, body) = post(
        &emu,
        "/auth/mfa/verify",
        json!({"challenge_id": challenge, "otp_code": code}),
    )
    .await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "challenge_expired");
}

#[tokio::test]
async fn mfa_challenge_expires_and_burns_after_failures() {
    let emu = start().await;
    let (_, body) = login(&emu, "admin@example.com").await;
    let challenge = body["challenge_id"].as_str().unwrap().to_string();
    emu.advance_clock(Duration::from_secs(301));
    let code = emu.otp_for_challenge(&challenge).unwrap();
    let (status, body) = post(
        &emu,
        "/auth/mfa/verify",
        json!({"challenge_id": challenge, "otp_code": code}),
    )
    .await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "challenge_expired");

    let (_, body) = login(&emu, "admin@example.com").await;
    let challenge = body["challenge_id"].as_str().unwrap().to_string();
    let wrong = emu.wrong_otp_for_challenge(&challenge).unwrap();
    for _ in 0..5 {
        let (_, body) = post(
            &emu,
            "/auth/mfa/verify",
            json!({"challenge_id": challenge, "otp_code": wrong}),
        )
        .await;
        assert_eq!(body["code"], "invalid_otp");
    }
    assert!(emu.otp_for_challenge(&challenge).is_none(), "burned");
}

#[tokio::test]
async fn refresh_rotates_and_replay_revokes_the_family() {
    let emu = start().await;
    let (_, body) = login(&emu, "alice@example.com").await;
    let first = body["tokens"].clone();
    let sid = first["session_id"].as_str().unwrap().to_string();

    let (status, body) = refresh(&emu, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    let second = body["tokens"].clone();
    assert_eq!(second["session_id"], sid.as_str());
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    assert_eq!(second["expires_in"], 600);

    let (status, body) = refresh(&emu, second["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    let third = body["tokens"].clone();
    assert_eq!(third["session_id"], sid.as_str());
    let newest_access = third["access_token"].as_str().unwrap();
    assert_eq!(introspect(&emu, newest_access).await["active"], true);

    // Replay of the first token: the whole family dies.
    let (status, body) = refresh(&emu, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "refresh_token_reused");
    assert!(emu.is_session_revoked(&sid));
    assert_eq!(
        introspect(&emu, newest_access).await,
        json!({"active": false})
    );
    assert_eq!(
        introspect(&emu, first["access_token"].as_str().unwrap()).await["active"],
        false
    );
    let (status, body) = refresh(&emu, third["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "invalid_refresh_token");

    let (status, body) = refresh(&emu, "never-issued").await;
    assert_eq!(status, 401);
    assert_problem(&body, 401, "invalid_refresh_token");
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_are_a_replay() {
    let emu = start().await;
    let tokens = emu.issue_tokens("alice@example.com", "d").unwrap();
    let rt = tokens["refresh_token"].as_str().unwrap();
    let (a, b) = tokio::join!(refresh(&emu, rt), refresh(&emu, rt));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [200, 401]);
    let loser = if a.0 == 401 { a.1 } else { b.1 };
    assert_eq!(loser["code"], "refresh_token_reused");
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let emu = start().await;
    let (_, body) = login(&emu, "alice@example.com").await;
    let t = body["tokens"].clone();
    let access = t["access_token"].as_str().unwrap();
    let url = format!("{}/auth/logout", emu.base_url());

    let resp = client()
        .post(&url)
        .json(&json!({"session_id": t["session_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    let resp = client()
        .post(&url)
        .bearer_auth("garbage")
        .json(&json!({"session_id": t["session_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // Another user's session.
    let other = emu.issue_tokens("bob@example.com", "d").unwrap();
    let resp = client()
        .post(&url)
        .bearer_auth(access)
        .json(&json!({"session_id": other["session_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    let resp = client()
        .post(&url)
        .bearer_auth(access)
        .json(&json!({"session_id": t["session_id"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(introspect(&emu, access).await["active"], false);
    let (status, body) = refresh(&emu, t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "invalid_refresh_token");
    let logout_req = emu.last_request("/auth/logout").unwrap();
    assert_eq!(logout_req.json().unwrap()["session_id"], t["session_id"]);
}

#[tokio::test]
async fn introspection_of_good_and_forged_tokens() {
    let emu = start().await;
    let (_, body) = login(&emu, "teen@example.com").await;
    let access = body["tokens"]["access_token"].as_str().unwrap();
    let info = introspect(&emu, access).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["sub"], emu.user_id("teen@example.com").unwrap());
    assert_eq!(info["role"], "USER");
    assert_eq!(info["age_group"], "AGE_13_17");
    assert_eq!(info["sid"], body["tokens"]["session_id"]);
    assert!(info["exp"].as_i64().unwrap() > emu.now());

    let alice = "alice@example.com";
    let good = emu
        .mint_access_token_with(alice, json!({}), Signing::Current)
        .unwrap();
    assert_eq!(introspect(&emu, &good).await["active"], true);
    let ec = emu
        .mint_access_token_with(alice, json!({}), Signing::Key(KID_EC_1.into()))
        .unwrap();
    assert_eq!(introspect(&emu, &ec).await["active"], true);
    assert!(verify_with_jwks(&emu, &ec).await.is_ok());

    let now = emu.now();
    let forged = [
        emu.mint_access_token_with(alice, json!({"exp": now - 1}), Signing::Current),
        emu.mint_access_token_with(alice, json!({"nbf": now + 120}), Signing::Current),
        emu.mint_access_token_with(alice, json!({"iss": "https://evil"}), Signing::Current),
        emu.mint_access_token_with(alice, json!({"aud": "other"}), Signing::Current),
        emu.mint_access_token_with(alice, json!({"sid": "no-such-session"}), Signing::Current),
        emu.mint_access_token_with(alice, json!({"exp": null}), Signing::Current),
        emu.mint_access_token_with(alice, json!({}), Signing::Hs256WithPublicKey),
        emu.mint_access_token_with(alice, json!({}), Signing::Hs256(b"secret".to_vec())),
        emu.mint_access_token_with(alice, json!({}), Signing::None),
        emu.mint_access_token_with(alice, json!({}), Signing::Key(KID_ROGUE.into())),
        emu.mint_access_token_with(
            alice,
            json!({}),
            Signing::KeyWithHeaderKid {
                key: KID_ROGUE.into(),
                header_kid: Some(KID_RSA_1.into()),
            },
        ),
    ];
    for (i, token) in forged.into_iter().enumerate() {
        let token = token.unwrap();
        assert_eq!(
            introspect(&emu, &token).await,
            json!({"active": false}),
            "forgery {i}"
        );
    }
    let none = emu
        .mint_access_token_with(alice, json!({}), Signing::None)
        .unwrap();
    assert!(none.ends_with('.'));
    let header = none.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "none");
    assert_eq!(introspect(&emu, "not a jwt").await["active"], false);
}

#[tokio::test]
async fn access_tokens_expire_on_the_emulator_clock() {
    let emu = Emulator::start(EmulatorConfig {
        access_ttl_secs: 60,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let t = emu.issue_tokens("alice@example.com", "d").unwrap();
    assert_eq!(t["expires_in"], 60);
    let access = t["access_token"].as_str().unwrap();
    assert!(emu.is_token_active(access));
    emu.advance_clock(Duration::from_secs(61));
    assert_eq!(introspect(&emu, access).await["active"], false);
}

#[tokio::test]
async fn jwks_rotation_and_es256() {
    let emu = start().await;
    let kids = |v: &Value| -> Vec<String> {
        v["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(kids(&emu.jwks()), [KID_RSA_1, KID_EC_1]);
    let before = emu.issue_tokens("alice@example.com", "d").unwrap();

    assert_eq!(emu.rotate_signing_key(Rotation::KeepOld), KID_RSA_2);
    assert_eq!(kids(&emu.jwks()), [KID_RSA_1, KID_EC_1, KID_RSA_2]);
    let after = emu.issue_tokens("alice@example.com", "d").unwrap();
    let after_access = after["access_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(after_access)
            .unwrap()
            .kid
            .as_deref(),
        Some(KID_RSA_2)
    );
    assert!(verify_with_jwks(&emu, after_access).await.is_ok());
    let before_access = before["access_token"].as_str().unwrap();
    assert!(verify_with_jwks(&emu, before_access).await.is_ok());

    assert_eq!(emu.rotate_signing_key(Rotation::DropOld), KID_RSA_1);
    assert_eq!(kids(&emu.jwks()), [KID_EC_1, KID_RSA_1]);
    assert!(verify_with_jwks(&emu, after_access)
        .await
        .unwrap_err()
        .contains("not in JWKS"));

    emu.set_signing_key(KID_EC_1).unwrap();
    let ec = emu.issue_tokens("alice@example.com", "d").unwrap();
    let ec_access = ec["access_token"].as_str().unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(ec_access).unwrap().alg,
        jsonwebtoken::Algorithm::ES256
    );
    assert!(verify_with_jwks(&emu, ec_access).await.is_ok());
    assert!(emu.set_signing_key(KID_ROGUE).is_err());
    emu.set_published_keys(&[KID_RSA_2]).unwrap();
    assert_eq!(kids(&emu.jwks()), [KID_RSA_2]);
}

#[tokio::test]
async fn injected_faults_count_down_and_filter_by_path() {
    let emu = start().await;
    emu.fail_next(2, 500);
    for _ in 0..2 {
        let resp = client()
            .get(format!("{}/config", emu.base_url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 500);
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
    }
    let (status, _) = login(&emu, "alice@example.com").await;
    assert_eq!(status, 200);

    emu.inject_fault(
        Fault::status(503)
            .times(1)
            .path("/auth/refresh")
            .retry_after("7"),
    );
    let resp = client()
        .get(format!("{}/config", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client()
        .post(format!("{}/auth/refresh", emu.base_url()))
        .json(&json!({"refresh_token": "x", "device_id": "d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");

    // A body that is not the contract, for upstream_error tests.
    emu.inject_fault(Fault::status(200).times(1).body("text/html", "<html>"));
    let resp = client()
        .get(format!("{}/config", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "<html>");

    emu.fail_all(502);
    for _ in 0..3 {
        let (status, _) = login(&emu, "alice@example.com").await;
        assert_eq!(status, 502);
    }
    emu.clear_faults();
    assert_eq!(login(&emu, "alice@example.com").await.0, 200);
    // Faulted requests were received, so they are counted.
    assert_eq!(emu.calls("/auth/login"), 5);
}

#[tokio::test]
async fn fault_after_processing_spends_the_refresh_token() {
    let emu = start().await;
    let t = emu.issue_tokens("alice@example.com", "d").unwrap();
    let rt = t["refresh_token"].as_str().unwrap();
    emu.inject_fault(
        Fault::status(500)
            .times(1)
            .path("/auth/refresh")
            .after_processing(),
    );
    assert_eq!(refresh(&emu, rt).await.0, 500);
    let (status, body) = refresh(&emu, rt).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "refresh_token_reused");
}

#[tokio::test]
async fn latency_after_processing_times_out_after_dotnet_acted() {
    let emu = start().await;
    let t = emu.issue_tokens("alice@example.com", "d").unwrap();
    let rt = t["refresh_token"].as_str().unwrap();
    emu.add_latency(
        Latency::new(Duration::from_millis(800))
            .path("/auth/refresh")
            .times(1)
            .after_processing(),
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = impatient
        .post(format!("{}/auth/refresh", emu.base_url()))
        .json(&json!({"refresh_token": rt, "device_id": "d"}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    // .NET had already rotated: sending it again is a replay.
    let (status, body) = refresh(&emu, rt).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "refresh_token_reused");

    // Latency before processing: a timeout leaves the token unspent.
    let t = emu.issue_tokens("alice@example.com", "d").unwrap();
    let rt = t["refresh_token"].as_str().unwrap();
    emu.add_latency(
        Latency::new(Duration::from_millis(800))
            .path("/auth/refresh")
            .times(1),
    );
    let err = impatient
        .post(format!("{}/auth/refresh", emu.base_url()))
        .json(&json!({"refresh_token": rt, "device_id": "d"}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(refresh(&emu, rt).await.0, 200);
}

#[tokio::test]
async fn refuse_and_accept_connections_on_the_same_port() {
    let emu = start().await;
    let base = emu.base_url();
    // One pooled client across the outage: its keep-alive connection must not survive it.
    let pooled = client();
    let ok = pooled.get(format!("{base}/config")).send().await.unwrap();
    assert_eq!(ok.status(), 200);

    emu.refuse_connections().await;
    assert!(!emu.is_accepting_connections());
    let err = pooled
        .get(format!("{base}/config"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    let err = client()
        .get(format!("{base}/config"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    emu.accept_connections().await.unwrap();
    assert_eq!(emu.base_url(), base);
    let ok = pooled.get(format!("{base}/config")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn config_round_trip() {
    let emu = start().await;
    let url = format!("{}/config", emu.base_url());
    let body: Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(body["policy"]["enforced"].is_object());
    assert!(body["featureFlags"].is_object());
    assert!(body["notificationDefaults"].is_object());
    let new = json!({"policy": {"enforced": {}}, "featureFlags": {"x": true}, "notificationDefaults": {}, "extra": 1});
    emu.set_config(new.clone());
    let body: Value = client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body, new);
    // The same through the control route.
    let resp = client()
        .put(format!("{}/__emulator/config", emu.base_url()))
        .json(&json!({"policy": {}, "featureFlags": {}, "notificationDefaults": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(emu.config()["policy"], json!({}));
}

#[tokio::test]
async fn preferences_round_trip_with_authorization() {
    let emu = start().await;
    let alice_id = emu.user_id("alice@example.com").unwrap();
    let url = format!("{}/users/{alice_id}/preferences", emu.base_url());
    let alice = emu.issue_tokens("alice@example.com", "d").unwrap();
    let alice_token = alice["access_token"].as_str().unwrap();

    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client()
        .get(&url)
        .bearer_auth(alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    let prefs = json!({"notifications": {"email": {"marketing": true}}, "theme": "dark"});
    let resp = client()
        .put(&url)
        .bearer_auth(alice_token)
        .json(&prefs)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert_eq!(emu.stored_preferences(&alice_id), Some(prefs.clone()));
    let got: Value = client()
        .get(&url)
        .bearer_auth(alice_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, prefs);

    let resp = client()
        .put(&url)
        .bearer_auth(alice_token)
        .json(&json!([1, 2]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let bob = emu.issue_tokens("bob@example.com", "d").unwrap();
    let resp = client()
        .get(&url)
        .bearer_auth(bob["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let admin = emu.issue_tokens("admin@example.com", "d").unwrap();
    let resp = client()
        .get(&url)
        .bearer_auth(admin["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.calls(&format!("/users/{alice_id}/preferences")), 7);
    assert_eq!(
        emu.calls_with_method("PUT", &format!("/users/{alice_id}/preferences")),
        2
    );
}

#[tokio::test]
async fn forwarded_headers_are_recorded() {
    let emu = start().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = client()
        .post(format!("{}/auth/introspect", emu.base_url()))
        .header("X-Request-Id", "req-123")
        .header("traceparent", traceparent)
        .header("X-Forwarded-For", "203.0.113.7, 127.0.0.1")
        .header("User-Agent", "sidecar-test/1")
        .header("Authorization", "Bearer abc")
        .json(&json!({"token": "abc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(emu.calls("/auth/introspect"), 1);
    let h = emu.last_headers("/auth/introspect").unwrap();
    assert_eq!(h["x-request-id"], "req-123");
    assert_eq!(h["traceparent"], traceparent);
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(h["user-agent"], "sidecar-test/1");
    assert_eq!(h["authorization"], "Bearer abc");
    assert!(emu.last_headers("/auth/login").is_none());

    // Over HTTP the credential is redacted.
    let listed: Value = client()
        .get(format!(
            "{}/__emulator/requests?path=/auth/introspect",
            emu.base_url()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["headers"]["authorization"], "Bearer [redacted]");
    assert_eq!(listed[0]["headers"]["x-request-id"], "req-123");
    // Control routes are not recorded.
    assert_eq!(emu.requests(None).len(), 1);
    emu.clear_recordings();
    assert_eq!(emu.calls("/auth/introspect"), 0);
}

#[tokio::test]
async fn runtime_users_and_status_changes() {
    let emu = start().await;
    let user = emu.add_user(
        UserSpec::new("Carol@Example.com")
            .password("pw")
            .role(Role::Moderator)
            .mfa(true),
    );
    assert_eq!(user.email, "carol@example.com");
    let (status, body) = post(
        &emu,
        "/auth/login",
        json!({"email": "carol@example.com", "password": "pw", "device_id": "d"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "MFA_REQUIRED");

    let t = emu.issue_tokens("alice@example.com", "d").unwrap();
    let sid = t["session_id"].as_str().unwrap();
    assert!(emu.set_user_status("alice@example.com", AccountStatus::Banned));
    assert!(emu.is_session_revoked(sid));
    assert_eq!(login(&emu, "alice@example.com").await.0, 403);
    emu.reset();
    assert_eq!(login(&emu, "alice@example.com").await.0, 200);
    assert!(emu.user("carol@example.com").is_none());
}

#[tokio::test]
async fn control_routes() {
    let emu = start().await;
    let base = emu.base_url();
    let c = client();

    // Users and OTP over HTTP.
    let resp = c
        .post(format!("{base}/__emulator/users"))
        .json(&json!({"email": "dave@example.com", "mfa_enrolled": true, "role": "ADMIN"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (_, body) = login(&emu, "dave@example.com").await;
    let challenge = body["challenge_id"].as_str().unwrap();
    let otp: Value = c
        .get(format!("{base}/__emulator/otp?challenge_id={challenge}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, _) = post(
        &emu,
        "/auth/mfa/verify",
        json!({"challenge_id": challenge, "otp_code": otp["otp_code"]}),
    )
    .await;
    assert_eq!(status, 200);

    // Faults over HTTP, not applied to the control routes themselves.
    let resp = c
        .post(format!("{base}/__emulator/faults"))
        .json(&json!({"status": 503, "times": 1, "path": "/config", "retry_after": "2"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = c.get(format!("{base}/config")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let resp = c
        .post(format!("{base}/__emulator/faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let state: Value = c
        .get(format!("{base}/__emulator/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["faults"][0]["status"], 500);
    assert_eq!(state["signing_kid"], KID_RSA_1);
    c.delete(format!("{base}/__emulator/faults"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        c.get(format!("{base}/config"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Key rotation and minting.
    let rotated: Value = c
        .post(format!("{base}/__emulator/rotate-key"))
        .json(&json!({"rotation": "drop_old"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rotated["kid"], KID_RSA_2);
    let minted: Value = c
        .post(format!("{base}/__emulator/mint"))
        .json(&json!({"email": "alice@example.com", "overrides": {"role": "ADMIN"}, "signing": {"kind": "none"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(minted["token"].as_str().unwrap().ends_with('.'));

    // An outage: connections refused for a moment, then served again.
    let resp = c
        .post(format!("{base}/__emulator/outage"))
        .json(&json!({"seconds": 0.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(client()
        .get(format!("{base}/config"))
        .send()
        .await
        .unwrap_err()
        .is_connect());
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        client()
            .get(format!("{base}/config"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let resp = c
        .post(format!("{base}/__emulator/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    assert!(emu.user("dave@example.com").is_none());
    assert_eq!(emu.signing_kid(), KID_RSA_1);
}

#[tokio::test]
async fn unknown_routes_are_problems() {
    let emu = start().await;
    let resp = client()
        .get(format!("{}/nope", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let resp = client()
        .get(format!("{}/auth/login", emu.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
}

#[tokio::test]
async fn stop_frees_the_port() {
    let emu = start().await;
    let addr = emu.addr();
    emu.stop().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
