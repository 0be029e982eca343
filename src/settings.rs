//! One typed settings tree for every variable of CONTRACT.md section 11 (plus a few
//! operational knobs of our own, documented in README.md).
//!
//! Settings are read through a lookup function, so tests can feed a map instead of the
//! process environment. A malformed value stops start-up with a message that names the
//! variable and what it expected: the service never runs on a half-understood configuration.
//! Secrets (connection strings may embed passwords) are wrapped in [`Secret`], whose `Debug`
//! never prints the value.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use actors::token_bucket::Limit;
use ipnet::IpNet;

/// A value that must never reach a log line or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is handed to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Why start-up refused the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid configuration: {variable}={shown}: expected {expected}")]
pub struct SettingsError {
    pub variable: &'static str,
    /// The offending value, or `***` for secret variables.
    pub shown: String,
    pub expected: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Dev,
    Prod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupeMode {
    /// Dedupe by `eventId` only.
    EventId,
    /// Also report a new id whose hash was accepted recently as a duplicate.
    EventIdAndHash,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub app_env: AppEnv,
    pub bind: SocketAddr,
    pub dotnet: DotnetSettings,
    /// `Some` when local JWT verification is configured (issuer and audience both set).
    pub jwt: Option<JwtSettings>,
    pub database_url: Secret,
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key this service writes (`REDIS_KEY_PREFIX`, ours), so that
    /// deployments (and tests) sharing one Redis do not meet.
    pub redis_key_prefix: String,
    pub nats_url: Option<Secret>,
    pub events: EventSettings,
    pub rate_limits: RateLimitSettings,
    pub backpressure: BackpressureSettings,
    pub trusted_proxies: Vec<IpNet>,
    pub config_cache: ConfigCacheSettings,
    pub enforce_admin_mfa: bool,
    pub circuit: CircuitSettings,
    pub supervisor: SupervisorSettings,
    /// How long SIGTERM waits for in-flight requests and the outbox flush.
    pub shutdown_grace: Duration,
    /// Run migrations at start-up (the default) or expect them applied.
    pub run_migrations: bool,
    /// TEST-ONLY fault injection (`SIDECAR_FAILPOINT`); never set in production.
    pub failpoint: Option<Failpoint>,
}

/// Test-only failpoints (`SIDECAR_FAILPOINT`), read once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// `crash_after_commit`: abort the process right after a dedupe shard's commit, before
    /// any answer or publish (the crash test of the transactional outbox).
    CrashAfterCommit,
}

#[derive(Debug, Clone)]
pub struct DotnetSettings {
    pub base_url: String,
    pub timeout: Duration,
    pub slow_call: Duration,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub issuer: String,
    pub audience: String,
    /// Where the keys are; `None` means .NET's `/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EventSettings {
    pub max_batch: usize,
    pub max_body_bytes: usize,
    pub max_payload_bytes: usize,
    pub max_age_days: u32,
    pub dedupe_mode: DedupeMode,
    pub hash_window: Duration,
    pub hash_bucket_seconds: i64,
    pub stream: String,
    /// Number of DedupeShard actors (`EVENT_SHARDS`).
    pub shards: usize,
    /// Group commits each shard may have in flight (`EVENT_SHARD_FLUSHES`, ours).
    pub shard_flushes: usize,
    /// Durable consumer name of the aggregator (`AGGREGATOR_CONSUMER`).
    pub aggregator_consumer: String,
    /// CPU niceness of the background runtime's thread (relay, aggregator, janitor):
    /// `EVENT_PIPELINE_NICE`, ours, 0..=19, default 10; 0 runs it at the requests' priority.
    pub pipeline_nice: u32,
}

