//! The JWKS key cache (contract 3.5): keys fetched from the JWKS through the bridge (same
//! breaker as every other call to .NET), kept and refreshed by these rules:
//!
//! - keys are fetched on first use, and refreshed in the background once they are
//!   [`REFRESH_AFTER`] old (a failed refresh is tried again at most once per
//!   [`REFETCH_THROTTLE`]);
//! - a `kid` the cache does not hold triggers one refetch, at most once per
//!   [`REFETCH_THROTTLE`], so a stream of forged `kid`s cannot become a stream of calls to
//!   .NET (the first fetch and the background refreshes do not count against it, so a key
//!   rotated in just after start-up is picked up at once);
//! - when the JWKS cannot be fetched, the keys held stay valid for [`MAX_STALE`] after the
//!   last successful fetch; past that, or with no keys at all, tokens cannot be judged and
//!   the answer is 503, never a misleading 401;
//! - a successful fetch replaces the whole set (a key removed from the JWKS is dropped).
//!
//! [`KeyState`] holds the rules as plain functions of `now`, tested on tokio's paused clock;
//! [`KeyCache`] adds the fetching.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use actors::bridge::{
    BridgeHandle, ForwardHeaders, Operation, UnavailableCause, UpstreamError, UpstreamRequest,
};
use actors::single_flight::SingleFlight;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::time::Instant;

/// Keys older than this are refreshed in the background.
pub const REFRESH_AFTER: Duration = Duration::from_secs(300);
/// An unknown `kid` refetches at most this often.
pub const REFETCH_THROTTLE: Duration = Duration::from_secs(10);
/// Held keys stay valid this long after the last successful fetch.
pub const MAX_STALE: Duration = Duration::from_secs(3600);

/// A public key from the JWKS and the one algorithm it verifies.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// What a lookup found.
pub enum Lookup {
    /// The key(s) to try: the one named by `kid`, or every key of the algorithm when the
    /// token names none.
    Found(Vec<Arc<VerifyingKey>>),
    /// Keys are held, but none fits.
    Unknown,
    /// No usable keys (never fetched, empty, or older than [`MAX_STALE`]).
    NoKeys,
}

/// The cached key set and its timestamps.
#[derive(Default)]
pub struct KeyState {
    keys: Vec<Arc<VerifyingKey>>,
    /// Last successful fetch.
    fetched_at: Option<Instant>,
    /// Last fetch attempt, successful or not (throttles background refreshes).
    attempted_at: Option<Instant>,
    /// Last refetch caused by an unknown `kid` (the refetch throttle).
    kid_refetched_at: Option<Instant>,
    /// Whether the last attempt failed.
    last_failed: bool,
}

impl KeyState {
    /// Whether the held keys may be used at `now`.
    pub fn usable(&self, now: Instant) -> bool {
        self.fetched_at
            .is_some_and(|at| now.saturating_duration_since(at) <= MAX_STALE)
            && !self.keys.is_empty()
    }

