//! PostgreSQL forms of the batched statements: each takes its rows as parameters whose
//! number does not depend on the batch size, so its SQL text is the same for any batch
//! (prepared once per connection) and a whole batch costs one round trip. The outcome
//! commit is a single statement of data-modifying CTEs (one round trip and one
//! synchronous commit per batch). The receipt and the commit take their rows as typed
//! arrays, one per column, sent in binary; the rarer statements one JSON parameter.
//!
//! Hash and merge joins are off in these sessions (see `Store::connect`), so a join
//! between two CTEs would be a nested loop over both, quadratic in the batch (at 128 rows
//! it took half of each statement, measured): rows are matched to the commands written
//! through a `jsonb` object keyed by command id, built once per statement, and the
//! links are read per row by index.

use chrono::{DateTime, Utc};
use entity::{command, link};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend,
    DbErr, EntityTrait, FromQueryResult, IdenStatic, Iterable, QueryResult, RuntimeErr, Statement,
    Value,
    sqlx::{self, Arguments, postgres::PgArguments},
};
use serde::Serialize;
use serde_json::Value as Json;

use crate::domain::command::storable;

use super::{
    Attempt, Begun, Completion, Deferred, FirstAttempt, GroupKey, STATUS_DONE, STATUS_EXECUTING,
    stage_completion,
};

fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The rows of one JSON array parameter, serialized straight from their values (no
/// intermediate JSON tree to build and drop); sent as text, which the statement casts
/// to `jsonb`.
struct JsonRows(Vec<u8>);

impl JsonRows {
    fn new() -> Self {
        Self(b"[".to_vec())
    }

    fn push<T: Serialize>(&mut self, row: &T) -> Result<(), DbErr> {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        serde_json::to_writer(&mut self.0, row).map_err(|e| DbErr::Json(e.to_string()))
    }

    fn collect<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Result<Value, DbErr> {
        let mut out = Self::new();
        for row in rows {
            out.push(&row)?;
        }
        out.param()
    }

    fn param(mut self) -> Result<Value, DbErr> {
        self.0.push(b']');
        let text = String::from_utf8(self.0).map_err(|e| DbErr::Json(e.to_string()))?;
        Ok(Value::String(Some(text)))
    }
}

/// Runs `sql` and returns the text column `column` of every row.
async fn strings<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
    column: &str,
) -> Result<Vec<String>, DbErr> {
    db.query_all_raw(stmt(sql, values))
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", column))
        .collect()
}

fn ts(t: DateTime<Utc>) -> Value {
    t.into()
}

