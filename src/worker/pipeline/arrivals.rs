//! The deliveries of each session not yet past their first slot, in the order they
//! arrived. Deliveries are processed concurrently (and tasks need not start in the order
//! they were spawned), so without this a command that arrived later could take its
//! session's free slot before one that arrived first: only the earliest waiting
//! delivery of a session may take a slot at once. A later one waits a moment for the
//! earlier ones to decide; once each of them has handed its deferral to the database
//! queue, it follows them there at once (that queue commits in the order it is given,
//! so the session's deferrals reach the database in their order of arrival).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

type SessionKey = (String, String);
/// A session's waiting arrivals by sequence number: whether each one's deferral is
/// handed to the database queue.
type Waiting = HashMap<SessionKey, BTreeMap<u64, bool>>;

#[derive(Default)]
pub(crate) struct Arrivals {
    waiting: Mutex<Waiting>,
    next: AtomicU64,
    /// Woken whenever an arrival leaves or hands its deferral on.
    changed: Notify,
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
        self.lock()
            .entry(key.clone())
            .or_default()
            .insert(seq, false);
        Arrival {
            arrivals: self.clone(),
            key,
            seq,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where an arrival stands among its session's earlier ones.
#[derive(Debug, PartialEq, Eq)]
enum Place {
    /// None of them still waits.
    First,
    /// Each one that still waits has handed its deferral on.
    BehindDeferrals,
    /// Some are undecided.
    Undecided,
}

impl Arrival {
    fn place(&self) -> Place {
        let waiting = self.arrivals.lock();
        let Some(set) = waiting.get(&self.key) else {
            return Place::First;
        };
        let mut earlier = set.range(..self.seq).peekable();
        if earlier.peek().is_none() {
            Place::First
        } else if earlier.all(|(_, handed_on)| *handed_on) {
            Place::BehindDeferrals
        } else {
            Place::Undecided
        }
    }

    /// Whether no delivery of the session that arrived earlier still waits.
    #[cfg(test)]
    pub(crate) fn is_first(&self) -> bool {
        self.place() == Place::First
    }

    /// Waits up to `patience` for the deliveries that arrived before this one to decide
    /// (usually a moment: they run concurrently); whether it is first then. False at once
    /// when every earlier one still waiting is being deferred: this one goes behind them.
    pub(crate) async fn wait_first(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let changed = self.arrivals.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.place() {
                Place::First => return true,
                Place::BehindDeferrals => return false,
                Place::Undecided => {}
            }
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(deadline) => return self.place() == Place::First,
            }
        }
    }

    /// Records that its deferral is handed to the database queue (it still holds its
    /// place until that commits, so that no later arrival takes a slot before it).
    pub(crate) fn handed_on(&self) {
        let mut waiting = self.arrivals.lock();
        if let Some(flag) = waiting
            .get_mut(&self.key)
            .and_then(|set| set.get_mut(&self.seq))
            && !*flag
        {
            *flag = true;
            self.arrivals.changed.notify_waiters();
        }
    }

    /// Leaves the session's arrivals (its first slot is decided); idempotent.
    pub(crate) fn leave(&self) {
        let mut waiting = self.arrivals.lock();
        if let Some(set) = waiting.get_mut(&self.key) {
            let removed = set.remove(&self.seq).is_some();
            if set.is_empty() {
                waiting.remove(&self.key);
            }
            if removed {
                self.arrivals.changed.notify_waiters();
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

    #[tokio::test(start_paused = true)]
    async fn a_later_arrival_follows_earlier_ones_into_the_database_without_waiting() {
        let arrivals = Arc::new(Arrivals::default());
        let a = arrivals.register("b", "s");
        let b = arrivals.register("b", "s");
        let c = arrivals.register("b", "s");
        let patience = Duration::from_secs(3600);
        let waiting = tokio::spawn(async move { (c.wait_first(patience).await, c) });
        tokio::task::yield_now().await;
        a.handed_on();
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "b is still undecided");
        b.handed_on();
        let (first, c) = waiting.await.unwrap();
        assert!(!first, "c goes behind a and b");
        let started = tokio::time::Instant::now();
        assert!(!c.wait_first(patience).await);
        assert_eq!(started.elapsed(), Duration::ZERO, "decided without waiting");
        // A deferral that was handed on holds its place until it leaves.
        assert!(!c.is_first());
        drop((a, b));
        assert!(c.is_first());
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
