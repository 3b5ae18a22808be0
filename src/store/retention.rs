//! Retention: finished commands and history rows past their window are deleted in small
//! batches, oldest first, each batch its own short transaction. On PostgreSQL one replica
//! prunes at a time (a transaction-scoped advisory lock taken without waiting) and rows
//! another transaction holds are skipped, so pruning never waits on the worker's writes.
//! Unfinished commands and the `links` rows are never pruned.

use chrono::{DateTime, Utc};
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};

use super::{Dialect, STATUS_DONE, Store, StoreError, pg};

/// The advisory lock the pruning replica holds for one batch.
const PRUNE_LOCK: i64 = 7_261_534_020;

/// Rows older than these instants are past their retention window.
#[derive(Clone, Copy, Debug)]
pub struct Cutoffs {
    /// Commands that finished before this.
    pub commands: DateTime<Utc>,
    /// History rows that occurred before this.
    pub history: DateTime<Utc>,
}

/// Rows deleted by one batch (or a whole pass).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub commands: u64,
    pub history: u64,
}

impl Store {
    /// Deletes up to `batch` finished commands and up to `batch` history rows past
    /// `cutoffs`, oldest first. `None` when another replica is pruning right now.
    pub async fn prune_batch(
        &self,
        cutoffs: Cutoffs,
        batch: u32,
    ) -> Result<Option<Pruned>, StoreError> {
        let limit = i64::from(batch);
        match self.dialect {
            Dialect::Sqlite => {
                let commands = sqlite_exec(
                    &self.db,
                    "DELETE FROM commands WHERE command_id IN (SELECT command_id FROM commands \
                     WHERE finished_at < ? AND status = ? ORDER BY finished_at LIMIT ?)",
                    vec![cutoffs.commands.into(), STATUS_DONE.into(), limit.into()],
                )
                .await?;
                let history = sqlite_exec(
                    &self.db,
                    "DELETE FROM link_history WHERE id IN (SELECT id FROM link_history \
                     WHERE occurred_at < ? ORDER BY occurred_at, id LIMIT ?)",
                    vec![cutoffs.history.into(), limit.into()],
                )
                .await?;
                Ok(Some(Pruned { commands, history }))
            }
            Dialect::Postgres => {
                // A lost delete is harmless (the next pass repeats it): the fast pool.
                let txn = self.fast.begin().await?;
                let got = txn
                    .query_one_raw(pg::stmt(
                        "SELECT pg_try_advisory_xact_lock($1) AS got",
                        vec![PRUNE_LOCK.into()],
                    ))
                    .await?
                    .map(|row| row.try_get::<bool>("", "got"))
                    .transpose()?
                    .unwrap_or(false);
                if !got {
                    txn.rollback().await?;
                    return Ok(None);
                }
                let commands = txn
                    .execute_raw(pg::stmt(
                        "DELETE FROM commands WHERE command_id IN (SELECT command_id \
                         FROM commands WHERE finished_at < $1 AND status = $2 \
                         ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED)",
                        vec![pg::ts(cutoffs.commands), STATUS_DONE.into(), limit.into()],
                    ))
                    .await?
                    .rows_affected();
                let history = txn
                    .execute_raw(pg::stmt(
                        "DELETE FROM link_history WHERE id IN (SELECT id FROM link_history \
                         WHERE occurred_at < $1 ORDER BY occurred_at, id LIMIT $2 \
                         FOR UPDATE SKIP LOCKED)",
                        vec![pg::ts(cutoffs.history), limit.into()],
                    ))
                    .await?
                    .rows_affected();
                txn.commit().await?;
                Ok(Some(Pruned { commands, history }))
            }
        }
    }
}

async fn sqlite_exec<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<sea_orm::Value>,
) -> Result<u64, StoreError> {
    Ok(db
        .execute_raw(Statement::from_sql_and_values(
            DbBackend::Sqlite,
            sql,
            values,
        ))
        .await?
        .rows_affected())
}
