//! One command's path: decode → inbox → lane and lease → execute against the backend
//! (rate-limited, retried) → one transaction for outcome, link, history and outbox.
//! The caller acks only after this returns a disposition.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use super::{
    lanes::{Lanes, Lease},
    pacing::{Pacer, Ticket},
    retry::{RetryPolicy, infra_backoff},
    scheduler,
};
use crate::{
    backend::SharedBackend,
    broker::Topology,
    config::{BackendSettings, Settings},
    domain::{
        BackendError, BackendResolver, Command, CommandType, ErrorKind, GroupIdStyle, Link,
        Rejection, command,
        events::{self, ExpirySource, OutboxMessage, Subject},
    },
    ops::{failpoint, metrics as m},
    store::{self, Completion, GroupKey, Outcome, Store},
};

/// A configured backend and the pacer of its sessions' requests.
pub struct BackendEntry {
    pub backend: SharedBackend,
    pub pacer: Pacer,
    /// `backends.<name>.read_before_reset`.
    pub read_before_reset: bool,
}

impl BackendEntry {
    /// `share`: how many worker processes share the backend's rate limit (see
    /// [`super::replicas`]).
    pub fn new(
        backend: SharedBackend,
        settings: &BackendSettings,
        share: tokio::sync::watch::Receiver<u32>,
    ) -> Self {
        Self {
            backend,
            pacer: Pacer::shared(settings.rate_limit(), share),
            read_before_reset: settings.read_before_reset,
        }
    }

    /// Runs one backend request at the slot of `ticket`, with metrics.
    async fn call(
        &self,
        cmd: &Command,
        op: &'static str,
        ticket: Ticket,
        request: impl Future<Output = Result<Link, BackendError>>,
    ) -> Result<Link, BackendError> {
        if !self
            .pacer
            .wait(cmd.session.as_str(), ticket)
            .await
            .is_zero()
        {
            m::rate_limit_wait();
        }
        let started = std::time::Instant::now();
        let result = request.await;
        m::backend_duration(&cmd.backend, op, started.elapsed());
        m::backend_request(&cmd.backend, op, &result);
        result
    }
}

/// What the consumer does with the delivery after [`process`].
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The outcome is committed (or the message was a duplicate): ack.
    Ack,
    /// The command cannot be stored: publish it to the dead-letter queue with this
    /// reason, then ack.
    DeadLetter(String),
    /// Publish a copy to the retry queue of this delay, then ack.
    Park(Duration),
}

/// The worker was asked to stop before the command could be settled; do not ack.
#[derive(Debug)]
pub struct Interrupted;

/// Why a command could not be settled normally.
#[derive(Debug)]
enum Unsettled {
    Interrupted,
    /// The database keeps rejecting this command's statements (not a connection
    /// problem): retrying will not help, so it goes to the dead-letter queue.
    Poison(String),
}

/// Database errors that mean "unreachable" or "busy": retried for as long as it takes.
fn is_connection_error(e: &sea_orm::DbErr) -> bool {
    matches!(
        e,
        sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_)
    ) || {
        let text = e.to_string().to_ascii_lowercase();
        [
            "connection",
            "locked",
            "busy",
            "timed out",
            "pool",
            "shutting down",
            "terminating",
        ]
        .iter()
        .any(|needle| text.contains(needle))
    }
}

/// Other database errors are retried this often before the command is dead-lettered.
const POISON_AFTER: u32 = 5;

/// A command's delivery as its copies keep it: the body, and the headers of its origin
/// ([`events::origin_headers`]).
#[derive(Clone, Copy)]
struct Received<'a> {
    body: &'a [u8],
    origin: &'a [(String, String)],
}

/// One command under its group lease.
struct Ctx<'a> {
    cmd: &'a Command,
    body: &'a [u8],
    origin: &'a [(String, String)],
    started_at: chrono::DateTime<Utc>,
    link: Option<entity::link::Model>,
    lease: &'a Lease,
}

/// The answer for a command another delivery completed while this one ran: ack the
/// duplicate, write nothing.
fn completed_elsewhere() -> Disposition {
    debug!("command was completed elsewhere meanwhile");
    m::duplicate();
    Disposition::Ack
}

