//! The `links` table and its history: the tracked link of each group, read in batches
//! under the group lease, listed for the CLI, and claimed by the expiry scheduler; the
//! outcome commit writes them (see [`super::commit`]).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use entity::{history, link};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, Statement,
    sea_query::{Expr, ExprTrait},
};

use super::{
    Dialect, GroupKey, Store, StoreError,
    pg::{JsonRows, stmt},
};

/// Which history rows an export reads.
#[derive(Clone, Debug, Default)]
pub struct HistoryFilter {
    /// Rows that occurred at or after this.
    pub since: Option<DateTime<Utc>>,
    /// Rows that occurred before this.
    pub until: Option<DateTime<Utc>>,
    pub backend: Option<String>,
    pub session: Option<String>,
}

impl Store {
    pub async fn link_get(&self, key: &GroupKey) -> Result<Option<link::Model>, StoreError> {
        Ok(self
            .link_get_many(std::slice::from_ref(key))
            .await?
            .remove(0))
    }

    /// The tracked links of several groups in one query; answers in the order of `keys`.
    pub async fn link_get_many(
        &self,
        keys: &[GroupKey],
    ) -> Result<Vec<Option<link::Model>>, StoreError> {
        let rows = match self.dialect {
            Dialect::Sqlite => sqlite_links(&self.fast, keys).await?,
            Dialect::Postgres => pg_links(&self.fast, keys).await?,
        };
        let found: HashMap<GroupKey, link::Model> = rows
            .into_iter()
            .map(|row| (GroupKey::of_link(&row), row))
            .collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    pub async fn links(&self) -> Result<Vec<link::Model>, StoreError> {
        Ok(link::Entity::find()
            .order_by_asc(link::Column::Backend)
            .order_by_asc(link::Column::SessionId)
            .order_by_asc(link::Column::GroupId)
            .all(&self.db)
            .await?)
    }

    pub async fn history(&self, key: &GroupKey) -> Result<Vec<history::Model>, StoreError> {
        Ok(history::Entity::find()
            .filter(history::Column::Backend.eq(&key.backend))
            .filter(history::Column::SessionId.eq(&key.session_id))
            .filter(history::Column::GroupId.eq(&key.group_id))
            .order_by_asc(history::Column::Id)
            .all(&self.db)
            .await?)
    }

    /// One page of every group's history, oldest first (by `occurred_at`, then id),
    /// starting after `after` (the last row of the previous page): an export walks the
    /// whole table in constant memory.
    pub async fn history_page(
        &self,
        filter: &HistoryFilter,
        after: Option<(DateTime<Utc>, i64)>,
        limit: u64,
    ) -> Result<Vec<history::Model>, StoreError> {
        use history::Column as C;
        let mut query = history::Entity::find();
        if let Some(since) = filter.since {
            query = query.filter(C::OccurredAt.gte(since));
        }
        if let Some(until) = filter.until {
            query = query.filter(C::OccurredAt.lt(until));
        }
        if let Some(backend) = &filter.backend {
            query = query.filter(C::Backend.eq(backend));
        }
        if let Some(session) = &filter.session {
            query = query.filter(C::SessionId.eq(session));
        }
        if let Some((at, id)) = after {
            // A row comparison, which both databases answer with a range of the
            // `(occurred_at, id)` index: each page starts where the last one ended.
            query = query.filter(
                Expr::tuple([Expr::col(C::OccurredAt), Expr::col(C::Id)])
                    .gt(Expr::tuple([Expr::value(at), Expr::value(id)])),
            );
        }
        Ok(query
            .order_by_asc(C::OccurredAt)
            .order_by_asc(C::Id)
            .limit(limit)
            .all(&self.fast)
            .await?)
    }

    /// Claims up to `limit` links whose expiry is at or before `due` and for which no
    /// rotation was published yet (or the last publication is older than `republish`).
    /// On PostgreSQL concurrent scanners skip each other's rows.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        due: DateTime<Utc>,
        republish: Duration,
        limit: u64,
    ) -> Result<Vec<link::Model>, StoreError> {
        let stale =
            now - chrono::Duration::from_std(republish).unwrap_or(chrono::Duration::minutes(10));
        let sql = match self.dialect {
            Dialect::Postgres => {
                "UPDATE links SET scheduled_for = expires_at, scheduled_at = $1 WHERE id IN \
                 (SELECT id FROM links WHERE expires_at <= $2 AND (scheduled_for IS NULL \
                 OR scheduled_for <> expires_at OR scheduled_at < $3) ORDER BY expires_at \
                 LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING *"
            }
            Dialect::Sqlite => {
                "UPDATE links SET scheduled_for = expires_at, scheduled_at = ? WHERE id IN \
                 (SELECT id FROM links WHERE expires_at <= ? AND (scheduled_for IS NULL \
                 OR scheduled_for <> expires_at OR scheduled_at < ?) ORDER BY expires_at \
                 LIMIT ?) RETURNING *"
            }
        };
        let values = [now.into(), due.into(), stale.into(), (limit as i64).into()];
        let stmt = Statement::from_sql_and_values(self.dialect.backend(), sql, values);
        Ok(link::Entity::find()
            .from_raw_sql(stmt)
            .all(&self.fast)
            .await?)
    }

