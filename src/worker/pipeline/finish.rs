//! The end of a command: its outcome as events (and a dead-letter copy when it failed),
//! committed with the command row, the link, its history and the lease release in one
//! group-committed transaction.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Ctx, Disposition, Pipeline, Unsettled, completed_elsewhere};
use crate::{
    domain::{
        Command, Link,
        events::{self, ExpirySource, OutboxMessage, Subject},
    },
    ops::{failpoint, metrics as m, trace},
    store::{Completion, Outcome},
};

impl Pipeline {
    /// A rotation to `link`, with its expiry as the backend reported it or else as the
    /// policy (`rotation.link_ttl` from `now`) sets it.
    pub(super) fn rotated(
        &self,
        link: Link,
        previous_code: Option<String>,
        now: DateTime<Utc>,
    ) -> Outcome {
        let (expires_at, source) = match link.expires_at {
            Some(e) => (e, ExpirySource::Backend),
            None => {
                let ttl = chrono::Duration::from_std(self.settings.rotation.link_ttl)
                    .unwrap_or(chrono::Duration::days(7));
                (now + ttl, ExpirySource::Policy)
            }
        };
        Outcome::Rotated {
            link,
            previous_code,
            expires_at,
            source,
        }
    }

    /// Commits the command's outcome after `attempts` (releasing its lease in the same
    /// transaction) and answers ack; a command another delivery completed meanwhile is
    /// acked as a duplicate, with nothing written.
    pub(super) async fn finish(
        &self,
        ctx: &Ctx<'_>,
        attempts: i32,
        outcome: Outcome,
        external_change: Option<(Option<String>, String)>,
    ) -> Result<Disposition, Unsettled> {
        let cmd = ctx.cmd;
        let messages = self.outcome_messages(ctx, attempts, &outcome, Utc::now());
        if let Outcome::Failed(e) = &outcome {
            m::dead_lettered(e.kind);
        }
        let label = outcome.as_str();
        let completion = Arc::new(Completion {
            cmd: cmd.clone(),
            attempts,
            outcome,
            external_change,
            messages,
            started_at: ctx.started_at,
            link: ctx.link.clone(),
            release_lease: Some((ctx.lease.lane().to_owned(), ctx.lease.owner().to_owned())),
        });
        let fresh = self
            .persist("committing the outcome", || {
                self.db.commits.call(completion.clone())
            })
            .await?;
        if !fresh {
            // Nothing was written, the lease included: the caller releases it.
            return Ok(completed_elsewhere());
        }
        ctx.lease.mark_released();
        failpoint::hit(failpoint::AFTER_COMMIT);
        m::command_outcome(Some(cmd.kind), label);
        if !completion.messages.is_empty() {
            self.relay_wakeup.notify_one();
        }
        Ok(Disposition::Ack)
    }

    /// What an outcome publishes: `rotated`; `rotation_failed` and the command's
    /// dead-letter copy; nothing for a skip. The event carries the trace context of the
    /// command's span (stored with it in the outbox), the copy the headers the command
    /// arrived with.
    fn outcome_messages(
        &self,
        ctx: &Ctx<'_>,
        attempts: i32,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> Vec<OutboxMessage> {
        let cmd = ctx.cmd;
        let exchange = self.topology.events_exchange();
        let subject = subject(cmd);
        let traced = trace::caused_by(&tracing::Span::current(), ctx.origin);
        let event = |m: OutboxMessage| m.with_headers(&traced);
        match outcome {
            Outcome::Rotated {
                link,
                previous_code,
                expires_at,
                source,
            } => vec![event(events::rotated(
                &exchange,
                &subject,
                attempts,
                link,
                previous_code.as_deref(),
                *expires_at,
                *source,
                now,
            ))],
            Outcome::Skipped => Vec::new(),
            Outcome::Failed(e) => vec![
                event(events::rotation_failed(
                    &exchange, &subject, attempts, e, now,
                )),
                events::dead_letter(
                    &self.topology.dead_queue(),
                    ctx.body,
                    &format!("{}: {}", e.kind, e.message),
                    Some(cmd.id.to_string()),
                    ctx.origin,
                ),
            ],
        }
    }
}

/// Who and what a command's events are about.
fn subject(cmd: &Command) -> Subject {
    Subject {
        command_id: Some(cmd.id.to_string()),
        command_type: Some(cmd.kind),
        backend: Some(cmd.backend.clone()),
        session_id: Some(cmd.session.as_str().to_owned()),
        group_id: Some(cmd.group.as_str().to_owned()),
        reason: cmd.reason.clone(),
        requested_by: cmd.requested_by.clone(),
    }
}
