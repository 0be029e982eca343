//! Local verification of .NET's access tokens (contract 3.5, with `JWT_ISSUER` and
//! `JWT_AUDIENCE` set): RS256 or ES256 only, signature against the JWKS, `iss`, `aud`,
//! `exp` and `nbf` with 30 s leeway.
//!
//! The header's algorithm is checked before any key is looked up: `none` does not even
//! parse, and an HMAC token (the classic "HS256 signed with the public key" forgery) is
//! refused without touching the key cache. The token's algorithm must also be the key's.

use std::sync::Arc;

use actors::bridge::ForwardHeaders;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::keys::KeyCache;
use super::{Rejection, Verdict};
use crate::http::security::Caller;

/// `exp`/`nbf` leeway.
pub const LEEWAY_SECS: u64 = 30;

/// The claims the sidecar uses; others are ignored.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    role: Option<String>,
    sid: Option<String>,
    age_group: Option<String>,
}

pub struct JwtVerifier {
    issuer: String,
    audience: String,
    keys: Arc<KeyCache>,
}

impl JwtVerifier {
    pub fn new(issuer: String, audience: String, keys: Arc<KeyCache>) -> Self {
        Self {
            issuer,
            audience,
            keys,
        }
    }

    pub async fn verify(&self, token: &str, forward: &ForwardHeaders) -> Verdict {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(Rejection::Algorithm);
        }
        let keys = match self
            .keys
            .keys_for(header.kid.as_deref(), header.alg, forward)
            .await
        {
            Ok(Some(keys)) => keys,
            Ok(None) => return Err(Rejection::UnknownKey),
            Err(unavailable) => {
                return Err(Rejection::CannotJudge {
                    retry_after: unavailable.retry_after,
                })
            }
        };
        let validation = self.validation(header.alg);
        let mut last = Rejection::Signature;
        for key in keys {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let c = data.claims;
                    return Ok(Caller {
                        user_id: c.sub,
                        role: c.role,
                        session_id: c.sid,
                        age_group: c.age_group,
                        token: token.to_owned(),
                    });
                }
                Err(err) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last = match err.kind() {
                        ErrorKind::InvalidSignature => Rejection::Signature,
                        ErrorKind::ExpiredSignature => Rejection::Expired,
                        ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                        ErrorKind::InvalidIssuer => Rejection::Issuer,
                        ErrorKind::InvalidAudience => Rejection::Audience,
                        _ => Rejection::Claims,
                    };
                    // Only a bad signature is worth trying the next key for.
                    if last != Rejection::Signature {
                        break;
                    }
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.algorithms = vec![alg];
        v.set_issuer(&[&self.issuer]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_exp = true;
        v.validate_nbf = true;
        v.leeway = LEEWAY_SECS;
        v
    }
}
