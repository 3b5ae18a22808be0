//! The receipt: each command recorded as received unless its row exists, with its
//! group's lease taken, in one statement on PostgreSQL (which also records the first
//! attempt of a command whose rate-limit slot is reserved), in two on SQLite.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use chrono::{DateTime, Utc};
use entity::{command, link};
use sea_orm::{ActiveValue::Set, DatabaseConnection, DbErr, FromQueryResult, IdenStatic, Iterable};
use serde_json::Value as Json;

use super::{
    Dialect, STATUS_EXECUTING, STATUS_RECEIVED, Store, StoreError,
    leases::{lease_window, unique_lanes},
    pg::{Args, Array, Columns, Params, Ty, column_list},
};
use crate::domain::Command;

/// A command about to run under its group lane: record it and take the lane's lease.
#[derive(Clone, Debug)]
pub struct Begin {
    pub cmd: Command,
    pub lane: String,
    /// Record the command's first attempt in the same statement if its row is new and
    /// the lease is taken (PostgreSQL). Only for a first attempt that records the stored
    /// code as the one replaced, with its rate-limit slot already reserved.
    pub first_attempt: bool,
}

/// [`Store::begin_many`]'s answer for one command.
#[derive(Clone, Debug)]
pub struct Begun {
    pub row: command::Model,
    /// The lane's lease was taken (or renewed) for the owner.
    pub leased: bool,
    /// The row was inserted with its first attempt recorded: `executing`, attempt 1, the
    /// group's stored code as `before_code` (NULL when untracked), read under the lease.
    pub first_attempt: bool,
    /// The group's link as read for the first attempt (None when untracked or not
    /// `first_attempt`).
    pub link: Option<link::Model>,
}

