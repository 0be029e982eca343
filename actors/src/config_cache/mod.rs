//! `ConfigCache`: the `/config` that .NET serves, cached with a TTL, refreshed by one request
//! at a time, served stale while .NET fails, and kept in the durable store (contract 7.1).
//!
//! # Semantics
//!
//! - **Fresh** (fetched by this incarnation less than `CONFIG_TTL_SECONDS` ago): answered
//!   from memory (`hit`).
//! - **Expired**: still answered at once, and one background refresh starts (`refresh`).
//!   Every request that arrives meanwhile is answered from memory too; there is never more
//!   than one fetch in flight (single flight).
//! - **.NET fails** (down, timeout, 5xx, open circuit, or an answer that is not a config):
//!   the last good copy is answered with `stale = true` (`X-Config-Stale: true`) for up to
//!   `CONFIG_MAX_STALE_SECONDS` past its TTL. The next attempt waits for .NET's or the
//!   breaker's `Retry-After` hint (1 s without one), never longer than the TTL.
//! - **No copy to serve** (cold, or the copy is past TTL + max stale): the request waits for
//!   the fetch, which every such request shares (`miss`). If that fetch fails, the answer is
//!   [`ConfigError::Unavailable`] with a `retry_after`, and until then later requests get
//!   the same error at once rather than another fetch.
//! - **Durable copy**: every good copy is written to `config_snapshot` (only over an older
//!   one) before it is answered, and loaded when the actor starts. A loaded copy counts its
//!   age from its original fetch (wall clock), so TTL + max stale bounds it exactly as it
//!   bounded the replica that fetched it; it is answered as stale until this incarnation's
//!   own fetch succeeds, since nobody has confirmed it (the first request starts that fetch).
//! - **Lazy**: nothing is fetched until a request needs the config, so an instance nobody
//!   asks puts no load on .NET and no calls in its breaker's window.
//!
//! The mailbox never waits on .NET or the store: a fetch runs in its own task, bounded by
//! `fetch_timeout`, and comes back as [`ConfigCacheMsg::Fetched`]. The decisions themselves
//! are the pure [`state::CacheState`], tested with explicit instants.
//!
//! Metrics are the HTTP layer's business: each answer says which [`CacheResult`] it is, so
//! `sidecar_config_cache_total{result}` counts `GET /config` answers only.

pub mod document;
pub mod snapshot;
pub mod source;
pub mod state;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use crate::supervisor::{CallError, ChildSpec, Slot};
pub use document::{ConfigDocument, REQUIRED_MEMBERS};
pub use snapshot::{DbSnapshotStore, Snapshot, SnapshotError, SnapshotStore, CONFIG_SNAPSHOT_NAME};
pub use source::{BridgeConfigSource, ConfigSource, FetchError};
pub use state::Freshness;
use state::{CacheState, Decision};

/// How long loading or saving the durable copy may take before the cache goes on without it.
pub const STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// How an answer was obtained (`result` label of `sidecar_config_cache_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CacheResult {
    /// A fresh copy from memory.
    Hit,
    /// An expired copy from memory while a refresh runs.
    Refresh,
    /// A copy .NET could not confirm (`X-Config-Stale: true`).
    Stale,
    /// No copy could be served: the request waited for .NET.
    Miss,
}

impl CacheResult {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Refresh => "refresh",
            CacheResult::Stale => "stale",
            CacheResult::Miss => "miss",
        }
    }
}

/// A config to answer with.
#[derive(Debug, Clone)]
pub struct ConfigAnswer {
    pub document: Arc<ConfigDocument>,
    /// .NET has not confirmed this copy: answer `X-Config-Stale: true`.
    pub stale: bool,
    pub result: CacheResult,
}

/// No config can be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// .NET is unavailable and no good copy is held (503 `upstream_unavailable`).
    #[error("no config: .NET is unavailable and no good copy is held")]
    Unavailable { retry_after: Duration },
    /// .NET answered something that is not a config and no good copy is held
    /// (502 `upstream_error`).
    #[error("no config: .NET answered something that is not a config")]
    BadUpstream,
}

