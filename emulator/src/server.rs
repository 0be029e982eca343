//! Starting, stopping and "unplugging" the HTTP server, and the public handle.
//!
//! Refusing connections really closes the listening socket (a new connection gets
//! `ECONNREFUSED`, as when .NET is down) and cuts the connections already open, so a client's
//! pooled keep-alive connection cannot sneak a request through. Listening again reuses the
//! same address (`SO_REUSEADDR`), so the sidecar's configured base URL stays right.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use poem::http::HeaderMap;
use poem::listener::TcpAcceptor;
use poem::Server;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::EmulatorConfig;
use crate::faults::{Fault, FaultState, Latency, RecordedRequest, Recorder};
use crate::model::{AccountStatus, User, UserSpec};
use crate::routes;
use crate::state::{Backend, Rotation, Session};
use crate::tokens::Signing;

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Shared by the handle, the routes and the server task.
pub struct Inner {
    pub backend: Backend,
    pub faults: FaultState,
    pub recorder: Recorder,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // Rebinding right after an outage must not fail on connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Inner {
    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn is_listening(&self) -> bool {
        self.running().is_some()
    }

    /// Serves on `listener` (already bound to `self.addr`).
    fn serve(self: &Arc<Self>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = routes::app(Arc::clone(self));
        let task = tokio::spawn(async move {
            let signal = async {
                let _ = stopped.await;
            };
            // A zero grace period: on stop, open connections are cut at once (an outage,
            // not a deploy).
            if let Err(e) = Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(app, signal, Some(Duration::ZERO))
                .await
            {
                tracing::error!(error = %e, "emulator server failed");
            }
        });
        *self.running() = Some(Running { stop, task });
        Ok(())
    }

    /// Listens again on the same address; a no-op when listening. Needs a Tokio runtime.
    pub fn listen(self: &Arc<Self>) -> std::io::Result<()> {
        if self.is_listening() {
            return Ok(());
        }
        let listener = bind(self.addr)?;
        self.serve(listener)
    }

    /// Closes the listening socket and every open connection; returns once they are closed.
    pub async fn stop_listening(&self) {
        let running = self.running().take();
        if let Some(r) = running {
            let _ = r.stop.send(());
            let _ = r.task.await;
        }
    }

    /// Start-up state: users, sessions, keys, config, clock, faults and recordings.
    pub fn reset(&self) {
        self.backend.reset();
        self.faults.clear_faults();
        self.faults.clear_latency();
        self.recorder.clear();
    }
}

/// A running emulator. Dropping it stops the server (in the background; `stop().await` to
/// wait for it).
pub struct EmulatorHandle {
    inner: Arc<Inner>,
}

/// Entry point: `Emulator::start(EmulatorConfig::default()).await?`.
pub struct Emulator;

impl Emulator {
    /// Binds `config.bind` (port 0: a free port) and serves until stopped or dropped.
    pub async fn start(config: EmulatorConfig) -> anyhow::Result<EmulatorHandle> {
        let listener = bind(config.bind)?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            backend: Backend::new(config)?,
            faults: FaultState::default(),
            recorder: Recorder::default(),
            addr,
            running: Mutex::new(None),
        });
        inner.serve(listener)?;
        tracing::info!(%addr, "dotnet emulator listening");
        Ok(EmulatorHandle { inner })
    }
}

