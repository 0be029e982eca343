//! The integration tests' harness: [`TestApp`] starts the whole service in-process on port 0
//! against real services (a fresh PostgreSQL database per test when PostgreSQL is reachable,
//! else SQLite in a temp dir), with a typed HTTP client and every log line captured.
//!
//! Service policy: a test that needs PostgreSQL, Redis or NATS and does not find it prints
//! which service is missing and is skipped; under `CI=true` a missing service is a failure.
//! [`PrivateServer`] starts a test's own `nats-server` or `redis-server` on a free port, so a
//! fault test can kill and restart it without touching anyone else's.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use emulator::{Emulator, EmulatorConfig, EmulatorHandle};

use sidecar::app::{Application, ExitReason, Overrides};
use sidecar::http::problem::Problem;
use sidecar::http::security::{Authenticator, Caller, SharedAuthenticator};
use sidecar::settings::Settings;
use tokio::task::JoinHandle;

pub const POSTGRES_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const NATS_URL: &str = "nats://127.0.0.1:4222";

/// A backing service the tests may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Postgres,
    Redis,
    Nats,
}

impl Service {
    fn addr(self) -> SocketAddr {
        match self {
            Service::Postgres => "127.0.0.1:5432",
            Service::Redis => "127.0.0.1:6379",
            Service::Nats => "127.0.0.1:4222",
        }
        .parse()
        .unwrap()
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `service` is reachable. Missing under CI → panic (a failure, never a skip);
/// missing elsewhere → a plain message and `false`, so the caller returns early.
pub fn require(service: Service) -> bool {
    static SEEN: OnceLock<Mutex<HashMap<Service, bool>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let up = *seen.lock().unwrap().entry(service).or_insert_with(|| {
        TcpStream::connect_timeout(&service.addr(), Duration::from_millis(500)).is_ok()
    });
    if !up {
        if in_ci() {
            panic!(
                "{service:?} is not reachable at {} and CI=true: a missing service fails the run",
                service.addr()
            );
        }
        eprintln!(
            "SKIPPED: {service:?} is not reachable at {}; start it to run this test",
            service.addr()
        );
    }
    up
}

/// Every log line the service wrote in this test process (JSON, one per line).
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&log_buffer().lock().unwrap()).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(Default::default)
}

#[derive(Clone)]
struct CaptureWriter;

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn init_logs_once() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        sidecar::telemetry::init_logs(sidecar::settings::AppEnv::Prod, || CaptureWriter)
    });
}

/// Which durable store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// PostgreSQL when reachable (always under CI), else SQLite.
    Default,
    /// PostgreSQL or skip.
    Postgres,
    /// SQLite in a temp dir.
    Sqlite,
}

/// How to start a [`TestApp`].
pub struct TestAppBuilder {
    env: HashMap<String, String>,
    extra_children: Vec<actors::supervisor::ChildSpec>,
    store: Store,
    database_url: Option<String>,
    test_auth: bool,
}

impl TestAppBuilder {
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    /// Puts an extra actor under the service's supervisor.
    pub fn child(mut self, spec: actors::supervisor::ChildSpec) -> Self {
        self.extra_children.push(spec);
        self
    }

    pub fn store(mut self, store: Store) -> Self {
        self.store = store;
        self
    }

    /// TEST-ONLY: bearer tokens `test-user:<id>` authenticate as user `<id>` (see
    /// [`TestAuthenticator`]); nothing in the binary can install this.
    pub fn test_auth(mut self) -> Self {
        self.test_auth = true;
        self
    }

    /// Share a database with another app (multi-replica tests).
    pub fn database_url(mut self, url: impl Into<String>) -> Self {
        self.database_url = Some(url.into());
        self
    }

    /// Points the app at `dotnet` (`DOTNET_BASE_URL`).
    pub fn dotnet(self, dotnet: &EmulatorHandle) -> Self {
        self.env("DOTNET_BASE_URL", dotnet.base_url())
    }

    /// Local JWT verification against `dotnet`'s issuer, audience and JWKS
    /// (`JWT_ISSUER`, `JWT_AUDIENCE`; keys from .NET's `/.well-known/jwks.json`).
    pub fn jwt(self, dotnet: &EmulatorHandle) -> Self {
        self.env("JWT_ISSUER", dotnet.issuer())
            .env("JWT_AUDIENCE", dotnet.audience())
    }

    /// Local JWT verification with the emulator's default issuer and audience (keys from
    /// the emulator's `/.well-known/jwks.json` unless `JWT_JWKS_URL` is set).
    pub fn jwt_of_default_emulator(self) -> Self {
        self.env("JWT_ISSUER", emulator::DEFAULT_ISSUER)
            .env("JWT_AUDIENCE", emulator::DEFAULT_AUDIENCE)
    }

