//! A message that could not become a command: its dead-letter copy, and when enough of
//! it could be read, a `rotation_failed` event and a finished command row, committed
//! together (a command_id seen before commits nothing again).

use chrono::{DateTime, Utc};
use entity::command::ActiveModel;
use sea_orm::Set;
use tracing::warn;

use super::{Disposition, Pipeline, Unsettled};
use crate::{
    domain::{
        BackendError, Rejection,
        events::{self, OutboxMessage, Subject},
    },
    ops::{metrics as m, trace},
    store,
};

impl Pipeline {
    /// Settles a rejected message: dead-lettered, and reported when attributable.
    pub(super) async fn reject(
        &self,
        rej: &Rejection,
        body: &[u8],
        origin: &[(String, String)],
    ) -> Result<Disposition, Unsettled> {
        warn!(reason = %rej.reason, command_id = ?rej.command_id.map(|c| c.to_string()), "rejecting command");
        let command_id = rej.command_id.map(|c| c.to_string());
        let mut messages = vec![events::dead_letter(
            &self.topology.dead_queue(),
            body,
            &format!("{}: {}", rej.kind, rej.reason),
            command_id.clone(),
            origin,
        )];
        let mut row = None;
        if rej.is_attributable() {
            let t = Utc::now();
            let traced = trace::caused_by(&tracing::Span::current(), origin);
            let event = self
                .rejection_event(rej, command_id.clone(), t)
                .with_headers(&traced);
            row = Some(finished_row(rej, command_id.clone(), &event, t));
            messages.push(event);
        }
        let fresh = self
            .persist("recording a rejected command", || {
                self.store.record_rejection(row.clone(), &messages)
            })
            .await?;
        if fresh {
            m::dead_lettered(rej.kind);
            m::command_outcome(rej.command_type, "failed");
            self.relay_wakeup.notify_one();
        }
        Ok(Disposition::Ack)
    }

    /// The `rotation_failed` event of an attributable rejection.
    fn rejection_event(
        &self,
        rej: &Rejection,
        command_id: Option<String>,
        t: DateTime<Utc>,
    ) -> OutboxMessage {
        let subject = Subject {
            command_id,
            command_type: rej.command_type,
            backend: rej.backend.clone(),
            session_id: rej.session_id.clone(),
            group_id: rej.group_id.clone(),
            reason: rej.reason_field.clone(),
            requested_by: rej.requested_by.clone(),
        };
        let err = BackendError::new(rej.kind, rej.reason.clone());
        events::rotation_failed(&self.topology.events_exchange(), &subject, 0, &err, t)
    }
}

/// The command row of an attributable rejection: done, failed, never attempted.
fn finished_row(
    rej: &Rejection,
    command_id: Option<String>,
    event: &OutboxMessage,
    t: DateTime<Utc>,
) -> ActiveModel {
    ActiveModel {
        command_id: Set(command_id.unwrap_or_default()),
        command_type: Set(rej
            .command_type
            .map_or("unknown", |c| c.as_str())
            .to_owned()),
        backend: Set(rej.backend.clone().unwrap_or_default()),
        session_id: Set(rej.session_id.clone().unwrap_or_default()),
        group_id: Set(rej.group_id.clone().unwrap_or_default()),
        reason: Set(rej.reason_field.clone()),
        requested_by: Set(rej.requested_by.clone()),
        status: Set(store::STATUS_DONE.into()),
        outcome: Set(Some("failed".into())),
        attempts: Set(0),
        cycle: Set(1),
        before_code: Set(None),
        new_code: Set(None),
        error_kind: Set(Some(rej.kind.as_str().into())),
        error_message: Set(Some(rej.reason.clone())),
        http_status: Set(None),
        event_id: Set(event.message_id.clone()),
        received_at: Set(t),
        updated_at: Set(t),
        finished_at: Set(Some(t)),
    }
}
