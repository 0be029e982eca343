//! The backend's state and rules: users, MFA challenges, sessions (refresh-token families),
//! preferences, the `/config` document and the signing-key selection.
//!
//! Everything sits behind one `std::sync::Mutex` that is never held across an `.await`: each
//! operation is a short critical section, which also makes two concurrent presentations of the
//! same refresh token strictly ordered, so the second is a replay, exactly as a database row
//! lock makes it in the real backend.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::config::{default_remote_config, EmulatorConfig};
use crate::keys::{KeyRing, KID_EC_1, KID_RSA_1, KID_RSA_2};
use crate::model::{seeded_users, AccountStatus, User, UserSpec};
use crate::problem::Problem;
use crate::tokens::{self, Signing};
use crate::totp;

/// What `rotate_signing_key` does with the key it retires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rotation {
    /// Publish both keys (a well-run rotation: tokens of the old key stay verifiable).
    KeepOld,
    /// Publish only the new signing key (the old key's tokens stop verifying for JWKS
    /// clients); keys outside the rotation (the EC key) stay published.
    DropOld,
}

#[derive(Debug, Clone)]
struct Challenge {
    user_id: String,
    device_id: String,
    expires_at: i64,
    failures: u32,
}

/// A login session, which is also the refresh-token family.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub device_id: String,
    pub revoked: bool,
}

#[derive(Debug, Clone)]
struct RefreshRecord {
    session_id: String,
    used: bool,
    expires_at: i64,
}

struct State {
    /// Keyed by lower-cased email.
    users: BTreeMap<String, User>,
    challenges: HashMap<String, Challenge>,
    sessions: HashMap<String, Session>,
    refresh: HashMap<String, RefreshRecord>,
    preferences: HashMap<String, Value>,
    remote_config: Value,
    signing_kid: String,
    published: Vec<String>,
    clock_offset: i64,
}

/// The emulated .NET backend without its HTTP layer.
pub struct Backend {
    pub cfg: EmulatorConfig,
    pub ring: KeyRing,
    state: Mutex<State>,
}

#[derive(Deserialize)]
struct LoginRequest {
    email: String,
    password: String,
    device_id: String,
}

#[derive(Deserialize)]
struct VerifyRequest {
    challenge_id: String,
    otp_code: String,
}

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
    device_id: String,
}

#[derive(Deserialize)]
struct LogoutRequest {
    session_id: String,
}

#[derive(Deserialize)]
struct IntrospectRequest {
    token: String,
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body).map_err(|e| Problem::bad_request(format!("invalid body: {e}")))
}

