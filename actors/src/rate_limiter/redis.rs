//! The shared buckets: one Lua script (`take_all.lua`) checks and charges every bucket of a
//! request in one round trip, atomically. It is loaded once (`SCRIPT LOAD`) and called by
//! its SHA-1 (`EVALSHA`); a Redis that has lost it (restarted, `SCRIPT FLUSH`) answers
//! `NOSCRIPT`, and the script is loaded again and the call repeated.
//!
//! Every command is bounded by the limiter's timeout, fails at once while the connection is
//! down (`fail_fast`), and is never re-sent after a dropped connection (`max_attempts: 1`):
//! a charge replayed on a new connection would count twice. fred reconnects in the
//! background on its own.

use std::time::Duration;

use fred::prelude::{
    ClientLike, Config, ConnectionConfig, Error as FredError, LuaInterface, Options,
    ReconnectPolicy, TcpConfig, Value,
};
use fred::types::Builder;
use sha1::{Digest, Sha1};

use crate::token_bucket::{take_all, BucketState, Charge, TakeAll};

/// The script's source; its algorithm is `token_bucket`'s, step by step.
pub const SCRIPT: &str = include_str!("take_all.lua");

/// Why the shared buckets could not decide.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("REDIS_URL is not a usable Redis URL: {0}")]
    Config(String),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(#[from] FredError),
    #[error("the rate-limit script answered something unexpected: {0}")]
    Reply(String),
}

/// A Redis connection that runs the bucket script.
#[derive(Clone)]
pub struct ScriptBuckets {
    client: fred::clients::Client,
    sha: String,
    options: Options,
    timeout: Duration,
}

impl ScriptBuckets {
    /// A client for `url`, not yet connected (see [`Self::connect`]).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, RedisError> {
        let mut config = Config::from_url(url).map_err(|e| RedisError::Config(e.to_string()))?;
        // Keep trying when Redis is not there at start-up, as after any later loss.
        config.fail_fast = false;
        let client = Builder::from_config(config)
            .set_connection_config(ConnectionConfig {
                connection_timeout: Duration::from_secs(2),
                internal_command_timeout: Duration::from_secs(2),
                max_command_attempts: 1,
                tcp: TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                },
                ..Default::default()
            })
            // Reconnect forever, 100 ms doubling to 2 s; the limiter's own prober decides
            // when to trust Redis again.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()
            .map_err(|e| RedisError::Config(e.to_string()))?;
        Ok(Self {
            client,
            sha: hex::encode(Sha1::digest(SCRIPT.as_bytes())),
            options: Options {
                max_attempts: Some(1),
                timeout: Some(timeout),
                fail_fast: true,
                ..Default::default()
            },
            timeout,
        })
    }

    /// Starts the connection task, which connects and reconnects by itself; abort it (or
    /// [`Self::close`]) to stop.
    pub fn start_connection(&self) -> tokio::task::AbortHandle {
        self.client.connect().abort_handle()
    }

    /// Waits up to `within` for the connection to be up; whether it is.
    pub async fn wait_connected(&self, within: Duration) -> bool {
        tokio::time::timeout(within, self.client.wait_for_connect())
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Closes the connection and stops reconnecting.
    pub async fn close(&self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.quit()).await;
    }

    /// The script's SHA-1, what `EVALSHA` names it by.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// Runs the script over `keys` (one per charge, distinct) and reports the outcome with
    /// the same arithmetic as memory. `now_ms` is `None` in service (Redis's clock) and
    /// explicit in tests.
    pub async fn take_all(
        &self,
        keys: &[String],
        charges: &[Charge<'_>],
        now_ms: Option<i64>,
    ) -> Result<TakeAll, RedisError> {
        let mut args = Vec::with_capacity(1 + 3 * charges.len());
        args.push(now_ms.map(|n| n.to_string()).unwrap_or_default());
        for c in charges {
            // Rust prints the shortest text that parses back to the same double; Lua's
            // tonumber (strtod) reads it exactly.
            args.push(c.limit.rate_per_sec.to_string());
            args.push(c.limit.burst.to_string());
            args.push(c.cost.to_string());
        }
        let reply = self.eval(keys.to_vec(), args).await?;
        let (now, script_allowed, refilled) = parse_reply(reply, charges.len())?;
        // The script returned each bucket refilled to `now` before any charge; running the
        // pure function on those states refills nothing more and reproduces its decision.
        let with_state: Vec<Charge<'_>> = charges
            .iter()
            .zip(refilled)
            .map(|(c, state)| Charge {
                state: Some(state),
                ..*c
            })
            .collect();
        let outcome = take_all(&with_state, now);
        if outcome.allowed != script_allowed {
            return Err(RedisError::Reply(format!(
                "the script decided allowed={script_allowed}, the Rust arithmetic {}",
                outcome.allowed
            )));
        }
        Ok(outcome)
    }

    /// Whether Redis answers the script (a call over no buckets): what the prober asks.
    pub async fn probe(&self) -> Result<(), RedisError> {
        self.eval(Vec::new(), vec![String::new()]).await.map(|_| ())
    }

    async fn eval(&self, keys: Vec<String>, args: Vec<String>) -> Result<Value, RedisError> {
        match self.evalsha(keys.clone(), args.clone()).await {
            Err(RedisError::Redis(e)) if e.details().starts_with("NOSCRIPT") => {
                tracing::info!("loading the rate-limit script into Redis");
                self.bounded(
                    self.client
                        .with_options(&self.options)
                        .script_load::<String, _>(SCRIPT),
                )
                .await?;
                self.evalsha(keys, args).await
            }
            other => other,
        }
    }

    async fn evalsha(&self, keys: Vec<String>, args: Vec<String>) -> Result<Value, RedisError> {
        self.bounded(
            self.client
                .with_options(&self.options)
                .evalsha::<Value, _, _, _>(self.sha.as_str(), keys, args),
        )
        .await
    }

    /// fred applies the timeout too; this one also covers time spent before the command is
    /// queued.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, FredError>>,
    ) -> Result<T, RedisError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RedisError::Timeout(self.timeout)),
        }
    }
}

