//! The request slots of one command's run. Before each request the session's holds are
//! checked (a pause, an open circuit: the command then waits in the database, spending
//! no attempt). The first request of a delivery takes a slot only if it comes soon and no
//! command of its session is ahead of it (deferred and due, or arrived earlier and
//! undecided): otherwise the command waits in the database and the releaser runs it in
//! its session's slot order. A command the releaser runs brings the slot it took. Later
//! requests of a run (a reset after a read, a retry in place) wait for their slot.

use std::time::Duration;

use super::{Arrival, BackendEntry, Pipeline, Unsettled};
use crate::{
    domain::Command,
    worker::{
        holds::{Gate, Probe},
        pacing::{Class, Slot, Ticket},
    },
};

/// The longest a delivery waits in place for its first slot (or for the earlier
/// arrivals of its session to decide); beyond it the command is deferred.
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

/// What the next request of a run does.
pub(super) enum Next {
    /// Goes at this slot.
    Go(Ticket),
    /// Waits in the database this long (zero: due at once, in its session's order).
    Wait(Duration),
}

impl Pipeline {
    /// The next request's slot, or how long the command must wait in the database.
    pub(super) async fn next_slot(
        &self,
        slots: &mut Slots<'_>,
        entry: &BackendEntry,
        cmd: &Command,
    ) -> Result<Next, Unsettled> {
        // A slot taken with the circuit's probe (a delivery's first, before its receipt)
        // goes as that probe: passing the circuit again would find the probe out.
        if let Some(ticket) = slots.first.take_if(|t| t.is_probe()) {
            slots.inline = false;
            return Ok(Next::Go(ticket));
        }
        let probe = match self.holds.gate(&cmd.backend, cmd.session.as_str()) {
            Gate::Go => None,
            Gate::Probe => Some(Probe::new(
                self.holds.clone(),
                &cmd.backend,
                cmd.session.as_str(),
            )),
            Gate::Paused => return Ok(Next::Wait(Duration::ZERO)),
            Gate::Open(wait) => return Ok(Next::Wait(wait)),
        };
        // From here a probe not handed on with a slot is handed back when dropped.
        if let Some(ticket) = slots.first.take() {
            slots.inline = false;
            return Ok(Next::Go(ticket.probing(probe)));
        }
        if !std::mem::take(&mut slots.inline) {
            let ticket = self.later_slot(entry, cmd).await?;
            return Ok(Next::Go(ticket.probing(probe)));
        }
        Ok(match self.inline_slot(entry, cmd, slots.arrival).await? {
            Next::Go(ticket) => Next::Go(ticket.probing(probe)),
            wait => wait,
        })
    }

    /// A delivery's first slot: taken if it starts within [`INLINE_LOOKAHEAD`] (or one
    /// interval, if shorter), no deferred command of the session is due and no delivery
    /// of the session that arrived earlier still waits for its first slot.
    async fn inline_slot(
        &self,
        entry: &BackendEntry,
        cmd: &Command,
        arrival: Option<&Arrival>,
    ) -> Result<Next, Unsettled> {
        // A delivery whose session's earlier arrivals are being deferred, or still
        // undecided after a moment, waits in the database, behind them; it leaves its
        // place once its deferral is committed (when it is dropped), so that a later one
        // cannot take a slot in between.
        if let Some(arrival) = arrival
            && !arrival.wait_first(INLINE_LOOKAHEAD).await
        {
            return Ok(Next::Wait(Duration::ZERO));
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
                Next::Go(Ticket::after(wait))
            }
            Slot::Busy(_) => Next::Wait(Duration::ZERO),
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