type Reply = RpcReplyPort<Result<ConfigAnswer, ConfigError>>;

/// The messages of the config cache.
pub enum ConfigCacheMsg {
    /// The current config: answered at once from memory, or when the fetch it waits for ends.
    Get(Reply),
    /// The fetch this actor started has finished (sent by the fetch task, never by callers).
    Fetched(Result<Arc<ConfigDocument>, FetchError>),
}

/// What the cache is started with (and restarted from).
#[derive(Clone)]
pub struct ConfigCacheArgs {
    /// Where configs come from (the .NET bridge).
    pub source: Arc<dyn ConfigSource>,
    /// Where the last good copy is kept (the durable store).
    pub store: Arc<dyn SnapshotStore>,
    pub freshness: Freshness,
    /// Backstop on one fetch, beyond the bridge's own timeout and retries.
    pub fetch_timeout: Duration,
}

/// The supervised child `config_cache` and the handle to it.
pub fn child_spec(args: ConfigCacheArgs) -> (ChildSpec, ConfigCacheHandle) {
    let slot = Slot::new();
    let handle = ConfigCacheHandle::new(slot.clone(), &args);
    (
        ChildSpec::actor("config_cache", ConfigCache, args, slot),
        handle,
    )
}

/// The config cache actor (stateless: everything lives in [`ConfigCacheState`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigCache;

/// The actor's state.
pub struct ConfigCacheState {
    cache: CacheState,
    /// Requests waiting for the running fetch (only while no copy can be served).
    waiters: Vec<Reply>,
    args: ConfigCacheArgs,
}

impl Actor for ConfigCache {
    type Msg = ConfigCacheMsg;
    type State = ConfigCacheState;
    type Arguments = ConfigCacheArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ConfigCacheArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let cache = match load_stored(args.store.as_ref()).await {
            Some((document, age)) => {
                tracing::info!(
                    etag = document.etag(),
                    age_secs = age.as_secs_f64(),
                    "config cache: starting from the copy in the durable store"
                );
                CacheState::with_stored(args.freshness, document, age, Instant::now())
            }
            None => CacheState::new(args.freshness),
        };
        Ok(ConfigCacheState {
            cache,
            waiters: Vec::new(),
            args,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ConfigCacheMsg::Get(reply) => match state.cache.on_get(Instant::now()) {
                Decision::Serve {
                    answer,
                    start_fetch,
                } => {
                    let _ = reply.send(Ok(answer));
                    if start_fetch {
                        spawn_fetch(myself, &state.args);
                    }
                }
                Decision::Wait { start_fetch } => {
                    state.waiters.push(reply);
                    if start_fetch {
                        spawn_fetch(myself, &state.args);
                    }
                }
                Decision::Fail(error) => {
                    let _ = reply.send(Err(error));
                }
            },
            ConfigCacheMsg::Fetched(result) => {
                // Log transitions at warn/info and repeats at debug, so a long outage is a
                // few lines, not one per retry.
                let was_failing = state.cache.is_failing();
                match &result {
                    Ok(document) if was_failing => {
                        tracing::info!(etag = document.etag(), "config cache: .NET answers again")
                    }
                    Ok(document) => {
                        tracing::debug!(etag = document.etag(), "config cache: refreshed")
                    }
                    Err(error) if was_failing => {
                        tracing::debug!(%error, "config cache: fetch failed again")
                    }
                    Err(error) => tracing::warn!(%error, "config cache: fetch failed"),
                }
                let answer = state.cache.on_fetched(Instant::now(), result);
                for waiter in state.waiters.drain(..) {
                    // A waiter whose caller gave up is simply gone.
                    let _ = waiter.send(answer.clone());
                }
            }
        }
        Ok(())
    }
}

