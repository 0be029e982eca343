//! The cache's decisions as a pure state machine: given the time and what it holds, what to
//! answer and whether to start a fetch. The actor only carries these decisions out, so every
//! rule here is tested with explicit instants, no actor and no network.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::document::ConfigDocument;
use super::source::FetchError;
use super::{CacheResult, ConfigAnswer, ConfigError};

/// After a failed fetch, the cache waits this long before asking .NET again (less when the
/// TTL is shorter, longer when .NET or the breaker says so, never longer than the TTL).
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The cache's timing rules (contract section 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// `CONFIG_TTL_SECONDS`: a copy younger than this is served without asking .NET.
    pub ttl: Duration,
    /// `CONFIG_MAX_STALE_SECONDS`: how long past its TTL a copy may still be served while .NET
    /// fails (as HTTP's `max-stale` and RFC 5861's `stale-if-error` count it).
    pub max_stale: Duration,
}

/// The copy the cache holds.
#[derive(Debug, Clone)]
struct Entry {
    document: Arc<ConfigDocument>,
    /// When this incarnation received it (from .NET or from the store).
    received: Instant,
    /// How old it already was then: zero for a fetch, the time since its original fetch
    /// (by the wall clock) for a copy loaded from the store.
    age_at_receipt: Duration,
}

impl Entry {
    fn age(&self, now: Instant) -> Duration {
        self.age_at_receipt + now.saturating_duration_since(self.received)
    }
}

/// The last failed fetch, forgotten at the next success.
#[derive(Debug, Clone)]
struct Failure {
    error: FetchError,
    /// No new fetch is started before this (unless one is needed and none has ever run).
    retry_at: Instant,
}

/// What to do with one request.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Answer now. `start_fetch`: also start a background refresh.
    Serve {
        answer: ConfigAnswer,
        start_fetch: bool,
    },
    /// No copy may be served: the request waits for the fetch (started now if
    /// `start_fetch`, else already running).
    Wait { start_fetch: bool },
    /// No copy may be served and .NET failed a moment ago: answer the error now.
    Fail(ConfigError),
}

/// Everything the cache knows.
#[derive(Debug)]
pub struct CacheState {
    freshness: Freshness,
    entry: Option<Entry>,
    /// The entry was fetched from .NET by this incarnation, not only loaded from the store.
    confirmed: bool,
    failure: Option<Failure>,
    /// A fetch is running (at most one: single flight).
    fetching: bool,
}

impl CacheState {
    /// An empty cache.
    pub fn new(freshness: Freshness) -> Self {
        CacheState {
            freshness,
            entry: None,
            confirmed: false,
            failure: None,
            fetching: false,
        }
    }

    /// A cache that starts from the copy kept in the durable store, `age` old by the wall
    /// clock. It is served as stale until a fetch of this incarnation succeeds, and only
    /// while `age` stays within TTL + max stale: the bound counts from the original fetch,
    /// not from the restart, so every replica stops serving a copy at the same moment.
    pub fn with_stored(
        freshness: Freshness,
        document: Arc<ConfigDocument>,
        age: Duration,
        now: Instant,
    ) -> Self {
        CacheState {
            entry: Some(Entry {
                document,
                received: now,
                age_at_receipt: age,
            }),
            ..Self::new(freshness)
        }
    }

    /// Whether a fetch is running.
    pub fn is_fetching(&self) -> bool {
        self.fetching
    }

    /// Whether the last fetch failed (and none has succeeded since).
    pub fn is_failing(&self) -> bool {
        self.failure.is_some()
    }

