//! A command under its group lease, step by step: read the group's stored link (or
//! record the first attempt with it), skip a rotation that is not due, reconcile with the
//! provider's current link where a read is needed, then the reset loop: record each
//! attempt before its reset, retry transient failures in place or park the command.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use super::{
    BackendEntry, Ctx, Disposition, Pipeline, Received, Unsettled, completed_elsewhere,
    run::Receipt,
    slots::{Next, Slots},
};
use crate::{
    domain::{BackendError, Command, CommandType, ErrorKind},
    ops::{failpoint, metrics as m},
    store::{self, GroupKey, Outcome},
    worker::{lanes::Lease, pacing::Ticket, scheduler},
};

/// The step's value, or the command's disposition when the step settled it.
type Step<T> = Result<ControlFlow<Disposition, T>, Unsettled>;

/// Goes on with a step's value, or returns the disposition it settled the command with.
macro_rules! proceed {
    ($step:expr) => {
        match $step? {
            ControlFlow::Continue(value) => value,
            ControlFlow::Break(done) => return Ok(done),
        }
    };
}

/// The group's link as stored when the command came under its lease.
struct Stored {
    link: Option<entity::link::Model>,
    /// The first attempt is recorded already, with the stored code as the one replaced.
    attempt_recorded: bool,
}

/// What the reset loop starts from.
struct Plan {
    /// The code being replaced, recorded with each attempt.
    before: Option<String>,
    /// A code read from the provider that differed from the stored one: (stored, read).
    external: Option<(Option<String>, String)>,
    /// The first attempt is recorded already (with `before`).
    attempt_recorded: bool,
}

impl Pipeline {
    /// Runs a command under its group lease. `ticket` is a rate-limit slot reserved for
    /// its first request; `receipt` says whether its first attempt is already recorded
    /// (by the receipt), with the group's link read then.
    pub(super) async fn run_leased(
        &self,
        cmd: &Command,
        received: Received<'_>,
        row: entity::command::Model,
        lease: &Lease,
        ticket: Option<Ticket>,
        receipt: Receipt,
    ) -> Result<Disposition, Unsettled> {
        // `row` was read before the lease was taken: another process may finish the same
        // command meanwhile. The conditional updates in `mark_executing` and `complete`
        // catch that, so no extra read is needed here.
        let mut slots = Slots::new(ticket, received.arrival);
        let stored = proceed!(
            self.read_stored(cmd, received, &row, &mut slots, receipt)
                .await
        );
        let ctx = Ctx {
            cmd,
            body: received.body,
            origin: received.origin,
            arrived_at: received.arrived_at,
            started_at: row.received_at,
            link: stored.link,
            lease,
        };
        let now = Utc::now();
        proceed!(self.skip_if_fresh(&ctx, &row, now).await);
        let Some(entry) = self.backends.get(&cmd.backend) else {
            let err = BackendError::new(ErrorKind::UnknownBackend, "backend is not configured");
            return self
                .finish(&ctx, row.attempts, Outcome::Failed(err), None)
                .await;
        };
        let plan = proceed!(
            self.reconcile(&ctx, entry, &row, &mut slots, stored.attempt_recorded, now)
                .await
        );
        self.reset_loop(&ctx, entry, &row, &mut slots, plan).await
    }

    /// The group's stored link. A revoke's first attempt that records the stored code as
    /// the one replaced (no read before the reset) reads the link and records the
    /// attempt in one statement, unless the receipt did already; its slot is reserved
    /// first, so a parked command spends no attempt.
    async fn read_stored(
        &self,
        cmd: &Command,
        received: Received<'_>,
        row: &entity::command::Model,
        slots: &mut Slots<'_>,
        receipt: Receipt,
    ) -> Step<Stored> {
        if let Receipt::FirstAttempt(link) = receipt {
            return Ok(ControlFlow::Continue(Stored {
                link,
                attempt_recorded: true,
            }));
        }
        let key = GroupKey::of(cmd);
        let premark = self.backends.get(&cmd.backend).filter(|e| {
            cmd.kind == CommandType::RevokeInvite
                && row.status == store::STATUS_RECEIVED
                && (row.attempts.max(0) as u32) < self.retry.max_attempts
                && !e.read_before_reset
        });
        let Some(entry) = premark else {
            let link = self
                .persist("reading the link", || self.db.links.call(key.clone()))
                .await?;
            return Ok(ControlFlow::Continue(Stored {
                link,
                attempt_recorded: false,
            }));
        };
        let ticket = match self.next_slot(slots, entry, cmd).await? {
            Next::Go(ticket) => ticket,
            Next::Wait(wait) => {
                let waits = self.defer(cmd, received, wait, true).await?;
                return Ok(ControlFlow::Break(waits));
            }
        };
        let first = store::FirstAttempt {
            command_id: row.command_id.clone(),
            key,
            attempts: row.attempts.max(0) + 1,
        };
        let (marked, link) = self
            .persist("recording the attempt", || {
                self.db.first_attempts.call(first.clone())
            })
            .await?;
        if !marked {
            return Ok(ControlFlow::Break(completed_elsewhere()));
        }
        slots.put_back(ticket);
        Ok(ControlFlow::Continue(Stored {
            link,
            attempt_recorded: true,
        }))
    }