    /// Starts a fresh .NET emulator (seeded users, see `emulator/README.md`), points the
    /// app at it and starts the app. `None` when a required service is missing outside CI.
    pub async fn spawn_with_emulator(self) -> Option<(TestApp, EmulatorHandle)> {
        let dotnet = Emulator::start(EmulatorConfig::default())
            .await
            .expect("the .NET emulator starts");
        let builder = if self.env.contains_key("DOTNET_BASE_URL") {
            self
        } else {
            self.dotnet(&dotnet)
        };
        let app = builder.spawn().await?;
        Some((app, dotnet))
    }

    /// Starts the app; `None` when a required service is missing outside CI.
    pub async fn spawn(self) -> Option<TestApp> {
        init_logs_once();
        let mut env = self.env;
        env.entry("SIDECAR_BIND".into())
            .or_insert_with(|| "127.0.0.1:0".into());
        env.entry("SHUTDOWN_GRACE_SECONDS".into())
            .or_insert_with(|| "5".into());
        // Each app its own Redis keys unless a test shares them on purpose (replicas).
        env.entry("REDIS_KEY_PREFIX".into())
            .or_insert_with(|| format!("test:{}:", uuid::Uuid::new_v4().simple()));
        // Rate limits out of the way unless a test is about them (it sets its own): tests
        // of the event path post far more than the contract's defaults allow one user.
        for scope in ["RATE_LIMIT_USER", "RATE_LIMIT_DEVICE", "RATE_LIMIT_IP"] {
            env.entry(scope.into())
                .or_insert_with(|| "1000000/s:1000000".into());
        }
        // Dozens of services share this process and its two cores: a lower priority for
        // their background threads would only starve one test's relay and janitor behind
        // other tests' requests (a janitor test timed out so).
        env.entry("EVENT_PIPELINE_NICE".into())
            .or_insert_with(|| "0".into());
        let tempdir = tempdir();
        let mut fresh_db = None;
        let url = match (self.database_url, self.store) {
            (Some(url), _) => url,
            (None, Store::Sqlite) => sqlite_url(&tempdir),
            (None, Store::Postgres) => {
                if !require(Service::Postgres) {
                    return None;
                }
                let name = create_postgres_database().await;
                fresh_db = Some(name.clone());
                postgres_url(&name)
            }
            (None, Store::Default) => {
                if in_ci()
                    || TcpStream::connect_timeout(
                        &Service::Postgres.addr(),
                        Duration::from_millis(300),
                    )
                    .is_ok()
                {
                    require(Service::Postgres);
                    let name = create_postgres_database().await;
                    fresh_db = Some(name.clone());
                    postgres_url(&name)
                } else {
                    sqlite_url(&tempdir)
                }
            }
        };
        env.insert("DATABASE_URL".into(), url.clone());
        let settings = Settings::from_map(&env).expect("test settings are valid");
        let overrides = Overrides {
            authenticator: self
                .test_auth
                .then(|| Arc::new(TestAuthenticator) as SharedAuthenticator),
            extra_children: self.extra_children,
        };
        let app = Application::build_with(settings, overrides)
            .await
            .expect("the application starts");
        let addr = app.local_addr();
        let tree = app.tree();
        let abuse = app.abuse_controls();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until_stopped(async {
            let _ = stop_rx.await;
        }));
        Some(TestApp {
            address: format!("http://{addr}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            database_url: url,
            tree,
            abuse,
            stop: Some(stop_tx),
            server: Some(server),
            _tempdir: tempdir,
            fresh_db,
        })
    }
}

