//! The Redis cache of committed event ids (DESIGN.md step 3), and the `eventIdAndHash`
//! window shared across replicas.
//!
//! Redis is only ever a cache of what the database already committed: an id is written
//! after its commit (`SET <prefix>ev:<id> <hash> EX <retention>`, pipelined), and read
//! (`MGET`) before an insert so that a retried batch is answered `duplicate` without
//! touching the database. Losing Redis therefore loses nothing but speed: every call has a
//! short timeout, errors are counted and ignored, and after an error the cache stays out of
//! the way for a moment (so a dead Redis does not add a timeout to every request).
//!
//! The hash window (`<prefix>eh:<hash>` → id, `SET NX EX <window>`) is a claim made before
//! the insert; a claim held by another id means "a new id whose hash was accepted within
//! the window" (contract 11, `eventIdAndHash`). When Redis cannot answer, the claim is
//! unknown and the event is judged by id alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fred::prelude::*;
use fred::types::{Expiration, SetOptions};
use uuid::Uuid;

/// Metric: Redis id-cache calls that failed or timed out (the answer came from the database).
pub const ID_CACHE_ERRORS_TOTAL: &str = "sidecar_id_cache_errors_total";

/// How long the cache is skipped after an error.
const COOL_OFF: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct IdCache {
    client: Client,
    prefix: Arc<str>,
    retention_secs: i64,
    /// Milliseconds since `epoch` until which the cache is skipped.
    skip_until_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl std::fmt::Debug for IdCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdCache")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The outcome of a hash-window claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This id holds the hash now (or already did).
    Held,
    /// Another id holds it: a duplicate by hash.
    TakenBy(Uuid),
    /// Redis could not say.
    Unknown,
}

impl IdCache {
    /// Connects in the background (with reconnects); never fails because Redis is down.
    pub fn connect(
        url: &str,
        prefix: &str,
        retention: Duration,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let mut config = Config::from_url(url)?;
        config.fail_fast = true;
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .with_connection_config(|c| {
                c.connection_timeout = Duration::from_millis(500);
                c.max_command_attempts = 1;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2))
            .build()?;
        client.connect();
        Ok(Self {
            client,
            prefix: prefix.into(),
            retention_secs: retention.as_secs().max(1) as i64,
            skip_until_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn usable(&self) -> bool {
        self.client.is_connected() && self.now_ms() >= self.skip_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, err: &Error) {
        metrics::counter!(ID_CACHE_ERRORS_TOTAL).increment(1);
        tracing::debug!(error = %err, "redis id cache call failed; answering from the database");
        self.skip_until_ms.store(
            self.now_ms() + COOL_OFF.as_millis() as u64,
            Ordering::Relaxed,
        );
    }

    fn id_key(&self, id: &Uuid) -> String {
        format!("{}ev:{}", self.prefix, id.hyphenated())
    }

    fn hash_key(&self, hash: &str) -> String {
        format!("{}eh:{}", self.prefix, hash)
    }

    /// The cached hash of each id (`None` where unknown or when Redis cannot answer).
    pub async fn known(&self, ids: &[Uuid]) -> Vec<Option<String>> {
        if ids.is_empty() || !self.usable() {
            return vec![None; ids.len()];
        }
        let keys: Vec<String> = ids.iter().map(|id| self.id_key(id)).collect();
        match self.client.mget::<Vec<Option<String>>, _>(keys).await {
            Ok(found) if found.len() == ids.len() => found,
            Ok(_) => vec![None; ids.len()],
            Err(err) => {
                self.failed(&err);
                vec![None; ids.len()]
            }
        }
    }

    /// Remembers committed ids with their stored hashes (pipelined; errors ignored).
    pub async fn remember(&self, entries: &[(Uuid, String)]) {
        if entries.is_empty() || !self.usable() {
            return;
        }
        let pipeline = self.client.pipeline();
        for (id, hash) in entries {
            let _: Result<(), _> = pipeline
                .set(
                    self.id_key(id),
                    hash.as_str(),
                    Some(Expiration::EX(self.retention_secs)),
                    None,
                    false,
                )
                .await;
        }
        if let Err(err) = pipeline.all::<Vec<Value>>().await {
            self.failed(&err);
        }
    }

    /// Claims `hash` for `id` for `window` (`SET NX EX .. GET`, Redis 7).
    pub async fn claim_hash(&self, hash: &str, id: &Uuid, window: Duration) -> Claim {
        if !self.usable() {
            return Claim::Unknown;
        }
        let result: Result<Option<String>, _> = self
            .client
            .set(
                self.hash_key(hash),
                id.hyphenated().to_string(),
                Some(Expiration::PX(window.as_millis().max(1) as i64)),
                Some(SetOptions::NX),
                true,
            )
            .await;
        match result {
            Ok(None) => Claim::Held,
            Ok(Some(holder)) => match Uuid::try_parse(&holder) {
                Ok(holder) if holder == *id => Claim::Held,
                Ok(holder) => Claim::TakenBy(holder),
                Err(_) => Claim::Unknown,
            },
            Err(err) => {
                self.failed(&err);
                Claim::Unknown
            }
        }
    }

    /// Gives back a claim whose event was not stored (best effort).
    pub async fn release_hashes(&self, hashes: &[String]) {
        if hashes.is_empty() || !self.usable() {
            return;
        }
        let keys: Vec<String> = hashes.iter().map(|h| self.hash_key(h)).collect();
        if let Err(err) = self.client.del::<i64, _>(keys).await {
            self.failed(&err);
        }
    }
}
