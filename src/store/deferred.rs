//! Deferred commands and shared request slots. A command that must wait (its session at
//! its rate limit, a backoff or `Retry-After`, its group busy) waits in
//! `deferred_commands` with its due time and priority, its delivery acknowledged; the
//! releaser of any process claims it when due. On PostgreSQL each session's next free
//! request slot is one `session_slots` row that every replica takes its slots from
//! atomically; SQLite serves one process, which keeps its slots in memory.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{deferred_command, group_lease};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Statement, TransactionTrait, Value,
    sea_query::{Expr, OnConflict},
};

use super::{Dialect, RELEASED, Store, StoreError, pg::stmt};

/// A command to keep until `due_at`.
#[derive(Clone, Debug)]
pub struct Deferral {
    pub command_id: String,
    pub backend: String,
    pub session_id: String,
    /// The group's lane (`backend|session|group`): a claim passes over a command whose
    /// group is leased.
    pub lane: String,
    /// 0 for revokes, 1 for rotations: revokes are claimed first.
    pub priority: i16,
    pub due_at: DateTime<Utc>,
    pub received_at: DateTime<Utc>,
    /// The delivery's body and origin headers, to run it (and dead-letter it) from.
    pub body: Vec<u8>,
    pub origin: Vec<(String, String)>,
    /// The deferring process holds the group's lease: it is released with the deferral.
    pub release_lease: bool,
}

impl Deferral {
    fn row(&self) -> deferred_command::ActiveModel {
        use sea_orm::Set;
        deferred_command::ActiveModel {
            command_id: Set(self.command_id.clone()),
            backend: Set(self.backend.clone()),
            session_id: Set(self.session_id.clone()),
            lane: Set(self.lane.clone()),
            priority: Set(self.priority),
            due_at: Set(self.due_at),
            received_at: Set(self.received_at),
            claimed_by: Set(None),
            body: Set(self.body.clone()),
            origin: Set(serde_json::to_string(&self.origin).ok()),
        }
    }
}

/// The origin headers a deferred row keeps, as its delivery had them.
pub fn origin_of(row: &deferred_command::Model) -> Vec<(String, String)> {
    row.origin
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
        .unwrap_or_default()
}

