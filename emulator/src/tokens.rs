//! Access tokens (JWTs) and refresh tokens: minting, forging and the emulator's own check.
//!
//! Access tokens are what .NET issues: RS256 (or ES256 after `set_signing_key`) with a `kid`
//! header and the claims `iss aud sub role sid age_group iat nbf exp jti`. The forging helpers
//! exist so the sidecar's tests can present every kind of bad token (expired, wrong issuer or
//! audience, HS256 keyed with the public key, `alg: none`, an unknown key).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use rand::RngCore;
use serde_json::{Map, Value};

use crate::keys::KeyRing;

/// How a token is signed. The default, [`Signing::Current`], is what login does.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum Signing {
    /// The current signing key, its algorithm and `kid`.
    #[default]
    Current,
    /// A named key (e.g. [`crate::KID_EC_1`], [`crate::KID_ROGUE`]) with its own algorithm and kid.
    Key(String),
    /// A named key, but the header carries `header_kid` instead (`None`: no `kid` at all).
    KeyWithHeaderKid {
        key: String,
        header_kid: Option<String>,
    },
    /// HS256 keyed with the current signing key's public PEM (the classic algorithm confusion
    /// attack), `kid` of the current key.
    Hs256WithPublicKey,
    /// HS256 with the given secret, `kid` of the current key.
    Hs256(Vec<u8>),
    /// `alg: none` with an empty signature, `kid` of the current key.
    None,
}

/// 32 random bytes, base64url: an opaque refresh token as .NET issues it.
pub fn new_refresh_token() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Applies overrides to claims: a `null` value removes the claim, anything else replaces it.
pub fn apply_overrides(claims: &mut Map<String, Value>, overrides: &Value) {
    if let Value::Object(o) = overrides {
        for (k, v) in o {
            if v.is_null() {
                claims.remove(k);
            } else {
                claims.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Signs `claims` as `signing` says, with `current_kid` the key login would use.
pub fn sign(
    ring: &KeyRing,
    current_kid: &str,
    claims: &Map<String, Value>,
    signing: &Signing,
) -> anyhow::Result<String> {
    let key_named = |kid: &str| {
        ring.get(kid)
            .ok_or_else(|| anyhow::anyhow!("no emulator key with kid {kid:?}"))
    };
    let (alg, encoding, kid): (Algorithm, EncodingKey, Option<String>) = match signing {
        Signing::Current => {
            let k = key_named(current_kid)?;
            (k.alg, k.encoding.clone(), Some(k.kid.to_string()))
        }
        Signing::Key(kid) => {
            let k = key_named(kid)?;
            (k.alg, k.encoding.clone(), Some(k.kid.to_string()))
        }
        Signing::KeyWithHeaderKid { key, header_kid } => {
            let k = key_named(key)?;
            (k.alg, k.encoding.clone(), header_kid.clone())
        }
        Signing::Hs256WithPublicKey => {
            let k = key_named(current_kid)?;
            (
                Algorithm::HS256,
                EncodingKey::from_secret(k.public_pem.as_bytes()),
                Some(k.kid.to_string()),
            )
        }
        Signing::Hs256(secret) => (
            Algorithm::HS256,
            EncodingKey::from_secret(secret),
            Some(current_kid.to_string()),
        ),
        Signing::None => {
            // jsonwebtoken refuses to produce `alg: none`, so it is assembled by hand.
            let mut header = serde_json::json!({"alg": "none", "typ": "JWT"});
            header["kid"] = Value::String(current_kid.to_string());
            let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?);
            let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?);
            return Ok(format!("{h}.{c}."));
        }
    };
    let mut header = Header::new(alg);
    header.kid = kid;
    Ok(jsonwebtoken::encode(&header, claims, &encoding)?)
}

/// Why the emulator does not accept an access token (never sent on the wire; for logs/tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Claims,
    Expired,
    NotYetValid,
}

/// The emulator's own verification, used by introspection, logout and the preference routes:
/// RS256/ES256 only, a `kid` naming one of its trusted keys (published or not, as .NET keeps
/// validating with a retired key until its tokens expire), issuer, audience and time with no
/// leeway (so "expired" in a test means expired). Session revocation is checked by the caller.
pub fn verify(
    ring: &KeyRing,
    token: &str,
    issuer: &str,
    audience: &str,
    now: i64,
) -> Result<Map<String, Value>, Rejection> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
    if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
        return Err(Rejection::Algorithm);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| ring.get(kid))
        .filter(|k| k.trusted && k.alg == header.alg)
        .ok_or(Rejection::UnknownKey)?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    // Time is checked below against the emulator's clock, which tests can move.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => Rejection::Signature,
            _ => Rejection::Claims,
        })?;
    let claims = data.claims;
    let exp = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(Rejection::Claims)?;
    if now >= exp {
        return Err(Rejection::Expired);
    }
    if let Some(nbf) = claims.get("nbf") {
        if nbf.as_i64().ok_or(Rejection::Claims)? > now {
            return Err(Rejection::NotYetValid);
        }
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KID_EC_1, KID_ROGUE, KID_RSA_1, KID_RSA_2};

    fn claims(now: i64) -> Map<String, Value> {
        serde_json::json!({
            "iss": "https://dotnet.local", "aud": "sidecar", "sub": "u1", "role": "USER",
            "sid": "s1", "age_group": "AGE_25_34", "iat": now, "nbf": now, "exp": now + 600,
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn every_trusted_key_verifies_and_forgeries_do_not() {
        let ring = KeyRing::load().unwrap();
        let now = 1_700_000_000;
        let c = claims(now);
        let check = |t: &str| verify(&ring, t, "https://dotnet.local", "sidecar", now);
        for kid in [KID_RSA_1, KID_RSA_2, KID_EC_1] {
            let t = sign(&ring, KID_RSA_1, &c, &Signing::Key(kid.into())).unwrap();
            assert!(check(&t).is_ok(), "{kid}");
        }
        let rogue = sign(&ring, KID_RSA_1, &c, &Signing::Key(KID_ROGUE.into())).unwrap();
        assert_eq!(check(&rogue), Err(Rejection::UnknownKey));
        let swapped = Signing::KeyWithHeaderKid {
            key: KID_ROGUE.into(),
            header_kid: Some(KID_RSA_1.into()),
        };
        let t = sign(&ring, KID_RSA_1, &c, &swapped).unwrap();
        assert_eq!(check(&t), Err(Rejection::Signature));
        let t = sign(&ring, KID_RSA_1, &c, &Signing::Hs256WithPublicKey).unwrap();
        assert_eq!(check(&t), Err(Rejection::Algorithm));
        let t = sign(&ring, KID_RSA_1, &c, &Signing::None).unwrap();
        assert!(t.ends_with('.'));
        assert!(check(&t).is_err());
        let mut expired = c.clone();
        apply_overrides(&mut expired, &serde_json::json!({"exp": now - 1}));
        let t = sign(&ring, KID_RSA_1, &expired, &Signing::Current).unwrap();
        assert_eq!(check(&t), Err(Rejection::Expired));
        let mut wrong_aud = c.clone();
        apply_overrides(&mut wrong_aud, &serde_json::json!({"aud": "other"}));
        let t = sign(&ring, KID_RSA_1, &wrong_aud, &Signing::Current).unwrap();
        assert_eq!(check(&t), Err(Rejection::Claims));
    }

    #[test]
    fn overrides_replace_and_remove() {
        let mut c = claims(0);
        apply_overrides(&mut c, &serde_json::json!({"role": "ADMIN", "sid": null}));
        assert_eq!(c["role"], "ADMIN");
        assert!(!c.contains_key("sid"));
    }
}