/// Everything commands need, shared by all in-flight commands of a process.
pub struct Pipeline {
    pub settings: Arc<Settings>,
    pub store: Store,
    /// Batched statements shared by concurrent commands, group commit included.
    pub db: store::Batches,
    pub topology: Topology,
    pub backends: HashMap<String, BackendEntry>,
    pub lanes: Lanes,
    pub retry: RetryPolicy,
    pub instance_id: String,
    pub relay_wakeup: Arc<tokio::sync::Notify>,
    /// Cancelled when in-flight work must give up (after the shutdown grace).
    pub abort: CancellationToken,
}

impl BackendResolver for Pipeline {
    fn default_backend(&self) -> &str {
        &self.settings.default_backend
    }

    fn group_style(&self, backend: &str) -> Option<GroupIdStyle> {
        self.backends
            .get(backend)
            .map(|b| b.backend.kind().group_style())
    }
}

fn subject(cmd: &Command) -> Subject {
    Subject {
        command_id: Some(cmd.id.to_string()),
        command_type: Some(cmd.kind.as_str().to_owned()),
        trigger: Some(cmd.kind.trigger().to_owned()),
        backend: Some(cmd.backend.clone()),
        session_id: Some(cmd.session.as_str().to_owned()),
        group_id: Some(cmd.group.as_str().to_owned()),
        reason: cmd.reason.clone(),
        requested_by: cmd.requested_by.clone(),
    }
}

impl Pipeline {
    /// Retries a database operation with backoff until it succeeds or the worker aborts.
    async fn persist<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, Unsettled>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sea_orm::DbErr>>,
    {
        let started = std::time::Instant::now();
        let mut backoff = infra_backoff();
        let mut rejected = 0;
        loop {
            match op().await {
                Ok(v) => {
                    m::stage(what, started.elapsed());
                    return Ok(v);
                }
                Err(e) => {
                    if !is_connection_error(&e) {
                        rejected += 1;
                        if rejected >= POISON_AFTER {
                            return Err(Unsettled::Poison(format!(
                                "database rejected {what}: {e}"
                            )));
                        }
                    }
                    m::db_error();
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    warn!(error = %e, ?wait, "database error while {what}; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.abort.cancelled() => return Err(Unsettled::Interrupted),
                    }
                }
            }
        }
    }

    /// A backend request that gives way when in-flight work must stop (after the
    /// shutdown grace). A reset cut off here is safe: its `executing` row is committed.
    async fn backend_call(
        &self,
        entry: &BackendEntry,
        cmd: &Command,
        op: &'static str,
        ticket: Ticket,
        request: impl Future<Output = Result<Link, BackendError>>,
    ) -> Result<Result<Link, BackendError>, Unsettled> {
        tokio::select! {
            r = entry.call(cmd, op, ticket, request) => Ok(r),
            _ = self.abort.cancelled() => Err(Unsettled::Interrupted),
        }
    }

    fn rate_park(&self, backlog: Duration) -> Disposition {
        debug!(
            ?backlog,
            "session is at its rate limit; parking the command"
        );
        m::rate_limit_wait();
        Disposition::Park(backlog)
    }

    /// Settles one message body.
    /// `origin`: the delivery's headers a dead-lettered copy keeps
    /// ([`events::origin_headers`]).
    pub async fn process(
        &self,
        body: &[u8],
        origin: &[(String, String)],
    ) -> Result<Disposition, Interrupted> {
        match self.process_inner(body, origin).await {
            Ok(d) => Ok(d),
            Err(Unsettled::Interrupted) => Err(Interrupted),
            Err(Unsettled::Poison(reason)) => {
                tracing::error!(%reason, "cannot store the command; dead-lettering it");
                m::dead_lettered(ErrorKind::BackendProtocol);
                Ok(Disposition::DeadLetter(format!("internal_error: {reason}")))
            }
        }
    }

    async fn process_inner(
        &self,
        body: &[u8],
        origin: &[(String, String)],
    ) -> Result<Disposition, Unsettled> {
        match command::parse(body, self) {
            Err(rejection) => self.reject(&rejection, body, origin).await,
            Ok(cmd) => {
                let span = info_span!(
                    "command",
                    command_id = %cmd.id,
                    r#type = cmd.kind.as_str(),
                    backend = %cmd.backend,
                    session = %cmd.session,
                    group = %cmd.group,
                    attempt = tracing::field::Empty,
                );
                let started = std::time::Instant::now();
                let result = self.run(&cmd, body, origin).instrument(span).await;
                m::command_duration(cmd.kind, started.elapsed());
                result
            }
        }
    }