impl Store {
    /// Keeps `rows` until their due times (a row already kept is updated and its claim
    /// dropped), releasing `owner`'s leases where they say so, in one transaction.
    pub async fn defer_many(&self, rows: &[Deferral], owner: &str) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        deferred_command::Entity::insert_many(rows.iter().map(Deferral::row))
            .on_conflict(
                OnConflict::column(deferred_command::Column::CommandId)
                    .update_columns([
                        deferred_command::Column::Priority,
                        deferred_command::Column::DueAt,
                        deferred_command::Column::ClaimedBy,
                        deferred_command::Column::Body,
                        deferred_command::Column::Origin,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        group_lease::Entity::update_many()
            .col_expr(group_lease::Column::LeaseUntil, Expr::value(RELEASED))
            .filter(
                group_lease::Column::Lane.is_in(
                    rows.iter()
                        .filter(|r| r.release_lease)
                        .map(|r| r.lane.clone()),
                ),
            )
            .filter(group_lease::Column::Owner.eq(owner))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Sessions (backend, session) with deferred commands due by `now`, those waiting
    /// longest first (so that none is starved when more than `limit` are due).
    pub async fn due_sessions(
        &self,
        now: DateTime<Utc>,
        limit: u64,
    ) -> Result<Vec<(String, String)>, StoreError> {
        Ok(deferred_command::Entity::find()
            .select_only()
            .column(deferred_command::Column::Backend)
            .column(deferred_command::Column::SessionId)
            .filter(deferred_command::Column::DueAt.lte(now))
            .group_by(deferred_command::Column::Backend)
            .group_by(deferred_command::Column::SessionId)
            .order_by_asc(deferred_command::Column::DueAt.min())
            .limit(limit)
            .into_tuple()
            .all(&self.fast)
            .await?)
    }

    /// The earliest due time after `now`, if any.
    pub async fn next_due(&self, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, StoreError> {
        let row: Option<Option<DateTime<Utc>>> = deferred_command::Entity::find()
            .select_only()
            .column_as(deferred_command::Column::DueAt.min(), "due")
            .filter(deferred_command::Column::DueAt.gt(now))
            .into_tuple()
            .one(&self.fast)
            .await?;
        Ok(row.flatten())
    }

    /// Whether `backend`/`session` has deferred commands due by `now`.
    pub async fn has_due_deferred(
        &self,
        backend: &str,
        session: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        Ok(deferred_command::Entity::find()
            .select_only()
            .column(deferred_command::Column::CommandId)
            .filter(deferred_command::Column::Backend.eq(backend))
            .filter(deferred_command::Column::SessionId.eq(session))
            .filter(deferred_command::Column::DueAt.lte(now))
            .into_tuple::<String>()
            .one(&self.fast)
            .await?
            .is_some())
    }

    /// Claims the session's next due command for `owner` until `until`: revokes first,
    /// then by due time and arrival; a command whose group is leased is passed over, and
    /// so is one another process is claiming at the same moment (PostgreSQL).
    pub async fn claim_deferred(
        &self,
        backend: &str,
        session: &str,
        owner: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Option<deferred_command::Model>, StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => {
                "UPDATE deferred_commands SET due_at = $1, claimed_by = $2 \
                 WHERE command_id = (SELECT d.command_id FROM deferred_commands d \
                   WHERE d.backend = $3 AND d.session_id = $4 AND d.due_at <= $5 \
                   AND NOT EXISTS (SELECT 1 FROM group_leases g \
                     WHERE g.lane = d.lane AND g.lease_until > $5) \
                   ORDER BY d.priority, d.due_at, d.received_at, d.command_id LIMIT 1) \
                 RETURNING *"
            }
            Dialect::Postgres => {
                "WITH pick AS (SELECT d.command_id FROM deferred_commands d \
                   WHERE d.backend = $3 AND d.session_id = $4 AND d.due_at <= $5 \
                   AND NOT EXISTS (SELECT 1 FROM group_leases g \
                     WHERE g.lane = d.lane AND g.lease_until > $5) \
                   ORDER BY d.priority, d.due_at, d.received_at, d.command_id \
                   LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 UPDATE deferred_commands d SET due_at = $1, claimed_by = $2 \
                 FROM pick WHERE d.command_id = pick.command_id RETURNING d.*"
            }
        };
        let values: Vec<Value> = vec![
            until.into(),
            owner.into(),
            backend.into(),
            session.into(),
            now.into(),
        ];
        let statement = Statement::from_sql_and_values(self.dialect.backend(), sql, values);
        Ok(deferred_command::Entity::find()
            .from_raw_sql(statement)
            .one(&self.fast)
            .await?)
    }

    /// One deferred row, if it is there.
    pub async fn find_deferred(
        &self,
        command_id: &str,
    ) -> Result<Option<deferred_command::Model>, StoreError> {
        Ok(deferred_command::Entity::find_by_id(command_id.to_owned())
            .one(&self.fast)
            .await?)
    }

    /// Forgets deferred rows of commands that are settled.
    pub async fn forget_deferred(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        deferred_command::Entity::delete_many()
            .filter(deferred_command::Column::CommandId.is_in(ids.iter().cloned()))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Hands a claimed command back: due at once, claimed by nobody.
    pub async fn unclaim_deferred(&self, command_id: &str, owner: &str) -> Result<(), StoreError> {
        deferred_command::Entity::update_many()
            .col_expr(deferred_command::Column::DueAt, Expr::value(Utc::now()))
            .col_expr(
                deferred_command::Column::ClaimedBy,
                Expr::value(Option::<String>::None),
            )
            .filter(deferred_command::Column::CommandId.eq(command_id))
            .filter(deferred_command::Column::ClaimedBy.eq(owner))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// How many commands wait in the database.
    pub async fn deferred_count(&self) -> Result<u64, StoreError> {
        Ok(deferred_command::Entity::find().count(&self.fast).await?)
    }

    /// Takes the next request slot of `backend`/`session` from its shared row
    /// (PostgreSQL), with the arithmetic of `worker::pacing` at the database's clock:
    /// `Ok(wait)` the slot taken starts after `wait`; `Err(retry)` nothing was taken (the
    /// slot starts more than `lookahead` from now, or with `behind_due` commands of the
    /// session deferred until now wait for it), ask again after `retry`.
    pub async fn take_slot(
        &self,
        backend: &str,
        session: &str,
        slot: &SlotRequest,
    ) -> Result<Result<Duration, Duration>, StoreError> {
        let secs = |d: Duration| Value::Double(Some(d.as_secs_f64()));
        let values = vec![
            backend.into(),
            session.into(),
            secs(slot.interval),
            secs(slot.rotation_interval),
            slot.rotation.into(),
            secs(slot.slack),
            secs(slot.lookahead.min(Duration::from_secs(86_400))),
            slot.behind_due.into(),
        ];
        // Bookkeeping: a slot lost in a database crash is one request's place, long past
        // by the time the database is back.
        let row = self
            .fast
            .query_one_raw(stmt(&TAKE_SLOT, values))
            .await?
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("session slot".into()))?;
        let taken: Option<f64> = row.try_get("", "taken")?;
        let busy: Option<f64> = row.try_get("", "busy")?;
        let wait = |s: f64| Duration::from_secs_f64(s.max(0.0));
        Ok(match taken {
            Some(t) => Ok(wait(t)),
            None => Err(wait(busy.unwrap_or(0.0))),
        })
    }
}

/// A slot request's arithmetic (see `worker::pacing::Grid`).
#[derive(Clone, Copy, Debug)]
pub struct SlotRequest {
    pub interval: Duration,
    pub rotation_interval: Duration,
    pub slack: Duration,
    /// The request is a rotation's: it also takes a slot of the rotations' grid.
    pub rotation: bool,
    pub lookahead: Duration,
    pub behind_due: bool,
}

/// Where the session's next slot starts at the database's clock `c.now`: on the grid when
/// it is at most the slack behind, else now; for a rotation also on the rotations' grid.
const SLOT_START: &str = "GREATEST(\
    CASE WHEN s.next_slot + make_interval(secs => $6) >= c.now THEN s.next_slot ELSE c.now END, \
    CASE WHEN $5 AND s.next_rotation_slot + make_interval(secs => $6) >= c.now \
      THEN s.next_rotation_slot ELSE c.now END)";

/// Takes a slot: $1 backend, $2 session, $3 interval, $4 rotation interval, $5 rotation,
/// $6 slack, $7 lookahead (seconds), $8 behind due deferred commands. Answers `taken`
/// (seconds until the slot taken) or `busy` (seconds until asking again).
static TAKE_SLOT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH c AS (SELECT clock_timestamp() AS now), \
         up AS (INSERT INTO session_slots AS s (backend, session_id, next_slot, next_rotation_slot) \
           SELECT $1, $2, c.now + make_interval(secs => $3), \
             CASE WHEN $5 THEN c.now + make_interval(secs => $4) ELSE '-infinity' END FROM c \
           WHERE NOT ($8 AND EXISTS (SELECT 1 FROM deferred_commands d \
             WHERE d.backend = $1 AND d.session_id = $2 AND d.due_at <= c.now)) \
           ON CONFLICT (backend, session_id) DO UPDATE SET \
             next_slot = (SELECT {start} FROM c) + make_interval(secs => $3), \
             next_rotation_slot = CASE WHEN $5 \
               THEN (SELECT {start} FROM c) + make_interval(secs => $4) \
               ELSE s.next_rotation_slot END \
           WHERE (SELECT {start} <= c.now + make_interval(secs => $7) FROM c) \
           RETURNING s.next_slot) \
         SELECT (SELECT extract(epoch FROM up.next_slot - make_interval(secs => $3) - c.now) \
                 FROM up)::float8 AS taken, \
           (SELECT extract(epoch FROM GREATEST(s.next_slot, \
                   CASE WHEN $5 THEN s.next_rotation_slot ELSE s.next_slot END) \
                 - make_interval(secs => $7) - c.now) \
            FROM session_slots s WHERE s.backend = $1 AND s.session_id = $2)::float8 AS busy \
         FROM c",
        start = SLOT_START
    )
});