#[derive(Debug, Clone)]
pub struct RateLimitSettings {
    pub user: Limit,
    pub device: Limit,
    pub ip: Limit,
    /// How long a request waits for Redis before it is decided in memory
    /// (`RATE_LIMIT_REDIS_TIMEOUT_MS`, ours).
    pub redis_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct BackpressureSettings {
    pub high: u64,
    pub low: u64,
    pub consumers: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ConfigCacheSettings {
    pub ttl: Duration,
    pub max_stale: Duration,
}

#[derive(Debug, Clone)]
pub struct CircuitSettings {
    pub failure_rate_pct: f64,
    pub min_calls: u32,
    pub window: Duration,
    pub open_for: Duration,
    pub half_open_probes: u32,
    pub slow_call_rate_pct: f64,
}

#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub max_restarts: u32,
    pub window: Duration,
}

impl Settings {
    /// Reads the process environment (after `.env`, which `main` loads).
    pub fn from_env() -> Result<Self, SettingsError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads from a map; what tests use.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Self, SettingsError> {
        Self::from_lookup(|name| map.get(name).cloned())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, SettingsError> {
        let env = Env { lookup: &lookup };
        let issuer = env.optional_string("JWT_ISSUER");
        let audience = env.optional_string("JWT_AUDIENCE");
        let jwks_url = env.optional_string("JWT_JWKS_URL");
        let jwt = match (issuer, audience) {
            (Some(issuer), Some(audience)) => Some(JwtSettings {
                issuer,
                audience,
                jwks_url,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(env.error("JWT_AUDIENCE", "", "a value, since JWT_ISSUER is set"))
            }
            (None, Some(_)) => {
                return Err(env.error("JWT_ISSUER", "", "a value, since JWT_AUDIENCE is set"))
            }
        };
        let backpressure = BackpressureSettings {
            high: env.parse("BACKPRESSURE_HIGH", 100_000, "a whole number of messages")?,
            low: env.parse("BACKPRESSURE_LOW", 50_000, "a whole number of messages")?,
            consumers: env.list("BACKPRESSURE_CONSUMERS", "aggregator"),
        };
        if backpressure.low > backpressure.high {
            return Err(env.error(
                "BACKPRESSURE_LOW",
                &backpressure.low.to_string(),
                "a value not above BACKPRESSURE_HIGH",
            ));
        }
        let settings = Settings {
            app_env: match env.string("APP_ENV", "dev").as_str() {
                "dev" => AppEnv::Dev,
                "prod" => AppEnv::Prod,
                other => return Err(env.error("APP_ENV", other, "`dev` or `prod`")),
            },
            bind: env.parse("SIDECAR_BIND", "0.0.0.0:8001".parse().unwrap(), "host:port")?,
            dotnet: DotnetSettings {
                base_url: env.url(
                    "DOTNET_BASE_URL",
                    "http://localhost:5000",
                    &["http", "https"],
                )?,
                timeout: env.seconds("DOTNET_TIMEOUT_SECONDS", 10.0)?,
                slow_call: env.seconds("DOTNET_SLOW_CALL_SECONDS", 5.0)?,
            },
            jwt,
            database_url: Secret::new(env.secret_url(
                "DATABASE_URL",
                "sqlite://sidecar.db?mode=rwc",
                &["sqlite", "postgres", "postgresql"],
            )?),
            redis_url: env.optional_secret_url("REDIS_URL", &["redis", "rediss"])?,
            redis_key_prefix: env.key_prefix("REDIS_KEY_PREFIX", "sidecar:")?,
            nats_url: env.optional_secret_url("NATS_URL", &["nats", "tls"])?,
            events: EventSettings {
                max_batch: env.positive("EVENT_MAX_BATCH", 500)?,
                max_body_bytes: env.positive("EVENT_MAX_BODY_BYTES", 1_048_576)?,
                max_payload_bytes: env.positive("EVENT_MAX_PAYLOAD_BYTES", 32_768)?,
                max_age_days: env.bounded("EVENT_MAX_AGE_DAYS", 30, 36_500)?,
                dedupe_mode: match env.string("EVENT_DEDUPE_MODE", "eventId").as_str() {
                    "eventId" => DedupeMode::EventId,
                    "eventIdAndHash" => DedupeMode::EventIdAndHash,
                    other => {
                        return Err(env.error(
                            "EVENT_DEDUPE_MODE",
                            other,
                            "`eventId` or `eventIdAndHash`",
                        ))
                    }
                },
                hash_window: env.seconds("EVENT_HASH_WINDOW_SECONDS", 60.0)?,
                hash_bucket_seconds: env.positive("EVENT_HASH_BUCKET_SECONDS", 60)?,
                stream: env.stream_name("EVENT_STREAM", "EVENTS")?,
                shards: env.positive("EVENT_SHARDS", 4)?,
                shard_flushes: env.positive("EVENT_SHARD_FLUSHES", 2)?,
                aggregator_consumer: env.string("AGGREGATOR_CONSUMER", "aggregator"),
                pipeline_nice: env.nice("EVENT_PIPELINE_NICE", 10)?,
            },
            rate_limits: RateLimitSettings {
                user: env.parse(
                    "RATE_LIMIT_USER",
                    "200/s:1000".parse().unwrap(),
                    "rate/s:burst, e.g. 200/s:1000",
                )?,
                device: env.parse(
                    "RATE_LIMIT_DEVICE",
                    "200/s:1000".parse().unwrap(),
                    "rate/s:burst, e.g. 200/s:1000",
                )?,
                ip: env.parse(
                    "RATE_LIMIT_IP",
                    "2000/s:10000".parse().unwrap(),
                    "rate/s:burst, e.g. 2000/s:10000",
                )?,
                redis_timeout: Duration::from_millis(
                    env.positive("RATE_LIMIT_REDIS_TIMEOUT_MS", 100u64)?,
                ),
            },
            backpressure,
            trusted_proxies: env.cidrs("TRUSTED_PROXIES")?,
            config_cache: ConfigCacheSettings {
                ttl: env.seconds("CONFIG_TTL_SECONDS", 30.0)?,
                max_stale: env.seconds("CONFIG_MAX_STALE_SECONDS", 3600.0)?,
            },
            enforce_admin_mfa: env.boolean("ENFORCE_ADMIN_MFA", true)?,
            circuit: CircuitSettings {
                failure_rate_pct: env.percent("CIRCUIT_FAILURE_RATE", 50.0)?,
                min_calls: env.positive("CIRCUIT_MIN_CALLS", 10)?,
                window: env.seconds("CIRCUIT_WINDOW_SECONDS", 30.0)?,
                open_for: env.seconds("CIRCUIT_OPEN_SECONDS", 15.0)?,
                half_open_probes: env.positive("CIRCUIT_HALF_OPEN_PROBES", 3)?,
                slow_call_rate_pct: env.percent("CIRCUIT_SLOW_CALL_RATE", 80.0)?,
            },
            supervisor: SupervisorSettings {
                max_restarts: env.parse("SUPERVISOR_MAX_RESTARTS", 5, "a whole number")?,
                window: env.seconds("SUPERVISOR_WINDOW_SECONDS", 30.0)?,
            },
            shutdown_grace: env.seconds("SHUTDOWN_GRACE_SECONDS", 20.0)?,
            run_migrations: env.boolean("RUN_MIGRATIONS", true)?,
            failpoint: match env.optional_string("SIDECAR_FAILPOINT").as_deref() {
                None => None,
                Some("crash_after_commit") => Some(Failpoint::CrashAfterCommit),
                Some(other) => {
                    return Err(env.error("SIDECAR_FAILPOINT", other, "`crash_after_commit`"))
                }
            },
        };
        Ok(settings)
    }
}

/// Typed reads of one variable each; every failure names the variable.
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn error(&self, variable: &'static str, shown: &str, expected: &str) -> SettingsError {
        SettingsError {
            variable,
            shown: shown.to_owned(),
            expected: expected.to_owned(),
        }
    }

    fn string(&self, name: &'static str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    fn optional_string(&self, name: &'static str) -> Option<String> {
        self.raw(name)
    }

    fn list(&self, name: &'static str, default: &str) -> Vec<String> {
        self.string(name, default)
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn parse<T: FromStr>(
        &self,
        name: &'static str,
        default: T,
        expected: &str,
    ) -> Result<T, SettingsError> {
        match self.raw(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| self.error(name, &v, expected)),
        }
    }

    fn positive<T: FromStr + Default + PartialOrd>(
        &self,
        name: &'static str,
        default: T,
    ) -> Result<T, SettingsError> {
        let value = self.parse(name, default, "a whole number above 0")?;
        if value <= T::default() {
            return Err(self.error(
                name,
                &self.raw(name).unwrap_or_default(),
                "a whole number above 0",
            ));
        }
        Ok(value)
    }

    /// A whole number in 1..=max (a larger one would overflow date arithmetic).
    fn bounded(&self, name: &'static str, default: u32, max: u32) -> Result<u32, SettingsError> {
        let value: u32 = self.positive(name, default)?;
        if value > max {
            return Err(self.error(
                name,
                &value.to_string(),
                &format!("a whole number from 1 to {max}"),
            ));
        }
        Ok(value)
    }

    /// A CPU niceness, 0..=19.
    fn nice(&self, name: &'static str, default: u32) -> Result<u32, SettingsError> {
        let expected = "a whole number from 0 to 19";
        let value: u32 = self.parse(name, default, expected)?;
        if value > 19 {
            return Err(self.error(name, &value.to_string(), expected));
        }
        Ok(value)
    }

    fn seconds(&self, name: &'static str, default: f64) -> Result<Duration, SettingsError> {
        let expected = "a number of seconds above 0";
        let secs: f64 = self.parse(name, default, expected)?;
        if !(secs.is_finite() && secs > 0.0 && secs < 1e9) {
            return Err(self.error(name, &secs.to_string(), expected));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    fn percent(&self, name: &'static str, default: f64) -> Result<f64, SettingsError> {
        let expected = "a percentage in (0, 100]";
        let pct: f64 = self.parse(name, default, expected)?;
        if !(pct > 0.0 && pct <= 100.0) {
            return Err(self.error(name, &pct.to_string(), expected));
        }
        Ok(pct)
    }

    fn boolean(&self, name: &'static str, default: bool) -> Result<bool, SettingsError> {
        match self.raw(name).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes" | "on") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no" | "off") => Ok(false),
            Some(v) => Err(self.error(name, &v, "true or false")),
        }
    }

    fn url(
        &self,
        name: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, SettingsError> {
        let value = self.string(name, default);
        check_scheme(&value, schemes).map_err(|expected| self.error(name, &value, &expected))?;
        Ok(value.trim_end_matches('/').to_owned())
    }

    /// Like `url`, but the value is never echoed (it may carry a password).
    fn secret_url(
        &self,
        name: &'static str,
        default: &str,
        schemes: &[&str],
    ) -> Result<String, SettingsError> {
        let value = self.string(name, default);
        check_scheme(&value, schemes).map_err(|expected| self.error(name, "***", &expected))?;
        Ok(value)
    }

    fn optional_secret_url(
        &self,
        name: &'static str,
        schemes: &[&str],
    ) -> Result<Option<Secret>, SettingsError> {
        match self.raw(name) {
            None => Ok(None),
            Some(value) => {
                check_scheme(&value, schemes)
                    .map_err(|expected| self.error(name, "***", &expected))?;
                Ok(Some(Secret::new(value)))
            }
        }
    }

    fn stream_name(&self, name: &'static str, default: &str) -> Result<String, SettingsError> {
        let value = self.string(name, default);
        // JetStream stream names may not contain whitespace, '.', '*', '>' or path separators.
        let ok = value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(self.error(
                name,
                &value,
                "a stream name of letters, digits, '_' or '-' (at most 64)",
            ));
        }
        Ok(value)
    }

    fn key_prefix(&self, name: &'static str, default: &str) -> Result<String, SettingsError> {
        let value = self.string(name, default);
        let ok = value.len() <= 64 && value.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(self.error(
                name,
                &value,
                "at most 64 printable ASCII characters without spaces",
            ));
        }
        Ok(value)
    }