    /// A scheduled rotation of a link that is not due (rotated meanwhile) is skipped.
    async fn skip_if_fresh(
        &self,
        ctx: &Ctx<'_>,
        row: &entity::command::Model,
        now: DateTime<Utc>,
    ) -> Step<()> {
        if ctx.cmd.kind != CommandType::RotateExpiringLink || row.status != store::STATUS_RECEIVED {
            return Ok(ControlFlow::Continue(()));
        }
        let lead = self.settings.rotation.lead;
        let fresh = ctx.link.as_ref().is_some_and(|l| {
            l.invite_code.is_some()
                && l.expires_at
                    .is_some_and(|e| !scheduler::is_due(e, now, lead))
        });
        if !fresh {
            return Ok(ControlFlow::Continue(()));
        }
        info!("link is not due for rotation; skipping");
        let done = self.finish(ctx, 0, Outcome::Skipped, None).await?;
        Ok(ControlFlow::Break(done))
    }

    /// The code being replaced. Without a read, the stored code is the one recorded as
    /// being replaced. A read is still needed after an interrupted attempt (to see
    /// whether its reset went through) and for a group with no stored code.
    async fn reconcile(
        &self,
        ctx: &Ctx<'_>,
        entry: &BackendEntry,
        row: &entity::command::Model,
        slots: &mut Slots<'_>,
        attempt_recorded: bool,
        now: DateTime<Utc>,
    ) -> Step<Plan> {
        let cmd = ctx.cmd;
        let stored_code = ctx.link.as_ref().and_then(|l| l.invite_code.clone());
        let interrupted = row.status == store::STATUS_EXECUTING;
        let mut plan = Plan {
            before: if interrupted {
                row.before_code.clone().or(stored_code.clone())
            } else {
                stored_code.clone()
            },
            external: None,
            attempt_recorded,
        };
        let read = entry.read_before_reset || interrupted || stored_code.is_none();
        if !(entry.backend.can_read() && read) {
            return Ok(ControlFlow::Continue(plan));
        }
        let ticket = match self.next_slot(slots, entry, cmd).await? {
            Next::Go(ticket) => ticket,
            Next::Wait(wait) => {
                let waits = self.defer(cmd, ctx.received(), wait, true).await?;
                return Ok(ControlFlow::Break(waits));
            }
        };
        // The code read is recorded (again) before the reset.
        plan.attempt_recorded = false;
        let read = self
            .backend_call(
                entry,
                cmd,
                "read",
                ticket,
                entry.backend.current_link(&cmd.session, &cmd.group),
            )
            .await?;
        match read {
            Ok(current) => {
                let code = current.code.as_str().to_owned();
                if interrupted
                    && row.before_code.is_some()
                    && row.before_code.as_deref() != Some(&code)
                {
                    info!(
                        attempts = row.attempts,
                        "an earlier reset went through; recording it without resetting again"
                    );
                    let outcome = self.rotated(current, row.before_code.clone(), now);
                    let done = self.finish(ctx, row.attempts, outcome, None).await?;
                    return Ok(ControlFlow::Break(done));
                }
                if !interrupted && stored_code.as_deref().is_some_and(|s| s != code) {
                    info!("the link was changed outside the worker");
                    plan.external = Some((stored_code.clone(), code.clone()));
                }
                plan.before = Some(code);
            }
            Err(e) if !e.is_transient() => {
                let done = self
                    .finish(ctx, row.attempts, Outcome::Failed(e), None)
                    .await?;
                return Ok(ControlFlow::Break(done));
            }
            Err(e) => {
                warn!(error = %e, "could not read the current link; using the stored one")
            }
        }
        Ok(ControlFlow::Continue(plan))
    }

