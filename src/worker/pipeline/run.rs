//! A valid command up to its group lease: parked at once when its session has a long
//! backlog, queued behind its group's lane, recorded by the receipt (with the lease, and
//! on PostgreSQL its first attempt), then run under the lease.

use std::{ops::ControlFlow, time::Duration};

use tracing::debug;

use super::{Disposition, Pipeline, Received, Unsettled};
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
    /// Runs a valid command to its disposition.
    pub(super) async fn run(
        &self,
        cmd: &Command,
        body: &[u8],
        origin: &[(String, String)],
    ) -> Result<Disposition, Unsettled> {
        // A session with a long backlog of requests: wait in a delay queue, not in a
        // consumer slot, so that commands for other sessions keep flowing.
        if let Some(entry) = self.backends.get(&cmd.backend) {
            let backlog = entry.pacer.backlog(cmd.session.as_str());
            if backlog > self.retry.max_inline_wait {
                return Ok(self.rate_park(backlog));
            }
        }
        let lane = GroupKey::of(cmd).lane();
        let waited = std::time::Instant::now();
        let _lane = self.lanes.acquire(&lane).await;
        m::stage("waiting for the group lane", waited.elapsed());
        let ticket = match self.reserve_first_slot(cmd) {
            Ok(ticket) => ticket,
            Err(wait) => return Ok(self.rate_park(wait)),
        };
        let recorded = match self.receive(cmd, &lane, ticket.is_some()).await? {
            ControlFlow::Continue(recorded) => recorded,
            ControlFlow::Break(done) => return Ok(done),
        };
        let Some(lease) = self.take_lease(&lane, recorded.leased).await? else {
            debug!("group is busy in another process; parking the command");
            return Ok(Disposition::Park(Duration::from_secs(1)));
        };
        let result = lease
            .hold_while(self.run_leased(
                cmd,
                Received { body, origin },
                recorded.row,
                &lease,
                ticket,
                recorded.receipt,
            ))
            .await;
        lease.release().await;
        result
    }

    /// A revoke that records the stored code as the one replaced may have its first
    /// attempt recorded with the receipt (PostgreSQL): its rate-limit slot is reserved
    /// first, so that a command parked for the rate limit spends no attempt. `Err`: the
    /// wait for a slot, too long to take one now.
    fn reserve_first_slot(&self, cmd: &Command) -> Result<Option<Ticket>, Duration> {
        let entry = self.backends.get(&cmd.backend).filter(|e| {
            cmd.kind == CommandType::RevokeInvite
                && !e.read_before_reset
                && self.retry.max_attempts > 0
        });
        match entry {
            Some(entry) => entry
                .pacer
                .reserve(cmd.session.as_str(), Some(self.retry.max_inline_wait))
                .map(Some),
            None => Ok(None),
        }
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
