//! The outbox relay: publishes committed outbox rows with publisher confirms, in
//! batches, and deletes them once confirmed. A batch is held by row locks of an open
//! transaction on PostgreSQL (nothing written to take it; released at once if the
//! process dies) and by a timed claim on SQLite. Woken after commits (gathering for a few
//! milliseconds, so that one claim serves many events); sweeps every second for rows
//! left by a crash or another replica. A row the broker nacks or returns (a dead letter
//! whose queue is missing) stays and is published again later.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Confirm, PublishError, Publisher};
use crate::{
    domain::events::OutboxMessage,
    ops::{failpoint, metrics as m},
    store::{Store, StoreError},
};

const BATCH: u64 = 500;
const SWEEP: Duration = Duration::from_secs(1);
/// After a wake-up, how long the relay lets further commits land before it claims: one
/// claim and one delete then serve the events of many commands. Commands are acked at
/// commit, so this delays only the events, by at most this much.
const GATHER: Duration = Duration::from_millis(10);

/// Why a batch of the outbox was not published.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

pub struct Relay {
    store: Store,
    publisher: Arc<Publisher>,
    wakeup: Arc<Notify>,
    /// Whether the last publish had messages returned (logged once per change).
    returning: AtomicBool,
}

fn to_message(row: &entity::outbox::Model) -> OutboxMessage {
    let headers = row
        .headers
        .as_deref()
        .and_then(|h| serde_json::from_str::<std::collections::BTreeMap<String, String>>(h).ok())
        .map(|h| h.into_iter().collect())
        .unwrap_or_default();
    OutboxMessage {
        exchange: row.exchange.clone(),
        routing_key: row.routing_key.clone(),
        message_id: row.message_id.clone(),
        message_type: row.message_type.clone(),
        correlation_id: row.correlation_id.clone(),
        headers,
        payload: row.payload.clone(),
    }
}

impl Relay {
    pub fn new(store: Store, publisher: Arc<Publisher>, wakeup: Arc<Notify>) -> Self {
        Self {
            store,
            publisher,
            wakeup,
            returning: AtomicBool::new(false),
        }
    }

    /// Publishes one batch; returns how many rows were claimed.
    pub async fn relay_once(&self) -> Result<usize, RelayError> {
        // A claim outlives any publish (bounded by the confirm timeout), and no longer:
        // rows claimed by a relay that crashed are picked up again soon.
        let claim_for = self.publisher.confirm_timeout() * 2 + Duration::from_secs(1);
        let batch = self.store.take_outbox(BATCH, claim_for).await?;
        let taken = batch.rows.len();
        if taken == 0 {
            self.store.settle_outbox(batch, &[]).await?;
            return Ok(0);
        }
        failpoint::hit(failpoint::BEFORE_RELAY);
        let msgs: Vec<OutboxMessage> = batch.rows.iter().map(to_message).collect();
        match self.publisher.publish_batch(&msgs).await {
            Ok(confirms) => {
                let sent: Vec<i64> = batch
                    .rows
                    .iter()
                    .zip(&confirms)
                    .filter(|(_, c)| c.is_ack())
                    .map(|(r, _)| r.id)
                    .collect();
                let returned = confirms.iter().filter(|c| **c == Confirm::Returned).count();
                let nacked = taken - sent.len() - returned;
                let count = sent.len();
                self.store.settle_outbox(batch, &sent).await?;
                m::events_published(count);
                if nacked > 0 {
                    warn!(
                        count = nacked,
                        "broker nacked outbox messages; they will be retried"
                    );
                }
                self.note_returned(returned, count);
                Ok(taken)
            }
            Err(e) => {
                let _ = self.store.settle_outbox(batch, &[]).await;
                Err(e.into())
            }
        }
    }

    /// Logs once when dead letters start coming back (their queue is missing: they
    /// stay in the outbox and are retried) and once when messages go through again.
    fn note_returned(&self, returned: usize, sent: usize) {
        if returned > 0 {
            if !self.returning.swap(true, Ordering::Relaxed) {
                warn!(
                    count = returned,
                    "the broker returned dead letters (no dead-letter queue to take \
                     them); they stay in the outbox and are retried"
                );
            }
        } else if sent > 0 && self.returning.swap(false, Ordering::Relaxed) {
            info!("outbox messages are taken by the broker again");
        }
    }

    /// Publishes until nothing is pending (bounded by `deadline`).
    pub async fn drain(&self, deadline: Duration) {
        let end = tokio::time::Instant::now() + deadline;
        while tokio::time::Instant::now() < end {
            match self.relay_once().await {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) => {
                    warn!(error = %e, "outbox drain failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn report_pending(&self) {
        if let Ok((count, oldest)) = self.store.outbox_pending().await {
            let age = oldest
                .map(|t| (Utc::now() - t).to_std().unwrap_or_default())
                .unwrap_or_default();
            m::outbox(count, age);
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut failures = 0u32;
        let mut last_report = tokio::time::Instant::now();
        loop {
            let outcome = self.relay_once().await;
            let more = match outcome {
                Ok(n) => {
                    failures = 0;
                    n as u64 == BATCH
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, "outbox relay failed; will retry");
                    false
                }
            };
            if last_report.elapsed() >= Duration::from_secs(5) {
                self.report_pending().await;
                last_report = tokio::time::Instant::now();
            }
            if more {
                continue;
            }
            let pause = if failures > 0 {
                Duration::from_millis(200 * u64::from(failures.min(25)))
            } else {
                SWEEP
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = self.wakeup.notified(), if failures == 0 => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(GATHER) => {}
                    }
                }
                _ = tokio::time::sleep(pause) => {}
            }
        }
        debug!("outbox relay stopped");
    }
}