/// Fetches in a task of its own, keeps a good copy in the store, and reports back.
fn spawn_fetch(myself: ActorRef<ConfigCacheMsg>, args: &ConfigCacheArgs) {
    let source = Arc::clone(&args.source);
    let store = Arc::clone(&args.store);
    let timeout = args.fetch_timeout;
    tokio::spawn(async move {
        let result = match tokio::time::timeout(timeout, source.fetch()).await {
            Ok(Ok(body)) => ConfigDocument::new(body, unix_millis_now()).map(Arc::new),
            Ok(Err(error)) => Err(error),
            Err(_elapsed) => Err(FetchError::Unavailable { retry_after: None }),
        };
        if let Ok(document) = &result {
            save_stored(store.as_ref(), document).await;
        }
        // The actor may have stopped meanwhile; its successor fetches for itself.
        let _ = myself.cast(ConfigCacheMsg::Fetched(result));
    });
}

/// The stored copy and its age, when there is a usable one. A store that fails or holds
/// something unreadable is logged and treated as empty: the cache then starts cold.
async fn load_stored(store: &dyn SnapshotStore) -> Option<(Arc<ConfigDocument>, Duration)> {
    let snapshot = match tokio::time::timeout(STORE_TIMEOUT, store.load()).await {
        Ok(Ok(snapshot)) => snapshot?,
        Ok(Err(error)) => {
            tracing::warn!(%error, "config cache: cannot load the stored copy; starting cold");
            return None;
        }
        Err(_) => {
            tracing::warn!("config cache: loading the stored copy timed out; starting cold");
            return None;
        }
    };
    let document = serde_json::from_str(&snapshot.body)
        .map_err(|e| FetchError::Invalid(e.to_string()))
        .and_then(|body| ConfigDocument::new(body, snapshot.fetched_at_ms));
    match document {
        Ok(document) => {
            // A copy stamped in the future (clock skew between replicas) counts as new.
            let age_ms = (unix_millis_now() - snapshot.fetched_at_ms).max(0);
            let age = Duration::from_millis(u64::try_from(age_ms).unwrap_or(0));
            Some((Arc::new(document), age))
        }
        Err(error) => {
            tracing::warn!(%error, "config cache: the stored copy is unusable; starting cold");
            None
        }
    }
}

/// Writes a good copy to the store; a failure is logged and the copy is served anyway.
async fn save_stored(store: &dyn SnapshotStore, document: &ConfigDocument) {
    let snapshot = Snapshot {
        body: document.body().to_string(),
        fetched_at_ms: document.fetched_at_ms(),
    };
    match tokio::time::timeout(STORE_TIMEOUT, store.save(&snapshot)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, "config cache: cannot keep the copy in the store"),
        Err(_) => tracing::warn!("config cache: keeping the copy in the store timed out"),
    }
}

fn unix_millis_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The typed handle the HTTP layer holds; it survives the actor's restarts.
#[derive(Clone, Debug)]
pub struct ConfigCacheHandle {
    slot: Slot<ConfigCacheMsg>,
    /// Longer than a fetch may take, so that a waiting request gets the fetch's outcome.
    call_timeout: Duration,
}

impl ConfigCacheHandle {
    /// A handle on the actor supervised into `slot`, started with `args`.
    pub fn new(slot: Slot<ConfigCacheMsg>, args: &ConfigCacheArgs) -> Self {
        ConfigCacheHandle {
            slot,
            call_timeout: args.fetch_timeout + STORE_TIMEOUT + Duration::from_secs(1),
        }
    }

    /// The config to answer with, or why there is none.
    pub async fn get(&self) -> Result<ConfigAnswer, ConfigError> {
        match self.slot.call(ConfigCacheMsg::Get, self.call_timeout).await {
            Ok(answer) => answer,
            // Restarting, or stuck past every bound: nothing to serve right now.
            Err(CallError::Unavailable | CallError::Timeout | CallError::Failed) => {
                Err(ConfigError::Unavailable {
                    retry_after: Duration::from_secs(1),
                })
            }
        }
    }
}