    /// Forgets a claim so the next scan publishes again (after a failed publish).
    pub async fn unschedule(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        link::Entity::update_many()
            .col_expr(
                link::Column::ScheduledAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                link::Column::ScheduledFor,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(link::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// The expiry of every link due by `due` (at most `limit`), by backend, session and
    /// expiry: what the scheduler checks against each session's rotation rate.
    pub async fn due_expiries(
        &self,
        due: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(String, String, DateTime<Utc>)>, StoreError> {
        Ok(link::Entity::find()
            .select_only()
            .columns([
                link::Column::Backend,
                link::Column::SessionId,
                link::Column::ExpiresAt,
            ])
            .filter(link::Column::ExpiresAt.lte(due))
            .order_by_asc(link::Column::Backend)
            .order_by_asc(link::Column::SessionId)
            .order_by_asc(link::Column::ExpiresAt)
            .limit(limit)
            .into_tuple()
            .all(&self.fast)
            .await?)
    }

    pub async fn count_links_due(&self, due: DateTime<Utc>) -> Result<u64, StoreError> {
        Ok(link::Entity::find()
            .filter(link::Column::ExpiresAt.lte(due))
            .count(&self.db)
            .await?)
    }
}

/// The tracked links of `keys` (those that exist).
async fn sqlite_links(
    db: &DatabaseConnection,
    keys: &[GroupKey],
) -> Result<Vec<link::Model>, DbErr> {
    let mut any = Condition::any();
    for key in keys {
        any = any.add(
            Condition::all()
                .add(link::Column::Backend.eq(&key.backend))
                .add(link::Column::SessionId.eq(&key.session_id))
                .add(link::Column::GroupId.eq(&key.group_id)),
        );
    }
    link::Entity::find().filter(any).all(db).await
}

/// The tracked links of `keys` (those that exist).
async fn pg_links<C: ConnectionTrait>(
    db: &C,
    keys: &[GroupKey],
) -> Result<Vec<link::Model>, DbErr> {
    let keys = keys.iter().map(|k| {
        serde_json::json!({
            "backend": k.backend, "session_id": k.session_id, "group_id": k.group_id,
        })
    });
    let sql = "SELECT l.* FROM jsonb_populate_recordset(NULL::links, $1::jsonb) k \
               CROSS JOIN LATERAL (SELECT * FROM links l WHERE l.backend = k.backend \
                 AND l.session_id = k.session_id AND l.group_id = k.group_id) l";
    link::Entity::find()
        .from_raw_sql(stmt(sql, vec![JsonRows::collect(keys)?]))
        .all(db)
        .await
}
