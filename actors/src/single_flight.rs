//! [`SingleFlight`]: identical concurrent requests share one execution.
//!
//! The first caller for a key starts the work in a task of its own; callers arriving while
//! it runs wait for the same result; once it has finished, the key is forgotten, so the
//! next caller starts afresh. Nothing is cached. Used for `/auth/refresh` (contract 3.3:
//! two tabs refreshing at once must not trip the replay defence) and for fetches that many
//! requests may need at once (the JWKS, an introspection).
//!
//! The work runs detached from its callers: if every caller goes away, it still completes
//! (a refresh .NET has performed must not be abandoned half-way), and the key is forgotten
//! when it does.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use futures::future::{BoxFuture, FutureExt, Shared};

type Flight<V> = Shared<BoxFuture<'static, Option<V>>>;

/// The flights by key, each with the id of the call that started it.
type Registry<K, V> = Arc<Mutex<HashMap<K, (u64, Flight<V>)>>>;

/// In-flight work by key. Cloning shares the same set of flights.
pub struct SingleFlight<K, V> {
    flights: Registry<K, V>,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl<K, V> Clone for SingleFlight<K, V> {
    fn clone(&self) -> Self {
        Self {
            flights: Arc::clone(&self.flights),
            next_id: Arc::clone(&self.next_id),
        }
    }
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Arc::default(),
            next_id: Arc::default(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Joins the flight for `key`, or starts one with `work()`. Every caller of one flight
    /// gets a clone of its result; `None` if the work panicked.
    pub async fn run<F, Fut>(&self, key: K, work: F) -> Option<V>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(PoisonError::into_inner);
            match flights.get(&key) {
                Some((_, flight)) => flight.clone(),
                None => {
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let fut = work();
                    let registry = Arc::clone(&self.flights);
                    let done_key = key.clone();
                    // The task forgets its key before its result is seen, so that a caller
                    // arriving after completion starts a new flight. It cannot forget the
                    // key before it was registered: registering holds the lock it needs.
                    // A guard, so that a panicking flight is forgotten too.
                    let task = tokio::spawn(async move {
                        let forget = Forget {
                            registry,
                            key: Some(done_key),
                            id,
                        };
                        let value = fut.await;
                        drop(forget);
                        value
                    });
                    let flight: Flight<V> = task.map(Result::ok).boxed().shared();
                    flights.insert(key, (id, flight.clone()));
                    flight
                }
            }
        };
        flight.await
    }

    /// How many flights are in the air (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Removes its flight from the registry when dropped (completion or panic).
struct Forget<K: Hash + Eq, V> {
    registry: Registry<K, V>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, V> Drop for Forget<K, V> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut flights = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        // Only this flight's own entry: a newer flight for the key is not ours to remove.
        if flights
            .get(&key)
            .is_some_and(|(owner, _)| *owner == self.id)
        {
            flights.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_execution() {
        let flights: SingleFlight<&'static str, u32> = SingleFlight::new();
        let runs = Arc::new(AtomicU32::new(0));
        let mut waiters = Vec::new();
        for _ in 0..10 {
            let (flights, runs) = (flights.clone(), Arc::clone(&runs));
            waiters.push(tokio::spawn(async move {
                flights
                    .run("k", || async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        runs.fetch_add(1, Ordering::SeqCst) + 41
                    })
                    .await
            }));
        }
        for w in waiters {
            assert_eq!(w.await.unwrap(), Some(41));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "nothing is kept after completion");
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_after_completion_starts_afresh_and_keys_are_separate() {
        let flights: SingleFlight<u8, u32> = SingleFlight::new();
        let runs = Arc::new(AtomicU32::new(0));
        for expected in 1..=2 {
            let runs = Arc::clone(&runs);
            let v = flights
                .run(1, || async move { runs.fetch_add(1, Ordering::SeqCst) + 1 })
                .await;
            assert_eq!(v, Some(expected));
        }
        let other = flights.run(2, || async { 7 }).await;
        assert_eq!(other, Some(7));
    }

    #[tokio::test(start_paused = true)]
    async fn the_work_completes_when_every_caller_left() {
        let flights: SingleFlight<u8, ()> = SingleFlight::new();
        let done = Arc::new(AtomicU32::new(0));
        let d = Arc::clone(&done);
        let waiter = {
            let flights = flights.clone();
            tokio::spawn(async move {
                flights
                    .run(1, || async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        d.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        waiter.abort();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_panicking_flight_answers_none() {
        let flights: SingleFlight<u8, u8> = SingleFlight::new();
        let v = flights.run(1, || async { panic!("boom") }).await;
        assert_eq!(v, None);
        assert_eq!(flights.in_flight(), 0);
    }
}
