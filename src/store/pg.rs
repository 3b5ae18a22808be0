//! PostgreSQL forms of the batched statements: each takes its rows as parameters whose
//! number does not depend on the batch size, so its SQL text is the same for any batch
//! (prepared once per connection) and a whole batch costs one round trip. The outcome
//! commit is a single statement of data-modifying CTEs (one round trip and one
//! synchronous commit per batch) and takes its rows as typed arrays, one per column,
//! sent in binary; the other statements take one JSON parameter.
//!
//! Hash and merge joins are off in these sessions (see `Store::connect`), so a join
//! between two CTEs would be a nested loop over both, quadratic in the batch (at 128 rows
//! it took half of each statement, measured): rows are matched to the commands written
//! through a `jsonb` object keyed by command id, built once per statement, and the
//! links are read per row by index.

use chrono::{DateTime, SecondsFormat, Utc};
use entity::{command, link};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend,
    DbErr, EntityTrait, FromQueryResult, IdenStatic, Iterable, RuntimeErr, Statement, Value,
    sea_query::value::sea_value_to_json_value,
    sqlx::{self, Arguments, Row, postgres::PgArguments},
};
use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value as Json;

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

/// The set columns of an active model as a JSON object keyed by column name (values as
/// [`json_value`] writes them), followed by `extra` fields.
struct ModelRow<'a, A> {
    row: &'a A,
    extra: &'a [(&'static str, &'a Json)],
}

impl<A: ActiveModelTrait> Serialize for ModelRow<'_, A> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for col in <<A::Entity as EntityTrait>::Column as Iterable>::iter() {
            if let ActiveValue::Set(v) | ActiveValue::Unchanged(v) = self.row.get(col) {
                map.serialize_entry(col.as_str(), &SqlValue(&v))?;
            }
        }
        for (key, value) in self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// One column value, serialized as [`json_value`] converts it.
struct SqlValue<'a>(&'a Value);

impl Serialize for SqlValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Bool(Some(b)) => s.serialize_bool(*b),
            Value::Int(Some(n)) => s.serialize_i32(*n),
            Value::BigInt(Some(n)) => s.serialize_i64(*n),
            // PostgreSQL text cannot hold NUL (`jsonb` refuses its escape): provider
            // error texts may carry one. Command fields are cleaned when parsed.
            Value::String(Some(text)) if text.contains('\0') => {
                s.serialize_str(&text.replace('\0', "\u{FFFD}"))
            }
            Value::String(Some(text)) => s.serialize_str(text),
            Value::Bytes(Some(b)) => s.collect_str(&format_args!("\\x{}", hex::encode(b))),
            Value::ChronoDateTimeUtc(Some(t)) => s.collect_str(&t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            other => json_value(other).serialize(s),
        }
    }
}

