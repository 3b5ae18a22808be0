//! The pruner: deletes finished commands and history rows past their retention window
//! (`[retention]`), in small batches, once a minute. On PostgreSQL the replicas take
//! turns: a batch runs only in the replica that holds the pruning lock at that moment.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::RetentionSettings,
    ops::metrics as m,
    store::{Cutoffs, Pruned, Store, StoreError},
};

/// How often a pass starts (the first one a few seconds after start-up).
const EVERY: Duration = Duration::from_secs(60);
const FIRST_AFTER: Duration = Duration::from_secs(5);
/// Rows per table and batch: each batch is one short transaction.
pub const BATCH: u32 = 1_000;
/// After each batch the pruner rests twice as long as the batch took (at least this
/// long), so that pruning a large backlog takes at most a third of the database's time
/// and leaves the rest to the worker's own statements.
const MIN_REST: Duration = Duration::from_millis(20);

/// Prunes once a minute until `stop`.
pub(super) async fn run(store: Store, retention: RetentionSettings, stop: CancellationToken) {
    let mut wait = FIRST_AFTER;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = EVERY;
        match prune(&store, &retention, Utc::now(), &stop).await {
            Ok(p) if p != Pruned::default() => info!(
                commands = p.commands,
                history = p.history,
                "pruned rows past their retention window"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "pruning stopped; the next pass starts over"),
        }
    }
}

/// One pass as of `now`: batches until nothing is left past the windows, another replica
/// holds the pruning lock, or `stop`. Counts every deleted row in
/// `invite_worker_pruned_rows_total`.
pub async fn prune(
    store: &Store,
    retention: &RetentionSettings,
    now: DateTime<Utc>,
    stop: &CancellationToken,
) -> Result<Pruned, StoreError> {
    let before = |window: Duration| {
        chrono::TimeDelta::from_std(window)
            .ok()
            .and_then(|w| now.checked_sub_signed(w))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    };
    let cutoffs = Cutoffs {
        commands: before(retention.commands),
        history: before(retention.history),
    };
    let mut total = Pruned::default();
    while !stop.is_cancelled() {
        let started = tokio::time::Instant::now();
        let Some(batch) = store.prune_batch(cutoffs, BATCH).await? else {
            break;
        };
        let took = started.elapsed();
        m::pruned_rows(batch.commands, batch.history);
        total.commands += batch.commands;
        total.history += batch.history;
        if batch.commands < u64::from(BATCH) && batch.history < u64::from(BATCH) {
            break;
        }
        tokio::time::sleep((2 * took).max(MIN_REST)).await;
    }
    Ok(total)
}