    /// Whether a background refresh is due.
    pub fn refresh_due(&self, now: Instant) -> bool {
        self.fetched_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH_AFTER)
            && self
                .attempted_at
                .is_none_or(|at| now.saturating_duration_since(at) >= REFETCH_THROTTLE)
    }

    /// Whether an unknown `kid` may trigger a refetch now.
    pub fn refetch_allowed(&self, now: Instant) -> bool {
        self.kid_refetched_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REFETCH_THROTTLE)
    }

    /// An unknown `kid` is about to trigger a refetch.
    pub fn kid_refetch_started(&mut self, now: Instant) {
        self.kid_refetched_at = Some(now);
    }

    /// Whether the last fetch attempt failed (an unknown `kid` then cannot be judged).
    pub fn last_fetch_failed(&self) -> bool {
        self.last_failed
    }

    pub fn lookup(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> Lookup {
        if !self.usable(now) {
            return Lookup::NoKeys;
        }
        let found: Vec<Arc<VerifyingKey>> = self
            .keys
            .iter()
            .filter(|k| k.alg == alg)
            .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
            .cloned()
            .collect();
        if found.is_empty() {
            Lookup::Unknown
        } else {
            Lookup::Found(found)
        }
    }

    pub fn attempt_started(&mut self, now: Instant) {
        self.attempted_at = Some(now);
    }

    pub fn fetched(&mut self, keys: Vec<Arc<VerifyingKey>>, now: Instant) {
        self.keys = keys;
        self.fetched_at = Some(now);
        self.last_failed = false;
    }

    pub fn failed(&mut self) {
        self.last_failed = true;
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// Why keys could not be had.
#[derive(Clone, Debug)]
pub struct KeysUnavailable {
    /// For the 503's `Retry-After`.
    pub retry_after: u64,
}

/// The key cache with its fetcher.
pub struct KeyCache {
    bridge: BridgeHandle,
    /// `JWT_JWKS_URL`, or `/.well-known/jwks.json` under `DOTNET_BASE_URL`.
    source: String,
    state: Mutex<KeyState>,
    fetches: SingleFlight<(), Result<(), UpstreamError>>,
}

impl KeyCache {
    pub fn new(bridge: BridgeHandle, jwks_url: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            bridge,
            source: jwks_url.unwrap_or_else(|| "/.well-known/jwks.json".to_owned()),
            state: Mutex::new(KeyState::default()),
            fetches: SingleFlight::new(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, KeyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The keys that may verify a token with this header, fetching as the rules allow.
    /// `Ok(None)`: keys are held but none fits (the token is not ours: 401).
    pub async fn keys_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
        forward: &ForwardHeaders,
    ) -> Result<Option<Vec<Arc<VerifyingKey>>>, KeysUnavailable> {
        let now = Instant::now();
        let (lookup, refresh_due, refetch_allowed) = {
            let state = self.state();
            (
                state.lookup(kid, alg, now),
                state.refresh_due(now),
                state.refetch_allowed(now),
            )
        };
        match lookup {
            Lookup::Found(keys) => {
                if refresh_due {
                    let me = Arc::clone(self);
                    let forward = forward.clone();
                    tokio::spawn(async move {
                        let _ = me.fetch(&forward).await;
                    });
                }
                Ok(Some(keys))
            }
            Lookup::NoKeys => {
                let fetched = Some(self.fetch(forward).await);
                self.after_fetch(kid, alg, fetched)
            }
            Lookup::Unknown if refetch_allowed => {
                self.state().kid_refetch_started(Instant::now());
                let fetched = Some(self.fetch(forward).await);
                self.after_fetch(kid, alg, fetched)
            }
            Lookup::Unknown => self.after_fetch(kid, alg, None),
        }
    }

    /// The verdict once a fetch (if any) is done.
    fn after_fetch(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        fetched: Option<Result<(), UpstreamError>>,
    ) -> Result<Option<Vec<Arc<VerifyingKey>>>, KeysUnavailable> {
        let state = self.state();
        match state.lookup(kid, alg, Instant::now()) {
            Lookup::Found(keys) => Ok(Some(keys)),
            // The last fetch failed, so the kid may be a new key we cannot see yet: no
            // verdict rather than a misleading 401.
            Lookup::Unknown if state.last_fetch_failed() => Err(KeysUnavailable {
                retry_after: retry_after_of(fetched),
            }),
            Lookup::Unknown => Ok(None),
            Lookup::NoKeys => Err(KeysUnavailable {
                retry_after: retry_after_of(fetched),
            }),
        }
    }

    /// Fetches the JWKS once (joining a fetch in flight) and stores what it got. With no
    /// usable keys, a fetch is made even inside the throttle: without keys nothing can be
    /// judged, and concurrent requests share one fetch.
    async fn fetch(self: &Arc<Self>, forward: &ForwardHeaders) -> Result<(), UpstreamError> {
        let me = Arc::clone(self);
        let forward = forward.clone();
        self.fetches
            .run((), move || async move {
                me.state().attempt_started(Instant::now());
                let result = me.fetch_once(forward).await;
                let mut state = me.state();
                match &result {
                    Ok(keys) => {
                        tracing::info!(keys = keys.len(), "JWKS fetched");
                        state.fetched(keys.clone(), Instant::now());
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, held_keys = state.key_count(), "JWKS fetch failed");
                        state.failed();
                    }
                }
                result.map(|_| ())
            })
            .await
            .unwrap_or(Err(UpstreamError::Unavailable {
                retry_after: 1,
                cause: UnavailableCause::BridgeRestarting,
            }))
    }

    async fn fetch_once(
        &self,
        forward: ForwardHeaders,
    ) -> Result<Vec<Arc<VerifyingKey>>, UpstreamError> {
        let resp = self
            .bridge
            .call(UpstreamRequest::get(Operation::Jwks, &self.source).forward(forward))
            .await?;
        if !resp.is_success() {
            return Err(UpstreamError::BadGateway(format!(
                "the JWKS answered {}",
                resp.status
            )));
        }
        let keys = resp
            .body
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| UpstreamError::BadGateway("the JWKS has no `keys` array".into()))?;
        Ok(keys
            .iter()
            .filter_map(verifying_key)
            .map(Arc::new)
            .collect())
    }
}

fn retry_after_of(fetched: Option<Result<(), UpstreamError>>) -> u64 {
    match fetched {
        Some(Err(err)) => err.retry_after().unwrap_or(1),
        _ => 1,
    }
}

/// A JWK the sidecar can use: RSA for RS256 or EC P-256 for ES256, for signing (`use`
/// absent or `sig`). Anything else (HMAC secrets, other curves and algorithms, malformed
/// keys) is skipped, so one odd key does not spoil the set.
pub fn verifying_key(value: &Value) -> Option<VerifyingKey> {
    let jwk: Jwk = serde_json::from_value(value.clone()).ok()?;
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
    {
        return None;
    }
    let alg = match (&jwk.algorithm, jwk.common.key_algorithm) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256))
            if ec.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        _ => return None,
    };
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some(VerifyingKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str) -> Value {
        json!({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
               "n": "xQ-ISeg9TU31QqKn4VqgijVFZrjCNlZpVL4BfKKNkAJ-nhD0pxNHF3NSSY0cD3tKi5zGYn9KgnV5xDgHS_zguz3gYYBc_EiqA0nf7ZiWiBmzAgnkdNqihp15T4VtkjC0nkncyhYYCeq0h4tEJ_yLY5xM5erDwPIWMZrzo8c4Kf_4eoeTOs81VHJkKTa_j9-J_BtbzKeV2MfuSnyMW_STupvG3EFVmWLIpc0KqK7lWqOSdBi83x9tLbI2yx23o26M4WAaqVwoc8KvToHBW1pg_mmeUe3HLgOsGjRiDMrvvz1cQmsT6nlR7g9dqVMCqXuUuV8GaCh1MHabv-Dc1jLxvw",
               "e": "AQAB"})
    }

    fn key(kid: &str) -> Arc<VerifyingKey> {
        Arc::new(verifying_key(&rsa_jwk(kid)).expect("a usable RSA key"))
    }

    #[test]
    fn only_rs256_and_es256_signing_keys_are_kept() {
        assert_eq!(verifying_key(&rsa_jwk("a")).unwrap().alg, Algorithm::RS256);
        let ec = json!({"kty": "EC", "alg": "ES256", "kid": "e", "crv": "P-256",
            "x": "4RMQgIoU5wetlgJonolYGLewvGcJXv7ez4QU3ejhbV4",
            "y": "cGmTKAHcLT5C2LMTotJ0A0y1nVEOulIZ53aZXoSvd2Q"});
        assert_eq!(verifying_key(&ec).unwrap().alg, Algorithm::ES256);
        let hmac = json!({"kty": "oct", "alg": "HS256", "kid": "h", "k": "c2VjcmV0"});
        assert!(verifying_key(&hmac).is_none());
        let mut rs512 = rsa_jwk("x");
        rs512["alg"] = json!("RS512");
        assert!(verifying_key(&rs512).is_none());
        let mut enc = rsa_jwk("x");
        enc["use"] = json!("enc");
        assert!(verifying_key(&enc).is_none());
        assert!(verifying_key(&json!({"kty": "RSA"})).is_none());
        assert!(verifying_key(&json!("junk")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn held_keys_serve_for_an_hour_after_the_last_success() {
        let mut s = KeyState::default();
        let t0 = Instant::now();
        assert!(matches!(
            s.lookup(Some("a"), Algorithm::RS256, t0),
            Lookup::NoKeys
        ));
        s.attempt_started(t0);
        s.fetched(vec![key("a")], t0);
        assert!(matches!(
            s.lookup(Some("a"), Algorithm::RS256, t0),
            Lookup::Found(_)
        ));
        assert!(matches!(
            s.lookup(Some("b"), Algorithm::RS256, t0),
            Lookup::Unknown
        ));
        assert!(matches!(
            s.lookup(Some("a"), Algorithm::ES256, t0),
            Lookup::Unknown
        ));
        assert!(matches!(
            s.lookup(None, Algorithm::RS256, t0),
            Lookup::Found(_)
        ));
        tokio::time::advance(MAX_STALE).await;
        let t1 = Instant::now();
        s.attempt_started(t1);
        s.failed();
        assert!(matches!(
            s.lookup(Some("a"), Algorithm::RS256, t1),
            Lookup::Found(_)
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(matches!(
            s.lookup(Some("a"), Algorithm::RS256, Instant::now()),
            Lookup::NoKeys
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn refetches_are_throttled_and_refreshes_come_due() {
        let mut s = KeyState::default();
        let t0 = Instant::now();
        assert!(s.refetch_allowed(t0) && s.refresh_due(t0));
        s.attempt_started(t0);
        s.fetched(vec![key("a")], t0);
        assert!(s.refetch_allowed(t0), "the first fetch does not count");
        s.kid_refetch_started(t0);
        s.attempt_started(t0);
        s.fetched(vec![key("a")], t0);
        assert!(!s.refetch_allowed(t0));
        tokio::time::advance(REFETCH_THROTTLE - Duration::from_millis(1)).await;
        assert!(!s.refetch_allowed(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(s.refetch_allowed(Instant::now()));
        assert!(!s.refresh_due(Instant::now()));
        tokio::time::advance(REFRESH_AFTER).await;
        let t1 = Instant::now();
        assert!(s.refresh_due(t1));
        s.attempt_started(t1);
        s.failed();
        assert!(
            !s.refresh_due(t1),
            "a failed refresh waits for the throttle"
        );
        tokio::time::advance(REFETCH_THROTTLE).await;
        assert!(s.refresh_due(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_set_is_no_keys() {
        let mut s = KeyState::default();
        let t0 = Instant::now();
        s.fetched(Vec::new(), t0);
        assert!(matches!(
            s.lookup(Some("a"), Algorithm::RS256, t0),
            Lookup::NoKeys
        ));
    }
}
