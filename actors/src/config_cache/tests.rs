//! The actor end to end with a fake .NET and an in-memory store, on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ractor::Actor;
use serde_json::{json, Value};

use super::*;

const TTL: Duration = Duration::from_secs(30);
const MAX_STALE: Duration = Duration::from_secs(300);
const FETCH_DELAY: Duration = Duration::from_millis(100);

/// A .NET double: answers `answer` after `delay`, counting calls.
struct FakeSource {
    calls: AtomicUsize,
    behaviour: Mutex<(Result<Value, FetchError>, Duration)>,
}

impl FakeSource {
    fn new(config: Value) -> Arc<Self> {
        Arc::new(FakeSource {
            calls: AtomicUsize::new(0),
            behaviour: Mutex::new((Ok(config), FETCH_DELAY)),
        })
    }

    fn down() -> Arc<Self> {
        let source = Self::new(Value::Null);
        source.fail(FetchError::Unavailable { retry_after: None });
        source
    }

    fn serve(&self, config: Value) {
        self.behaviour.lock().unwrap().0 = Ok(config);
    }

    fn fail(&self, error: FetchError) {
        self.behaviour.lock().unwrap().0 = Err(error);
    }

    fn delay(&self, delay: Duration) {
        self.behaviour.lock().unwrap().1 = delay;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl ConfigSource for FakeSource {
    async fn fetch(&self) -> Result<Value, FetchError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (answer, delay) = self.behaviour.lock().unwrap().clone();
        tokio::time::sleep(delay).await;
        answer
    }
}

/// The durable store as a mutex.
#[derive(Default)]
struct MemoryStore {
    row: Mutex<Option<Snapshot>>,
    saves: AtomicUsize,
}

impl MemoryStore {
    fn holding(body: &Value, age: Duration) -> Arc<Self> {
        let store = Self::default();
        *store.row.lock().unwrap() = Some(Snapshot {
            body: body.to_string(),
            fetched_at_ms: unix_millis_now() - i64::try_from(age.as_millis()).unwrap(),
        });
        Arc::new(store)
    }

    fn body(&self) -> Option<Value> {
        let row = self.row.lock().unwrap();
        row.as_ref().map(|s| serde_json::from_str(&s.body).unwrap())
    }
}

#[async_trait::async_trait]
impl SnapshotStore for MemoryStore {
    async fn load(&self) -> Result<Option<Snapshot>, SnapshotError> {
        Ok(self.row.lock().unwrap().clone())
    }

    async fn save(&self, snapshot: &Snapshot) -> Result<(), SnapshotError> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        *self.row.lock().unwrap() = Some(snapshot.clone());
        Ok(())
    }
}

fn config(version: u64) -> Value {
    json!({
        "policy": {"enforced": {}},
        "featureFlags": {"version": version},
        "notificationDefaults": {"email": true},
    })
}

async fn start(source: Arc<FakeSource>, store: Arc<MemoryStore>) -> ConfigCacheHandle {
    let args = ConfigCacheArgs {
        source,
        store,
        freshness: Freshness {
            ttl: TTL,
            max_stale: MAX_STALE,
        },
        fetch_timeout: Duration::from_secs(10),
    };
    let (actor, _join) = Actor::spawn(None, ConfigCache, args.clone())
        .await
        .expect("the cache starts");
    let slot = Slot::new();
    slot.set(actor);
    ConfigCacheHandle::new(slot, &args)
}

