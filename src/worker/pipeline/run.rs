//! A valid command up to its group lease: a revoke takes its first request's slot (or
//! waits in the database when its session has none free), then the command queues
//! behind its group's lane, is recorded by the receipt (with the lease, and on PostgreSQL
//! a revoke's first attempt), and runs under the lease.

use std::{ops::ControlFlow, time::Duration};

use tracing::debug;

use super::{
    Disposition, Pipeline, Received, Unsettled,
    slots::{Next, Slots},
};
use crate::{
    domain::{Command, CommandType},
    ops::metrics as m,
    store::{self, GroupKey},
    worker::{lanes::Lease, pacing::Ticket},
};

/// What the receipt recorded of a command, besides its row.
// Moved from the receipt to the leased run once per command, never kept: not worth a box.
#[allow(clippy::large_enum_variant)]
pub(super) enum Receipt {
    /// The command as received; its attempts are recorded under the lease.
    Received,
    /// Its first attempt too (PostgreSQL), with the group's link read then, under the
    /// lease (`None`: the group is untracked).
    FirstAttempt(Option<entity::link::Model>),
}

/// A command recorded by the receipt.
struct Recorded {
    row: entity::command::Model,
    /// The group's lease was taken with the receipt.
    leased: bool,
    receipt: Receipt,
}

impl Pipeline {
    /// Runs a valid command to its disposition. `first`: a slot its session's releaser
    /// took for it (a deferred command, now due); a delivery takes its own, or waits in
    /// the database when its session has none free.
    pub(super) async fn run(
        &self,
        cmd: &Command,
        received: Received<'_>,
        first: Option<Ticket>,
    ) -> Result<Disposition, Unsettled> {
        let lane = GroupKey::of(cmd).lane();
        // The lane first: a slot taken before a wait behind the group's other commands
        // would pass unused.
        let waited = std::time::Instant::now();
        let _lane = self.lanes.acquire(&lane).await;
        m::stage("waiting for the group lane", waited.elapsed());
        let first = match first {
            Some(ticket) => Some(ticket),
            None if self.first_attempt_with_receipt(cmd) => {
                match self.take_first_slot(cmd, received).await? {
                    Next::Go(ticket) => Some(ticket),
                    Next::Wait(wait) => return self.defer(cmd, received, wait, false).await,
                }
            }
            None => None,
        };
        let first_attempt = first.is_some() && self.first_attempt_with_receipt(cmd);
        let recorded = match self.receive(cmd, &lane, first_attempt).await? {
            ControlFlow::Continue(recorded) => recorded,
            ControlFlow::Break(done) => return Ok(done),
        };
        let Some(lease) = self.take_lease(&lane, recorded.leased).await? else {
            debug!("group is busy in another process; deferring the command");
            return self.defer(cmd, received, Duration::ZERO, false).await;
        };
        let result = lease
            .hold_while(self.run_leased(
                cmd,
                received,
                recorded.row,
                &lease,
                first,
                recorded.receipt,
            ))
            .await;
        lease.release().await;
        result
    }

    /// Whether a revoke's first attempt is recorded with its receipt (PostgreSQL): it
    /// records the stored code as the one replaced (no read before the reset), so its
    /// slot is taken first, and a command that must wait for one spends no attempt.
    fn first_attempt_with_receipt(&self, cmd: &Command) -> bool {
        cmd.kind == CommandType::RevokeInvite
            && self.retry.max_attempts > 0
            && self
                .backends
                .get(&cmd.backend)
                .is_some_and(|e| !e.read_before_reset)
    }

    /// The slot of a delivery's first request, taken only if the session is not held,
    /// the slot comes soon and no command of the session is ahead; else how long the
    /// command waits in the database.
    async fn take_first_slot(
        &self,
        cmd: &Command,
        received: Received<'_>,
    ) -> Result<Next, Unsettled> {
        let Some(entry) = self.backends.get(&cmd.backend) else {
            return Ok(Next::Wait(Duration::ZERO));
        };
        let mut slots = Slots::new(None, received.arrival);
        self.next_slot(&mut slots, entry, cmd).await
    }

    /// The receipt: records the command unless its row exists, taking the lane's lease
    /// (and recording the first attempt when `first_attempt` asks and it can). A command
    /// already done is a duplicate: acked, its lease released.
    async fn receive(
        &self,
        cmd: &Command,
        lane: &str,
        first_attempt: bool,
    ) -> Result<ControlFlow<Disposition, Recorded>, Unsettled> {
        let begin = store::Begin {
            cmd: cmd.clone(),
            lane: lane.to_owned(),
            first_attempt,
        };
        let store::Begun {
            mut row,
            leased,
            first_attempt,
            link,
        } = self
            .persist("recording the command", || {
                self.db.begin.call(begin.clone())
            })
            .await?;
        if row.status == store::STATUS_DONE {
            debug!("command already completed; acknowledging duplicate");
            m::duplicate();
            if leased {
                let ttl = self.settings.worker.group_lease;
                Lease::held(&self.store, lane, &self.instance_id, ttl)
                    .release()
                    .await;
            }
            return Ok(ControlFlow::Break(Disposition::Ack));
        }
        let receipt = if first_attempt {
            // Go on from the row as received, with its first attempt recorded.
            row.status = store::STATUS_RECEIVED.to_owned();
            row.attempts -= 1;
            row.before_code = None;
            Receipt::FirstAttempt(link)
        } else {
            Receipt::Received
        };
        Ok(ControlFlow::Continue(Recorded {
            row,
            leased,
            receipt,
        }))
    }

    /// The group's lease: the one the receipt took, or taken now, waiting a little while
    /// another process holds it. `None` when it is still held elsewhere.
    async fn take_lease(&self, lane: &str, leased: bool) -> Result<Option<Lease>, Unsettled> {
        let ttl = self.settings.worker.group_lease;
        if leased {
            return Ok(Some(Lease::held(&self.store, lane, &self.instance_id, ttl)));
        }
        self.persist("taking the group lease", || {
            Lease::acquire(
                &self.store,
                &self.db.leases,
                lane,
                &self.instance_id,
                ttl,
                Duration::from_secs(5),
            )
        })
        .await
    }
}