/// `{now_ms, allowed, tokens_1, updated_1, ...}` → (now, allowed, states).
fn parse_reply(reply: Value, n: usize) -> Result<(i64, bool, Vec<BucketState>), RedisError> {
    let items = reply.into_array();
    if items.len() != 2 + 2 * n {
        return Err(RedisError::Reply(format!(
            "{} items for {n} buckets",
            items.len()
        )));
    }
    let int = |v: &Value, what: &str| {
        v.as_i64()
            .ok_or_else(|| RedisError::Reply(format!("{what} is not an integer: {v:?}")))
    };
    let now = int(&items[0], "now")?;
    let allowed = int(&items[1], "allowed")? == 1;
    let states = items[2..]
        .chunks_exact(2)
        .map(|pair| {
            let tokens = pair[0]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| RedisError::Reply(format!("tokens: {:?}", pair[0])))?;
            Ok(BucketState::new(tokens, int(&pair[1], "updated_at")?))
        })
        .collect::<Result<Vec<_>, RedisError>>()?;
    Ok((now, allowed, states))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_reply() {
        let reply = Value::Array(vec![
            Value::Integer(5_000),
            Value::Integer(1),
            Value::String("9.5".into()),
            Value::Integer(4_000),
        ]);
        let (now, allowed, states) = parse_reply(reply, 1).unwrap();
        assert_eq!((now, allowed), (5_000, true));
        assert_eq!(states, vec![BucketState::new(9.5, 4_000)]);
    }

    #[test]
    fn refuses_a_malformed_reply() {
        let short = Value::Array(vec![Value::Integer(5_000)]);
        assert!(parse_reply(short, 0).is_err());
        let bad_tokens = Value::Array(vec![
            Value::Integer(1),
            Value::Integer(0),
            Value::String("lots".into()),
            Value::Integer(1),
        ]);
        assert!(parse_reply(bad_tokens, 1).is_err());
    }

    #[test]
    fn the_sha_is_the_scripts() {
        let buckets = ScriptBuckets::new("redis://127.0.0.1:1", Duration::from_millis(50))
            .expect("a valid url");
        assert_eq!(buckets.sha().len(), 40);
        assert!(ScriptBuckets::new("not a url", Duration::from_millis(50)).is_err());
    }
}
