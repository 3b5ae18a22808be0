//! The rows one fresh outcome writes (history, link state, outbox, lease release),
//! staged per table so that a batch of outcomes writes each table with one multi-row
//! statement; on SQLite [`Deferred::flush`] writes them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use entity::{group_lease, history, link, outbox};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::{Expr, OnConflict},
};

use super::{Completion, Outcome};
use crate::{
    domain::{BackendError, Command},
    store::{GroupKey, leases::RELEASED, outbox::outbox_rows},
};

/// Queues the rows one fresh outcome writes: history, link state, outbox, lease release.
pub(super) fn stage_completion(c: &Completion, deferred: &mut Deferred, t: DateTime<Utc>) {
    let cmd = &c.cmd;
    let tag = cmd.id.to_string();
    let key = GroupKey::of(cmd);
    let (new_code, err) = match &c.outcome {
        Outcome::Rotated { link, .. } => (Some(link.code.as_str().to_owned()), None),
        Outcome::Failed(e) => (None, Some(e)),
        Outcome::Skipped => (None, None),
    };
    let stored_code = c.link.as_ref().and_then(|l| l.invite_code.clone());
    if let Some((old, new)) = &c.external_change {
        deferred.history.push((
            tag.clone(),
            history_row(
                &key,
                None,
                "external_change",
                0,
                old.clone(),
                Some(new.clone()),
                None,
                t,
            ),
        ));
    }
    let old_code = match &c.outcome {
        Outcome::Rotated { previous_code, .. } => previous_code.clone(),
        _ => c
            .external_change
            .as_ref()
            .map(|(_, new)| new.clone())
            .or(stored_code),
    };
    let hist = HistoryCmd {
        cmd,
        started_at: c.started_at,
    };
    deferred.history.push((
        tag.clone(),
        history_row(
            &key,
            Some(&hist),
            c.outcome.as_str(),
            c.attempts,
            old_code,
            new_code,
            err,
            t,
        ),
    ));

    // The link row as read under the group lease, with this outcome applied. Nobody else
    // writes it meanwhile, so the whole row is written back (scheduler columns excepted).
    let mut row = c.link.clone().unwrap_or_else(|| link::Model {
        id: 0,
        backend: key.backend.clone(),
        session_id: key.session_id.clone(),
        group_id: key.group_id.clone(),
        invite_code: None,
        issued_at: None,
        expires_at: None,
        expires_at_source: None,
        rotation_count: 0,
        last_command_id: None,
        last_rotated_at: None,
        updated_at: t,
        scheduled_for: None,
        scheduled_at: None,
    });
    let mut touched = false;
    if let Some((_, new)) = &c.external_change {
        row.invite_code = Some(new.clone());
        touched = true;
    }
    if let Outcome::Rotated {
        link,
        expires_at,
        source,
        ..
    } = &c.outcome
    {
        row.invite_code = Some(link.code.as_str().to_owned());
        row.issued_at = Some(t);
        row.expires_at = Some(*expires_at);
        row.expires_at_source = Some(source.as_str().to_owned());
        row.rotation_count += 1;
        row.last_command_id = Some(cmd.id.to_string());
        row.last_rotated_at = Some(t);
        touched = true;
    }
    if touched {
        row.updated_at = t;
        deferred.links.push((
            tag.clone(),
            link::ActiveModel {
                backend: Set(row.backend),
                session_id: Set(row.session_id),
                group_id: Set(row.group_id),
                invite_code: Set(row.invite_code),
                issued_at: Set(row.issued_at),
                expires_at: Set(row.expires_at),
                expires_at_source: Set(row.expires_at_source),
                rotation_count: Set(row.rotation_count),
                last_command_id: Set(row.last_command_id),
                last_rotated_at: Set(row.last_rotated_at),
                updated_at: Set(row.updated_at),
                ..Default::default()
            },
        ));
    }
    deferred.outbox.extend(
        outbox_rows(&c.messages, t)
            .into_iter()
            .map(|r| (tag.clone(), r)),
    );
    if let Some(lease) = &c.release_lease {
        deferred.leases.push((tag, lease.clone()));
    }
}

struct HistoryCmd<'a> {
    cmd: &'a Command,
    started_at: DateTime<Utc>,
}

#[allow(clippy::too_many_arguments)]
fn history_row(
    key: &GroupKey,
    cmd: Option<&HistoryCmd<'_>>,
    outcome: &str,
    attempts: i32,
    old_code: Option<String>,
    new_code: Option<String>,
    err: Option<&BackendError>,
    at: DateTime<Utc>,
) -> history::ActiveModel {
    history::ActiveModel {
        backend: Set(key.backend.clone()),
        session_id: Set(key.session_id.clone()),
        group_id: Set(key.group_id.clone()),
        command_id: Set(cmd.map(|c| c.cmd.id.to_string())),
        command_type: Set(cmd.map(|c| c.cmd.kind.as_str().to_owned())),
        trigger: Set(cmd.map(|c| c.cmd.kind.trigger().to_owned())),
        outcome: Set(outcome.to_owned()),
        attempts: Set(attempts),
        old_code: Set(old_code),
        new_code: Set(new_code),
        error_kind: Set(err.map(|e| e.kind.as_str().to_owned())),
        error_message: Set(err.map(|e| e.message.clone())),
        started_at: Set(cmd.map(|c| c.started_at)),
        occurred_at: Set(at),
        ..Default::default()
    }
}

/// Rows that a batch of outcomes writes with one multi-row statement per table.
#[derive(Default)]
pub(super) struct Deferred {
    /// Each row with the id of the command whose outcome writes it.
    /// Link rows to upsert by (backend, session, group).
    pub(super) links: Vec<(String, link::ActiveModel)>,
    pub(super) history: Vec<(String, history::ActiveModel)>,
    pub(super) outbox: Vec<(String, outbox::ActiveModel)>,
    /// Leases to release: (lane, owner).
    pub(super) leases: Vec<(String, (String, String))>,
}

impl Deferred {
    pub(super) async fn flush<C: ConnectionTrait>(self, db: &C) -> Result<(), DbErr> {
        if !self.links.is_empty() {
            use link::Column as L;
            let upsert = OnConflict::columns([L::Backend, L::SessionId, L::GroupId])
                .update_columns([
                    L::InviteCode,
                    L::IssuedAt,
                    L::ExpiresAt,
                    L::ExpiresAtSource,
                    L::RotationCount,
                    L::LastCommandId,
                    L::LastRotatedAt,
                    L::UpdatedAt,
                ])
                .to_owned();
            link::Entity::insert_many(self.links.into_iter().map(|(_, r)| r))
                .on_conflict(upsert)
                .exec_without_returning(db)
                .await?;
        }
        if !self.history.is_empty() {
            history::Entity::insert_many(self.history.into_iter().map(|(_, r)| r))
                .exec_without_returning(db)
                .await?;
        }
        if !self.outbox.is_empty() {
            outbox::Entity::insert_many(self.outbox.into_iter().map(|(_, r)| r))
                .exec_without_returning(db)
                .await?;
        }
        let mut by_owner: BTreeMap<String, Vec<String>> = Default::default();
        for (_, (lane, owner)) in self.leases {
            by_owner.entry(owner).or_default().push(lane);
        }
        for (owner, lanes) in by_owner {
            group_lease::Entity::update_many()
                .col_expr(group_lease::Column::LeaseUntil, Expr::value(RELEASED))
                .filter(group_lease::Column::Owner.eq(owner))
                .filter(group_lease::Column::Lane.is_in(lanes))
                .exec(db)
                .await?;
        }
        Ok(())
    }
}
