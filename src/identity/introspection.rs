//! Opaque tokens (contract 3.5, without JWT settings): `POST /auth/introspect {"token"}` at
//! .NET through the bridge, with a positive answer cached for at most [`MAX_TTL`] and never
//! beyond the token's `exp`.
//!
//! The cache is keyed by the SHA-256 of the token, never the token itself, and bounded to
//! [`CAPACITY`] entries. Concurrent checks of one token share one call to .NET. Negative
//! answers are not cached: a token that becomes valid is not there to become valid, and
//! refusing to remember garbage keeps the cache for real callers.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actors::bridge::{BridgeHandle, ForwardHeaders, Operation, UpstreamError, UpstreamRequest};
use actors::single_flight::SingleFlight;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{Rejection, Verdict};
use crate::http::security::Caller;

/// Longest a positive answer is trusted.
pub const MAX_TTL: Duration = Duration::from_secs(30);
/// Most tokens remembered at once.
pub const CAPACITY: usize = 10_000;

type TokenKey = [u8; 32];

/// Who a token stands for, as introspection said (the token itself is not kept).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub role: Option<String>,
    pub session_id: Option<String>,
    pub age_group: Option<String>,
}

/// Positive answers with their deadlines (pure: time is passed in).
pub struct IntrospectionCache {
    entries: HashMap<TokenKey, (Identity, Instant)>,
    capacity: usize,
}

impl IntrospectionCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&mut self, key: &TokenKey, now: Instant) -> Option<Identity> {
        match self.entries.get(key) {
            Some((identity, until)) if now < *until => Some(identity.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Remembers `identity` until `now + min(MAX_TTL, exp - unix_now)`; not at all when
    /// the token has no `exp` or it has passed.
    pub fn insert(
        &mut self,
        key: TokenKey,
        identity: Identity,
        exp: Option<i64>,
        unix_now: i64,
        now: Instant,
    ) {
        let Some(left) = exp.and_then(|exp| u64::try_from(exp - unix_now).ok()) else {
            return;
        };
        let ttl = MAX_TTL.min(Duration::from_secs(left));
        if ttl.is_zero() {
            return;
        }
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (_, until)| now < *until);
            if self.entries.len() >= self.capacity {
                // Still full of live entries: drop the one closest to its end.
                if let Some(victim) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(k, _)| *k)
                {
                    self.entries.remove(&victim);
                }
            }
        }
        self.entries.insert(key, (identity, now + ttl));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What one introspection said.
#[derive(Clone)]
enum Answer {
    Active {
        identity: Identity,
        exp: Option<i64>,
    },
    Inactive,
}

pub struct Introspector {
    bridge: BridgeHandle,
    cache: Mutex<IntrospectionCache>,
    flights: SingleFlight<TokenKey, Result<Answer, UpstreamError>>,
}

impl Introspector {
    pub fn new(bridge: BridgeHandle) -> Self {
        Self {
            bridge,
            cache: Mutex::new(IntrospectionCache::new(CAPACITY)),
            flights: SingleFlight::new(),
        }
    }

