//! The `commands` table: a command's row from its receipt (with its group's lease, and on
//! PostgreSQL its first attempt, in one statement) through its attempt markers to a
//! replay's new cycle; the outcome is written by [`super::commit`].

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use entity::{command, history, link};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, FromQueryResult,
    QueryFilter, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};

use super::{
    Dialect, GroupKey, OUTCOME_REPLAYED, STATUS_DONE, STATUS_EXECUTING, STATUS_RECEIVED, Store,
    StoreError, now,
    pg::{JsonRows, stmt, strings, ts},
    receipt::{BeginRow, pg_begin, received_row},
};
use crate::domain::{BackendError, Command, CommandType};

/// One command's attempt marker, written before its reset call.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub command_id: String,
    pub before_code: Option<String>,
    pub attempts: i32,
}

/// A command's first attempt with the stored code as the one replaced
/// ([`Store::first_attempt_many`]).
#[derive(Clone, Debug)]
pub struct FirstAttempt {
    pub command_id: String,
    pub key: GroupKey,
    pub attempts: i32,
}

impl Store {
    /// Records each command as received unless its row exists (two statements whatever
    /// the number of commands); returns the rows in the order of `cmds`.
    pub async fn begin_commands(
        &self,
        cmds: &[Command],
    ) -> Result<Vec<command::Model>, StoreError> {
        let t = now();
        let found = match self.dialect {
            Dialect::Sqlite => sqlite_begin_commands(&self.fast, cmds, t).await?,
            Dialect::Postgres => {
                // The combined statement with no lease to take.
                let rows: Vec<BeginRow> = cmds
                    .iter()
                    .map(|c| BeginRow {
                        row: received_row(c, t),
                        lane: String::new(),
                        first_attempt: false,
                    })
                    .collect();
                let (found, _) = pg_begin(&self.db, &rows, &[], "", t, t).await?;
                found.into_iter().map(|b| b.row).collect()
            }
        };
        self.in_order(cmds, found).await
    }

    /// Records the command as received unless its row exists; returns the row.
    pub async fn begin_command(&self, cmd: &Command) -> Result<command::Model, StoreError> {
        let mut rows = self.begin_commands(std::slice::from_ref(cmd)).await?;
        Ok(rows.remove(0))
    }