    /// One request for the config at `now`.
    pub fn on_get(&mut self, now: Instant) -> Decision {
        self.drop_unservable(now);
        let Some(entry) = &self.entry else {
            if self.fetching {
                return Decision::Wait { start_fetch: false };
            }
            if let Some(failure) = self.failure.as_ref().filter(|f| now < f.retry_at) {
                return Decision::Fail(error_for(&failure.error, failure.retry_at - now));
            }
            return Decision::Wait {
                start_fetch: self.begin_fetch(),
            };
        };
        let document = Arc::clone(&entry.document);
        if self.confirmed && entry.age(now) < self.freshness.ttl {
            return Decision::Serve {
                answer: answer(document, false, CacheResult::Hit),
                start_fetch: false,
            };
        }
        // Past its TTL, or not yet confirmed by this incarnation: serve it and refresh in the
        // background. It is stale (`X-Config-Stale`) when .NET failed since it was fetched, or
        // when it only comes from the store; otherwise this is an ordinary revalidation.
        let stale = !self.confirmed || self.failure.is_some();
        let may_retry = self.failure.as_ref().is_none_or(|f| now >= f.retry_at);
        let start_fetch = may_retry && self.begin_fetch();
        let result = if stale {
            CacheResult::Stale
        } else {
            CacheResult::Refresh
        };
        Decision::Serve {
            answer: answer(document, stale, result),
            start_fetch,
        }
    }

    /// The running fetch finished at `now`. Returns the answer for the requests that waited
    /// for it.
    pub fn on_fetched(
        &mut self,
        now: Instant,
        result: Result<Arc<ConfigDocument>, FetchError>,
    ) -> Result<ConfigAnswer, ConfigError> {
        self.fetching = false;
        match result {
            Ok(document) => {
                self.entry = Some(Entry {
                    document: Arc::clone(&document),
                    received: now,
                    age_at_receipt: Duration::ZERO,
                });
                self.confirmed = true;
                self.failure = None;
                Ok(answer(document, false, CacheResult::Miss))
            }
            Err(error) => {
                let hint = error.retry_after().unwrap_or(DEFAULT_RETRY_DELAY);
                let delay = hint.min(self.freshness.ttl);
                self.failure = Some(Failure {
                    error: error.clone(),
                    retry_at: now + delay,
                });
                self.drop_unservable(now);
                // Requests wait only while no copy can be served, so with waiters there is no
                // entry here; the `Some` arm only answers a background refresh nobody awaits.
                match &self.entry {
                    Some(entry) => Ok(answer(Arc::clone(&entry.document), true, CacheResult::Miss)),
                    None => Err(error_for(&error, delay)),
                }
            }
        }
    }

    /// Forgets a copy older than TTL + max stale: it may never be served again.
    fn drop_unservable(&mut self, now: Instant) {
        let limit = self.freshness.ttl + self.freshness.max_stale;
        if self.entry.as_ref().is_some_and(|e| e.age(now) > limit) {
            self.entry = None;
            self.confirmed = false;
        }
    }

    /// Marks a fetch as running; false when one already is.
    fn begin_fetch(&mut self) -> bool {
        if self.fetching {
            return false;
        }
        self.fetching = true;
        true
    }
}

fn answer(document: Arc<ConfigDocument>, stale: bool, result: CacheResult) -> ConfigAnswer {
    ConfigAnswer {
        document,
        stale,
        result,
    }
}