    pub async fn verify(&self, token: &str, forward: &ForwardHeaders) -> Verdict {
        let key: TokenKey = Sha256::digest(token.as_bytes()).into();
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key, Instant::now());
        let identity = match cached {
            Some(identity) => identity,
            None => {
                let (bridge, body, forward) = (
                    self.bridge.clone(),
                    json!({ "token": token }),
                    forward.clone(),
                );
                let answer = self
                    .flights
                    .run(key, move || async move {
                        introspect(bridge, body, forward).await
                    })
                    .await
                    .unwrap_or(Err(UpstreamError::BadGateway(
                        "introspection failed".into(),
                    )));
                match answer {
                    Ok(Answer::Active { identity, exp }) => {
                        self.cache
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .insert(key, identity.clone(), exp, unix_now(), Instant::now());
                        identity
                    }
                    Ok(Answer::Inactive) => return Err(Rejection::Inactive),
                    Err(err) => return Err(Rejection::Upstream(err)),
                }
            }
        };
        Ok(Caller {
            user_id: identity.user_id,
            role: identity.role,
            session_id: identity.session_id,
            age_group: identity.age_group,
            token: token.to_owned(),
        })
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn introspect(
    bridge: BridgeHandle,
    body: Value,
    forward: ForwardHeaders,
) -> Result<Answer, UpstreamError> {
    let resp = bridge
        .call(
            UpstreamRequest::post(Operation::Introspect, "/auth/introspect", body).forward(forward),
        )
        .await?;
    if !resp.is_success() {
        return Err(UpstreamError::BadGateway(format!(
            "introspection answered {}",
            resp.status
        )));
    }
    parse_answer(&resp.body)
}

/// `{"active": false}`, or `{"active": true, "sub", "role"?, "sid"?, "age_group"?, "exp"?}`.
fn parse_answer(body: &Value) -> Result<Answer, UpstreamError> {
    let off = |what: &str| UpstreamError::BadGateway(format!("introspection answer: {what}"));
    let active = body
        .get("active")
        .and_then(Value::as_bool)
        .ok_or_else(|| off("`active` is not a boolean"))?;
    if !active {
        return Ok(Answer::Inactive);
    }
    let optional = |name: &str| match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(off(&format!("`{name}` is not a string"))),
    };
    let user_id = optional("sub")?.ok_or_else(|| off("`sub` is missing"))?;
    let exp = match body.get("exp") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| off("`exp` is not an integer"))?),
    };
    Ok(Answer::Active {
        identity: Identity {
            user_id,
            role: optional("role")?,
            session_id: optional("sid")?,
            age_group: optional("age_group")?,
        },
        exp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Identity {
        Identity {
            user_id: "u1".into(),
            role: Some("USER".into()),
            session_id: Some("s1".into()),
            age_group: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn positive_answers_live_thirty_seconds_at_most() {
        let mut cache = IntrospectionCache::new(10);
        let now = Instant::now();
        cache.insert([1; 32], alice(), Some(1_000 + 600), 1_000, now);
        assert_eq!(cache.get(&[1; 32], now), Some(alice()));
        tokio::time::advance(MAX_TTL - Duration::from_millis(1)).await;
        assert!(cache.get(&[1; 32], Instant::now()).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.get(&[1; 32], Instant::now()).is_none());
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn never_beyond_exp_and_not_without_it() {
        let mut cache = IntrospectionCache::new(10);
        let now = Instant::now();
        cache.insert([1; 32], alice(), Some(1_005), 1_000, now);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(cache.get(&[1; 32], Instant::now()).is_none());
        cache.insert([2; 32], alice(), None, 1_000, now);
        cache.insert([3; 32], alice(), Some(999), 1_000, now);
        cache.insert([4; 32], alice(), Some(1_000), 1_000, now);
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let mut cache = IntrospectionCache::new(3);
        let now = Instant::now();
        for i in 0..10u8 {
            cache.insert(
                [i; 32],
                alice(),
                Some(1_000 + 60 + i64::from(i)),
                1_000,
                now,
            );
            assert!(cache.len() <= 3);
        }
        assert!(cache.get(&[9; 32], now).is_some(), "the newest is kept");
    }

    #[test]
    fn answers_are_checked() {
        assert!(matches!(
            parse_answer(&json!({"active": false})),
            Ok(Answer::Inactive)
        ));
        let Ok(Answer::Active { identity, exp }) = parse_answer(&json!({
            "active": true, "sub": "u1", "role": "USER", "sid": "s1", "age_group": null, "exp": 5
        })) else {
            panic!("active")
        };
        assert_eq!(identity.user_id, "u1");
        assert_eq!(exp, Some(5));
        for bad in [
            json!({}),
            json!({"active": "yes"}),
            json!({"active": true}),
            json!({"active": true, "sub": 1}),
            json!({"active": true, "sub": "u", "exp": "soon"}),
        ] {
            assert!(parse_answer(&bad).is_err(), "{bad}");
        }
    }
}
