//! Contract 3.5, who the caller is, seen through the one authenticated auth route
//! (`POST /auth/logout`): local JWT verification against the JWKS (rotation, forgeries, no
//! keys), and introspection with its cache.

use std::time::Duration;

use emulator::{Fault, Rotation, Signing, KID_EC_1, KID_ROGUE, KID_RSA_1};
use serde_json::{json, Value};

use crate::auth::{problem, str_of, tokens_of};
use crate::helpers::{assert_no_secrets_logged, free_port, TestApp};

/// Logout with `token` for a session that does not exist: .NET answers 204 without revoking
/// anything, so the same token can be used again.
async fn probe(app: &TestApp, token: &str) -> reqwest::Response {
    app.post_json_bearer(
        "/auth/logout",
        token,
        &json!({"session_id": "00000000-0000-0000-0000-000000000000"}),
    )
    .await
}

async fn assert_refused(app: &TestApp, token: &str) -> Value {
    let resp = probe(app, token).await;
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    problem(resp, 401, "unauthorized").await
}

#[tokio::test]
async fn tokens_are_verified_locally_and_a_rotated_key_is_picked_up() {
    let Some((app, dotnet)) = TestApp::builder()
        .jwt_of_default_emulator()
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let tokens = tokens_of(&app, "alice@example.com").await;
    let access = str_of(&tokens, "access_token").to_owned();
    for _ in 0..3 {
        assert_eq!(probe(&app, &access).await.status(), 204);
    }
    assert_eq!(dotnet.calls("/auth/introspect"), 0, "verified locally");
    assert_eq!(dotnet.calls("/.well-known/jwks.json"), 1, "keys cached");

    // .NET rotates to a key the sidecar has never seen: one refetch, no restart.
    let new_kid = dotnet.rotate_signing_key(Rotation::DropOld);
    assert_ne!(new_kid, KID_RSA_1);
    let rotated = tokens_of(&app, "alice@example.com").await;
    let rotated = str_of(&rotated, "access_token").to_owned();
    assert_eq!(probe(&app, &rotated).await.status(), 204);
    assert_eq!(dotnet.calls("/.well-known/jwks.json"), 2);
    // ES256 tokens verify too (the EC key is published).
    dotnet.set_signing_key(KID_EC_1).unwrap();
    let ec = dotnet
        .mint_access_token_with("alice@example.com", json!({}), Signing::Current)
        .unwrap();
    assert_eq!(probe(&app, &ec).await.status(), 204);
    assert_no_secrets_logged(&[&access, &rotated, &ec]);
}

#[tokio::test]
async fn forged_and_invalid_tokens_are_refused_before_dotnet() {
    let Some((app, dotnet)) = TestApp::builder()
        .jwt_of_default_emulator()
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let mint = |overrides: Value, signing: Signing| {
        dotnet
            .mint_access_token_with("alice@example.com", overrides, signing)
            .unwrap()
    };
    let now = chrono::Utc::now().timestamp();
    let forged = [
        ("alg none", mint(json!({}), Signing::None)),
        (
            "HS256 keyed with the public key",
            mint(json!({}), Signing::Hs256WithPublicKey),
        ),
        ("HS256", mint(json!({}), Signing::Hs256(b"secret".to_vec()))),
        (
            "wrong issuer",
            mint(json!({"iss": "https://evil.example"}), Signing::Current),
        ),
        (
            "wrong audience",
            mint(json!({"aud": "someone-else"}), Signing::Current),
        ),
        (
            "expired beyond the leeway",
            mint(json!({"exp": now - 31 - 5}), Signing::Current),
        ),
        (
            "not yet valid",
            mint(json!({"nbf": now + 120}), Signing::Current),
        ),
        ("no subject", mint(json!({"sub": null}), Signing::Current)),
        (
            "a trusted kid over a rogue signature",
            mint(
                json!({}),
                Signing::KeyWithHeaderKid {
                    key: KID_ROGUE.into(),
                    header_kid: Some(KID_RSA_1.into()),
                },
            ),
        ),
        ("garbage", "not-a-jwt".to_owned()),
        ("two parts", "abc.def".to_owned()),
    ];
    for (what, token) in &forged {
        let body = assert_refused(&app, token).await;
        assert!(!body.to_string().contains(token.as_str()), "{what}");
    }
    // A kid nobody published: one refetch at most, then refused.
    let unknown = mint(json!({}), Signing::Key(KID_ROGUE.into()));
    assert_refused(&app, &unknown).await;
    let fetches = dotnet.calls("/.well-known/jwks.json");
    assert!(fetches <= 2, "{fetches}");
    for _ in 0..3 {
        assert_refused(&app, &unknown).await;
    }
    assert_eq!(
        dotnet.calls("/.well-known/jwks.json"),
        fetches,
        "unknown kids refetch at most once per 10 s"
    );
    assert_eq!(dotnet.calls("/auth/logout"), 0, "nothing reached .NET");
    // Within the leeway, an expired token is still the caller's (.NET has the last word).
    let recent = mint(json!({"exp": now - 5}), Signing::Current);
    let resp = probe(&app, &recent).await;
    assert_eq!(dotnet.calls("/auth/logout"), 1);
    problem(resp, 401, "unauthorized").await;
    let tokens: Vec<&str> = forged.iter().map(|(_, t)| t.as_str()).collect();
    assert_no_secrets_logged(&tokens);
}