impl Store {
    /// For each request, [`Store::begin_commands`] and [`Store::try_lease_many`]: the
    /// command's row and whether its lane's lease was taken for `owner`. On PostgreSQL
    /// this is one statement, which also records the first attempt of each request that
    /// asks for it when its row is new and its lease taken (see [`Begun`]); SQLite never
    /// does (the caller records it with [`Store::first_attempt_many`]).
    pub async fn begin_many(
        &self,
        batch: &[Begin],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<Begun>, StoreError> {
        let cmds: Vec<Command> = batch.iter().map(|b| b.cmd.clone()).collect();
        let lanes: Vec<String> = batch.iter().map(|b| b.lane.clone()).collect();
        match self.dialect {
            Dialect::Sqlite => {
                let rows = self.begin_commands(&cmds).await?;
                let leased = self.try_lease_many(&lanes, owner, ttl).await?;
                Ok(rows
                    .into_iter()
                    .zip(leased)
                    .map(|(row, leased)| Begun {
                        row,
                        leased,
                        first_attempt: false,
                        link: None,
                    })
                    .collect())
            }
            Dialect::Postgres => self.pg_begin_many(batch, &cmds, &lanes, owner, ttl).await,
        }
    }

    /// [`Store::begin_many`] on PostgreSQL: one statement.
    async fn pg_begin_many(
        &self,
        batch: &[Begin],
        cmds: &[Command],
        lanes: &[String],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<Begun>, StoreError> {
        let (t, until) = lease_window(ttl);
        let rows: Vec<BeginRow> = batch
            .iter()
            .map(|b| BeginRow {
                row: received_row(&b.cmd, t),
                lane: b.lane.clone(),
                first_attempt: b.first_attempt,
            })
            .collect();
        let unique = unique_lanes(lanes);
        let (found, taken) = pg_begin(&self.db, &rows, &unique, owner, until, t).await?;
        let taken: HashSet<String> = taken.into_iter().collect();
        let mut firsts = HashMap::new();
        let found = found
            .into_iter()
            .map(|b| {
                if b.first_attempt {
                    firsts.insert(b.row.command_id.clone(), b.link);
                }
                b.row
            })
            .collect();
        let rows = self.in_order(cmds, found).await?;
        Ok(rows
            .into_iter()
            .zip(lanes)
            .map(|(row, lane)| {
                let first = firsts.remove(&row.command_id);
                Begun {
                    leased: taken.contains(lane),
                    first_attempt: first.is_some(),
                    link: first.flatten(),
                    row,
                }
            })
            .collect())
    }
}

/// A new command row in state `received`.
pub(super) fn received_row(cmd: &Command, t: DateTime<Utc>) -> command::ActiveModel {
    command::ActiveModel {
        command_id: Set(cmd.id.to_string()),
        command_type: Set(cmd.kind.as_str().to_owned()),
        backend: Set(cmd.backend.clone()),
        session_id: Set(cmd.session.as_str().to_owned()),
        group_id: Set(cmd.group.as_str().to_owned()),
        reason: Set(cmd.reason.clone()),
        requested_by: Set(cmd.requested_by.clone()),
        status: Set(STATUS_RECEIVED.to_owned()),
        outcome: Set(None),
        attempts: Set(0),
        cycle: Set(1),
        before_code: Set(None),
        new_code: Set(None),
        error_kind: Set(None),
        error_message: Set(None),
        http_status: Set(None),
        event_id: Set(None),
        received_at: Set(t),
        updated_at: Set(t),
        finished_at: Set(None),
    }
}

/// One command for [`pg_begin`]: its new row, its lane, and whether to record its first
/// attempt in the same statement.
pub(super) struct BeginRow {
    pub(super) row: command::ActiveModel,
    pub(super) lane: String,
    pub(super) first_attempt: bool,
}

/// The select list of the links columns prefixed `l_` (read back with that prefix).
fn prefixed_link_columns() -> &'static str {
    static COLUMNS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| {
        <link::Column as Iterable>::iter()
            .map(|c| format!("l.{0} AS l_{0}", c.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

pub(super) const COMMAND_COLUMNS: Columns = &[
    ("command_id", Ty::Text),
    ("command_type", Ty::Text),
    ("backend", Ty::Text),
    ("session_id", Ty::Text),
    ("group_id", Ty::Text),
    ("reason", Ty::Text),
    ("requested_by", Ty::Text),
    ("status", Ty::Text),
    ("outcome", Ty::Text),
    ("attempts", Ty::Int),
    ("cycle", Ty::Int),
    ("before_code", Ty::Text),
    ("new_code", Ty::Text),
    ("error_kind", Ty::Text),
    ("error_message", Ty::Text),
    ("http_status", Ty::Int),
    ("event_id", Ty::Text),
    ("received_at", Ty::Time),
    ("updated_at", Ty::Time),
    ("finished_at", Ty::Time),
];

/// The receipt's leading columns: the command (`_cmd`), its lane and whether to record
/// its first attempt.
pub(super) const BEGIN_TAGS: Columns = &[
    ("_cmd", Ty::Text),
    ("_lane", Ty::Text),
    ("_first", Ty::Bool),
];

/// The receipt's statement: `$1` the lanes, `$2` owner, `$3` lease until, `$4` now,
/// `$5` executing, then the rows' arrays (see [`pg_begin`]).
pub(super) fn begin_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows = Params(5).unnest("r", BEGIN_TAGS, COMMAND_COLUMNS, false);
        // A first attempt is recorded as executing, attempt 1, replacing the stored code.
        let values = COMMAND_COLUMNS
            .iter()
            .map(|(name, _)| match *name {
                "status" => "CASE WHEN v.first THEN $5 ELSE v.status END".to_owned(),
                "attempts" => "CASE WHEN v.first THEN 1 ELSE v.attempts END".to_owned(),
                "before_code" => {
                    "CASE WHEN v.first THEN v.stored_code ELSE v.before_code END".to_owned()
                }
                name => format!("v.{name}"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH lease AS (INSERT INTO group_leases (lane, owner, lease_until) \
               SELECT DISTINCT l, $2, $3 FROM unnest($1::text[]) l \
               ON CONFLICT (lane) DO UPDATE SET owner = excluded.owner, \
               lease_until = excluded.lease_until \
               WHERE group_leases.owner = excluded.owner OR group_leases.lease_until < $4 \
               RETURNING lane), \
             x AS (SELECT r.*, coalesce(r._first, false) \
                 AND r._lane IN (SELECT lane FROM lease) AS first FROM {rows}), \
             v AS (SELECT x.*, lk.invite_code AS stored_code FROM x LEFT JOIN LATERAL \
                 (SELECT l.invite_code FROM links l \
                 WHERE x.first AND l.backend = x.backend \
                   AND l.session_id = x.session_id AND l.group_id = x.group_id \
                 FOR SHARE OF l) lk ON true), \
             ins AS (INSERT INTO commands ({columns}) SELECT {values} FROM v \
               ON CONFLICT (command_id) DO NOTHING RETURNING *), \
             found AS (SELECT ins.*, true AS fresh, \
                 ins.command_id IN (SELECT _cmd FROM v WHERE first) AS first_recorded \
               FROM ins UNION ALL \
               SELECT c.*, false, false FROM v CROSS JOIN LATERAL \
                 (SELECT * FROM commands c WHERE c.command_id = v._cmd) c \
               WHERE v._cmd NOT IN (SELECT command_id FROM ins)) \
             SELECT found.*, {link}, \
               CASE WHEN row_number() OVER () = 1 \
                 THEN (SELECT coalesce(jsonb_agg(lane), '[]'::jsonb) FROM lease) END \
                 AS taken_lanes \
             FROM found LEFT JOIN LATERAL (SELECT l.* FROM links l \
               WHERE found.first_recorded AND l.backend = found.backend \
                 AND l.session_id = found.session_id AND l.group_id = found.group_id \
               FOR SHARE OF l) l ON true",
            columns = column_list(COMMAND_COLUMNS, ""),
            link = prefixed_link_columns()
        )
    })
}

/// Inserts the rows that do not exist yet and takes or renews the leases on `lanes` for
/// `owner` (as [`Store::try_lease_many`]), in one statement; answers every command's row, and the
/// lanes taken. A row marked `first_attempt` whose lane is taken is inserted with its
/// first attempt recorded (`executing`, attempt 1, the stored code as `before_code`):
/// the link is read `FOR SHARE` after the lease is taken, and under READ COMMITTED a
/// locking read returns the latest committed version of the row, so a previous lease
/// holder's commit (which updates the link and releases the lease together) is seen even
/// if it committed after the statement's snapshot; a link it inserted is not seen, and
/// the command is then treated as untracked (its current link is read from the
/// provider). The answer reads the link of each first attempt again, by index and
/// `FOR SHARE`, so it gets the version already locked (a lock this transaction holds is
/// not taken twice); handing the rows over as `jsonb` instead cost PostgreSQL about a
/// quarter of the statement. Rows inserted by a concurrent transaction not yet visible
/// are missing from the answer (the caller reads them again).
pub(super) async fn pg_begin(
    db: &DatabaseConnection,
    rows: &[BeginRow],
    lanes: &[&String],
    owner: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Vec<Begun>, Vec<String>), DbErr> {
    // `leased` is left false: the caller matches the lanes taken.
    let mut args = Args::default();
    args.array(Array::texts(lanes.iter().map(|l| Some(l.as_str()))))?;
    args.scalar(owner)?;
    args.scalar(until)?;
    args.scalar(now)?;
    args.scalar(STATUS_EXECUTING)?;
    let models: Vec<_> = rows.iter().map(|r| &r.row).collect();
    let ids = models.iter().map(|m| m.command_id.try_as_ref());
    args.array(Array::texts(ids))?;
    args.array(Array::texts(rows.iter().map(|r| Some(r.lane.as_str()))))?;
    args.array(Array::Bool(
        rows.iter().map(|r| Some(r.first_attempt)).collect(),
    ))?;
    args.columns(&models, COMMAND_COLUMNS)?;
    let result = args.fetch_all(db, begin_sql()).await?;
    let mut taken = Vec::new();
    if let Some(first) = result.first() {
        // Only the first row carries them (a copy in every row made the answer grow
        // with the square of the batch).
        let lanes: Json = first.try_get("", "taken_lanes")?;
        taken = serde_json::from_value(lanes).map_err(|e| DbErr::Json(e.to_string()))?;
    }
    let begun = result
        .iter()
        .map(|row| {
            let first_attempt: bool = row.try_get("", "first_recorded")?;
            let tracked = row.try_get::<Option<i64>>("", "l_id")?.is_some();
            let link = if first_attempt && tracked {
                Some(link::Model::from_query_result(row, "l_")?)
            } else {
                None
            };
            Ok(Begun {
                row: command::Model::from_query_result(row, "")?,
                leased: false,
                first_attempt,
                link,
            })
        })
        .collect::<Result<_, DbErr>>()?;
    Ok((begun, taken))
}
