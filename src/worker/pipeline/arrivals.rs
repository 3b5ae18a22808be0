//! The deliveries of each session not yet past their first slot, in the order they
//! arrived. Deliveries are processed concurrently (and tasks need not start in the order
//! they were spawned), so without this a command that arrived later could take its
//! session's free slot before one that arrived first: only the earliest waiting
//! delivery of a session may take a slot at once; the others wait a moment for the
//! earlier ones to decide, or else in the database, in their order of arrival.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

type SessionKey = (String, String);

#[derive(Default)]
pub(crate) struct Arrivals {
    waiting: Mutex<HashMap<SessionKey, BTreeSet<u64>>>,
    next: AtomicU64,
    /// Woken whenever an arrival leaves.
    left: Notify,
}

/// One delivery's place among its session's arrivals; leaves it when dropped.
pub(crate) struct Arrival {
    arrivals: Arc<Arrivals>,
    key: SessionKey,
    seq: u64,
}

impl Arrivals {
    /// Registers a delivery for `backend`/`session`, behind those registered before it.
    pub(crate) fn register(self: &Arc<Self>, backend: &str, session: &str) -> Arrival {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let key = (backend.to_owned(), session.to_owned());
        self.lock().entry(key.clone()).or_default().insert(seq);
        Arrival {
            arrivals: self.clone(),
            key,
            seq,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionKey, BTreeSet<u64>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Arrival {
    /// Whether no delivery of the session that arrived earlier still waits.
    pub(crate) fn is_first(&self) -> bool {
        let waiting = self.arrivals.lock();
        waiting
            .get(&self.key)
            .and_then(|s| s.first())
            .is_none_or(|first| *first == self.seq)
    }

    /// Waits up to `patience` for the deliveries that arrived before this one to decide
    /// (usually a moment: they run concurrently); whether it is first then.
    pub(crate) async fn wait_first(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = self.arrivals.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if self.is_first() {
                return true;
            }
            tokio::select! {
                _ = left => {}
                _ = tokio::time::sleep_until(deadline) => return self.is_first(),
            }
        }
    }

    /// Leaves the session's arrivals (its first slot is decided); idempotent.
    pub(crate) fn leave(&self) {
        let mut waiting = self.arrivals.lock();
        if let Some(set) = waiting.get_mut(&self.key) {
            let removed = set.remove(&self.seq);
            if set.is_empty() {
                waiting.remove(&self.key);
            }
            if removed {
                self.arrivals.left.notify_waiters();
            }
        }
    }
}

impl Drop for Arrival {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_later_arrival_waits_for_the_earlier_ones_to_decide() {
        let arrivals = Arc::new(Arrivals::default());
        let a = arrivals.register("b", "s");
        let b = arrivals.register("b", "s");
        let patience = Duration::from_millis(100);
        assert!(!b.wait_first(patience).await, "a has not decided");
        let waiting = tokio::spawn(async move { b.wait_first(patience).await });
        tokio::task::yield_now().await;
        a.leave();
        assert!(waiting.await.unwrap());
    }

    #[test]
    fn only_the_earliest_waiting_arrival_of_a_session_is_first() {
        let arrivals = Arc::new(Arrivals::default());
        let a = arrivals.register("b", "s");
        let b = arrivals.register("b", "s");
        let other = arrivals.register("b", "t");
        assert!(a.is_first() && !b.is_first() && other.is_first());
        a.leave();
        assert!(b.is_first());
        drop(b);
        drop(a);
        drop(other);
        assert!(arrivals.lock().is_empty());
    }
}