    async fn reject(
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
        let mut inbox = None;
        if rej.is_attributable() {
            let t = Utc::now();
            let subject = Subject {
                command_id: command_id.clone(),
                command_type: rej.command_type.map(|c| c.as_str().to_owned()),
                trigger: rej.command_type.map(|c| c.trigger().to_owned()),
                backend: rej.backend.clone(),
                session_id: rej.session_id.clone(),
                group_id: rej.group_id.clone(),
                reason: rej.reason_field.clone(),
                requested_by: rej.requested_by.clone(),
            };
            let err = BackendError::new(rej.kind, rej.reason.clone());
            let event =
                events::rotation_failed(&self.topology.events_exchange(), &subject, 0, &err, t);
            inbox = Some(entity::command::ActiveModel {
                command_id: sea_orm::Set(command_id.clone().unwrap_or_default()),
                command_type: sea_orm::Set(
                    rej.command_type
                        .map_or("unknown", |c| c.as_str())
                        .to_owned(),
                ),
                backend: sea_orm::Set(rej.backend.clone().unwrap_or_default()),
                session_id: sea_orm::Set(rej.session_id.clone().unwrap_or_default()),
                group_id: sea_orm::Set(rej.group_id.clone().unwrap_or_default()),
                reason: sea_orm::Set(rej.reason_field.clone()),
                requested_by: sea_orm::Set(rej.requested_by.clone()),
                status: sea_orm::Set(store::STATUS_DONE.into()),
                outcome: sea_orm::Set(Some("failed".into())),
                attempts: sea_orm::Set(0),
                cycle: sea_orm::Set(1),
                before_code: sea_orm::Set(None),
                new_code: sea_orm::Set(None),
                error_kind: sea_orm::Set(Some(rej.kind.as_str().into())),
                error_message: sea_orm::Set(Some(rej.reason.clone())),
                http_status: sea_orm::Set(None),
                event_id: sea_orm::Set(event.message_id.clone()),
                received_at: sea_orm::Set(t),
                updated_at: sea_orm::Set(t),
                finished_at: sea_orm::Set(Some(t)),
            });
            messages.push(event);
        }
        let fresh = self
            .persist("recording a rejected command", || {
                self.store.record_rejection(inbox.clone(), &messages)
            })
            .await?;
        if fresh {
            m::dead_lettered(rej.kind);
            m::command_outcome(rej.command_type, "failed");
            self.relay_wakeup.notify_one();
        }
        Ok(Disposition::Ack)
    }

