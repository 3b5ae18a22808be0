//! The request slots of one command's run. The first request of a delivery takes a slot
//! only if it comes soon and no deferred command of its session waits for one: otherwise
//! the command waits in the database (spending no attempt) and the releaser runs it in
//! its session's slot order. A command the releaser runs brings the slot it took. Later
//! requests of a run (a reset after a read, a retry in place) wait for their slot.

use std::time::Duration;

use super::{Arrival, BackendEntry, Pipeline, Unsettled};
use crate::{
    domain::Command,
    worker::pacing::{Class, Slot, Ticket},
};

/// The longest a delivery waits in place for its first slot; beyond it the command is
/// deferred.
const INLINE_LOOKAHEAD: Duration = Duration::from_millis(250);

/// The slots of one run: a slot taken before the run started goes to its first request.
pub(super) struct Slots<'a> {
    first: Option<Ticket>,
    /// The first request has no slot yet and may take one only if it comes soon.
    inline: bool,
    arrival: Option<&'a Arrival>,
}

impl<'a> Slots<'a> {
    pub(super) fn new(first: Option<Ticket>, arrival: Option<&'a Arrival>) -> Self {
        Self {
            inline: first.is_none(),
            first,
            arrival,
        }
    }

    /// Gives a slot taken but not used yet back to the next request.
    pub(super) fn put_back(&mut self, ticket: Ticket) {
        self.first = Some(ticket);
    }
}

impl Pipeline {
    /// The next request's slot; `None`: the command must wait in the database for one.
    pub(super) async fn next_slot(
        &self,
        slots: &mut Slots<'_>,
        entry: &BackendEntry,
        cmd: &Command,
    ) -> Result<Option<Ticket>, Unsettled> {
        if let Some(ticket) = slots.first.take() {
            slots.inline = false;
            return Ok(Some(ticket));
        }
        if std::mem::take(&mut slots.inline) {
            return self.inline_slot(entry, cmd, slots.arrival).await;
        }
        self.later_slot(entry, cmd).await.map(Some)
    }

    /// A delivery's first slot: taken if it starts within [`INLINE_LOOKAHEAD`] (or one
    /// interval, if shorter), no deferred command of the session is due and no delivery
    /// of the session that arrived earlier still waits for its first slot.
    pub(super) async fn inline_slot(
        &self,
        entry: &BackendEntry,
        cmd: &Command,
        arrival: Option<&Arrival>,
    ) -> Result<Option<Ticket>, Unsettled> {
        // A delivery whose session's earlier arrivals are still undecided after a moment
        // waits in the database, behind them; it leaves its place once its deferral is committed (when it is dropped), so
        // that a later one cannot pass it in between.
        if let Some(arrival) = arrival
            && !arrival.wait_first(INLINE_LOOKAHEAD).await
        {
            return Ok(None);
        }
        let lookahead = entry.pacer.grid().interval.min(INLINE_LOOKAHEAD);
        let class = Class::of(cmd.kind);
        let slot = self
            .persist("taking a request slot", || {
                entry
                    .pacer
                    .take(cmd.session.as_str(), class, lookahead, true)
            })
            .await?;
        Ok(match slot {
            Slot::Taken(wait) => {
                if let Some(arrival) = arrival {
                    arrival.leave();
                }
                Some(Ticket::after(wait))
            }
            Slot::Busy(_) => None,
        })
    }

    /// The next slot of a request within a run, however far away.
    pub(super) async fn later_slot(
        &self,
        entry: &BackendEntry,
        cmd: &Command,
    ) -> Result<Ticket, Unsettled> {
        let class = Class::of(cmd.kind);
        loop {
            let slot = self
                .persist("taking a request slot", || {
                    entry
                        .pacer
                        .take(cmd.session.as_str(), class, Duration::MAX, false)
                })
                .await?;
            match slot {
                Slot::Taken(wait) => return Ok(Ticket::after(wait)),
                Slot::Busy(retry) => tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = self.abort.cancelled() => return Err(Unsettled::Interrupted),
                },
            }
        }
    }
}