#[tokio::test]
async fn no_keys_at_all_is_503_not_401() {
    let Some((app, dotnet)) = TestApp::builder()
        .jwt_of_default_emulator()
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let token = dotnet
        .mint_access_token_with("alice@example.com", json!({}), Signing::Current)
        .unwrap();
    dotnet.set_published_keys(&[]).unwrap();
    let resp = probe(&app, &token).await;
    assert!(resp.headers().contains_key("retry-after"));
    problem(resp, 503, "upstream_unavailable").await;

    // The JWKS unreachable, and nothing held: 503 too.
    let Some((app, dotnet)) = TestApp::builder()
        .jwt_of_default_emulator()
        .env(
            "JWT_JWKS_URL",
            format!("http://127.0.0.1:{}/jwks.json", free_port()),
        )
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let token = dotnet
        .mint_access_token_with("alice@example.com", json!({}), Signing::Current)
        .unwrap();
    problem(probe(&app, &token).await, 503, "upstream_unavailable").await;
    assert_eq!(dotnet.calls("/auth/logout"), 0);
}

#[tokio::test]
async fn keys_from_jwt_jwks_url_are_used() {
    let Some(keys_host) = TestApp::with_emulator().await else {
        return;
    };
    let (_other_app, keys_dotnet) = keys_host;
    let Some((app, dotnet)) = TestApp::builder()
        .jwt_of_default_emulator()
        .env(
            "JWT_JWKS_URL",
            format!("{}/.well-known/jwks.json", keys_dotnet.base_url()),
        )
        .spawn_with_emulator()
        .await
    else {
        return;
    };
    let token = dotnet
        .mint_access_token_with("alice@example.com", json!({}), Signing::Current)
        .unwrap();
    assert_eq!(probe(&app, &token).await.status(), 204);
    assert_eq!(dotnet.calls("/.well-known/jwks.json"), 0);
    assert_eq!(keys_dotnet.calls("/.well-known/jwks.json"), 1);
}

#[tokio::test]
async fn without_jwt_settings_tokens_are_introspected_and_cached() {
    let Some((app, dotnet)) = TestApp::with_emulator().await else {
        return;
    };
    let tokens = tokens_of(&app, "alice@example.com").await;
    let access = str_of(&tokens, "access_token").to_owned();
    for _ in 0..3 {
        assert_eq!(probe(&app, &access).await.status(), 204);
    }
    assert_eq!(
        dotnet.calls("/auth/introspect"),
        1,
        "a positive answer is cached"
    );
    let asked = dotnet.last_request("/auth/introspect").unwrap();
    assert_eq!(asked.json().unwrap()["token"], access.as_str());
    assert!(asked.header("x-request-id").is_some());

    // An inactive token (revoked session) is 401, and not cached.
    let other = tokens_of(&app, "alice@example.com").await;
    let other_access = str_of(&other, "access_token").to_owned();
    dotnet.revoke_session(str_of(&other, "session_id"));
    assert_refused(&app, &other_access).await;
    assert_refused(&app, &other_access).await;
    assert_eq!(dotnet.calls("/auth/introspect"), 3);

    // Introspection is a read: a 5xx is retried.
    let third = tokens_of(&app, "alice@example.com").await;
    dotnet.inject_fault(Fault::status(500).times(1).path("/auth/introspect"));
    assert_eq!(
        probe(&app, str_of(&third, "access_token")).await.status(),
        204
    );
    assert_eq!(dotnet.calls("/auth/introspect"), 5);

    // .NET unreachable: 503, never 401.
    let fourth = tokens_of(&app, "alice@example.com").await;
    dotnet.refuse_connections().await;
    problem(
        probe(&app, str_of(&fourth, "access_token")).await,
        503,
        "upstream_unavailable",
    )
    .await;
    assert_no_secrets_logged(&[&access, &other_access]);
    let _ = Duration::ZERO;
}
