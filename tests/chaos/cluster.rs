//! The chaos cluster: a private PostgreSQL (initdb into a temp dir, so it can be stopped),
//! private Redis and NATS servers, the .NET emulator in-process, and N sidecar replicas run
//! as real processes.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use emulator::{Emulator, EmulatorConfig, EmulatorHandle};
use rand::Rng;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Says what is missing; a failure under CI, a skip elsewhere.
fn missing(what: &str) -> Option<Cluster> {
    if in_ci() {
        panic!("chaos: {what} is missing and CI=true");
    }
    eprintln!("SKIPPED: chaos: {what} is missing");
    None
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn port_open(port: u16) -> bool {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
}

async fn wait_port(port: u16, within: Duration) -> bool {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if port_open(port) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sidecar-chaos-{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL cluster of our own, run as the `postgres` user (initdb refuses root).
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: TempDir,
    pub port: u16,
}

impl PrivatePostgres {
    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .map(|e| e.path().join("bin"))
            .collect();
        dirs.sort();
        dirs.into_iter().rev().find(|d| d.join("initdb").exists())
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut cmd = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin.join(program));
            c
        } else {
            Command::new(self.bin.join(program))
        };
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    }

    async fn start() -> Option<Self> {
        let bin = Self::bin_dir()?;
        let dir = TempDir::new("pg");
        if running_as_root() {
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir.0)
                .status()
                .ok()?;
        }
        let pg = PrivatePostgres {
            bin,
            dir,
            port: free_port(),
        };
        let data = pg.dir.0.join("data");
        let ok = pg
            .as_postgres("initdb")
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "-D"])
            .arg(&data)
            .status()
            .ok()?
            .success();
        if !ok {
            return None;
        }
        pg.run().await.then_some(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    /// Starts (again) and waits until it accepts connections.
    pub async fn run(&self) -> bool {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off",
            self.port,
            self.dir.0.display()
        );
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-l"])
            .arg(self.dir.0.join("pg.log"))
            .args(["-o", &options, "-w", "start"])
            .status();
        wait_port(self.port, Duration::from_secs(20)).await
    }

    /// Immediate shutdown: every connection is cut, as in a crash.
    pub fn stop(&self) {
        let _ = self
            .as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .status();
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        self.stop();
    }
}

