//! The in-memory `eventIdAndHash` window, used when Redis is not configured or cannot
//! answer: which id accepted a given hash recently. In that mode the shards are chosen by
//! hash, so within one replica every claim on a hash meets in one shard's window.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

#[derive(Debug)]
pub struct HashWindow {
    window: Duration,
    holders: HashMap<String, (Uuid, Instant)>,
    /// When expired entries were last swept.
    swept_at: Instant,
}

impl HashWindow {
    pub fn new(window: Duration, now: Instant) -> Self {
        Self {
            window,
            holders: HashMap::new(),
            swept_at: now,
        }
    }

    /// Claims `hash` for `id` at `now`: `None` when it is `id`'s now, else the holder.
    pub fn claim(&mut self, hash: &str, id: Uuid, now: Instant) -> Option<Uuid> {
        if now.duration_since(self.swept_at) >= self.window {
            let window = self.window;
            self.holders
                .retain(|_, (_, at)| now.duration_since(*at) < window);
            self.swept_at = now;
        }
        match self.holders.get(hash) {
            Some((holder, at)) if *holder != id && now.duration_since(*at) < self.window => {
                Some(*holder)
            }
            Some((holder, _)) if *holder == id => None,
            _ => {
                self.holders.insert(hash.to_owned(), (id, now));
                None
            }
        }
    }

    /// Gives a claim back (its event was not stored).
    pub fn release(&mut self, hash: &str, id: Uuid) {
        if self
            .holders
            .get(hash)
            .is_some_and(|(holder, _)| *holder == id)
        {
            self.holders.remove(hash);
        }
    }

    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_held_for_the_window() {
        let t0 = Instant::now();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let mut w = HashWindow::new(Duration::from_secs(60), t0);
        assert_eq!(w.claim("h", a, t0), None);
        assert_eq!(w.claim("h", a, t0 + Duration::from_secs(1)), None);
        assert_eq!(w.claim("h", b, t0 + Duration::from_secs(59)), Some(a));
        assert_eq!(w.claim("h", b, t0 + Duration::from_secs(60)), None);
        assert_eq!(w.claim("h", a, t0 + Duration::from_secs(61)), Some(b));
        w.release("h", b);
        assert_eq!(w.claim("h", a, t0 + Duration::from_secs(62)), None);
    }

    #[test]
    fn expired_entries_are_swept() {
        let t0 = Instant::now();
        let mut w = HashWindow::new(Duration::from_secs(1), t0);
        for i in 0..10 {
            w.claim(&i.to_string(), Uuid::new_v4(), t0);
        }
        w.claim("x", Uuid::new_v4(), t0 + Duration::from_secs(2));
        assert_eq!(w.len(), 1);
    }
}