/// Seconds since the epoch as the real clock says.
fn wall_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Backend {
    pub fn new(cfg: EmulatorConfig) -> anyhow::Result<Backend> {
        let ring = KeyRing::load()?;
        let mut users = BTreeMap::new();
        if cfg.seed_users {
            for spec in seeded_users() {
                let user = User::from_spec(spec);
                users.insert(user.email.clone(), user);
            }
        }
        Ok(Backend {
            cfg,
            ring,
            state: Mutex::new(State {
                users,
                challenges: HashMap::new(),
                sessions: HashMap::new(),
                refresh: HashMap::new(),
                preferences: HashMap::new(),
                remote_config: default_remote_config(),
                signing_kid: KID_RSA_1.to_string(),
                published: vec![KID_RSA_1.to_string(), KID_EC_1.to_string()],
                clock_offset: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread must not take every later assertion down with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The emulator's clock: the wall clock moved by `advance_clock`.
    pub fn now(&self) -> i64 {
        wall_clock() + self.lock().clock_offset
    }

    pub fn advance_clock(&self, seconds: i64) {
        self.lock().clock_offset += seconds;
    }

    // ---- users -------------------------------------------------------------------------

    pub fn add_user(&self, spec: UserSpec) -> User {
        let user = User::from_spec(spec);
        self.lock().users.insert(user.email.clone(), user.clone());
        user
    }

    pub fn user(&self, email: &str) -> Option<User> {
        self.lock().users.get(&email.to_ascii_lowercase()).cloned()
    }

    pub fn users(&self) -> Vec<User> {
        self.lock().users.values().cloned().collect()
    }

    /// Changes a user's status; leaving `ACTIVE`/`PENDING_VERIFICATION` revokes every session
    /// of the user, as the real backend does on a ban.
    pub fn set_user_status(&self, email: &str, status: AccountStatus) -> bool {
        let mut st = self.lock();
        let Some(user) = st.users.get_mut(&email.to_ascii_lowercase()) else {
            return false;
        };
        user.status = status;
        let user_id = user.id.clone();
        if !matches!(
            status,
            AccountStatus::Active | AccountStatus::PendingVerification
        ) {
            for s in st.sessions.values_mut().filter(|s| s.user_id == user_id) {
                s.revoked = true;
            }
        }
        true
    }

    // ---- OTP helpers for tests -----------------------------------------------------------

    pub fn current_otp(&self, email: &str) -> Option<String> {
        let now = self.now();
        self.user(email).map(|u| totp::code_at(&u.totp_secret, now))
    }

    fn challenge_user(&self, challenge_id: &str) -> Option<User> {
        let st = self.lock();
        let ch = st.challenges.get(challenge_id)?;
        st.users.values().find(|u| u.id == ch.user_id).cloned()
    }

    pub fn otp_for_challenge(&self, challenge_id: &str) -> Option<String> {
        let now = self.now();
        self.challenge_user(challenge_id)
            .map(|u| totp::code_at(&u.totp_secret, now))
    }

    pub fn wrong_otp_for_challenge(&self, challenge_id: &str) -> Option<String> {
        let now = self.now();
        self.challenge_user(challenge_id)
            .map(|u| totp::wrong_code_at(&u.totp_secret, now))
    }

    // ---- token issuance ------------------------------------------------------------------

    fn base_claims(&self, user: &User, session_id: &str, now: i64) -> Map<String, Value> {
        let claims = json!({
            "iss": self.cfg.issuer,
            "aud": self.cfg.audience,
            "sub": user.id,
            "role": user.role,
            "sid": session_id,
            "age_group": user.age_group,
            "iat": now,
            "nbf": now,
            "exp": now + self.cfg.access_ttl_secs,
            // Two tokens minted in the same second for the same session still differ.
            "jti": uuid::Uuid::new_v4().to_string(),
        });
        match claims {
            Value::Object(m) => m,
            _ => unreachable!("json! object"),
        }
    }

    /// A new access + refresh pair for `session_id`, recorded in the state.
    fn issue_pair(&self, st: &mut State, user: &User, session_id: &str) -> Result<Value, Problem> {
        let now = wall_clock() + st.clock_offset;
        let claims = self.base_claims(user, session_id, now);
        let access = tokens::sign(&self.ring, &st.signing_kid, &claims, &Signing::Current)
            .map_err(|e| Problem::new(500, "internal_error", format!("signing failed: {e}")))?;
        let refresh = tokens::new_refresh_token();
        st.refresh.insert(
            refresh.clone(),
            RefreshRecord {
                session_id: session_id.to_string(),
                used: false,
                expires_at: now + self.cfg.refresh_ttl_secs,
            },
        );
        Ok(json!({
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "Bearer",
            "expires_in": self.cfg.access_ttl_secs,
            "refresh_expires_in": self.cfg.refresh_ttl_secs,
            "session_id": session_id,
        }))
    }

    fn new_session(&self, st: &mut State, user: &User, device_id: &str) -> Result<Value, Problem> {
        let session_id = uuid::Uuid::new_v4().to_string();
        st.sessions.insert(
            session_id.clone(),
            Session {
                id: session_id.clone(),
                user_id: user.id.clone(),
                device_id: device_id.to_string(),
                revoked: false,
            },
        );
        self.issue_pair(st, user, &session_id)
    }

    /// The AUTHENTICATED answer of login and MFA verify, for a new session.
    fn authenticated(
        &self,
        st: &mut State,
        user: &User,
        device_id: &str,
    ) -> Result<Value, Problem> {
        let tokens = self.new_session(st, user, device_id)?;
        Ok(json!({"status": "AUTHENTICATED", "tokens": tokens, "user": user.dto()}))
    }

    /// Logs `email` in without HTTP or MFA: the `Tokens` DTO of a new session.
    pub fn issue_tokens(&self, email: &str, device_id: &str) -> anyhow::Result<Value> {
        let mut st = self.lock();
        let user = st
            .users
            .get(&email.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no user {email}"))?;
        self.new_session(&mut st, &user, device_id)
            .map_err(|p| anyhow::anyhow!(p.detail))
    }

    /// A token for `email` on a new, live session, changed by `overrides` (null removes a
    /// claim) and signed as `signing` says.
    pub fn mint_access_token_with(
        &self,
        email: &str,
        overrides: &Value,
        signing: &Signing,
    ) -> anyhow::Result<String> {
        let mut st = self.lock();
        let user = st
            .users
            .get(&email.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no user {email}"))?;
        let session_id = uuid::Uuid::new_v4().to_string();
        st.sessions.insert(
            session_id.clone(),
            Session {
                id: session_id.clone(),
                user_id: user.id.clone(),
                device_id: "minted".to_string(),
                revoked: false,
            },
        );
        let now = wall_clock() + st.clock_offset;
        let mut claims = self.base_claims(&user, &session_id, now);
        tokens::apply_overrides(&mut claims, overrides);
        tokens::sign(&self.ring, &st.signing_kid, &claims, signing)
    }

    // ---- the auth routes -----------------------------------------------------------------

    pub fn login(&self, body: &[u8]) -> Result<Value, Problem> {
        let req: LoginRequest = parse(body)?;
        let mut st = self.lock();
        let now = wall_clock() + st.clock_offset;
        let user = st
            .users
            .get(&req.email.trim().to_ascii_lowercase())
            .filter(|u| u.status != AccountStatus::Deleted)
            .filter(|u| constant_time_eq(u.password.as_bytes(), req.password.as_bytes()))
            .cloned()
            // One answer for "no such user" and "wrong password": no account enumeration.
            .ok_or_else(|| {
                Problem::new(401, "invalid_credentials", "email or password is wrong")
            })?;
        // The status is only revealed to someone who knows the password.
        match user.status {
            AccountStatus::Banned => {
                return Err(Problem::new(
                    403,
                    "account_banned",
                    "this account is banned",
                ))
            }
            AccountStatus::Suspended => {
                return Err(Problem::new(
                    403,
                    "account_suspended",
                    "this account is suspended",
                ))
            }
            _ => {}
        }
        if user.mfa_enrolled {
            let challenge_id = uuid::Uuid::new_v4().to_string();
            st.challenges.insert(
                challenge_id.clone(),
                Challenge {
                    user_id: user.id.clone(),
                    device_id: req.device_id,
                    expires_at: now + self.cfg.challenge_ttl_secs,
                    failures: 0,
                },
            );
            return Ok(json!({
                "status": "MFA_REQUIRED",
                "challenge_id": challenge_id,
                "challenge_expires_in": self.cfg.challenge_ttl_secs,
            }));
        }
        // Including an ADMIN without MFA: a misconfigured .NET, which the sidecar must catch.
        self.authenticated(&mut st, &user, &req.device_id)
    }

    pub fn verify_mfa(&self, body: &[u8]) -> Result<Value, Problem> {
        let req: VerifyRequest = parse(body)?;
        let mut st = self.lock();
        let now = wall_clock() + st.clock_offset;
        let gone = || {
            Problem::new(
                401,
                "challenge_expired",
                "the challenge is unknown or expired",
            )
        };
        let ch = st
            .challenges
            .get(&req.challenge_id)
            .cloned()
            .ok_or_else(gone)?;
        if now >= ch.expires_at {
            st.challenges.remove(&req.challenge_id);
            return Err(gone());
        }
        let user = st
            .users
            .values()
            .find(|u| u.id == ch.user_id)
            .cloned()
            .ok_or_else(gone)?;
        if !totp::verify(&user.totp_secret, &req.otp_code, now) {
            let failures = ch.failures + 1;
            if failures >= self.cfg.max_otp_failures {
                // Burn the challenge: brute-forcing 10^6 codes must not be possible.
                st.challenges.remove(&req.challenge_id);
            } else if let Some(c) = st.challenges.get_mut(&req.challenge_id) {
                c.failures = failures;
            }
            return Err(Problem::new(401, "invalid_otp", "the code is wrong"));
        }
        // A challenge is single-use.
        st.challenges.remove(&req.challenge_id);
        self.authenticated(&mut st, &user, &ch.device_id)
    }

    pub fn refresh(&self, body: &[u8]) -> Result<Value, Problem> {
        let req: RefreshRequest = parse(body)?;
        // device_id is accepted and not enforced: the contract does not bind refresh to a device.
        let _ = req.device_id;
        let mut st = self.lock();
        let now = wall_clock() + st.clock_offset;
        let invalid = |detail: &str| Problem::new(401, "invalid_refresh_token", detail);
        let record = st
            .refresh
            .get(&req.refresh_token)
            .cloned()
            .ok_or_else(|| invalid("unknown refresh token"))?;
        if record.used {
            // Replay: whoever holds this token, the family is compromised. Revoke it all.
            if let Some(s) = st.sessions.get_mut(&record.session_id) {
                s.revoked = true;
            }
            return Err(Problem::new(
                401,
                "refresh_token_reused",
                "this refresh token was already used; the session is revoked",
            ));
        }
        let session = st
            .sessions
            .get(&record.session_id)
            .cloned()
            .filter(|s| !s.revoked)
            .ok_or_else(|| invalid("the session is revoked"))?;
        if now >= record.expires_at {
            return Err(invalid("the refresh token expired"));
        }
        let user = st
            .users
            .values()
            .find(|u| u.id == session.user_id)
            .cloned()
            .ok_or_else(|| invalid("the user no longer exists"))?;
        if let Some(r) = st.refresh.get_mut(&req.refresh_token) {
            r.used = true;
        }
        // Same session id: the family continues with the new pair.
        let tokens = self.issue_pair(&mut st, &user, &session.id)?;
        Ok(json!({ "tokens": tokens }))
    }

    /// Claims of an access token that is valid and whose session is live.
    pub fn active_claims(&self, token: &str) -> Option<Map<String, Value>> {
        let now = self.now();
        let claims =
            tokens::verify(&self.ring, token, &self.cfg.issuer, &self.cfg.audience, now).ok()?;
        let sid = claims.get("sid")?.as_str()?;
        let st = self.lock();
        let live = st.sessions.get(sid).is_some_and(|s| !s.revoked);
        live.then_some(claims)
    }

    /// The caller of an authenticated route, from the `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Map<String, Value>, Problem> {
        let token = authorization
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Problem::unauthorized("a Bearer access token is required"))?;
        self.active_claims(token)
            .ok_or_else(|| Problem::unauthorized("the access token is invalid, expired or revoked"))
    }

    pub fn logout(&self, authorization: Option<&str>, body: &[u8]) -> Result<(), Problem> {
        let caller = self.authenticate(authorization)?;
        let req: LogoutRequest = parse(body)?;
        let mut st = self.lock();
        match st.sessions.get_mut(&req.session_id) {
            // Unknown: already gone as far as the caller can tell; logout is idempotent.
            None => Ok(()),
            Some(s) if Some(s.user_id.as_str()) != caller.get("sub").and_then(Value::as_str) => {
                Err(Problem::new(
                    403,
                    "forbidden",
                    "the session belongs to another user",
                ))
            }
            Some(s) => {
                s.revoked = true;
                Ok(())
            }
        }
    }

    pub fn introspect(&self, body: &[u8]) -> Result<Value, Problem> {
        let req: IntrospectRequest = parse(body)?;
        Ok(match self.active_claims(&req.token) {
            Some(c) => json!({
                "active": true,
                "sub": c.get("sub"),
                "role": c.get("role"),
                "sid": c.get("sid"),
                "age_group": c.get("age_group"),
                "exp": c.get("exp"),
            }),
            None => json!({"active": false}),
        })
    }

    // ---- sessions ------------------------------------------------------------------------

    pub fn session(&self, session_id: &str) -> Option<Session> {
        self.lock().sessions.get(session_id).cloned()
    }

    pub fn revoke_session(&self, session_id: &str) -> bool {
        match self.lock().sessions.get_mut(session_id) {
            Some(s) => {
                s.revoked = true;
                true
            }
            None => false,
        }
    }

    // ---- keys ----------------------------------------------------------------------------

    pub fn jwks(&self) -> Value {
        let st = self.lock();
        let keys: Vec<Value> = st
            .published
            .iter()
            .filter_map(|kid| self.ring.get(kid).map(|k| k.jwk.clone()))
            .collect();
        json!({ "keys": keys })
    }

    pub fn signing_kid(&self) -> String {
        self.lock().signing_kid.clone()
    }

    pub fn published_kids(&self) -> Vec<String> {
        self.lock().published.clone()
    }

    /// Switches between the two RSA keys; returns the new kid.
    pub fn rotate_signing_key(&self, rotation: Rotation) -> String {
        let mut st = self.lock();
        let old = st.signing_kid.clone();
        let new = if old == KID_RSA_2 {
            KID_RSA_1
        } else {
            KID_RSA_2
        }
        .to_string();
        if rotation == Rotation::DropOld {
            // Only the new key remains of the signing keys; other keys (the EC one) stay.
            st.published
                .retain(|k| *k != old && k != KID_RSA_1 && k != KID_RSA_2);
        }
        if !st.published.contains(&new) {
            st.published.push(new.clone());
        }
        st.signing_kid = new.clone();
        new
    }

    /// Signs with `kid` from now on (and publishes it, if it was not).
    pub fn set_signing_key(&self, kid: &str) -> anyhow::Result<()> {
        if !self.ring.get(kid).is_some_and(|k| k.trusted) {
            anyhow::bail!("{kid:?} is not one of the emulator's own keys");
        }
        let mut st = self.lock();
        st.signing_kid = kid.to_string();
        if !st.published.iter().any(|k| k == kid) {
            st.published.push(kid.to_string());
        }
        Ok(())
    }

    /// Exactly these keys in the JWKS, in this order (any known kid, the rogue one included).
    pub fn set_published_keys(&self, kids: &[&str]) -> anyhow::Result<()> {
        if let Some(unknown) = kids.iter().find(|k| self.ring.get(k).is_none()) {
            anyhow::bail!("unknown kid {unknown:?}");
        }
        self.lock().published = kids.iter().map(|k| k.to_string()).collect();
        Ok(())
    }

    // ---- config and preferences ----------------------------------------------------------

    pub fn remote_config(&self) -> Value {
        self.lock().remote_config.clone()
    }

    pub fn set_remote_config(&self, config: Value) {
        self.lock().remote_config = config;
    }

    /// Whether the caller may touch `user_id`'s preferences: the user themself or an admin.
    pub fn authorize_preferences(
        &self,
        authorization: Option<&str>,
        user_id: &str,
    ) -> Result<(), Problem> {
        if !self.cfg.require_auth_for_preferences {
            return Ok(());
        }
        let caller = self.authenticate(authorization)?;
        let own = caller.get("sub").and_then(Value::as_str) == Some(user_id);
        let admin = matches!(
            caller.get("role").and_then(Value::as_str),
            Some("ADMIN" | "SUPER_ADMIN")
        );
        if own || admin {
            Ok(())
        } else {
            Err(Problem::new(403, "forbidden", "not your preferences"))
        }
    }

    pub fn stored_preferences(&self, user_id: &str) -> Option<Value> {
        self.lock().preferences.get(user_id).cloned()
    }

    pub fn put_preferences(&self, user_id: &str, body: &[u8]) -> Result<(), Problem> {
        let value: Value = parse(body)?;
        if !value.is_object() {
            return Err(Problem::bad_request("preferences must be a JSON object"));
        }
        self.set_stored_preferences(user_id, value);
        Ok(())
    }

    pub fn set_stored_preferences(&self, user_id: &str, value: Value) {
        self.lock().preferences.insert(user_id.to_string(), value);
    }

    /// Back to the start-up state (users, sessions, preferences, config, keys, clock).
    pub fn reset(&self) {
        let fresh = Backend::new(self.cfg.clone()).expect("it started once");
        let fresh = fresh.state.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.lock() = fresh;
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
