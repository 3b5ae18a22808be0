//! What the PostgreSQL forms of the batched statements share (each lives with its
//! concern). Each takes its rows as parameters whose number does not depend on the batch
//! size, so its SQL text is the same for any batch (prepared once per connection) and a
//! whole batch costs one round trip. The outcome commit is a single statement of
//! data-modifying CTEs (one round trip and one synchronous commit per batch). The receipt
//! and the commit take their rows as typed arrays, one per column, sent in binary; the
//! rarer statements one JSON parameter.
//!
//! Hash and merge joins are off in these sessions (see `Store::connect`), so a join
//! between two CTEs would be a nested loop over both, quadratic in the batch (at 128 rows
//! it took half of each statement, measured): rows are matched to the commands written
//! through a `jsonb` object keyed by command id, built once per statement, and the
//! links are read per row by index.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue, ConnAcquireErr, ConnectionTrait, DatabaseConnection, DbBackend,
    DbErr, EntityTrait, IdenStatic, Iterable, QueryResult, RuntimeErr, Statement, Value,
    sqlx::{self, Arguments, postgres::PgArguments},
};
use serde::Serialize;

use crate::domain::command::storable;

pub(super) fn stmt(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// The rows of one JSON array parameter, serialized straight from their values (no
/// intermediate JSON tree to build and drop); sent as text, which the statement casts
/// to `jsonb`.
pub(super) struct JsonRows(Vec<u8>);

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

    pub(super) fn collect<T: Serialize>(rows: impl IntoIterator<Item = T>) -> Result<Value, DbErr> {
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
pub(super) async fn strings<C: ConnectionTrait>(
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

pub(super) fn ts(t: DateTime<Utc>) -> Value {
    t.into()
}

/// The PostgreSQL type of a column array parameter.
#[derive(Clone, Copy)]
pub(super) enum Ty {
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
pub(super) enum Array {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i32>>),
    Bool(Vec<Option<bool>>),
    Time(Vec<Option<DateTime<Utc>>>),
    Bytes(Vec<Option<Vec<u8>>>),
}

impl Array {
    pub(super) fn new(ty: Ty) -> Self {
        match ty {
            Ty::Text => Self::Text(Vec::new()),
            Ty::Int => Self::Int(Vec::new()),
            Ty::Bool => Self::Bool(Vec::new()),
            Ty::Time => Self::Time(Vec::new()),
            Ty::Bytes => Self::Bytes(Vec::new()),
        }
    }

    pub(super) fn texts<S: Into<String>>(values: impl IntoIterator<Item = Option<S>>) -> Self {
        Self::Text(
            values
                .into_iter()
                .map(|v| v.map(|s| storable(s.into())))
                .collect(),
        )
    }

    /// Appends `value`, which must be of the array's type (a value not set is NULL).
    pub(super) fn push(&mut self, column: &str, value: Option<Value>) -> Result<(), DbErr> {
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
pub(super) type Columns = &'static [(&'static str, Ty)];

pub(super) fn column_list(columns: Columns, prefix: &str) -> String {
    columns
        .iter()
        .map(|(name, _)| format!("{prefix}{name}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Numbers the parameters of a statement as its text is built.
pub(super) struct Params(pub(super) usize);

impl Params {
    /// `unnest($a::t[], ...) [WITH ORDINALITY] AS alias(tags..., columns..., [n])`: the
    /// rows of one table, each led by its `tags` (the command it belongs to, ...).
    pub(super) fn unnest(
        &mut self,
        alias: &str,
        tags: Columns,
        columns: Columns,
        ordinality: bool,
    ) -> String {
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
pub(super) struct Args(PgArguments);

impl Args {
    pub(super) fn scalar<'q, T>(&mut self, value: T) -> Result<(), DbErr>
    where
        T: sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + 'q,
    {
        self.0.add(value).map_err(|e| DbErr::Type(e.to_string()))
    }

    pub(super) fn array(&mut self, array: Array) -> Result<(), DbErr> {
        match array {
            Array::Text(a) => self.scalar(a),
            Array::Int(a) => self.scalar(a),
            Array::Bool(a) => self.scalar(a),
            Array::Time(a) => self.scalar(a),
            Array::Bytes(a) => self.scalar(a),
        }
    }

    /// One array per column of `columns`, from the models' values.
    pub(super) fn columns<A: ActiveModelTrait>(
        &mut self,
        rows: &[&A],
        columns: Columns,
    ) -> Result<(), DbErr> {
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
    pub(super) fn tagged<A: ActiveModelTrait>(
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
    pub(super) async fn fetch_all(
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows tagged with the command they belong to.
    const TAG: Columns = &[("_cmd", Ty::Text)];

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
}
