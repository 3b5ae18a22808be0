//! Per-group mutual exclusion: an in-process keyed lane (commands of one group queue
//! in arrival order) plus a database lease so that two processes never run commands
//! of the same group at once. Leases expire, so a crashed process blocks nobody long.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::OwnedMutexGuard;

use crate::store::{Batcher, Store, StoreError};

#[derive(Clone, Default)]
pub struct Lanes {
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// Holds a lane until dropped; removes the lane's entry when nobody else waits on it.
pub struct LaneGuard {
    map: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Lanes {
    pub async fn acquire(&self, key: &str) -> LaneGuard {
        let lane = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.to_owned()).or_default().clone()
        };
        let guard = lane.lock_owned().await;
        LaneGuard {
            map: self.map.clone(),
            key: key.to_owned(),
            guard: Some(guard),
        }
    }
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        self.guard.take();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

/// A database lease on one group, renewed while [`Lease::hold_while`] runs.
pub struct Lease {
    store: Store,
    lane: String,
    owner: String,
    ttl: Duration,
    released: std::sync::atomic::AtomicBool,
}

impl Lease {
    /// Tries to take the lease (through `attempts`, which batches the statements of
    /// concurrent commands and takes leases for `owner` with `ttl`), waiting up to
    /// `patience` while another process holds it.
    /// `Ok(None)` when it is still held elsewhere after that.
    pub async fn acquire(
        store: &Store,
        attempts: &Batcher<String, bool>,
        lane: &str,
        owner: &str,
        ttl: Duration,
        patience: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut wait = Duration::from_millis(10);
        loop {
            if attempts.call(lane.to_owned()).await? {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
        Ok(Some(Self::held(store, lane, owner, ttl)))
    }

    /// A lease just taken for `owner` with `ttl`.
    pub fn held(store: &Store, lane: &str, owner: &str, ttl: Duration) -> Lease {
        Lease {
            store: store.clone(),
            lane: lane.to_owned(),
            owner: owner.to_owned(),
            ttl,
            released: Default::default(),
        }
    }

    /// Runs `work` under the lease, renewing it every third of its lifetime (in this
    /// task: no task of its own per lease) until `work` ends or the lease is released.
    pub async fn hold_while<F: Future>(&self, work: F) -> F::Output {
        let mut work = std::pin::pin!(work);
        let every = self.ttl / 3;
        let mut renewals = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = renewals.tick() => self.renew().await,
            }
        }
    }

    async fn renew(&self) {
        if self.is_released() {
            return;
        }
        match self
            .store
            .renew_lease(&self.lane, &self.owner, self.ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) if self.is_released() => {}
            Ok(false) => tracing::warn!("group lease was taken over by another process"),
            Err(e) => tracing::warn!(error = %e, "could not renew group lease"),
        }
    }

    fn is_released(&self) -> bool {
        self.released.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn lane(&self) -> &str {
        &self.lane
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Records that the lease was released in a transaction of the caller's.
    pub fn mark_released(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Releases the lease now (dropping without release lets it expire instead).
    pub async fn release(self) {
        if self.is_released() {
            return;
        }
        if let Err(e) = self.store.release_lease(&self.lane, &self.owner).await {
            tracing::warn!(error = %e, "could not release group lease; it will expire");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lane_serialises_same_key_and_cleans_up() {
        let lanes = Lanes::default();
        let a = lanes.acquire("k").await;
        let lanes2 = lanes.clone();
        let waiter = tokio::spawn(async move {
            let _b = lanes2.acquire("k").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let _other = lanes.acquire("other").await;
        drop(a);
        waiter.await.unwrap();
        drop(_other);
        assert!(lanes.map.lock().unwrap().is_empty());
    }
}
