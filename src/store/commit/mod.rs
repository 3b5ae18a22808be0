//! The outcome commit: each command's outcome, its link, its history and its events,
//! with the release of its group lease, in one transaction per batch of outcomes (one
//! statement on PostgreSQL); a command already done writes nothing.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use entity::{command, link};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    TransactionTrait, sea_query::Expr,
};

mod stage;

use self::stage::{Deferred, stage_completion};
use super::{
    Dialect, STATUS_DONE, Store, StoreError,
    commands::case_on_id,
    leases::RELEASED,
    now,
    outbox::outbox_rows,
    pg::{Args, Array, Columns, Params, Ty, column_list},
};
use crate::domain::{
    BackendError, Command, Link,
    events::{ExpirySource, OutboxMessage},
};

/// How a command ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Rotated {
        link: Link,
        previous_code: Option<String>,
        expires_at: DateTime<Utc>,
        source: ExpirySource,
    },
    Skipped,
    Failed(BackendError),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rotated { .. } => "rotated",
            Self::Skipped => "skipped",
            Self::Failed(_) => "failed",
        }
    }
}

/// Everything one command's final transaction writes.
pub struct Completion {
    pub cmd: Command,
    pub attempts: i32,
    pub outcome: Outcome,
    /// A code read from the backend that differed from the stored one: (stored, read).
    pub external_change: Option<(Option<String>, String)>,
    pub messages: Vec<OutboxMessage>,
    pub started_at: DateTime<Utc>,
    /// The link row as read under the group lease (nobody else writes it meanwhile).
    pub link: Option<link::Model>,
    /// A group lease (lane, owner) to release in the same transaction.
    pub release_lease: Option<(String, String)>,
}