    fn cidrs(&self, name: &'static str) -> Result<Vec<IpNet>, SettingsError> {
        self.list(name, "")
            .iter()
            .map(|item| {
                item.parse::<IpNet>()
                    .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        self.error(name, item, "a comma list of CIDRs, e.g. 10.0.0.0/8,::1/128")
                    })
            })
            .collect()
    }
}

fn check_scheme(value: &str, schemes: &[&str]) -> Result<(), String> {
    let scheme = value.split_once("://").map(|(s, _)| s);
    match scheme {
        Some(s) if schemes.contains(&s) && value.len() > s.len() + 3 => Ok(()),
        _ => Err(format!("a URL starting with {}://", schemes.join("://, "))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_map(&map)
    }

    #[test]
    fn defaults_are_the_contract_defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.bind, "0.0.0.0:8001".parse().unwrap());
        assert_eq!(s.dotnet.base_url, "http://localhost:5000");
        assert_eq!(s.dotnet.timeout, Duration::from_secs(10));
        assert_eq!(s.database_url.expose(), "sqlite://sidecar.db?mode=rwc");
        assert!(s.redis_url.is_none() && s.nats_url.is_none() && s.jwt.is_none());
        assert_eq!(s.events.max_batch, 500);
        assert_eq!(s.events.max_body_bytes, 1_048_576);
        assert_eq!(s.events.max_payload_bytes, 32_768);
        assert_eq!(s.events.stream, "EVENTS");
        assert_eq!(s.events.dedupe_mode, DedupeMode::EventId);
        assert_eq!(s.backpressure.consumers, vec!["aggregator".to_string()]);
        assert_eq!((s.backpressure.high, s.backpressure.low), (100_000, 50_000));
        assert_eq!(s.config_cache.ttl, Duration::from_secs(30));
        assert!(s.enforce_admin_mfa);
        assert_eq!(s.circuit.min_calls, 10);
        assert_eq!(s.supervisor.max_restarts, 5);
        assert_eq!(s.rate_limits.user.burst, 1000.0);
        assert_eq!(s.rate_limits.redis_timeout, Duration::from_millis(100));
        assert_eq!(s.redis_key_prefix, "sidecar:");
    }

    #[test]
    fn malformed_values_name_the_variable() {
        for (var, value) in [
            ("EVENT_MAX_BATCH", "lots"),
            ("EVENT_MAX_BATCH", "0"),
            ("DOTNET_TIMEOUT_SECONDS", "-1"),
            ("SIDECAR_BIND", "8001"),
            ("APP_ENV", "staging"),
            ("ENFORCE_ADMIN_MFA", "maybe"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,not-a-cidr"),
            ("CIRCUIT_FAILURE_RATE", "150"),
            ("RATE_LIMIT_USER", "fast"),
            ("EVENT_DEDUPE_MODE", "hash"),
            ("EVENT_STREAM", "bad.name"),
            ("EVENT_MAX_AGE_DAYS", "97000000"),
            ("REDIS_KEY_PREFIX", "has space:"),
            ("RATE_LIMIT_REDIS_TIMEOUT_MS", "0"),
            ("DOTNET_BASE_URL", "localhost:5000"),
        ] {
            let err = settings(&[(var, value)]).expect_err(var);
            assert_eq!(err.variable, var);
            assert!(err.to_string().contains(var), "{err}");
            assert!(err.to_string().contains("expected"), "{err}");
        }
    }

    #[test]
    fn pipeline_nice_is_a_niceness() {
        assert_eq!(settings(&[]).unwrap().events.pipeline_nice, 10);
        let zero = settings(&[("EVENT_PIPELINE_NICE", "0")]).unwrap();
        assert_eq!(zero.events.pipeline_nice, 0);
        for bad in ["20", "-1", "high"] {
            let err = settings(&[("EVENT_PIPELINE_NICE", bad)]).unwrap_err();
            assert!(err.to_string().contains("EVENT_PIPELINE_NICE"), "{err}");
        }
    }

    #[test]
    fn secrets_are_never_echoed() {
        let err = settings(&[("DATABASE_URL", "mysql://user:hunter2@db/x")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let s = settings(&[("REDIS_URL", "redis://:hunter2@127.0.0.1:6379")]).unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn jwt_needs_issuer_and_audience_together() {
        assert_eq!(
            settings(&[("JWT_ISSUER", "x")]).unwrap_err().variable,
            "JWT_AUDIENCE"
        );
        let s = settings(&[("JWT_ISSUER", "x"), ("JWT_AUDIENCE", "y")]).unwrap();
        assert_eq!(s.jwt.unwrap().jwks_url, None);
    }

    #[test]
    fn lists_and_cidrs_parse() {
        let s = settings(&[
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
            ("BACKPRESSURE_CONSUMERS", "aggregator, audit"),
        ])
        .unwrap();
        assert_eq!(s.trusted_proxies.len(), 2);
        assert_eq!(s.backpressure.consumers, vec!["aggregator", "audit"]);
    }

    #[test]
    fn low_watermark_cannot_exceed_high() {
        let err = settings(&[("BACKPRESSURE_HIGH", "10"), ("BACKPRESSURE_LOW", "20")]).unwrap_err();
        assert_eq!(err.variable, "BACKPRESSURE_LOW");
    }
}