/// Records `instance`'s heartbeat and counts the live processes (see
/// [`super::Store::heartbeat`]).
pub(super) async fn heartbeat<C: ConnectionTrait>(
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

/// Removes `instance`'s heartbeat.
pub(super) async fn leave<C: ConnectionTrait>(db: &C, instance: &str) -> Result<(), DbErr> {
    let sql = "DELETE FROM worker_heartbeats WHERE instance_id = $1";
    db.execute_raw(stmt(sql, vec![instance.into()])).await?;
    Ok(())
}

/// One command for [`begin`]: its new row, its lane, and whether to record its first
/// attempt in the same statement.
pub(super) struct BeginRow {
    pub row: command::ActiveModel,
    pub lane: String,
    pub first_attempt: bool,
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

const COMMAND_COLUMNS: Columns = &[
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
const BEGIN_TAGS: Columns = &[
    ("_cmd", Ty::Text),
    ("_lane", Ty::Text),
    ("_first", Ty::Bool),
];

/// The receipt's statement: `$1` the lanes, `$2` owner, `$3` lease until, `$4` now,
/// `$5` executing, then the rows' arrays (see [`begin`]).
fn begin_sql() -> &'static str {
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
/// `owner` (as [`try_leases`]), in one statement; answers every command's row, and the
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
pub(super) async fn begin(
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

/// Takes or renews the leases on `lanes` for `owner`; returns the lanes taken.
pub(super) async fn try_leases<C: ConnectionTrait>(
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

/// The tracked links of `keys` (those that exist).
pub(super) async fn links<C: ConnectionTrait>(
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

/// Marks commands executing with their attempt markers; returns the ids marked.
pub(super) async fn mark_executing<C: ConnectionTrait>(
    db: &C,
    batch: &[Attempt],
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let rows = batch.iter().map(|a| {
        serde_json::json!({
            "command_id": a.command_id, "before_code": a.before_code, "attempts": a.attempts,
        })
    });
    let sql = "UPDATE commands c SET status = $2, before_code = v.before_code, \
               attempts = v.attempts, updated_at = $3 \
               FROM jsonb_populate_recordset(NULL::commands, $1::jsonb) v \
               WHERE c.command_id = v.command_id AND c.status <> $4 \
               RETURNING c.command_id";
    let values = vec![
        JsonRows::collect(rows)?,
        STATUS_EXECUTING.into(),
        ts(now),
        STATUS_DONE.into(),
    ];
    strings(db, sql, values, "command_id").await
}

/// Reads the links of the commands' groups and marks the commands executing with the
/// link's code as `before_code`, in one statement; answers, for each command marked, its
/// id and link (commands already done are left out). Run under the groups' leases,
/// taken by earlier statements, so the statement's snapshot holds every commit of an
/// earlier lease holder.
pub(super) async fn first_attempts<C: ConnectionTrait>(
    db: &C,
    batch: &[FirstAttempt],
    now: DateTime<Utc>,
) -> Result<Vec<(String, Option<link::Model>)>, DbErr> {
    let rows = batch.iter().map(|a| {
        serde_json::json!({
            "command_id": a.command_id, "attempts": a.attempts, "backend": a.key.backend,
            "session_id": a.key.session_id, "group_id": a.key.group_id,
        })
    });
    let sql = "UPDATE commands c SET status = $2, before_code = k.invite_code, \
               attempts = v.attempts, updated_at = $3 \
               FROM jsonb_to_recordset($1::jsonb) AS v(command_id text, attempts int, \
                 backend text, session_id text, group_id text) \
               LEFT JOIN links k ON k.backend = v.backend AND k.session_id = v.session_id \
                 AND k.group_id = v.group_id \
               WHERE c.command_id = v.command_id AND c.status <> $4 \
               RETURNING c.command_id AS marked_command_id, k.*";
    let values = vec![
        JsonRows::collect(rows)?,
        STATUS_EXECUTING.into(),
        ts(now),
        STATUS_DONE.into(),
    ];
    db.query_all_raw(stmt(sql, values))
        .await?
        .iter()
        .map(|row| {
            let id: String = row.try_get("", "marked_command_id")?;
            let tracked = row.try_get::<Option<i64>>("", "id")?.is_some();
            let link = if tracked {
                Some(link::Model::from_query_result(row, "")?)
            } else {
                None
            };
            Ok((id, link))
        })
        .collect()
}

/// The PostgreSQL type of a column array parameter.
#[derive(Clone, Copy)]
enum Ty {
    Text,
    Int,
    Bool,
    Time,
    Bytes,
}

impl Ty {
    fn array(self) -> &'static str {
        match self {
            Ty::Text => "text[]",
            Ty::Int => "int4[]",
            Ty::Bool => "bool[]",
            Ty::Time => "timestamptz[]",
            Ty::Bytes => "bytea[]",
        }
    }
}

/// One column of a batch's rows, bound as a typed array: the values travel in binary
/// (no JSON text for the server to parse, no hex for byte strings, no timestamps to read
/// from text), and the statement's text is the same whatever the batch size.
enum Array {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i32>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Array {
    fn new(ty: Ty) -> Self {
        match ty {
            Ty::Text => Self::Text(Vec::new()),
            Ty::Int => Self::Int(Vec::new()),
            Ty::Bool => Self::Bool(Vec::new()),
            Ty::Time => Self::Time(Vec::new()),
            Ty::Bytes => Self::Bytes(Vec::new()),
        }
    }

    fn texts<S: Into<String>>(values: impl IntoIterator<Item = Option<S>>) -> Self {
        Self::Text(
            values
                .into_iter()
                .map(|v| v.map(|s| storable(s.into())))
                .collect(),
        )
    }

    /// Appends `value`, which must be of the array's type (a value not set is NULL).
    fn push(&mut self, column: &str, value: Option<Value>) -> Result<(), DbErr> {
        match (self, value) {
            (Self::Text(a), None) => a.push(None),
            (Self::Int(a), None) => a.push(None),
            (Self::Bool(a), None) => a.push(None),
            (Self::Time(a), None) => a.push(None),
            (Self::Bytes(a), None) => a.push(None),
            // Provider error texts may carry a NUL, which PostgreSQL text cannot hold.
            (Self::Text(a), Some(Value::String(v))) => a.push(v.map(storable)),
            (Self::Int(a), Some(Value::Int(v))) => a.push(v),
            (Self::Bool(a), Some(Value::Bool(v))) => a.push(v),
            (Self::Time(a), Some(Value::ChronoDateTimeUtc(v))) => a.push(v),
            (Self::Bytes(a), Some(Value::Bytes(v))) => a.push(v),
            (_, Some(other)) => {
                return Err(DbErr::Type(format!(
                    "column {column}: unexpected value {other:?}"
                )));
            }
        }
        Ok(())
    }
}

/// The columns a statement reads from one table's rows, in order.
type Columns = &'static [(&'static str, Ty)];

fn column_list(columns: Columns, prefix: &str) -> String {
    columns
        .iter()
        .map(|(name, _)| format!("{prefix}{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Numbers the parameters of a statement as its text is built.
struct Params(usize);

impl Params {
    /// `unnest($a::t[], ...) [WITH ORDINALITY] AS alias(tags..., columns..., [n])`: the
    /// rows of one table, each led by its `tags` (the command it belongs to, ...).
    fn unnest(&mut self, alias: &str, tags: Columns, columns: Columns, ordinality: bool) -> String {
        let all = || tags.iter().chain(columns);
        let arrays: Vec<String> = all()
            .map(|(_, ty)| {
                self.0 += 1;
                format!("${}::{}", self.0, ty.array())
            })
            .collect();
        let mut names: Vec<&str> = all().map(|(name, _)| *name).collect();
        if ordinality {
            names.push("n");
        }
        format!(
            "unnest({}){} AS {alias}({})",
            arrays.join(", "),
            if ordinality { " WITH ORDINALITY" } else { "" },
            names.join(", ")
        )
    }
}

/// The parameters of one statement, in order, bound in binary through sqlx (sea-orm's
/// values cannot carry an array with NULL elements).
#[derive(Default)]
struct Args(PgArguments);

impl Args {
    fn scalar<'q, T>(&mut self, value: T) -> Result<(), DbErr>
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + 'q,
    {
        self.0.add(value).map_err(|e| DbErr::Type(e.to_string()))
    }

    fn array(&mut self, array: Array) -> Result<(), DbErr> {
        match array {
            Array::Text(a) => self.scalar(a),
            Array::Int(a) => self.scalar(a),
            Array::Bool(a) => self.scalar(a),
            Array::Time(a) => self.scalar(a),
            Array::Bytes(a) => self.scalar(a),
        }
    }

    /// One array per column of `columns`, from the models' values.
    fn columns<A: ActiveModelTrait>(&mut self, rows: &[&A], columns: Columns) -> Result<(), DbErr> {
        for (name, ty) in columns {
            let column = <<A::Entity as EntityTrait>::Column as Iterable>::iter()
                .find(|c| c.as_str() == *name)
                .ok_or_else(|| DbErr::Custom(format!("no column {name}")))?;
            let mut array = Array::new(*ty);
            for row in rows {
                let value = match row.get(column) {
                    ActiveValue::Set(v) | ActiveValue::Unchanged(v) => Some(v),
                    ActiveValue::NotSet => None,
                };
                array.push(name, value)?;
            }
            self.array(array)?;
        }
        Ok(())
    }

    /// The rows' command tags (`_cmd`), then their columns.
    fn tagged<A: ActiveModelTrait>(
        &mut self,
        rows: &[(String, A)],
        columns: Columns,
    ) -> Result<(), DbErr> {
        self.array(Array::texts(rows.iter().map(|(tag, _)| Some(tag.as_str()))))?;
        let models: Vec<&A> = rows.iter().map(|(_, row)| row).collect();
        self.columns(&models, columns)
    }

    /// Runs `sql` with these parameters on a connection of `db`'s pool, mapping errors as
    /// sea-orm does (so that connection problems are told apart from the others).
    async fn fetch_all(
        self,
        db: &DatabaseConnection,
        sql: &'static str,
    ) -> Result<Vec<QueryResult>, DbErr> {
        let mut conn = db
            .get_postgres_connection_pool()
            .acquire()
            .await
            .map_err(|e| match e {
                sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
                sqlx::Error::PoolClosed => {
                    DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed)
                }
                e => DbErr::Conn(RuntimeErr::SqlxError(e.into())),
            })?;
        let rows = sqlx::query_with(sql, self.0)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| DbErr::Query(RuntimeErr::SqlxError(e.into())))?;
        Ok(rows.into_iter().map(QueryResult::from).collect())
    }
}

const LINK_COLUMNS: Columns = &[
    ("backend", Ty::Text),
    ("session_id", Ty::Text),
    ("group_id", Ty::Text),
    ("invite_code", Ty::Text),
    ("issued_at", Ty::Time),
    ("expires_at", Ty::Time),
    ("expires_at_source", Ty::Text),
    ("rotation_count", Ty::Int),
    ("last_command_id", Ty::Text),
    ("last_rotated_at", Ty::Time),
    ("updated_at", Ty::Time),
];

const HISTORY_COLUMNS: Columns = &[
    ("backend", Ty::Text),
    ("session_id", Ty::Text),
    ("group_id", Ty::Text),
    ("command_id", Ty::Text),
    ("command_type", Ty::Text),
    ("trigger", Ty::Text),
    ("outcome", Ty::Text),
    ("attempts", Ty::Int),
    ("old_code", Ty::Text),
    ("new_code", Ty::Text),
    ("error_kind", Ty::Text),
    ("error_message", Ty::Text),
    ("started_at", Ty::Time),
    ("occurred_at", Ty::Time),
];

const OUTBOX_COLUMNS: Columns = &[
    ("exchange", Ty::Text),
    ("routing_key", Ty::Text),
    ("message_id", Ty::Text),
    ("message_type", Ty::Text),
    ("correlation_id", Ty::Text),
    ("headers", Ty::Text),
    ("payload", Ty::Bytes),
    ("created_at", Ty::Time),
];

/// A command's outcome (its `_cmd` is the command id).
const OUTCOME_COLUMNS: Columns = &[
    ("outcome", Ty::Text),
    ("attempts", Ty::Int),
    ("new_code", Ty::Text),
    ("error_kind", Ty::Text),
    ("error_message", Ty::Text),
    ("http_status", Ty::Int),
    ("event_id", Ty::Text),
];

const LEASE_COLUMNS: Columns = &[("lane", Ty::Text), ("owner", Ty::Text)];

/// Rows tagged with the command they belong to.
const TAG: Columns = &[("_cmd", Ty::Text)];

/// The group commit's statement: `$1` done, `$2` now, `$3` a released lease's time, then
/// the outcomes, links, history, outbox and lease arrays (see [`commit`]).
fn commit_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let mut p = Params(3);
        let outcomes = p.unnest("v", TAG, OUTCOME_COLUMNS, false);
        let links = p.unnest("r", TAG, LINK_COLUMNS, false);
        let history = p.unnest("r", TAG, HISTORY_COLUMNS, true);
        let outbox = p.unnest("r", TAG, OUTBOX_COLUMNS, true);
        let leases = p.unnest("e", TAG, LEASE_COLUMNS, false);
        let updates = LINK_COLUMNS[3..]
            .iter()
            .map(|(name, _)| format!("{name} = excluded.{name}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "WITH done AS ( \
               UPDATE commands c SET status = $1, outcome = v.outcome, attempts = v.attempts, \
                 new_code = v.new_code, error_kind = v.error_kind, \
                 error_message = v.error_message, http_status = v.http_status, \
                 event_id = v.event_id, updated_at = $2, finished_at = $2 \
               FROM {outcomes} \
               WHERE c.command_id = v._cmd AND c.status <> $1 \
               RETURNING c.command_id), \
             ids AS (SELECT jsonb_object_agg(command_id, true) AS m FROM done), \
             up AS (INSERT INTO links ({link_cols}) SELECT {link_vals} FROM {links} \
               WHERE (SELECT m FROM ids) ? r._cmd \
               ON CONFLICT (backend, session_id, group_id) DO UPDATE SET {updates}), \
             hist AS (INSERT INTO link_history ({hist_cols}) SELECT {hist_vals} FROM {history} \
               WHERE (SELECT m FROM ids) ? r._cmd ORDER BY r.n), \
             box AS (INSERT INTO outbox ({box_cols}) SELECT {box_vals} FROM {outbox} \
               WHERE (SELECT m FROM ids) ? r._cmd ORDER BY r.n), \
             rel AS (UPDATE group_leases g SET lease_until = $3 FROM {leases} \
               WHERE g.lane = e.lane AND g.owner = e.owner AND (SELECT m FROM ids) ? e._cmd) \
             SELECT command_id FROM done",
            link_cols = column_list(LINK_COLUMNS, ""),
            link_vals = column_list(LINK_COLUMNS, "r."),
            hist_cols = column_list(HISTORY_COLUMNS, ""),
            hist_vals = column_list(HISTORY_COLUMNS, "r."),
            box_cols = column_list(OUTBOX_COLUMNS, ""),
            box_vals = column_list(OUTBOX_COLUMNS, "r."),
        )
    })
}

/// The group commit as one statement: marks the commands done (skipping any already
/// done) and, for those only, upserts their links, appends history and outbox rows (in
/// order) and releases their leases. Returns the ids written.
pub(super) async fn commit(
    db: &DatabaseConnection,
    batch: &[&Completion],
    t: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let mut deferred = Deferred::default();
    for c in batch {
        stage_completion(c, &mut deferred, t);
    }
    let mut args = Args::default();
    args.scalar(STATUS_DONE)?;
    args.scalar(t)?;
    args.scalar(super::RELEASED)?;
    let errors: Vec<_> = batch.iter().map(|c| c.error()).collect();
    let outcomes = [
        Array::texts(batch.iter().map(|c| Some(c.cmd.id.to_string()))),
        Array::texts(batch.iter().map(|c| Some(c.outcome.as_str()))),
        Array::Int(batch.iter().map(|c| Some(c.attempts)).collect()),
        Array::texts(batch.iter().map(|c| c.new_code())),
        Array::texts(errors.iter().map(|e| e.map(|e| e.kind.as_str()))),
        Array::texts(errors.iter().map(|e| e.map(|e| e.message.as_str()))),
        Array::Int(
            errors
                .iter()
                .map(|e| e.and_then(|e| e.http_status).map(i32::from))
                .collect(),
        ),
        Array::texts(batch.iter().map(|c| c.event_id())),
    ];
    for array in outcomes {
        args.array(array)?;
    }
    args.tagged(&deferred.links, LINK_COLUMNS)?;
    args.tagged(&deferred.history, HISTORY_COLUMNS)?;
    args.tagged(&deferred.outbox, OUTBOX_COLUMNS)?;
    let leases = &deferred.leases;
    args.array(Array::texts(
        leases.iter().map(|(tag, _)| Some(tag.as_str())),
    ))?;
    args.array(Array::texts(
        leases.iter().map(|(_, (lane, _))| Some(lane.as_str())),
    ))?;
    args.array(Array::texts(
        leases.iter().map(|(_, (_, owner))| Some(owner.as_str())),
    ))?;
    args.fetch_all(db, commit_sql())
        .await?
        .iter()
        .map(|row| row.try_get::<String>("", "command_id"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unnest_numbers_each_column_array_after_the_previous_ones() {
        let mut p = Params(3);
        let first = p.unnest("r", TAG, &[("a", Ty::Int), ("b", Ty::Bytes)], true);
        let second = p.unnest("e", TAG, &[("c", Ty::Time)], false);
        assert_eq!(
            first,
            "unnest($4::text[], $5::int4[], $6::bytea[]) WITH ORDINALITY AS r(_cmd, a, b, n)"
        );
        assert_eq!(
            second,
            "unnest($7::text[], $8::timestamptz[]) AS e(_cmd, c)"
        );
    }

    #[test]
    fn an_array_takes_its_own_type_and_nulls_and_refuses_another() {
        let mut texts = Array::new(Ty::Text);
        texts
            .push("t", Some(Value::String(Some("a\0b".into()))))
            .unwrap();
        texts.push("t", Some(Value::String(None))).unwrap();
        texts.push("t", None).unwrap();
        let Array::Text(values) = &texts else {
            panic!("a text array")
        };
        assert_eq!(values, &[Some("a\u{FFFD}b".to_owned()), None, None]);
        let err = texts.push("t", Some(Value::Int(Some(1)))).unwrap_err();
        assert!(err.to_string().contains("column t"), "{err}");
    }

    #[test]
    fn the_statements_name_every_column_they_bind() {
        // One parameter per array: the last placeholder is the number of values bound.
        let commit_params = 3 + [
            OUTCOME_COLUMNS,
            LINK_COLUMNS,
            HISTORY_COLUMNS,
            OUTBOX_COLUMNS,
            LEASE_COLUMNS,
        ]
        .iter()
        .map(|c| c.len() + 1)
        .sum::<usize>();
        assert!(commit_sql().contains(&format!("${commit_params}::")));
        assert!(!commit_sql().contains(&format!("${}::", commit_params + 1)));
        let begin_params = 5 + BEGIN_TAGS.len() + COMMAND_COLUMNS.len();
        assert!(begin_sql().contains(&format!("${begin_params}::")));
        assert!(!begin_sql().contains(&format!("${}::", begin_params + 1)));
    }

    /// Every column a statement binds exists in its table's entity, and the receipt
    /// inserts every column of `commands` (a column left out would silently take its
    /// default).
    #[test]
    fn the_column_lists_match_the_entities() {
        fn names<E: EntityTrait>() -> Vec<String> {
            <E::Column as Iterable>::iter()
                .map(|c| c.as_str().to_owned())
                .collect()
        }
        let listed = |columns: Columns| -> Vec<String> {
            columns.iter().map(|(n, _)| (*n).to_owned()).collect()
        };
        assert_eq!(listed(COMMAND_COLUMNS), names::<command::Entity>());
        for (columns, entity) in [
            (LINK_COLUMNS, names::<link::Entity>()),
            (HISTORY_COLUMNS, names::<entity::history::Entity>()),
            (OUTBOX_COLUMNS, names::<entity::outbox::Entity>()),
            (OUTCOME_COLUMNS, names::<command::Entity>()),
        ] {
            for name in listed(columns) {
                assert!(entity.contains(&name), "{name} is not a column");
            }
        }
    }
}