    async fn run(
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
        let key = GroupKey::of(cmd);
        let lane = key.lane();
        let waited = std::time::Instant::now();
        let _lane = self.lanes.acquire(&lane).await;
        m::stage("waiting for the group lane", waited.elapsed());
        // A revoke that records the stored code as the one replaced may have its first
        // attempt recorded with the receipt (PostgreSQL): its rate-limit slot is
        // reserved first, so that a command parked for the rate limit spends no attempt.
        let mut ticket = None;
        if let Some(entry) = self.backends.get(&cmd.backend).filter(|e| {
            cmd.kind == CommandType::RevokeInvite
                && !e.read_before_reset
                && self.retry.max_attempts > 0
        }) {
            match entry
                .pacer
                .reserve(cmd.session.as_str(), Some(self.retry.max_inline_wait))
            {
                Ok(t) => ticket = Some(t),
                Err(wait) => return Ok(self.rate_park(wait)),
            }
        }
        let ttl = self.settings.worker.group_lease;
        let begin = store::Begin {
            cmd: cmd.clone(),
            lane: lane.clone(),
            first_attempt: ticket.is_some(),
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
                Lease::held(&self.store, &lane, &self.instance_id, ttl)
                    .release()
                    .await;
            }
            return Ok(Disposition::Ack);
        }
        let recorded = first_attempt.then(|| {
            // Go on from the row as received, with its first attempt recorded.
            row.status = store::STATUS_RECEIVED.to_owned();
            row.attempts -= 1;
            row.before_code = None;
            link
        });
        let lease = if leased {
            Some(Lease::held(&self.store, &lane, &self.instance_id, ttl))
        } else {
            self.persist("taking the group lease", || {
                Lease::acquire(
                    &self.store,
                    &self.db.leases,
                    &lane,
                    &self.instance_id,
                    ttl,
                    Duration::from_secs(5),
                )
            })
            .await?
        };
        let Some(lease) = lease else {
            debug!("group is busy in another process; parking the command");
            return Ok(Disposition::Park(Duration::from_secs(1)));
        };
        let result = lease
            .hold_while(self.run_leased(
                cmd,
                Received { body, origin },
                row,
                &lease,
                ticket,
                recorded,
            ))
            .await;
        lease.release().await;
        result
    }

    /// Runs a command under its group lease. `ticket` is a rate-limit slot reserved for
    /// its first request; `recorded` is set when its first attempt is already recorded
    /// (by the receipt), with the group's link read then.
    async fn run_leased(
        &self,
        cmd: &Command,
        received: Received<'_>,
        row: entity::command::Model,
        lease: &Lease,
        ticket: Option<Ticket>,
        recorded: Option<Option<entity::link::Model>>,
    ) -> Result<Disposition, Unsettled> {
        // `row` was read before the lease was taken: another process may finish the same
        // command meanwhile. The conditional updates in `mark_executing` and `complete`
        // catch that, so no extra read is needed here.
        let id = row.command_id.as_str();
        let key = GroupKey::of(cmd);
        let session = cmd.session.as_str();
        // The first request of this delivery takes a rate-limit slot only if it comes
        // soon; otherwise the command waits in a delay queue (no attempt is spent).
        let mut max_wait = ticket.is_none().then_some(self.retry.max_inline_wait);
        // A revoke's first attempt that records the stored code as the one replaced (no
        // read before the reset) reads the link and records the attempt in one
        // statement; its slot is reserved first, so a parked command spends no attempt.
        let premark = self.backends.get(&cmd.backend).filter(|e| {
            cmd.kind == CommandType::RevokeInvite
                && row.status == store::STATUS_RECEIVED
                && (row.attempts.max(0) as u32) < self.retry.max_attempts
                && !e.read_before_reset
        });
        let mut first_ticket;
        let mut first_marked = false;
        let stored = match (recorded, premark) {
            (Some(link), _) => {
                (first_ticket, first_marked) = (ticket, true);
                link
            }
            (None, Some(entry)) => {
                let reserved =
                    ticket.map_or_else(|| entry.pacer.reserve(session, max_wait.take()), Ok);
                let ticket = match reserved {
                    Ok(t) => t,
                    Err(wait) => return Ok(self.rate_park(wait)),
                };
                let first = store::FirstAttempt {
                    command_id: id.to_owned(),
                    key: key.clone(),
                    attempts: row.attempts.max(0) + 1,
                };
                let (marked, stored) = self
                    .persist("recording the attempt", || {
                        self.db.first_attempts.call(first.clone())
                    })
                    .await?;
                if !marked {
                    return Ok(completed_elsewhere());
                }
                (first_ticket, first_marked) = (Some(ticket), true);
                stored
            }
            (None, None) => {
                first_ticket = ticket;
                self.persist("reading the link", || self.db.links.call(key.clone()))
                    .await?
            }
        };
        let ctx = Ctx {
            cmd,
            body: received.body,
            origin: received.origin,
            started_at: row.received_at,
            link: stored.clone(),
            lease,
        };
        let stored_code = stored.as_ref().and_then(|l| l.invite_code.clone());
        let now = Utc::now();

        if cmd.kind == CommandType::RotateExpiringLink && row.status == store::STATUS_RECEIVED {
            let lead = self.settings.rotation.lead;
            let fresh = stored.as_ref().is_some_and(|l| {
                l.invite_code.is_some()
                    && l.expires_at
                        .is_some_and(|e| !scheduler::is_due(e, now, lead))
            });
            if fresh {
                info!("link is not due for rotation; skipping");
                return self.finish(&ctx, 0, Outcome::Skipped, None).await;
            }
        }

        let entry = match self.backends.get(&cmd.backend) {
            Some(e) => e,
            None => {
                let err = BackendError::new(ErrorKind::UnknownBackend, "backend is not configured");
                return self
                    .finish(&ctx, row.attempts, Outcome::Failed(err), None)
                    .await;
            }
        };
        let interrupted = row.status == store::STATUS_EXECUTING;
        let mut before = if interrupted {
            row.before_code.clone().or(stored_code.clone())
        } else {
            stored_code.clone()
        };
        let mut external = None;

        // Without a read, the stored code is the one recorded as being replaced. A read
        // is still needed after an interrupted attempt (to see whether its reset went
        // through) and for a group with no stored code.
        let read = entry.read_before_reset || interrupted || stored_code.is_none();
        if entry.backend.can_read() && read {
            let reserved = first_ticket
                .take()
                .map_or_else(|| entry.pacer.reserve(session, max_wait.take()), Ok);
            let ticket = match reserved {
                Ok(t) => t,
                Err(wait) => return Ok(self.rate_park(wait)),
            };
            // The code read is recorded (again) before the reset.
            first_marked = false;
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
                        return self.finish(&ctx, row.attempts, outcome, None).await;
                    }
                    if !interrupted && stored_code.as_deref().is_some_and(|s| s != code) {
                        info!("the link was changed outside the worker");
                        external = Some((stored_code.clone(), code.clone()));
                    }
                    before = Some(code);
                }
                Err(e) if !e.is_transient() => {
                    return self
                        .finish(&ctx, row.attempts, Outcome::Failed(e), None)
                        .await;
                }
                Err(e) => {
                    warn!(error = %e, "could not read the current link; using the stored one")
                }
            }
        }

        let mut attempts = row.attempts.max(0) as u32;
        let mut last_error = None;
        loop {
            if attempts >= self.retry.max_attempts {
                let err = last_error.unwrap_or_else(|| {
                    BackendError::new(
                        row.error_kind
                            .as_deref()
                            .and_then(ErrorKind::parse)
                            .unwrap_or(ErrorKind::BackendUnavailable),
                        "retry budget exhausted",
                    )
                });
                return self
                    .finish(&ctx, attempts as i32, Outcome::Failed(err), external)
                    .await;
            }
            let reserved = first_ticket
                .take()
                .map_or_else(|| entry.pacer.reserve(session, max_wait.take()), Ok);
            let ticket = match reserved {
                Ok(t) => t,
                Err(wait) => return Ok(self.rate_park(wait)),
            };
            attempts += 1;
            tracing::Span::current().record("attempt", attempts);
            // The first attempt may already be recorded, with the link read.
            if !std::mem::take(&mut first_marked) {
                let current = self
                    .persist("recording the attempt", || {
                        self.db.attempts.call(store::Attempt {
                            command_id: id.to_owned(),
                            before_code: before.clone(),
                            attempts: attempts as i32,
                        })
                    })
                    .await?;
                if !current {
                    return Ok(completed_elsewhere());
                }
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
                    let outcome = self.rotated(link, before.clone(), Utc::now());
                    return self.finish(&ctx, attempts as i32, outcome, external).await;
                }
                Err(e) if !e.is_transient() || attempts >= self.retry.max_attempts => {
                    warn!(error = %e, attempts, "command failed");
                    return self
                        .finish(&ctx, attempts as i32, Outcome::Failed(e), external)
                        .await;
                }
                Err(e) => {
                    let delay = self.retry.delay(attempts, e.retry_after);
                    m::retry_scheduled();
                    if delay <= self.retry.max_inline_wait {
                        debug!(error = %e, ?delay, "transient failure; retrying in place");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = self.abort.cancelled() => return Err(Unsettled::Interrupted),
                        }
                        last_error = Some(e);
                        continue;
                    }
                    info!(error = %e, ?delay, attempts, "transient failure; parking the command");
                    self.persist("recording the transient error", || {
                        self.store.record_transient_error(id, &e)
                    })
                    .await?;
                    return Ok(Disposition::Park(delay));
                }
            }
        }
    }

    fn rotated(
        &self,
        link: Link,
        previous_code: Option<String>,
        now: chrono::DateTime<Utc>,
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

    async fn finish(
        &self,
        ctx: &Ctx<'_>,
        attempts: i32,
        outcome: Outcome,
        external_change: Option<(Option<String>, String)>,
    ) -> Result<Disposition, Unsettled> {
        let (cmd, body) = (ctx.cmd, ctx.body);
        let now = Utc::now();
        let exchange = self.topology.events_exchange();
        let subject = subject(cmd);
        let messages: Vec<OutboxMessage> = match &outcome {
            Outcome::Rotated {
                link,
                previous_code,
                expires_at,
                source,
            } => vec![events::rotated(
                &exchange,
                &subject,
                attempts,
                link,
                previous_code.as_deref(),
                *expires_at,
                *source,
                now,
            )],
            Outcome::Skipped => Vec::new(),
            Outcome::Failed(e) => vec![
                events::rotation_failed(&exchange, &subject, attempts, e, now),
                events::dead_letter(
                    &self.topology.dead_queue(),
                    body,
                    &format!("{}: {}", e.kind, e.message),
                    Some(cmd.id.to_string()),
                    ctx.origin,
                ),
            ],
        };
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
}