    /// `found` rows in the order of `cmds`, reading any that are missing (inserted by a
    /// concurrent transaction after the statement's snapshot) again.
    pub(super) async fn in_order(
        &self,
        cmds: &[Command],
        found: Vec<command::Model>,
    ) -> Result<Vec<command::Model>, StoreError> {
        let rows: HashMap<String, command::Model> = found
            .into_iter()
            .map(|row| (row.command_id.clone(), row))
            .collect();
        let mut out = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let id = cmd.id.to_string();
            let row = match rows.get(&id) {
                Some(row) => row.clone(),
                None => self
                    .find_command(&id)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound(format!("command {id}")))?,
            };
            out.push(row);
        }
        Ok(out)
    }

    /// The command's row, if it was received.
    pub async fn find_command(
        &self,
        command_id: &str,
    ) -> Result<Option<command::Model>, StoreError> {
        Ok(command::Entity::find_by_id(command_id.to_owned())
            .one(&self.fast)
            .await?)
    }

    /// Persists, before a reset call, the code being replaced and the attempt number.
    /// False when the command is already done (finished by another process meanwhile).
    pub async fn mark_executing(
        &self,
        command_id: &str,
        before_code: Option<&str>,
        attempts: i32,
    ) -> Result<bool, StoreError> {
        let attempt = Attempt {
            command_id: command_id.to_owned(),
            before_code: before_code.map(str::to_owned),
            attempts,
        };
        Ok(self.mark_executing_many(&[attempt]).await?[0])
    }

    /// [`Store::mark_executing`] for several commands in one statement; answers in order.
    pub async fn mark_executing_many(&self, batch: &[Attempt]) -> Result<Vec<bool>, StoreError> {
        let marked: HashSet<String> = match self.dialect {
            Dialect::Sqlite => sqlite_mark_executing(&self.fast, batch, now()).await?,
            Dialect::Postgres => pg_mark_executing(&self.db, batch, now()).await?,
        }
        .into_iter()
        .collect();
        Ok(batch
            .iter()
            .map(|a| marked.contains(&a.command_id))
            .collect())
    }

    /// A first attempt that replaces the stored code: reads the group's link and marks
    /// the command executing with the link's code as `before_code` (NULL when the group
    /// is untracked), in one statement on PostgreSQL. The caller holds the group's lease
    /// (taken by an earlier statement), so the link read sees every commit of earlier
    /// holders. Answers, in order, whether each was marked (false: done meanwhile) and
    /// the link read.
    pub async fn first_attempt_many(
        &self,
        batch: &[FirstAttempt],
    ) -> Result<Vec<(bool, Option<link::Model>)>, StoreError> {
        match self.dialect {
            Dialect::Sqlite => self.sqlite_first_attempts(batch).await,
            Dialect::Postgres => {
                let marked = pg_first_attempts(&self.db, batch, now()).await?;
                let mut found: HashMap<String, Option<link::Model>> = marked.into_iter().collect();
                Ok(batch
                    .iter()
                    .map(|a| match found.remove(&a.command_id) {
                        Some(link) => (true, link),
                        None => (false, None),
                    })
                    .collect())
            }
        }
    }

    /// [`Store::first_attempt_many`] on SQLite: one process holds every lease, so the
    /// read and the update need not be one statement.
    async fn sqlite_first_attempts(
        &self,
        batch: &[FirstAttempt],
    ) -> Result<Vec<(bool, Option<link::Model>)>, StoreError> {
        let keys: Vec<GroupKey> = batch.iter().map(|a| a.key.clone()).collect();
        let links = self.link_get_many(&keys).await?;
        let attempts: Vec<Attempt> = batch
            .iter()
            .zip(&links)
            .map(|(a, link)| Attempt {
                command_id: a.command_id.clone(),
                before_code: link.as_ref().and_then(|l| l.invite_code.clone()),
                attempts: a.attempts,
            })
            .collect();
        let marked = self.mark_executing_many(&attempts).await?;
        Ok(marked
            .into_iter()
            .zip(links)
            .map(|(marked, link)| (marked, link.filter(|_| marked)))
            .collect())
    }

    /// Keeps the last transient error of a parked command, for when it comes back.
    pub async fn record_transient_error(
        &self,
        command_id: &str,
        e: &BackendError,
    ) -> Result<(), StoreError> {
        command::Entity::update_many()
            .col_expr(command::Column::ErrorKind, Expr::value(e.kind.as_str()))
            .col_expr(
                command::Column::ErrorMessage,
                Expr::value(e.message.clone()),
            )
            .col_expr(
                command::Column::HttpStatus,
                Expr::value(e.http_status.map(i32::from)),
            )
            .col_expr(command::Column::UpdatedAt, Expr::value(now()))
            .filter(command::Column::CommandId.eq(command_id))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Reopens a failed command (a new attempt cycle) and adds a `replayed` history row
    /// for its group, in one transaction. False when the command is not recorded as failed.
    pub async fn replay_failed(&self, command_id: &str) -> Result<bool, StoreError> {
        let txn = self.db.begin().await?;
        if !reopen_failed_on(&txn, command_id).await? {
            txn.rollback().await?;
            return Ok(false);
        }
        let Some(row) = command::Entity::find_by_id(command_id.to_owned())
            .one(&txn)
            .await?
        else {
            txn.rollback().await?;
            return Ok(false);
        };
        let trigger = CommandType::parse(&row.command_type).map(|k| k.trigger());
        let entry = history::ActiveModel {
            backend: Set(row.backend),
            session_id: Set(row.session_id),
            group_id: Set(row.group_id),
            command_id: Set(Some(row.command_id)),
            command_type: Set(Some(row.command_type)),
            trigger: Set(trigger.map(str::to_owned)),
            outcome: Set(OUTCOME_REPLAYED.to_owned()),
            attempts: Set(0),
            old_code: Set(None),
            new_code: Set(None),
            error_kind: Set(None),
            error_message: Set(None),
            started_at: Set(None),
            occurred_at: Set(now()),
            ..Default::default()
        };
        history::Entity::insert(entry)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }
}

