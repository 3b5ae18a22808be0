//! The `outbox` table: rows taken for publication (locked by an open transaction on
//! PostgreSQL, claimed for a while on SQLite), deleted once the broker confirmed them or
//! released for the next try; the outcome commit writes them (see [`super::commit`]).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use entity::outbox;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, Statement, TransactionTrait, sea_query::Expr,
};

use super::{Dialect, Store, StoreError, now};
use crate::domain::events::OutboxMessage;

/// Outbox rows taken for publication by [`Store::take_outbox`], held until
/// [`Store::settle_outbox`] (or released if dropped).
pub struct OutboxBatch {
    pub rows: Vec<outbox::Model>,
    /// PostgreSQL: the transaction holding the rows' locks.
    txn: Option<sea_orm::DatabaseTransaction>,
}

impl Store {
    /// Takes up to `limit` outbox rows for publication, oldest first, skipping rows
    /// another relay holds. On PostgreSQL the rows are locked by a transaction kept open
    /// until [`Store::settle_outbox`]: nothing is written to take them, and a relay that
    /// dies releases them at once. On SQLite they are claimed for `claim_for` (one
    /// process; a write transaction would block every commit meanwhile).
    pub async fn take_outbox(
        &self,
        limit: u64,
        claim_for: Duration,
    ) -> Result<OutboxBatch, StoreError> {
        if self.dialect == Dialect::Sqlite {
            let rows = self.claim_outbox(limit, claim_for).await?;
            return Ok(OutboxBatch { rows, txn: None });
        }
        let txn = self.fast.begin().await?;
        // Rows an older version claimed are left until their claim ends.
        let sql = "SELECT * FROM outbox WHERE claimed_until IS NULL OR claimed_until < $1 \
                   ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED";
        let stmt = Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [now().into(), (limit as i64).into()],
        );
        let rows = outbox::Entity::find().from_raw_sql(stmt).all(&txn).await?;
        Ok(OutboxBatch {
            rows,
            txn: Some(txn),
        })
    }

    /// Deletes the rows of `batch` that were published (`sent`) and releases the others.
    pub async fn settle_outbox(&self, batch: OutboxBatch, sent: &[i64]) -> Result<(), StoreError> {
        let Some(txn) = batch.txn else {
            let unsent: Vec<i64> = batch
                .rows
                .iter()
                .map(|r| r.id)
                .filter(|id| !sent.contains(id))
                .collect();
            self.remove_sent(sent).await?;
            return self.unclaim(&unsent).await;
        };
        if !sent.is_empty() {
            // One statement text for any number of ids (an IN list with a placeholder
            // per id made each batch length a statement of its own to parse and plan).
            let ids = serde_json::to_string(sent).map_err(|e| DbErr::Json(e.to_string()))?;
            let sql = "DELETE FROM outbox WHERE id = ANY (ARRAY( \
                       SELECT jsonb_array_elements_text($1::jsonb)::bigint))";
            let deleted = txn
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    sql,
                    [ids.into()],
                ))
                .await;
            if let Err(e) = deleted {
                // Released now (not when the connection is next used): the rows are
                // published again later.
                let _ = txn.rollback().await;
                return Err(e.into());
            }
        }
        Ok(txn.commit().await?)
    }

    /// Claims up to `limit` unsent rows for `claim_for` (PostgreSQL replicas skip rows
    /// another relay holds) and returns them in id order.
    pub async fn claim_outbox(
        &self,
        limit: u64,
        claim_for: Duration,
    ) -> Result<Vec<outbox::Model>, StoreError> {
        let t = now();
        let until =
            t + chrono::Duration::from_std(claim_for).unwrap_or(chrono::Duration::seconds(30));
        let sql = match self.dialect {
            Dialect::Postgres => {
                "UPDATE outbox SET claimed_until = $1 WHERE id IN (SELECT id FROM outbox \
                 WHERE claimed_until IS NULL OR claimed_until < $2 \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *"
            }
            Dialect::Sqlite => {
                "UPDATE outbox SET claimed_until = ? WHERE id IN (SELECT id FROM outbox \
                 WHERE claimed_until IS NULL OR claimed_until < ? \
                 ORDER BY id LIMIT ?) RETURNING *"
            }
        };
        let stmt = Statement::from_sql_and_values(
            self.dialect.backend(),
            sql,
            [until.into(), t.into(), (limit as i64).into()],
        );
        let mut rows = outbox::Entity::find()
            .from_raw_sql(stmt)
            .all(&self.fast)
            .await?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Deletes rows the broker confirmed: the outbox holds only what is still to be
    /// published (the command's row keeps its event_id, the history its outcome).
    pub async fn remove_sent(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        outbox::Entity::delete_many()
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Makes claimed rows immediately claimable again (after a failed publish).
    pub async fn unclaim(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::ClaimedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Unsent outbox rows and the creation time of the oldest.
    pub async fn outbox_pending(&self) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        let pending = outbox::Entity::find();
        let count = pending.clone().count(&self.db).await?;
        let oldest = pending
            .order_by_asc(outbox::Column::Id)
            .one(&self.db)
            .await?
            .map(|r| r.created_at);
        Ok((count, oldest))
    }
}

pub(super) fn outbox_rows(
    messages: &[OutboxMessage],
    at: DateTime<Utc>,
) -> Vec<outbox::ActiveModel> {
    messages
        .iter()
        .map(|m| outbox::ActiveModel {
            exchange: Set(m.exchange.clone()),
            routing_key: Set(m.routing_key.clone()),
            message_id: Set(m.message_id.clone()),
            message_type: Set(m.message_type.clone()),
            correlation_id: Set(m.correlation_id.clone()),
            headers: Set((!m.headers.is_empty()).then(|| {
                let map: BTreeMap<_, _> = m.headers.iter().cloned().collect();
                serde_json::to_string(&map).unwrap_or_default()
            })),
            payload: Set(m.payload.clone()),
            created_at: Set(at),
            claimed_until: Set(None),
            sent_at: Set(None),
            ..Default::default()
        })
        .collect()
}