fn error_for(error: &FetchError, retry_after: Duration) -> ConfigError {
    match error {
        FetchError::Unavailable { .. } => ConfigError::Unavailable { retry_after },
        FetchError::Invalid(_) => ConfigError::BadUpstream,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TTL: Duration = Duration::from_secs(30);
    const MAX_STALE: Duration = Duration::from_secs(3600);

    fn freshness() -> Freshness {
        Freshness {
            ttl: TTL,
            max_stale: MAX_STALE,
        }
    }

    fn doc(version: u64) -> Arc<ConfigDocument> {
        let body =
            json!({"policy": {}, "featureFlags": {"v": version}, "notificationDefaults": {}});
        Arc::new(ConfigDocument::new(body, 0).unwrap())
    }

    fn down() -> FetchError {
        FetchError::Unavailable { retry_after: None }
    }

    fn served(decision: Decision) -> (ConfigAnswer, bool) {
        match decision {
            Decision::Serve {
                answer,
                start_fetch,
            } => (answer, start_fetch),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// A cache that fetched `doc(1)` at `t0`.
    fn warm(t0: Instant) -> CacheState {
        let mut cache = CacheState::new(freshness());
        assert!(matches!(
            cache.on_get(t0),
            Decision::Wait { start_fetch: true }
        ));
        cache.on_fetched(t0, Ok(doc(1))).unwrap();
        cache
    }

    #[test]
    fn cold_requests_share_one_fetch() {
        let t0 = Instant::now();
        let mut cache = CacheState::new(freshness());
        assert!(matches!(
            cache.on_get(t0),
            Decision::Wait { start_fetch: true }
        ));
        for _ in 0..99 {
            assert!(matches!(
                cache.on_get(t0),
                Decision::Wait { start_fetch: false }
            ));
        }
        let answer = cache.on_fetched(t0, Ok(doc(1))).unwrap();
        assert_eq!(answer.result, CacheResult::Miss);
        assert!(!answer.stale);
        assert!(!cache.is_fetching());
    }

    #[test]
    fn fresh_copy_is_a_hit_without_fetching() {
        let t0 = Instant::now();
        let mut cache = warm(t0);
        let (answer, fetch) = served(cache.on_get(t0 + TTL - Duration::from_millis(1)));
        assert_eq!(answer.result, CacheResult::Hit);
        assert!(!answer.stale && !fetch);
    }

    #[test]
    fn expired_copy_is_served_while_one_refresh_runs() {
        let t0 = Instant::now();
        let mut cache = warm(t0);
        let t1 = t0 + TTL;
        let (first, fetch) = served(cache.on_get(t1));
        assert_eq!(first.result, CacheResult::Refresh);
        assert!(!first.stale && fetch);
        let (second, fetch) = served(cache.on_get(t1));
        assert_eq!(second.result, CacheResult::Refresh);
        assert!(!fetch, "one refresh at a time");
        cache.on_fetched(t1, Ok(doc(2))).unwrap();
        let (after, _) = served(cache.on_get(t1));
        assert_eq!(after.result, CacheResult::Hit);
        assert_eq!(after.document, doc(2));
    }

    #[test]
    fn failed_refresh_serves_stale_and_retries_after_the_delay() {
        let t0 = Instant::now();
        let mut cache = warm(t0);
        let t1 = t0 + TTL;
        let (_, fetch) = served(cache.on_get(t1));
        assert!(fetch);
        cache.on_fetched(t1, Err(down())).unwrap();
        let (answer, fetch) = served(cache.on_get(t1 + Duration::from_millis(500)));
        assert_eq!(answer.result, CacheResult::Stale);
        assert!(answer.stale);
        assert!(!fetch, "no new attempt within the retry delay");
        let (answer, fetch) = served(cache.on_get(t1 + DEFAULT_RETRY_DELAY));
        assert!(answer.stale && fetch);
        cache
            .on_fetched(t1 + DEFAULT_RETRY_DELAY, Ok(doc(2)))
            .unwrap();
        let (answer, _) = served(cache.on_get(t1 + DEFAULT_RETRY_DELAY));
        assert!(!answer.stale);
        assert_eq!(answer.result, CacheResult::Hit);
    }

    #[test]
    fn retry_delay_follows_the_hint_but_never_exceeds_the_ttl() {
        let t0 = Instant::now();
        let mut cache = warm(t0);
        let t1 = t0 + TTL;
        served(cache.on_get(t1));
        let hint = FetchError::Unavailable {
            retry_after: Some(Duration::from_secs(10)),
        };
        cache.on_fetched(t1, Err(hint)).unwrap();
        assert!(!served(cache.on_get(t1 + Duration::from_secs(9))).1);
        assert!(served(cache.on_get(t1 + Duration::from_secs(10))).1);

        let mut cache = warm(t0);
        served(cache.on_get(t1));
        let long_hint = FetchError::Unavailable {
            retry_after: Some(Duration::from_secs(600)),
        };
        cache.on_fetched(t1, Err(long_hint)).unwrap();
        assert!(served(cache.on_get(t1 + TTL)).1);
    }

    #[test]
    fn stale_is_served_up_to_ttl_plus_max_stale_then_nothing() {
        let t0 = Instant::now();
        let mut cache = warm(t0);
        let t1 = t0 + TTL;
        served(cache.on_get(t1));
        cache.on_fetched(t1, Err(down())).unwrap();
        let last = t0 + TTL + MAX_STALE;
        let (answer, fetch) = served(cache.on_get(last));
        assert!(answer.stale && fetch);
        assert!(cache.on_fetched(last, Err(down())).unwrap().stale);
        let past = last + Duration::from_millis(1);
        match cache.on_get(past) {
            Decision::Fail(ConfigError::Unavailable { retry_after }) => {
                assert_eq!(retry_after, DEFAULT_RETRY_DELAY - Duration::from_millis(1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            cache.on_get(last + DEFAULT_RETRY_DELAY),
            Decision::Wait { start_fetch: true }
        ));
    }

    #[test]
    fn a_waiting_request_fails_with_the_retry_delay_when_the_fetch_fails() {
        let t0 = Instant::now();
        let mut cache = CacheState::new(freshness());
        assert!(matches!(
            cache.on_get(t0),
            Decision::Wait { start_fetch: true }
        ));
        let hint = FetchError::Unavailable {
            retry_after: Some(Duration::from_secs(5)),
        };
        assert_eq!(
            cache.on_fetched(t0, Err(hint)).unwrap_err(),
            ConfigError::Unavailable {
                retry_after: Duration::from_secs(5)
            }
        );
        assert!(matches!(
            cache.on_get(t0 + Duration::from_secs(2)),
            Decision::Fail(ConfigError::Unavailable { retry_after }) if retry_after == Duration::from_secs(3)
        ));
    }

    #[test]
    fn an_invalid_answer_without_a_copy_is_a_bad_upstream() {
        let t0 = Instant::now();
        let mut cache = CacheState::new(freshness());
        cache.on_get(t0);
        let err = cache
            .on_fetched(t0, Err(FetchError::Invalid("nope".into())))
            .unwrap_err();
        assert_eq!(err, ConfigError::BadUpstream);
        assert!(matches!(
            cache.on_get(t0),
            Decision::Fail(ConfigError::BadUpstream)
        ));
    }

    #[test]
    fn an_invalid_answer_with_a_copy_keeps_serving_it_stale() {
        let t0 = Instant::now();
        let mut cache = warm(t0);
        let t1 = t0 + TTL;
        served(cache.on_get(t1));
        cache
            .on_fetched(t1, Err(FetchError::Invalid("nope".into())))
            .unwrap();
        let (answer, _) = served(cache.on_get(t1));
        assert!(answer.stale);
        assert_eq!(answer.document, doc(1));
    }

    #[test]
    fn a_stored_copy_is_stale_until_confirmed() {
        let t0 = Instant::now();
        let mut cache = CacheState::with_stored(freshness(), doc(1), Duration::from_secs(1), t0);
        let (answer, fetch) = served(cache.on_get(t0));
        assert!(answer.stale, "not fetched by this incarnation");
        assert_eq!(answer.result, CacheResult::Stale);
        assert!(fetch, "young as it is, it is confirmed at once");
        let (again, fetch) = served(cache.on_get(t0));
        assert!(again.stale && !fetch);
        cache.on_fetched(t0, Ok(doc(2))).unwrap();
        let (answer, _) = served(cache.on_get(t0));
        assert!(!answer.stale);
        assert_eq!(answer.document, doc(2));
    }

    #[test]
    fn a_stored_copy_counts_its_age_from_the_original_fetch() {
        let t0 = Instant::now();
        let age = TTL + MAX_STALE - Duration::from_secs(10);
        let mut cache = CacheState::with_stored(freshness(), doc(1), age, t0);
        assert!(served(cache.on_get(t0)).1);
        cache.on_fetched(t0, Err(down())).unwrap();
        let (answer, _) = served(cache.on_get(t0 + Duration::from_secs(10)));
        assert!(answer.stale);
        cache
            .on_fetched(t0 + Duration::from_secs(10), Err(down()))
            .ok();
        assert!(!matches!(
            cache.on_get(t0 + Duration::from_secs(11)),
            Decision::Serve { .. }
        ));
    }

    #[test]
    fn a_stored_copy_past_the_window_is_never_served() {
        let t0 = Instant::now();
        let age = TTL + MAX_STALE + Duration::from_secs(1);
        let mut cache = CacheState::with_stored(freshness(), doc(1), age, t0);
        assert!(matches!(
            cache.on_get(t0),
            Decision::Wait { start_fetch: true }
        ));
        assert!(cache.on_fetched(t0, Err(down())).is_err());
    }

    mod properties {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Op {
            Get,
            /// The running fetch (if any) ends: a config, or a failure with this hint (ms).
            Complete(Option<u64>),
        }

        fn op() -> impl Strategy<Value = (u64, Op)> {
            let op = prop_oneof![
                3 => Just(Op::Get),
                1 => Just(Op::Complete(None)),
                1 => (0u64..40_000).prop_map(|hint| Op::Complete(Some(hint))),
            ];
            (0u64..20_000, op)
        }

        proptest! {
            /// Whatever happens: one fetch at a time; nothing older than TTL + max stale is
            /// served; a hit is younger than the TTL; an unflagged answer means the last
            /// fetch succeeded; a request waits only when nothing could be served.
            #[test]
            fn cache_invariants(ops in proptest::collection::vec(op(), 1..200)) {
                let freshness = Freshness {
                    ttl: Duration::from_secs(10),
                    max_stale: Duration::from_secs(30),
                };
                let limit = freshness.ttl + freshness.max_stale;
                let t0 = Instant::now();
                let mut now = t0;
                let mut cache = CacheState::new(freshness);
                let mut in_flight = false;
                let mut fetched_at: HashMap<String, Instant> = HashMap::new();
                let mut newest: Option<Instant> = None;
                let mut last_ok = true;
                let mut version = 0;
                for (advance, op) in ops {
                    now += Duration::from_millis(advance);
                    match op {
                        Op::Get => match cache.on_get(now) {
                            Decision::Serve { answer, start_fetch } => {
                                let at = fetched_at[answer.document.etag()];
                                let age = now - at;
                                prop_assert!(age <= limit, "served a copy {age:?} old");
                                if answer.result == CacheResult::Hit {
                                    prop_assert!(age < freshness.ttl);
                                }
                                if !answer.stale {
                                    prop_assert!(last_ok);
                                }
                                prop_assert!(!(start_fetch && in_flight), "second fetch");
                                in_flight |= start_fetch;
                            }
                            Decision::Wait { start_fetch } => {
                                prop_assert!(newest.is_none_or(|at| now - at > limit));
                                prop_assert!(!(start_fetch && in_flight), "second fetch");
                                prop_assert!(start_fetch || in_flight, "waits for nothing");
                                in_flight |= start_fetch;
                            }
                            Decision::Fail(_) => {
                                prop_assert!(newest.is_none_or(|at| now - at > limit));
                                prop_assert!(!last_ok);
                            }
                        },
                        Op::Complete(_) if !in_flight => {}
                        Op::Complete(None) => {
                            version += 1;
                            let body = serde_json::json!({
                                "policy": {}, "featureFlags": {"v": version},
                                "notificationDefaults": {}
                            });
                            let document = Arc::new(ConfigDocument::new(body, 0).unwrap());
                            fetched_at.insert(document.etag().to_owned(), now);
                            newest = Some(now);
                            cache.on_fetched(now, Ok(document)).unwrap();
                            in_flight = false;
                            last_ok = true;
                        }
                        Op::Complete(Some(hint)) => {
                            let error = FetchError::Unavailable {
                                retry_after: Some(Duration::from_millis(hint)),
                            };
                            let _ = cache.on_fetched(now, Err(error));
                            in_flight = false;
                            last_ok = false;
                        }
                    }
                    prop_assert_eq!(cache.is_fetching(), in_flight);
                }
            }
        }
    }
}