async fn reopen_failed_on<C: ConnectionTrait>(db: &C, command_id: &str) -> Result<bool, DbErr> {
    let res = command::Entity::update_many()
        .col_expr(command::Column::Status, Expr::value(STATUS_RECEIVED))
        .col_expr(
            command::Column::Outcome,
            Expr::value(Option::<String>::None),
        )
        .col_expr(command::Column::Attempts, Expr::value(0))
        .col_expr(
            command::Column::Cycle,
            Expr::col(command::Column::Cycle).add(1),
        )
        .col_expr(
            command::Column::EventId,
            Expr::value(Option::<String>::None),
        )
        .col_expr(command::Column::UpdatedAt, Expr::value(now()))
        .filter(command::Column::CommandId.eq(command_id))
        .filter(command::Column::Outcome.eq("failed"))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}

/// `CASE WHEN command_id = <id of item> THEN <value of item> … ELSE column END`: one
/// value per row in a multi-row update.
pub(super) fn case_on_id<T, V: Into<sea_orm::Value>>(
    items: &[T],
    id: impl Fn(&T) -> String,
    column: command::Column,
    value: impl Fn(&T) -> V,
) -> Expr {
    let mut case = sea_orm::sea_query::CaseStatement::new();
    for item in items {
        case = case.case(
            Expr::col(command::Column::CommandId).eq(id(item)),
            Expr::val(value(item)),
        );
    }
    case.finally(Expr::col(column)).into()
}

/// Inserts the rows of commands not received before and reads every command's row.
async fn sqlite_begin_commands(
    db: &DatabaseConnection,
    cmds: &[Command],
    t: DateTime<Utc>,
) -> Result<Vec<command::Model>, DbErr> {
    let ids: Vec<String> = cmds.iter().map(|c| c.id.to_string()).collect();
    command::Entity::insert_many(cmds.iter().map(|c| received_row(c, t)))
        .on_conflict_do_nothing()
        .exec_without_returning(db)
        .await?;
    command::Entity::find()
        .filter(command::Column::CommandId.is_in(ids))
        .all(db)
        .await
}

/// Marks commands executing with their attempt markers; returns the ids marked.
async fn sqlite_mark_executing(
    db: &DatabaseConnection,
    batch: &[Attempt],
    now: DateTime<Utc>,
) -> Result<Vec<String>, DbErr> {
    let ids: Vec<String> = batch.iter().map(|a| a.command_id.clone()).collect();
    let id = |a: &Attempt| a.command_id.clone();
    Ok(command::Entity::update_many()
        .col_expr(command::Column::Status, Expr::value(STATUS_EXECUTING))
        .col_expr(
            command::Column::BeforeCode,
            case_on_id(batch, id, command::Column::BeforeCode, |a| {
                a.before_code.clone()
            }),
        )
        .col_expr(
            command::Column::Attempts,
            case_on_id(batch, id, command::Column::Attempts, |a| a.attempts),
        )
        .col_expr(command::Column::UpdatedAt, Expr::value(now))
        .filter(command::Column::CommandId.is_in(ids))
        .filter(command::Column::Status.ne(STATUS_DONE))
        .exec_with_returning(db)
        .await?
        .into_iter()
        .map(|row| row.command_id)
        .collect())
}

/// Marks commands executing with their attempt markers; returns the ids marked.
async fn pg_mark_executing<C: ConnectionTrait>(
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
async fn pg_first_attempts<C: ConnectionTrait>(
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
