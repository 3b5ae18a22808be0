//! PostgreSQL forms of the batched statements: each takes its rows as one JSON
//! parameter, so its SQL text is the same whatever the batch size (prepared once per
//! connection) and a whole batch costs one round trip. The outcome commit is a single
//! statement of data-modifying CTEs: one round trip and one synchronous commit per batch.
//!
//! Hash and merge joins are off in these sessions (see `Store::connect`), so a join
//! between two CTEs would be a nested loop over both, quadratic in the batch (at 128 rows
//! it took half of each statement, measured): rows are matched to the commands written
//! through a `jsonb` object keyed by command id, built once per statement, and the
//! links are read per row by index.

use chrono::{DateTime, SecondsFormat, Utc};
use entity::{command, link};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ConnectionTrait, DbBackend, DbErr, EntityTrait, FromQueryResult,
    IdenStatic, Iterable, Statement, Value, sea_query::value::sea_value_to_json_value,
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

/// A command's outcome, as the commit's `commands` update reads it.
#[derive(Serialize)]
struct OutcomeRow<'a> {
    command_id: String,
    outcome: &'a str,
    attempts: i32,
    new_code: Option<String>,
    error_kind: Option<&'a str>,
    error_message: Option<&'a str>,
    http_status: Option<u16>,
    event_id: Option<String>,
}

/// A lease the commit releases, tagged with its command.
#[derive(Serialize)]
struct LeaseRow<'a> {
    #[serde(rename = "_cmd")]
    cmd: &'a str,
    lane: &'a str,
    owner: &'a str,
}

/// Rows tagged with the command they belong to (`_cmd`), as one parameter.
fn tagged_rows<A: ActiveModelTrait>(rows: &[(String, A)]) -> Result<Value, DbErr> {
    let mut out = JsonRows::new();
    for (tag, row) in rows {
        let tag = Json::String(tag.clone());
        out.push(&ModelRow {
            row,
            extra: &[("_cmd", &tag)],
        })?;
    }
    out.param()
}

/// The group commit as one statement: marks the commands done (skipping any already
/// done) and, for those only, upserts their links, appends history and outbox rows (in
/// order) and releases their leases. Returns the ids written.
pub(super) async fn commit<C: ConnectionTrait>(
    db: &C,
    batch: &[&Completion],
    t: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let outcomes = JsonRows::collect(batch.iter().map(|c| {
        let err = c.error();
        OutcomeRow {
            command_id: c.cmd.id.to_string(),
            outcome: c.outcome.as_str(),
            attempts: c.attempts,
            new_code: c.new_code(),
            error_kind: err.map(|e| e.kind.as_str()),
            error_message: err.map(|e| e.message.as_str()),
            http_status: err.and_then(|e| e.http_status),
            event_id: c.event_id(),
        }
    }))?;
    let mut deferred = Deferred::default();
    for c in batch {
        stage_completion(c, &mut deferred, t);
    }
    let links = tagged_rows(&deferred.links)?;
    let history = tagged_rows(&deferred.history)?;
    let outbox = tagged_rows(&deferred.outbox)?;
    let leases = JsonRows::collect(deferred.leases.iter().map(|(tag, (lane, owner))| LeaseRow {
        cmd: tag,
        lane,
        owner,
    }))?;
    let sql = "WITH done AS ( \
            UPDATE commands c SET status = $6, outcome = v.outcome, attempts = v.attempts, \
              new_code = v.new_code, error_kind = v.error_kind, \
              error_message = v.error_message, http_status = v.http_status, \
              event_id = v.event_id, updated_at = $7, finished_at = $7 \
            FROM jsonb_populate_recordset(NULL::commands, $1::jsonb) v \
            WHERE c.command_id = v.command_id AND c.status <> $6 \
            RETURNING c.command_id), \
          ids AS (SELECT jsonb_object_agg(command_id, true) AS m FROM done), \
          up AS ( \
            INSERT INTO links (backend, session_id, group_id, invite_code, issued_at, \
              expires_at, expires_at_source, rotation_count, last_command_id, \
              last_rotated_at, updated_at) \
            SELECT r.backend, r.session_id, r.group_id, r.invite_code, r.issued_at, \
              r.expires_at, r.expires_at_source, r.rotation_count, r.last_command_id, \
              r.last_rotated_at, r.updated_at \
            FROM jsonb_array_elements($2::jsonb) e, jsonb_populate_record(NULL::links, e) r \
            WHERE (SELECT m FROM ids) ? (e->>'_cmd') \
            ON CONFLICT (backend, session_id, group_id) DO UPDATE SET \
              invite_code = excluded.invite_code, issued_at = excluded.issued_at, \
              expires_at = excluded.expires_at, \
              expires_at_source = excluded.expires_at_source, \
              rotation_count = excluded.rotation_count, \
              last_command_id = excluded.last_command_id, \
              last_rotated_at = excluded.last_rotated_at, updated_at = excluded.updated_at), \
          hist AS ( \
            INSERT INTO link_history (backend, session_id, group_id, command_id, \
              command_type, trigger, outcome, attempts, old_code, new_code, error_kind, \
              error_message, started_at, occurred_at) \
            SELECT r.backend, r.session_id, r.group_id, r.command_id, r.command_type, \
              r.trigger, r.outcome, r.attempts, r.old_code, r.new_code, r.error_kind, \
              r.error_message, r.started_at, r.occurred_at \
            FROM jsonb_array_elements($3::jsonb) WITH ORDINALITY AS e(v, n), \
              jsonb_populate_record(NULL::link_history, e.v) r \
            WHERE (SELECT m FROM ids) ? (e.v->>'_cmd') ORDER BY e.n), \
          box AS ( \
            INSERT INTO outbox (exchange, routing_key, message_id, message_type, \
              correlation_id, headers, payload, created_at) \
            SELECT r.exchange, r.routing_key, r.message_id, r.message_type, \
              r.correlation_id, r.headers, r.payload, r.created_at \
            FROM jsonb_array_elements($4::jsonb) WITH ORDINALITY AS e(v, n), \
              jsonb_populate_record(NULL::outbox, e.v) r \
            WHERE (SELECT m FROM ids) ? (e.v->>'_cmd') ORDER BY e.n), \
          rel AS ( \
            UPDATE group_leases g SET lease_until = $8 FROM jsonb_array_elements($5::jsonb) e \
            WHERE g.lane = e->>'lane' AND g.owner = e->>'owner' \
              AND (SELECT m FROM ids) ? (e->>'_cmd')) \
        SELECT command_id FROM done";
    let values = vec![
        outcomes,
        links,
        history,
        outbox,
        leases,
        STATUS_DONE.into(),
        ts(t),
        ts(super::RELEASED),
    ];
    strings(db, sql, values, "command_id").await
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