/// A column value as PostgreSQL's JSON-to-record conversion reads it.
fn json_value(v: &Value) -> Json {
    match v {
        Value::Bytes(Some(b)) => Json::String(format!("\\x{}", hex::encode(b.as_slice()))),
        Value::ChronoDateTimeUtc(Some(t)) => {
            Json::String(t.to_rfc3339_opts(SecondsFormat::Micros, true))
        }
        other => sea_value_to_json_value(other),
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

fn begin_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "WITH lease AS (INSERT INTO group_leases (lane, owner, lease_until) \
               SELECT DISTINCT e #>> '{{}}', $3, $4 FROM jsonb_array_elements($2::jsonb) e \
               ON CONFLICT (lane) DO UPDATE SET owner = excluded.owner, \
               lease_until = excluded.lease_until \
               WHERE group_leases.owner = excluded.owner OR group_leases.lease_until < $5 \
               RETURNING lane), \
             x AS (SELECT e, e->>'command_id' AS cid, \
               coalesce((e->>'_first')::boolean, false) \
                 AND (e->>'_lane') IN (SELECT lane FROM lease) AS first \
               FROM jsonb_array_elements($1::jsonb) e), \
             v AS (SELECT x.cid, x.first, lk.link, jsonb_populate_record(NULL::commands, \
                 CASE WHEN x.first THEN x.e || jsonb_build_object('status', $6::text, \
                   'attempts', 1, 'before_code', (lk.link).invite_code) ELSE x.e END) AS rec \
               FROM x LEFT JOIN LATERAL (SELECT l AS link FROM links l \
                 WHERE x.first AND l.backend = x.e->>'backend' \
                   AND l.session_id = x.e->>'session_id' AND l.group_id = x.e->>'group_id' \
                 FOR SHARE OF l) lk ON true), \
             ins AS (INSERT INTO commands SELECT (v.rec).* FROM v \
               ON CONFLICT (command_id) DO NOTHING RETURNING *), \
             found AS (SELECT ins.*, true AS fresh FROM ins UNION ALL \
               SELECT c.*, false FROM v CROSS JOIN LATERAL \
                 (SELECT * FROM commands c WHERE c.command_id = v.cid) c \
               WHERE v.cid NOT IN (SELECT command_id FROM ins)), \
             m AS (SELECT jsonb_object_agg(cid, first) AS firsts, \
               jsonb_object_agg(cid, to_jsonb(link)) FILTER (WHERE (link).id IS NOT NULL) \
                 AS links FROM v) \
             SELECT found.*, \
               found.fresh AND coalesce((m.firsts ->> found.command_id)::boolean, false) \
                 AS first_recorded, {link}, \
               (SELECT coalesce(jsonb_agg(lane), '[]'::jsonb) FROM lease) AS taken_lanes \
             FROM found CROSS JOIN m \
             LEFT JOIN LATERAL jsonb_populate_record(NULL::links, m.links -> found.command_id) l \
               ON true",
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
/// provider). Rows inserted by a concurrent transaction not yet visible are missing from
/// the answer (the caller reads them again).
pub(super) async fn begin<C: ConnectionTrait>(
    db: &C,
    rows: &[BeginRow],
    lanes: &[&String],
    owner: &str,
    until: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(Vec<Begun>, Vec<String>), DbErr> {
    // `leased` is left false: the caller matches the lanes taken.
    let mut params = JsonRows::new();
    for r in rows {
        let (lane, first) = (Json::String(r.lane.clone()), Json::Bool(r.first_attempt));
        params.push(&ModelRow {
            row: &r.row,
            extra: &[("_lane", &lane), ("_first", &first)],
        })?;
    }
    let values = vec![
        params.param()?,
        JsonRows::collect(lanes)?,
        owner.into(),
        ts(until),
        ts(now),
        STATUS_EXECUTING.into(),
    ];
    let result = db.query_all_raw(stmt(begin_sql(), values)).await?;
    let mut taken = Vec::new();
    if let Some(first) = result.first() {
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
    Time,
    Bytes,
}

/// One column of a batch's rows, bound as a typed array: the values travel in binary
/// (no JSON text for the server to parse, no hex for byte strings, no timestamps to read
/// from text), and the statement's text is the same whatever the batch size.
enum Array {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i32>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Array {
    fn new(ty: Ty) -> Self {
        match ty {
            Ty::Text => Self::Text(Vec::new()),
            Ty::Int => Self::Int(Vec::new()),
            Ty::Time => Self::Time(Vec::new()),
            Ty::Bytes => Self::Bytes(Vec::new()),
        }
    }

    fn texts<S: Into<String>>(values: impl IntoIterator<Item = Option<S>>) -> Self {
        Self::Text(values.into_iter().map(|v| v.map(clean_text)).collect())
    }

    /// Appends `value`, which must be of the array's type (a value not set is NULL).
    fn push(&mut self, column: &str, value: Option<Value>) -> Result<(), DbErr> {
        match (self, value) {
            (Self::Text(a), None) => a.push(None),
            (Self::Int(a), None) => a.push(None),
            (Self::Time(a), None) => a.push(None),
            (Self::Bytes(a), None) => a.push(None),
            (Self::Text(a), Some(Value::String(v))) => a.push(v.map(clean_text)),
            (Self::Int(a), Some(Value::Int(v))) => a.push(v),
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

    fn add_to(self, args: &mut PgArguments) -> Result<(), DbErr> {
        let added = match self {
            Self::Text(a) => args.add(a),
            Self::Int(a) => args.add(a),
            Self::Time(a) => args.add(a),
            Self::Bytes(a) => args.add(a),
        };
        added.map_err(|e| DbErr::Type(e.to_string()))
    }
}

/// PostgreSQL text cannot hold NUL: provider error texts may carry one (command fields
/// are cleaned when parsed).
fn clean_text<S: Into<String>>(text: S) -> String {
    let text = text.into();
    if text.contains('\0') {
        text.replace('\0', "\u{FFFD}")
    } else {
        text
    }
}

/// The columns a statement reads from one table's rows, in order.
type Columns = &'static [(&'static str, Ty)];

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

/// The outcomes' `_cmd` is the command id itself.
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

/// Numbers the parameters of a statement as its text is built.
struct Params(usize);

impl Params {
    /// `unnest($a::t[], ...) [WITH ORDINALITY] AS alias(_cmd, columns..., [n])`: the rows
    /// of one table, each tagged with its command (`_cmd`).
    fn unnest(&mut self, alias: &str, columns: Columns, ordinality: bool) -> String {
        let mut arrays = vec![self.next("text[]")];
        let mut names = vec!["_cmd"];
        for (name, ty) in columns {
            let ty = match ty {
                Ty::Text => "text[]",
                Ty::Int => "int4[]",
                Ty::Time => "timestamptz[]",
                Ty::Bytes => "bytea[]",
            };
            arrays.push(self.next(ty));
            names.push(name);
        }
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

    fn next(&mut self, ty: &str) -> String {
        self.0 += 1;
        format!("${}::{ty}", self.0)
    }
}

/// The arrays of `rows` (tagged with their commands) for `columns`, appended to `args`.
fn add_model_arrays<A: ActiveModelTrait>(
    args: &mut PgArguments,
    rows: &[(String, A)],
    columns: Columns,
) -> Result<(), DbErr> {
    Array::texts(rows.iter().map(|(tag, _)| Some(tag.as_str()))).add_to(args)?;
    for (name, ty) in columns {
        let column = <<A::Entity as EntityTrait>::Column as Iterable>::iter()
            .find(|c| c.as_str() == *name)
            .ok_or_else(|| DbErr::Custom(format!("no column {name}")))?;
        let mut array = Array::new(*ty);
        for (_, row) in rows {
            let value = match row.get(column) {
                ActiveValue::Set(v) | ActiveValue::Unchanged(v) => Some(v),
                ActiveValue::NotSet => None,
            };
            array.push(name, value)?;
        }
        array.add_to(args)?;
    }
    Ok(())
}

/// The group commit's statement: `$1` done, `$2` now, `$3` a released lease's time, then
/// the outcomes, links, history, outbox and lease arrays (see [`commit`]).
fn commit_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let mut p = Params(3);
        let outcomes = p.unnest("v", OUTCOME_COLUMNS, false);
        let links = p.unnest("r", LINK_COLUMNS, false);
        let history = p.unnest("r", HISTORY_COLUMNS, true);
        let outbox = p.unnest("r", OUTBOX_COLUMNS, true);
        let leases = p.unnest("e", LEASE_COLUMNS, false);
        let list = |columns: Columns, prefix: &str| {
            columns
                .iter()
                .map(|(name, _)| format!("{prefix}{name}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
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
            link_cols = list(LINK_COLUMNS, ""),
            link_vals = list(LINK_COLUMNS, "r."),
            hist_cols = list(HISTORY_COLUMNS, ""),
            hist_vals = list(HISTORY_COLUMNS, "r."),
            box_cols = list(OUTBOX_COLUMNS, ""),
            box_vals = list(OUTBOX_COLUMNS, "r."),
        )
    })
}

/// The group commit as one statement: marks the commands done (skipping any already
/// done) and, for those only, upserts their links, appends history and outbox rows (in
/// order) and releases their leases. Returns the ids written.
///
/// Its rows are bound as typed arrays through sqlx (sea-orm's values cannot carry an
/// array with NULL elements): the JSON parameters it took before cost PostgreSQL more to
/// read than the rows cost to write (the payload alone was twice its size in hex).
pub(super) async fn commit(
    db: &DatabaseConnection,
    batch: &[&Completion],
    t: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let mut deferred = Deferred::default();
    for c in batch {
        stage_completion(c, &mut deferred, t);
    }
    let type_err = |e: sqlx::error::BoxDynError| DbErr::Type(e.to_string());
    let mut args = PgArguments::default();
    args.add(STATUS_DONE).map_err(type_err)?;
    args.add(t).map_err(type_err)?;
    args.add(super::RELEASED).map_err(type_err)?;
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
        array.add_to(&mut args)?;
    }
    add_model_arrays(&mut args, &deferred.links, LINK_COLUMNS)?;
    add_model_arrays(&mut args, &deferred.history, HISTORY_COLUMNS)?;
    add_model_arrays(&mut args, &deferred.outbox, OUTBOX_COLUMNS)?;
    let leases = &deferred.leases;
    let lease_arrays = [
        Array::texts(leases.iter().map(|(tag, _)| Some(tag.as_str()))),
        Array::texts(leases.iter().map(|(_, (lane, _))| Some(lane.as_str()))),
        Array::texts(leases.iter().map(|(_, (_, owner))| Some(owner.as_str()))),
    ];
    for array in lease_arrays {
        array.add_to(&mut args)?;
    }

    let pool = db.get_postgres_connection_pool();
    let mut conn = pool.acquire().await.map_err(|e| match e {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        e => DbErr::Conn(RuntimeErr::SqlxError(e.into())),
    })?;
    let query_err = |e: sqlx::Error| DbErr::Query(RuntimeErr::SqlxError(e.into()));
    sqlx::query_with(commit_sql(), args)
        .fetch_all(&mut *conn)
        .await
        .map_err(query_err)?
        .iter()
        .map(|row| row.try_get::<String, _>("command_id").map_err(query_err))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use sea_orm::Set;

    #[test]
    fn a_model_row_is_written_as_postgresql_reads_it() {
        let t = Utc.with_ymd_and_hms(2026, 11, 23, 1, 2, 3).unwrap()
            + chrono::Duration::microseconds(450);
        let row = entity::outbox::ActiveModel {
            id: Set(7),
            exchange: Set("x \"q\"".into()),
            routing_key: Set("k".into()),
            message_id: Set(None),
            payload: Set(vec![0xff, 0x00, b'{']),
            created_at: Set(t),
            ..Default::default()
        };
        let tag = Json::String("cmd-1".into());
        let mut rows = JsonRows::new();
        rows.push(&ModelRow {
            row: &row,
            extra: &[("_cmd", &tag)],
        })
        .unwrap();
        let Value::String(Some(text)) = rows.param().unwrap() else {
            panic!("a text parameter")
        };
        let got: Json = serde_json::from_str(&text).unwrap();
        assert_eq!(
            got,
            serde_json::json!([{
                "id": 7,
                "exchange": "x \"q\"",
                "routing_key": "k",
                "message_id": null,
                "payload": "\\xff007b",
                "created_at": "2026-11-23T01:02:03.000450Z",
                "_cmd": "cmd-1",
            }])
        );
    }
}