impl Completion {
    fn new_code(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Rotated { link, .. } => Some(link.code.as_str().to_owned()),
            _ => None,
        }
    }

    fn error(&self) -> Option<&BackendError> {
        match &self.outcome {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The id of the event this outcome publishes (dead-letter copies have none).
    fn event_id(&self) -> Option<String> {
        self.messages
            .iter()
            .find(|m| !m.exchange.is_empty())
            .and_then(|m| m.message_id.clone())
    }
}

impl Store {
    /// Commits a command's outcome, link state, history and outbox rows atomically.
    /// Returns false, writing nothing, when the command was already done.
    pub async fn complete(&self, c: &Completion) -> Result<bool, StoreError> {
        Ok(self.commit_batch(&[c]).await?[0])
    }

    /// One transaction with a fixed number of statements whatever the batch size: mark
    /// the commands done (skipping any already done, so a retry after a lost commit
    /// answer writes nothing twice), then multi-row writes of links, history, outbox and
    /// lease releases. Returns, per completion, whether it was written.
    pub async fn commit_batch(&self, batch: &[&Completion]) -> Result<Vec<bool>, StoreError> {
        let t = now();
        let written: HashSet<String> = match self.dialect {
            Dialect::Sqlite => sqlite_commit(&self.db, batch, t).await?,
            Dialect::Postgres => pg_commit(&self.db, batch, t).await?.into_iter().collect(),
        };
        Ok(batch
            .iter()
            .map(|c| written.contains(&c.cmd.id.to_string()))
            .collect())
    }

    /// Commits outbox rows (and, when attributable, a command row) for a message that
    /// could not become a command. Returns false when its command_id was already seen.
    pub async fn record_rejection(
        &self,
        command: Option<command::ActiveModel>,
        messages: &[OutboxMessage],
    ) -> Result<bool, StoreError> {
        let t = now();
        let txn = self.db.begin().await?;
        if let Some(row) = command {
            let n = command::Entity::insert(row)
                .on_conflict_do_nothing()
                .exec_without_returning(&txn)
                .await?;
            if !matches!(n, sea_orm::TryInsertResult::Inserted(k) if k > 0) {
                txn.rollback().await?;
                return Ok(false);
            }
        }
        Deferred {
            outbox: outbox_rows(messages, t)
                .into_iter()
                .map(|r| (String::new(), r))
                .collect(),
            ..Default::default()
        }
        .flush(&txn)
        .await?;
        txn.commit().await?;
        Ok(true)
    }
}

/// The group commit on SQLite: marks the commands done, then writes the rows of those
/// that were not done already; returns their ids.
async fn sqlite_commit(
    db: &DatabaseConnection,
    batch: &[&Completion],
    t: DateTime<Utc>,
) -> Result<HashSet<String>, DbErr> {
    let txn = db.begin().await?;
    // The first statement writes, so SQLite takes its write lock up front.
    let fresh = mark_done(&txn, batch, t).await?;
    let mut deferred = Deferred::default();
    for c in batch {
        if fresh.contains(&c.cmd.id.to_string()) {
            stage_completion(c, &mut deferred, t);
        }
    }
    deferred.flush(&txn).await?;
    txn.commit().await?;
    Ok(fresh)
}

/// The id of a completion's command, the key of its row.
fn completion_id(c: &&Completion) -> String {
    c.cmd.id.to_string()
}

/// Marks the batch's commands done with their outcomes in one statement; returns the ids
/// that were not done already.
async fn mark_done<C: ConnectionTrait>(
    txn: &C,
    batch: &[&Completion],
    t: DateTime<Utc>,
) -> Result<HashSet<String>, DbErr> {
    let ids: Vec<String> = batch.iter().map(|c| c.cmd.id.to_string()).collect();
    let done = command::Entity::update_many()
        .col_expr(command::Column::Status, Expr::value(STATUS_DONE))
        .col_expr(
            command::Column::Outcome,
            case_on_id(batch, completion_id, command::Column::Outcome, |c| {
                Some(c.outcome.as_str().to_owned())
            }),
        )
        .col_expr(
            command::Column::Attempts,
            case_on_id(batch, completion_id, command::Column::Attempts, |c| {
                c.attempts
            }),
        )
        .col_expr(
            command::Column::NewCode,
            case_on_id(batch, completion_id, command::Column::NewCode, |c| {
                c.new_code()
            }),
        )
        .col_expr(
            command::Column::ErrorKind,
            case_on_id(batch, completion_id, command::Column::ErrorKind, |c| {
                c.error().map(|e| e.kind.as_str().to_owned())
            }),
        )
        .col_expr(
            command::Column::ErrorMessage,
            case_on_id(batch, completion_id, command::Column::ErrorMessage, |c| {
                c.error().map(|e| e.message.clone())
            }),
        )
        .col_expr(
            command::Column::HttpStatus,
            case_on_id(batch, completion_id, command::Column::HttpStatus, |c| {
                c.error().and_then(|e| e.http_status).map(i32::from)
            }),
        )
        .col_expr(
            command::Column::EventId,
            case_on_id(batch, completion_id, command::Column::EventId, |c| {
                c.event_id()
            }),
        )
        .col_expr(command::Column::UpdatedAt, Expr::value(t))
        .col_expr(command::Column::FinishedAt, Expr::value(Some(t)))
        .filter(command::Column::CommandId.is_in(ids))
        .filter(command::Column::Status.ne(STATUS_DONE))
        .exec_with_returning(txn)
        .await?;
    Ok(done.into_iter().map(|row| row.command_id).collect())
}

pub(super) const LINK_COLUMNS: Columns = &[
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

pub(super) const HISTORY_COLUMNS: Columns = &[
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

pub(super) const OUTBOX_COLUMNS: Columns = &[
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
pub(super) const OUTCOME_COLUMNS: Columns = &[
    ("outcome", Ty::Text),
    ("attempts", Ty::Int),
    ("new_code", Ty::Text),
    ("error_kind", Ty::Text),
    ("error_message", Ty::Text),
    ("http_status", Ty::Int),
    ("event_id", Ty::Text),
];

pub(super) const LEASE_COLUMNS: Columns = &[("lane", Ty::Text), ("owner", Ty::Text)];

/// Rows tagged with the command they belong to.
pub(super) const TAG: Columns = &[("_cmd", Ty::Text)];

/// The group commit's statement: `$1` done, `$2` now, `$3` a released lease's time, then
/// the outcomes, links, history, outbox and lease arrays (see [`pg_commit`]).
pub(super) fn commit_sql() -> &'static str {
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
async fn pg_commit(
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
    args.scalar(RELEASED)?;
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