    /// Resets the link until it is rotated, fails for good, or must wait longer than it
    /// may wait in place (parked); each attempt is recorded before its reset is sent.
    async fn reset_loop(
        &self,
        ctx: &Ctx<'_>,
        entry: &BackendEntry,
        row: &entity::command::Model,
        slots: &mut Slots<'_>,
        mut plan: Plan,
    ) -> Result<Disposition, Unsettled> {
        let cmd = ctx.cmd;
        let mut attempts = row.attempts.max(0) as u32;
        let mut last_error = None;
        loop {
            if attempts >= self.retry.max_attempts {
                let err = last_error.unwrap_or_else(|| exhausted(row));
                return self
                    .finish(ctx, attempts as i32, Outcome::Failed(err), plan.external)
                    .await;
            }
            let ticket = match self.next_slot(slots, entry, cmd).await? {
                Next::Go(ticket) => ticket,
                Next::Wait(wait) => return self.defer(cmd, ctx.received(), wait, true).await,
            };
            attempts += 1;
            tracing::Span::current().record("attempt", attempts);
            // The first attempt may already be recorded, with the link read.
            if !std::mem::take(&mut plan.attempt_recorded)
                && !self
                    .record_attempt(&row.command_id, &plan.before, attempts)
                    .await?
            {
                return Ok(completed_elsewhere());
            }
            failpoint::hit(failpoint::BEFORE_RESET);
            let reset = self
                .backend_call(
                    entry,
                    cmd,
                    "reset",
                    ticket,
                    entry.backend.reset_link(&cmd.session, &cmd.group),
                )
                .await?;
            match reset {
                Ok(link) => {
                    failpoint::hit(failpoint::AFTER_RESET);
                    info!(code = %link.code.fingerprint(), attempts, "link rotated");
                    let outcome = self.rotated(link, plan.before.clone(), Utc::now());
                    return self
                        .finish(ctx, attempts as i32, outcome, plan.external)
                        .await;
                }
                Err(e) if !e.is_transient() || attempts >= self.retry.max_attempts => {
                    warn!(error = %e, attempts, "command failed");
                    return self
                        .finish(ctx, attempts as i32, Outcome::Failed(e), plan.external)
                        .await;
                }
                Err(e) => {
                    last_error = Some(proceed!(self.after_transient(ctx, e, attempts).await));
                }
            }
        }
    }

    /// Records an attempt (the code being replaced, its number) before its reset is
    /// sent; false when the command was completed elsewhere meanwhile.
    async fn record_attempt(
        &self,
        command_id: &str,
        before: &Option<String>,
        attempts: u32,
    ) -> Result<bool, Unsettled> {
        self.persist("recording the attempt", || {
            self.db.attempts.call(store::Attempt {
                command_id: command_id.to_owned(),
                before_code: before.clone(),
                attempts: attempts as i32,
            })
        })
        .await
    }

    /// After a transient failure of attempt `attempts`: a short delay is waited in place
    /// (the error is kept, in case the budget runs out); after a longer one the command
    /// waits in the database until it is due, with the error kept for when it runs again.
    async fn after_transient(
        &self,
        ctx: &Ctx<'_>,
        e: BackendError,
        attempts: u32,
    ) -> Step<BackendError> {
        let command_id = ctx.cmd.id.to_string();
        let delay = self.retry.delay(attempts, e.retry_after);
        m::retry_scheduled();
        if delay <= self.retry.max_inline_wait {
            debug!(error = %e, ?delay, "transient failure; retrying in place");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.abort.cancelled() => return Err(Unsettled::Interrupted),
            }
            return Ok(ControlFlow::Continue(e));
        }
        info!(error = %e, ?delay, attempts, "transient failure; deferring the command");
        self.persist("recording the transient error", || {
            self.store.record_transient_error(&command_id, &e)
        })
        .await?;
        let waits = self.defer(ctx.cmd, ctx.received(), delay, true).await?;
        Ok(ControlFlow::Break(waits))
    }
}

/// The error of a command whose retry budget ran out before this delivery tried it:
/// the kind of its last recorded error.
fn exhausted(row: &entity::command::Model) -> BackendError {
    BackendError::new(
        row.error_kind
            .as_deref()
            .and_then(ErrorKind::parse)
            .unwrap_or(ErrorKind::BackendUnavailable),
        "retry budget exhausted",
    )
}
