//! Group leases (cross-process mutual exclusion per group: taken with the receipt or on
//! their own, renewed while held, released with the outcome) and the heartbeats of the
//! worker processes sharing a database.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use entity::{group_lease, worker_heartbeat};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter,
    Statement, sea_query::Expr,
};

use super::{
    Dialect, Store, StoreError, now,
    pg::{JsonRows, stmt, strings, ts},
};

/// The `lease_until` of a released group lease. A released lease keeps its row (one per
/// group, like `links`): taking it again updates the row in place instead of inserting
/// and deleting one per command, which cost an index entry and a dead row each time.
pub const RELEASED: DateTime<Utc> = DateTime::UNIX_EPOCH;

impl Store {
    /// Takes or renews the lease on `lane` for `owner` in one statement; false when
    /// another owner holds an unexpired lease.
    pub async fn try_lease(
        &self,
        lane: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self.try_lease_many(&[lane.to_owned()], owner, ttl).await?[0])
    }

    /// [`Store::try_lease`] for several lanes in one statement; answers in order.
    pub async fn try_lease_many(
        &self,
        lanes: &[String],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let (t, until) = lease_window(ttl);
        let unique = unique_lanes(lanes);
        let taken: HashSet<String> = match self.dialect {
            Dialect::Sqlite => sqlite_try_leases(&self.fast, &unique, owner, until, t).await?,
            Dialect::Postgres => pg_try_leases(&self.db, &unique, owner, until, t).await?,
        }
        .into_iter()
        .collect();
        Ok(lanes.iter().map(|l| taken.contains(l)).collect())
    }

    /// Extends `owner`'s lease on `lane` by `ttl` from now, unless it was released or
    /// another owner took it; true when extended. An expired lease nobody took is
    /// extended too (it is still this owner's row).
    pub async fn renew_lease(
        &self,
        lane: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (_, until) = lease_window(ttl);
        let done = group_lease::Entity::update_many()
            .col_expr(group_lease::Column::LeaseUntil, Expr::value(until))
            .filter(group_lease::Column::Lane.eq(lane))
            .filter(group_lease::Column::Owner.eq(owner))
            .filter(group_lease::Column::LeaseUntil.ne(RELEASED))
            .exec(&self.fast)
            .await?;
        Ok(done.rows_affected == 1)
    }

    /// Releases `owner`'s lease on `lane` (see [`RELEASED`]).
    pub async fn release_lease(&self, lane: &str, owner: &str) -> Result<(), StoreError> {
        group_lease::Entity::update_many()
            .col_expr(group_lease::Column::LeaseUntil, Expr::value(RELEASED))
            .filter(group_lease::Column::Lane.eq(lane))
            .filter(group_lease::Column::Owner.eq(owner))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Records `instance`'s heartbeat (at the database's time, so hosts' clocks do not
    /// matter) and counts the processes whose heartbeat is younger than `live_for`, this
    /// one included; forgets heartbeats older than an hour. SQLite serves one process:
    /// nothing is recorded and the count is 1.
    pub async fn heartbeat(&self, instance: &str, live_for: Duration) -> Result<u32, StoreError> {
        match self.dialect {
            Dialect::Sqlite => Ok(1),
            Dialect::Postgres => Ok(pg_heartbeat(&self.fast, instance, live_for).await?),
        }
    }

    /// Removes `instance`'s heartbeat (a stopping process).
    pub async fn leave(&self, instance: &str) -> Result<(), StoreError> {
        match self.dialect {
            Dialect::Sqlite => Ok(()),
            Dialect::Postgres => {
                worker_heartbeat::Entity::delete_by_id(instance.to_owned())
                    .exec(&self.fast)
                    .await?;
                Ok(())
            }
        }
    }
}

/// Now, and when a lease taken now for `ttl` ends.
pub(super) fn lease_window(ttl: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let t = now();
    (
        t,
        t + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(30)),
    )
}

/// Each lane once: an upsert may not touch a row twice in one statement.
pub(super) fn unique_lanes(lanes: &[String]) -> Vec<&String> {
    let mut unique: Vec<&String> = lanes.iter().collect();
    unique.sort();
    unique.dedup();
    unique
}

/// Takes or renews the leases on `lanes` for `owner`; returns the lanes taken.
async fn sqlite_try_leases(
    db: &DatabaseConnection,
    lanes: &[&String],
    owner: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let rows = vec!["(?, ?, ?)"; lanes.len()].join(", ");
    let sql = format!(
        "INSERT INTO group_leases (lane, owner, lease_until) VALUES {rows} \
         ON CONFLICT (lane) DO UPDATE SET owner = excluded.owner, \
         lease_until = excluded.lease_until \
         WHERE group_leases.owner = excluded.owner OR group_leases.lease_until < ? \
         RETURNING lane"
    );
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(lanes.len() * 3 + 1);
    for lane in lanes {
        values.extend([(*lane).clone().into(), owner.into(), until.into()]);
    }
    values.push(now.into());
    db.query_all_raw(Statement::from_sql_and_values(
        DbBackend::Sqlite,
        sql,
        values,
    ))
    .await?
    .iter()
    .map(|row| row.try_get::<String>("", "lane"))
    .collect()
}

/// Takes or renews the leases on `lanes` for `owner`; returns the lanes taken.
async fn pg_try_leases<C: ConnectionTrait>(
    db: &C,
    lanes: &[&String],
    owner: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let sql = "INSERT INTO group_leases (lane, owner, lease_until) \
               SELECT DISTINCT e #>> '{}', $2, $3 FROM jsonb_array_elements($1::jsonb) e \
               ON CONFLICT (lane) DO UPDATE SET owner = excluded.owner, \
               lease_until = excluded.lease_until \
               WHERE group_leases.owner = excluded.owner OR group_leases.lease_until < $4 \
               RETURNING lane";
    let values = vec![JsonRows::collect(lanes)?, owner.into(), ts(until), ts(now)];
    strings(db, sql, values, "lane").await
}

/// Records `instance`'s heartbeat and counts the live processes (see
/// [`Store::heartbeat`]).
async fn pg_heartbeat<C: ConnectionTrait>(
    db: &C,
    instance: &str,
    live_for: std::time::Duration,
) -> Result<u32, DbErr> {
    let sql = "WITH me AS (INSERT INTO worker_heartbeats (instance_id, seen_at) \
                 VALUES ($1, now()) ON CONFLICT (instance_id) \
                 DO UPDATE SET seen_at = excluded.seen_at), \
               gone AS (DELETE FROM worker_heartbeats \
                 WHERE seen_at < now() - interval '1 hour' AND instance_id <> $1) \
               SELECT count(*) AS others FROM worker_heartbeats \
               WHERE instance_id <> $1 AND seen_at >= now() - make_interval(secs => $2)";
    let values = vec![instance.into(), live_for.as_secs_f64().into()];
    let row = db
        .query_one_raw(stmt(sql, values))
        .await?
        .ok_or_else(|| DbErr::Custom("the heartbeat count returned no row".into()))?;
    let others: i64 = row.try_get("", "others")?;
    Ok(u32::try_from(others).unwrap_or(u32::MAX - 1) + 1)
}