impl EmulatorHandle {
    // ---- lifecycle -----------------------------------------------------------------------

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn base_url(&self) -> String {
        self.inner.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Stops serving and waits until the socket and all connections are closed.
    pub async fn stop(self) {
        self.inner.stop_listening().await;
    }

    /// ".NET is down": the port refuses connections and open connections are cut.
    pub async fn refuse_connections(&self) {
        self.inner.stop_listening().await;
    }

    /// ".NET is back": listens again on the same address.
    pub async fn accept_connections(&self) -> anyhow::Result<()> {
        // Another process may grab the port in between; a few tries cover a slow release.
        let mut last = None;
        for _ in 0..20 {
            match self.inner.listen() {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(anyhow::anyhow!(
            "could not listen again on {}: {:?}",
            self.inner.addr,
            last
        ))
    }

    pub fn is_accepting_connections(&self) -> bool {
        self.inner.is_listening()
    }

    /// Start-up state again: users, sessions, keys, config, clock, faults and recordings.
    pub fn reset(&self) {
        self.inner.reset();
    }

    // ---- users and MFA -------------------------------------------------------------------

    /// Adds (or replaces, by email) a user.
    pub fn add_user(&self, spec: UserSpec) -> User {
        self.inner.backend.add_user(spec)
    }

    pub fn user(&self, email: &str) -> Option<User> {
        self.inner.backend.user(email)
    }

    /// The user's id (a stable UUID for the seeded users).
    pub fn user_id(&self, email: &str) -> Option<String> {
        self.user(email).map(|u| u.id)
    }

    /// A ban, suspension or deletion also revokes the user's sessions.
    pub fn set_user_status(&self, email: &str, status: AccountStatus) -> bool {
        self.inner.backend.set_user_status(email, status)
    }

    /// The TOTP code valid now for the challenge's user.
    pub fn otp_for_challenge(&self, challenge_id: &str) -> Option<String> {
        self.inner.backend.otp_for_challenge(challenge_id)
    }

    /// A well-formed code the challenge will reject.
    pub fn wrong_otp_for_challenge(&self, challenge_id: &str) -> Option<String> {
        self.inner.backend.wrong_otp_for_challenge(challenge_id)
    }

    /// The TOTP code valid now for the user.
    pub fn current_otp(&self, email: &str) -> Option<String> {
        self.inner.backend.current_otp(email)
    }

    /// Moves the emulator's clock (token `iat`/`exp`, challenge and refresh expiry, TOTP).
    pub fn advance_clock(&self, by: Duration) {
        self.inner.backend.advance_clock(by.as_secs() as i64);
    }

    /// The emulator's clock, Unix seconds.
    pub fn now(&self) -> i64 {
        self.inner.backend.now()
    }

    // ---- tokens, sessions, keys ----------------------------------------------------------

    /// A `Tokens` DTO for a new session of `email`, as if the user had logged in (no MFA).
    pub fn issue_tokens(&self, email: &str, device_id: &str) -> anyhow::Result<Value> {
        self.inner.backend.issue_tokens(email, device_id)
    }

    /// An access token for `email` on a new, live session, with `overrides` applied to the
    /// claims (`null` removes one; e.g. `{"exp": 0}`, `{"iss": "evil"}`) and signed as
    /// `signing` says. Everything not overridden is right, so a test changes one thing.
    pub fn mint_access_token_with(
        &self,
        email: &str,
        overrides: Value,
        signing: Signing,
    ) -> anyhow::Result<String> {
        self.inner
            .backend
            .mint_access_token_with(email, &overrides, &signing)
    }

    /// Whether the emulator would call this access token active (introspection's answer).
    pub fn is_token_active(&self, access_token: &str) -> bool {
        self.inner.backend.active_claims(access_token).is_some()
    }

    pub fn session(&self, session_id: &str) -> Option<Session> {
        self.inner.backend.session(session_id)
    }

    /// Whether the session exists and was revoked (logout, replay, ban).
    pub fn is_session_revoked(&self, session_id: &str) -> bool {
        self.session(session_id).is_some_and(|s| s.revoked)
    }

    pub fn revoke_session(&self, session_id: &str) -> bool {
        self.inner.backend.revoke_session(session_id)
    }

    /// Switches signing to the other RSA key; `KeepOld` publishes both, `DropOld` only the
    /// new one. Returns the new kid.
    pub fn rotate_signing_key(&self, rotation: Rotation) -> String {
        self.inner.backend.rotate_signing_key(rotation)
    }

    /// Signs with this key (e.g. `KID_EC_1` for ES256) from now on, publishing it.
    pub fn set_signing_key(&self, kid: &str) -> anyhow::Result<()> {
        self.inner.backend.set_signing_key(kid)
    }

    /// Exactly these kids in the JWKS, in order.
    pub fn set_published_keys(&self, kids: &[&str]) -> anyhow::Result<()> {
        self.inner.backend.set_published_keys(kids)
    }

    pub fn signing_kid(&self) -> String {
        self.inner.backend.signing_kid()
    }

    /// What `GET /.well-known/jwks.json` serves now.
    pub fn jwks(&self) -> Value {
        self.inner.backend.jwks()
    }

    pub fn issuer(&self) -> &str {
        &self.inner.backend.cfg.issuer
    }

    pub fn audience(&self) -> &str {
        &self.inner.backend.cfg.audience
    }

    // ---- config and preferences ----------------------------------------------------------

    /// Replaces what `GET /config` serves.
    pub fn set_config(&self, config: Value) {
        self.inner.backend.set_remote_config(config);
    }

    pub fn config(&self) -> Value {
        self.inner.backend.remote_config()
    }

    /// What `PUT /users/{id}/preferences` stored last.
    pub fn stored_preferences(&self, user_id: &str) -> Option<Value> {
        self.inner.backend.stored_preferences(user_id)
    }

    pub fn set_stored_preferences(&self, user_id: &str, preferences: Value) {
        self.inner
            .backend
            .set_stored_preferences(user_id, preferences);
    }

    // ---- faults --------------------------------------------------------------------------

    pub fn inject_fault(&self, fault: Fault) {
        self.inner.faults.add_fault(fault);
    }

    /// The next `n` requests (any path) answer `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.inject_fault(Fault::status(status).times(n));
    }

    /// Every request answers `status` until `clear_faults`.
    pub fn fail_all(&self, status: u16) {
        self.inject_fault(Fault::status(status));
    }

    pub fn clear_faults(&self) {
        self.inner.faults.clear_faults();
    }

    pub fn add_latency(&self, latency: Latency) {
        self.inner.faults.add_latency(latency);
    }

    /// Every request waits `delay` before being processed.
    pub fn delay_all(&self, delay: Duration) {
        self.add_latency(Latency::new(delay));
    }

    pub fn clear_latency(&self) {
        self.inner.faults.clear_latency();
    }

    // ---- recordings ----------------------------------------------------------------------

    /// Requests received on `path` (any method) since start or `clear_recordings`.
    pub fn calls(&self, path: &str) -> usize {
        self.inner.recorder.calls(path)
    }

    pub fn calls_with_method(&self, method: &str, path: &str) -> usize {
        self.inner.recorder.calls_with_method(method, path)
    }

    /// Headers of the last request on `path`.
    pub fn last_headers(&self, path: &str) -> Option<HeaderMap> {
        self.last_request(path).map(|r| r.headers)
    }

    pub fn last_request(&self, path: &str) -> Option<RecordedRequest> {
        self.inner.recorder.last(path)
    }

    /// Every recorded request, oldest first (`None`: all paths).
    pub fn requests(&self, path: Option<&str>) -> Vec<RecordedRequest> {
        self.inner.recorder.all(path)
    }

    pub fn clear_recordings(&self) {
        self.inner.recorder.clear();
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        // Breaks the Arc cycle (server task -> app -> Inner -> task) and frees the port: the
        // server task closes the listener and cuts the connections on this signal. (Aborting
        // it instead would leave its connection tasks, and so the cycle, alive.)
        if let Some(r) = self.inner.running().take() {
            let _ = r.stop.send(());
        }
    }
}