/// initdb refuses to run as root; as root we run the server binaries as `postgres`.
fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A `nats-server` or `redis-server` of our own that can be killed and restarted on the same
/// port (NATS keeps its JetStream store in a temp dir across restarts).
pub struct PrivateServer {
    kind: &'static str,
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl PrivateServer {
    async fn start(kind: &'static str) -> Option<Self> {
        let mut s = PrivateServer {
            kind,
            port: free_port(),
            dir: TempDir::new(kind),
            child: None,
        };
        s.run().await.then_some(s)
    }

    pub async fn run(&mut self) -> bool {
        self.kill();
        let port = self.port.to_string();
        let mut cmd = if self.kind == "nats" {
            let mut c = Command::new("nats-server");
            c.args(["-a", "127.0.0.1", "-p", &port, "-js", "-sd"])
                .arg(&self.dir.0);
            c
        } else {
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
        };
        match cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => self.child = Some(child),
            Err(_) => return false,
        }
        wait_port(self.port, Duration::from_secs(10)).await
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.kind, self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One sidecar process.
pub struct Replica {
    pub index: usize,
    pub port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pub restarts: u32,
}

impl Replica {
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sidecar"))
            .env_clear()
            .envs(self.env.iter().cloned())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("the sidecar binary runs");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn ready(&self) -> bool {
        let client = reqwest::Client::new();
        matches!(client.get(format!("{}/health/ready", self.base_url())).timeout(Duration::from_secs(2)).send().await, Ok(r) if r.status() == 200)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug, Clone)]
pub enum Fault {
    KillReplica(usize),
    StopNats,
    StopRedis,
    StopPostgres,
    EmulatorFailing,
    EmulatorSlow,
}

impl Fault {
    /// One fault of every kind, shuffled.
    pub fn round(rng: &mut impl Rng, replicas: usize) -> Vec<Fault> {
        use rand::seq::SliceRandom;
        let mut faults = vec![
            Fault::KillReplica(rng.gen_range(0..replicas)),
            Fault::StopNats,
            Fault::StopRedis,
            Fault::StopPostgres,
            Fault::EmulatorFailing,
            Fault::EmulatorSlow,
        ];
        faults.shuffle(rng);
        faults
    }

    pub fn label(&self) -> &'static str {
        match self {
            Fault::KillReplica(_) => "kill -9 replica",
            Fault::StopNats => "NATS down",
            Fault::StopRedis => "Redis down",
            Fault::StopPostgres => "PostgreSQL down",
            Fault::EmulatorFailing => ".NET 500s",
            Fault::EmulatorSlow => ".NET slow",
        }
    }
}

pub struct Cluster {
    pub postgres: PrivatePostgres,
    pub nats: PrivateServer,
    pub redis: PrivateServer,
    pub emulator: EmulatorHandle,
    pub replicas: Vec<Replica>,
    pub stream: String,
    pub database: String,
    pub logs: TempDir,
}

impl Cluster {
    pub async fn start(replicas: usize) -> Option<Cluster> {
        let Some(postgres) = PrivatePostgres::start().await else {
            return missing("PostgreSQL server binaries (initdb, pg_ctl)");
        };
        let Some(nats) = PrivateServer::start("nats").await else {
            return missing("nats-server");
        };
        let Some(redis) = PrivateServer::start("redis").await else {
            return missing("redis-server");
        };
        let emulator = Emulator::start(EmulatorConfig::default())
            .await
            .expect("emulator starts");
        let stream = "CHAOS".to_owned();
        let database = "postgres".to_owned();
        let logs = TempDir::new("logs");
        let shared_env: Vec<(String, String)> = {
            [
                ("APP_ENV", "prod".to_owned()),
                ("DATABASE_URL", postgres.url(&database)),
                ("REDIS_URL", redis.url()),
                ("NATS_URL", nats.url()),
                ("EVENT_STREAM", stream.clone()),
                ("DOTNET_BASE_URL", emulator.base_url()),
                ("DOTNET_TIMEOUT_SECONDS", "2".to_owned()),
                ("JWT_ISSUER", emulator.issuer().to_owned()),
                ("JWT_AUDIENCE", emulator.audience().to_owned()),
                ("CIRCUIT_OPEN_SECONDS", "2".to_owned()),
                ("SHUTDOWN_GRACE_SECONDS", "5".to_owned()),
                // Limits far above the load: this suite is about failures, not abuse.
                ("RATE_LIMIT_USER", "100000/s:1000000".to_owned()),
                ("RATE_LIMIT_DEVICE", "100000/s:1000000".to_owned()),
                ("RATE_LIMIT_IP", "100000/s:1000000".to_owned()),
                // Restarts of dependencies must not exhaust the restart intensity.
                ("SUPERVISOR_MAX_RESTARTS", "50".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
        };
        let mut cluster = Cluster {
            postgres,
            nats,
            redis,
            emulator,
            replicas: Vec::new(),
            stream,
            database,
            logs,
        };
        for index in 0..replicas {
            let port = free_port();
            let mut env = shared_env.clone();
            env.push(("SIDECAR_BIND".to_owned(), format!("127.0.0.1:{port}")));
            let mut replica = Replica {
                index,
                port,
                env,
                log: cluster.logs.0.join(format!("replica-{index}.log")),
                child: None,
                restarts: 0,
            };
            replica.spawn();
            cluster.replicas.push(replica);
        }
        assert!(
            cluster.all_ready(Duration::from_secs(60)).await,
            "replicas start"
        );
        Some(cluster)
    }

    pub async fn all_ready(&self, within: Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            let mut all = true;
            for r in &self.replicas {
                all &= r.ready().await;
            }
            if all {
                return true;
            }
            if std::time::Instant::now() > deadline {
                for r in &self.replicas {
                    if !r.ready().await {
                        eprintln!(
                            "replica {} not ready; log tail:\n{}",
                            r.index,
                            tail(&r.log, 15)
                        );
                    }
                }
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn inject(&mut self, fault: &Fault) {
        match fault {
            Fault::KillReplica(i) => self.replicas[*i].kill9(),
            Fault::StopNats => self.nats.kill(),
            Fault::StopRedis => self.redis.kill(),
            Fault::StopPostgres => self.postgres.stop(),
            Fault::EmulatorFailing => self.emulator.fail_all(500),
            Fault::EmulatorSlow => self.emulator.delay_all(Duration::from_secs(3)),
        }
    }

    pub async fn heal(&mut self, fault: &Fault) {
        match fault {
            Fault::KillReplica(i) => {
                let replica = &mut self.replicas[*i];
                replica.spawn();
                replica.restarts += 1;
            }
            Fault::StopNats => assert!(self.nats.run().await, "NATS restarts"),
            Fault::StopRedis => assert!(self.redis.run().await, "Redis restarts"),
            Fault::StopPostgres => assert!(self.postgres.run().await, "PostgreSQL restarts"),
            Fault::EmulatorFailing => self.emulator.clear_faults(),
            Fault::EmulatorSlow => self.emulator.clear_latency(),
        }
    }

    /// The fault timeline against accepted events per second, for BENCHMARKS.md's picture.
    pub fn write_timeline(&self, timeline: &[(Duration, Fault)], report: &crate::load::Report) {
        let Ok(path) = std::env::var("CHAOS_TIMELINE_OUT") else {
            return;
        };
        let faults: Vec<serde_json::Value> = timeline
            .iter()
            .map(|(at, f)| serde_json::json!({"at": at.as_secs_f64(), "fault": f.label()}))
            .collect();
        let doc =
            serde_json::json!({"faults": faults, "acceptedPerSecond": report.accepted_per_second});
        let _ = std::fs::write(path, serde_json::to_vec_pretty(&doc).unwrap());
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