/// The whole service running in this process.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub database_url: String,
    pub tree: actors::supervisor::SupervisorHealth,
    /// The app's rate limiter and backpressure signal, for tests below HTTP.
    pub abuse: sidecar::abuse::AbuseControls,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<ExitReason>>>,
    _tempdir: TempDir,
    fresh_db: Option<String>,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            env: HashMap::new(),
            extra_children: Vec::new(),
            store: Store::Default,
            database_url: None,
            test_auth: false,
        }
    }

    /// The default app: embedded defaults, fresh database.
    pub async fn spawn() -> Option<TestApp> {
        Self::builder().spawn().await
    }

    /// The default app against a fresh .NET emulator of its own.
    pub async fn with_emulator() -> Option<(TestApp, EmulatorHandle)> {
        Self::builder().spawn_with_emulator().await
    }

    /// The current value of one series of `/metrics` (e.g.
    /// `sidecar_upstream_requests_total{operation="login",outcome="failure"}`), 0 when
    /// absent. The recorder is process-wide: tests running in parallel share it, so assert
    /// on series no other test moves, or on lower bounds.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap_or_default();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn post_json_bearer(
        &self,
        path: &str,
        token: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Graceful stop, as SIGTERM would do it; returns how the service ended.
    pub async fn shutdown(mut self) -> ExitReason {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let server = self.server.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("stops within the grace period")
            .expect("server task")
            .expect("server ran")
    }

    /// Waits for the service to end by itself (escalation).
    pub async fn wait_exit(mut self, within: Duration) -> ExitReason {
        let server = self.server.take().expect("running");
        tokio::time::timeout(within, server)
            .await
            .expect("exited in time")
            .expect("task")
            .expect("ran")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(name) = self.fresh_db.take() {
            // Drop the per-test database off the async runtime (Drop cannot await).
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if let Ok(db) = sea_orm::Database::connect(POSTGRES_ADMIN_URL).await {
                        use sea_orm::ConnectionTrait;
                        let _ = db
                            .execute_unprepared(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                });
            });
        }
    }
}

pub fn postgres_url(name: &str) -> String {
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

/// Creates an empty PostgreSQL database with a unique name.
pub async fn create_postgres_database() -> String {
    use sea_orm::ConnectionTrait;
    let name = format!("sidecar_test_{}", uuid::Uuid::new_v4().simple());
    let db = sea_orm::Database::connect(POSTGRES_ADMIN_URL)
        .await
        .expect("PostgreSQL admin connection");
    db.execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("CREATE DATABASE");
    let _ = db.close().await;
    name
}

fn sqlite_url(dir: &TempDir) -> String {
    format!("sqlite://{}/sidecar.db?mode=rwc", dir.path.display())
}

/// A directory removed when dropped.
pub struct TempDir {
    pub path: std::path::PathBuf,
}

pub fn tempdir() -> TempDir {
    let path = std::env::temp_dir().join(format!("sidecar-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&path).unwrap();
    TempDir { path }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test's own `nats-server` or `redis-server`, on a port of its own, that the test may
/// kill and restart (on the same port) without touching anything else.
pub struct PrivateServer {
    pub port: u16,
    kind: PrivateKind,
    child: Option<Child>,
    dir: TempDir,
}

#[derive(Clone, Copy)]
enum PrivateKind {
    Nats,
    Redis,
}

impl PrivateServer {
    /// `nats-server` with JetStream, storing into a temp dir that survives restarts.
    pub async fn nats() -> PrivateServer {
        Self::start(PrivateKind::Nats).await
    }

    pub async fn redis() -> PrivateServer {
        Self::start(PrivateKind::Redis).await
    }

    async fn start(kind: PrivateKind) -> PrivateServer {
        let mut server = PrivateServer {
            port: free_port(),
            kind,
            child: None,
            dir: tempdir(),
        };
        server.restart().await;
        server
    }

    pub fn url(&self) -> String {
        match self.kind {
            PrivateKind::Nats => format!("nats://127.0.0.1:{}", self.port),
            PrivateKind::Redis => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// SIGKILL: the server dies without a goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts (again) on the same port and waits until it accepts connections.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = match self.kind {
            PrivateKind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                    .arg(&self.dir.path);
                c
            }
            PrivateKind::Redis => {
                let mut c = Command::new("redis-server");
                c.args([
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    &port,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server binary on PATH");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        for _ in 0..100 {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                // NATS opens its port before JetStream is ready; give it a moment.
                if matches!(self.kind, PrivateKind::Nats) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("private server on {addr} did not start");
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Panics if any captured log line holds one of `secrets` (tokens, passwords, OTPs).
pub fn assert_no_secrets_logged(secrets: &[&str]) {
    let logs = captured_logs();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("a secret reached the logs: {line}");
        }
    }
}

/// Polls `check` until it is true or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// TEST-ONLY authenticator: `test-user:<id>` is user `<id>`; anything else is 401. Lives in
/// the test harness only, so the binary can never accept such a token.
pub struct TestAuthenticator;

impl Authenticator for TestAuthenticator {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
        _ctx: Option<&'a sidecar::http::context::RequestContext>,
    ) -> futures::future::BoxFuture<'a, Result<Caller, Problem>> {
        Box::pin(async move {
            match token.strip_prefix("test-user:") {
                Some(user) if !user.is_empty() => Ok(Caller {
                    user_id: user.to_owned(),
                    role: Some("USER".into()),
                    session_id: None,
                    age_group: None,
                    token: token.to_owned(),
                }),
                _ => Err(Problem::unauthorized("not a test token")),
            }
        })
    }
}