fn version(answer: &ConfigAnswer) -> u64 {
    answer.document.body()["featureFlags"]["version"]
        .as_u64()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_hundred_cold_requests_make_one_fetch() {
    let source = FakeSource::new(config(1));
    let cache = start(source.clone(), Arc::default()).await;
    let answers = futures::future::join_all((0..100).map(|_| cache.get())).await;
    assert_eq!(source.calls(), 1);
    for answer in answers {
        let answer = answer.unwrap();
        assert_eq!(version(&answer), 1);
        assert_eq!(answer.result, CacheResult::Miss);
        assert!(!answer.stale);
    }
    let again = cache.get().await.unwrap();
    assert_eq!(again.result, CacheResult::Hit);
    assert_eq!(source.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_after_the_ttl_in_the_background() {
    let source = FakeSource::new(config(1));
    let cache = start(source.clone(), Arc::default()).await;
    assert_eq!(version(&cache.get().await.unwrap()), 1);
    source.serve(config(2));

    tokio::time::sleep(TTL - Duration::from_secs(1)).await;
    assert_eq!(cache.get().await.unwrap().result, CacheResult::Hit);
    assert_eq!(source.calls(), 1);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = futures::future::join_all((0..10).map(|_| cache.get())).await;
    for answer in during {
        let answer = answer.unwrap();
        assert_eq!(
            version(&answer),
            1,
            "the old copy is served while refreshing"
        );
        assert_eq!(answer.result, CacheResult::Refresh);
        assert!(!answer.stale);
    }
    tokio::time::sleep(FETCH_DELAY * 2).await;
    assert_eq!(source.calls(), 2, "one refresh for all of them");
    let after = cache.get().await.unwrap();
    assert_eq!(version(&after), 2);
    assert_eq!(after.result, CacheResult::Hit);
}

#[tokio::test(start_paused = true)]
async fn serves_stale_while_dotnet_is_down_up_to_the_limit() {
    let source = FakeSource::new(config(1));
    let cache = start(source.clone(), Arc::default()).await;
    cache.get().await.unwrap();
    source.fail(FetchError::Unavailable { retry_after: None });

    tokio::time::sleep(TTL).await;
    // The first request after the TTL is a revalidation; once it has failed, stale.
    cache.get().await.unwrap();
    tokio::time::sleep(FETCH_DELAY * 2).await;
    let stale = cache.get().await.unwrap();
    assert!(stale.stale);
    assert_eq!(stale.result, CacheResult::Stale);
    assert_eq!(version(&stale), 1);

    tokio::time::sleep(MAX_STALE - FETCH_DELAY * 4).await;
    assert!(cache.get().await.unwrap().stale);
    tokio::time::sleep(FETCH_DELAY * 4).await;
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err, ConfigError::Unavailable { .. }), "{err:?}");

    // .NET back: fresh again after the retry delay.
    source.serve(config(2));
    tokio::time::sleep(state::DEFAULT_RETRY_DELAY).await;
    let back = cache.get().await.unwrap();
    assert_eq!(version(&back), 2);
    assert!(!back.stale);
}

#[tokio::test(start_paused = true)]
async fn retries_are_spaced_while_dotnet_is_down() {
    let source = FakeSource::new(config(1));
    let cache = start(source.clone(), Arc::default()).await;
    cache.get().await.unwrap();
    source.fail(FetchError::Unavailable {
        retry_after: Some(Duration::from_secs(5)),
    });
    tokio::time::sleep(TTL).await;
    for _ in 0..100 {
        cache.get().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // 10 s of requests: the refresh at the TTL, then one attempt 5 s after it failed (the
    // next would be due 5 s after that one failed, just past the end).
    assert_eq!(source.calls(), 1 + 2);
}

#[tokio::test(start_paused = true)]
async fn no_copy_ever_is_unavailable_with_a_retry_after() {
    let source = FakeSource::down();
    let cache = start(source.clone(), Arc::default()).await;
    let err = cache.get().await.unwrap_err();
    let ConfigError::Unavailable { retry_after } = err else {
        panic!("{err:?}");
    };
    assert!(retry_after > Duration::ZERO && retry_after <= state::DEFAULT_RETRY_DELAY);
    // Within the retry delay: answered at once, no new fetch.
    let calls = source.calls();
    assert!(cache.get().await.is_err());
    assert_eq!(source.calls(), calls);
}

#[tokio::test(start_paused = true)]
async fn an_answer_that_is_not_a_config_is_a_bad_upstream_and_never_replaces_a_good_one() {
    let source = FakeSource::new(json!({"policy": {}}));
    let cache = start(source.clone(), Arc::default()).await;
    assert_eq!(cache.get().await.unwrap_err(), ConfigError::BadUpstream);

    source.serve(config(1));
    tokio::time::sleep(state::DEFAULT_RETRY_DELAY).await;
    assert_eq!(version(&cache.get().await.unwrap()), 1);
    source.serve(json!(["not", "a", "config"]));
    tokio::time::sleep(TTL).await;
    cache.get().await.unwrap();
    tokio::time::sleep(FETCH_DELAY * 2).await;
    let answer = cache.get().await.unwrap();
    assert_eq!(version(&answer), 1);
    assert!(answer.stale);
}

#[tokio::test(start_paused = true)]
async fn a_hung_fetch_is_cut_by_the_backstop() {
    let source = FakeSource::new(config(1));
    source.delay(Duration::from_secs(3600));
    let cache = start(source.clone(), Arc::default()).await;
    let err = cache.get().await.unwrap_err();
    assert!(matches!(err, ConfigError::Unavailable { .. }));
    source.delay(FETCH_DELAY);
    tokio::time::sleep(state::DEFAULT_RETRY_DELAY).await;
    assert_eq!(version(&cache.get().await.unwrap()), 1);
}

#[tokio::test(start_paused = true)]
async fn every_good_copy_is_kept_in_the_store() {
    let source = FakeSource::new(config(1));
    let store = Arc::new(MemoryStore::default());
    let cache = start(source.clone(), store.clone()).await;
    cache.get().await.unwrap();
    assert_eq!(store.body(), Some(config(1)), "kept before it is answered");
    source.serve(config(2));
    tokio::time::sleep(TTL).await;
    cache.get().await.unwrap();
    tokio::time::sleep(FETCH_DELAY * 2).await;
    assert_eq!(store.body(), Some(config(2)));
    assert_eq!(store.saves.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_restart_during_an_outage_serves_the_stored_copy_as_stale() {
    let store = MemoryStore::holding(&config(7), Duration::from_secs(60));
    let source = FakeSource::down();
    let cache = start(source.clone(), store.clone()).await;
    let answer = cache.get().await.unwrap();
    assert_eq!(version(&answer), 7);
    assert!(answer.stale);
    assert_eq!(answer.result, CacheResult::Stale);

    // .NET comes back: the next attempt (due 1 s after the first one failed) confirms a
    // fresh copy.
    source.serve(config(8));
    tokio::time::sleep(state::DEFAULT_RETRY_DELAY + FETCH_DELAY).await;
    cache.get().await.unwrap();
    tokio::time::sleep(FETCH_DELAY * 2).await;
    let answer = cache.get().await.unwrap();
    assert_eq!(version(&answer), 8);
    assert!(!answer.stale);
}

#[tokio::test(start_paused = true)]
async fn a_stored_copy_too_old_to_serve_is_not_served() {
    let store = MemoryStore::holding(&config(7), TTL + MAX_STALE + Duration::from_secs(1));
    let cache = start(FakeSource::down(), store).await;
    assert!(matches!(
        cache.get().await,
        Err(ConfigError::Unavailable { .. })
    ));
}

#[tokio::test(start_paused = true)]
async fn a_stored_copy_is_confirmed_by_the_first_request() {
    let store = MemoryStore::holding(&config(7), Duration::from_secs(1));
    let source = FakeSource::new(config(8));
    let cache = start(source.clone(), store.clone()).await;
    tokio::time::sleep(FETCH_DELAY * 2).await;
    assert_eq!(source.calls(), 0, "nothing is fetched before it is needed");
    let first = cache.get().await.unwrap();
    assert_eq!(version(&first), 7);
    assert!(first.stale);
    tokio::time::sleep(FETCH_DELAY * 2).await;
    let answer = cache.get().await.unwrap();
    assert_eq!(version(&answer), 8);
    assert!(!answer.stale);
    assert_eq!(source.calls(), 1);
    assert_eq!(store.body(), Some(config(8)));
}

#[tokio::test(start_paused = true)]
async fn an_unreadable_stored_copy_is_ignored() {
    let store = Arc::new(MemoryStore::default());
    *store.row.lock().unwrap() = Some(Snapshot {
        body: "{not json".into(),
        fetched_at_ms: unix_millis_now(),
    });
    let source = FakeSource::new(config(1));
    let cache = start(source, store).await;
    assert_eq!(version(&cache.get().await.unwrap()), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stopped_cache_answers_unavailable() {
    let source = FakeSource::new(config(1));
    let cache = start(source, Arc::default()).await;
    cache.slot.get().unwrap().stop(None);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(matches!(
        cache.get().await,
        Err(ConfigError::Unavailable { .. })
    ));
}
