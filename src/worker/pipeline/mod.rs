//! One command's path: decode → command row → lane and lease → execute against the
//! backend (rate-limited, retried) → one transaction for outcome, link, history and
//! outbox. The caller acks only after this returns a disposition.
//!
//! [`run`] takes a command up to its group lease, [`execute`] runs it under the lease,
//! [`finish`] commits its outcome; [`reject`] settles a message that is no command.

mod arrivals;
mod execute;
mod finish;
mod reject;
mod run;
mod slots;

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

pub(super) use self::arrivals::{Arrival, Arrivals};
use super::{
    holds::Holds,
    lanes::{Lanes, Lease},
    pacing::{Class, Pacer, Ticket},
    retry::{RetryPolicy, infra_backoff},
};
use crate::{
    backend::SharedBackend,
    broker::Topology,
    config::{BackendSettings, Settings},
    domain::{BackendError, BackendResolver, Command, ErrorKind, GroupIdStyle, Link, command},
    ops::{metrics as m, trace},
    store::{self, Store, StoreError},
};

/// A configured backend and the slots of its sessions' requests.
pub(super) struct BackendEntry {
    pub backend: SharedBackend,
    pub pacer: Pacer,
    /// `backends.<name>.read_before_reset`.
    pub read_before_reset: bool,
}

impl BackendEntry {
    /// `rotation_share`: `rotation.rate_share`; `store` keeps the slots that processes
    /// on one PostgreSQL database share.
    pub(super) fn new(
        name: &str,
        backend: SharedBackend,
        settings: &BackendSettings,
        rotation_share: f64,
        store: &Store,
    ) -> Self {
        Self {
            backend,
            pacer: Pacer::new(name, settings.rate_limit(), rotation_share, store),
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
        if ticket.wait().await {
            m::rate_limit_wait();
        }
        let started = std::time::Instant::now();
        let result = request.await;
        m::backend_duration(&cmd.backend, op, started.elapsed());
        m::backend_request(&cmd.backend, op, &result);
        result
    }
}

/// What becomes of a delivery (or a deferred row) after [`Pipeline::process`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Disposition {
    /// The outcome is committed (or the message was a duplicate): ack.
    Ack,
    /// The command waits in the database until it is due (committed): ack the delivery;
    /// a deferred row stays.
    Deferred,
    /// The command cannot be stored: publish it to the dead-letter queue with this
    /// reason, then ack.
    DeadLetter(String),
}

/// The worker was asked to stop before the command could be settled; do not ack.
#[derive(Debug)]
pub(super) struct Interrupted;

/// Why a command could not be settled normally.
#[derive(Debug)]
enum Unsettled {
    Interrupted,
    /// The database keeps rejecting this command's statements (not a connection, lock
    /// or serialization problem): retrying will not help, so it goes to the dead-letter
    /// queue.
    Poison(String),
}

/// Database errors of a kind that retrying cannot cure (see [`StoreError::is_transient`])
/// are retried this often before the command is dead-lettered; the others for as long as
/// it takes.
const POISON_AFTER: u32 = 5;

/// A command's delivery as its copies keep it: the body, and the headers of its origin
/// ([`crate::domain::events::origin_headers`]).
#[derive(Clone, Copy)]
struct Received<'a> {
    body: &'a [u8],
    origin: &'a [(String, String)],
    /// When the command first reached a worker: its place among its session's deferred
    /// commands of the same priority (first come, first served).
    arrived_at: chrono::DateTime<Utc>,
    /// A delivery's place among its session's deliveries waiting for a first slot.
    arrival: Option<&'a Arrival>,
}

/// One command under its group lease.
struct Ctx<'a> {
    cmd: &'a Command,
    body: &'a [u8],
    origin: &'a [(String, String)],
    arrived_at: chrono::DateTime<Utc>,
    started_at: chrono::DateTime<Utc>,
    link: Option<entity::link::Model>,
    lease: &'a Lease,
}

impl Ctx<'_> {
    fn received(&self) -> Received<'_> {
        Received {
            body: self.body,
            origin: self.origin,
            arrived_at: self.arrived_at,
            arrival: None,
        }
    }
}

/// The answer for a command another delivery completed while this one ran: ack the
/// duplicate, write nothing.
fn completed_elsewhere() -> Disposition {
    debug!("command was completed elsewhere meanwhile");
    m::duplicate();
    Disposition::Ack
}

/// Everything commands need, shared by all in-flight commands of a process.
pub(super) struct Pipeline {
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
    /// Woken when a command was deferred (see [`super::release`]).
    pub release_wakeup: Arc<tokio::sync::Notify>,
    /// Deliveries not past their first slot yet, per session, in arrival order.
    pub arrivals: Arc<Arrivals>,
    /// Pauses and circuit breakers.
    pub holds: Arc<Holds>,
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

impl Pipeline {
    /// Retries a database operation with backoff until it succeeds or the worker aborts.
    async fn persist<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, Unsettled>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
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
                    if !e.is_transient() {
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
    /// A slot that passed while the command was busy elsewhere is replaced by a new one.
    async fn backend_call(
        &self,
        entry: &BackendEntry,
        cmd: &Command,
        op: &'static str,
        ticket: Ticket,
        request: impl Future<Output = Result<Link, BackendError>>,
    ) -> Result<Result<Link, BackendError>, Unsettled> {
        let ticket = if ticket.is_stale(entry.pacer.grid().slack) {
            debug!("the request's slot passed; taking another");
            let mut stale = ticket;
            let probe = stale.take_probe();
            self.later_slot(entry, cmd).await?.probing(probe)
        } else {
            ticket
        };
        let result = tokio::select! {
            r = entry.call(cmd, op, ticket, request) => r,
            _ = self.abort.cancelled() => return Err(Unsettled::Interrupted),
        };
        self.holds
            .record(&cmd.backend, cmd.session.as_str(), &result);
        Ok(result)
    }

    /// Puts the command to wait in the database until `due_in` from now (its delivery
    /// is then acknowledged; the releaser runs it when due). `release_lease`: this
    /// delivery holds the group's lease, released with the deferral.
    async fn defer(
        &self,
        cmd: &Command,
        received: Received<'_>,
        due_in: Duration,
        release_lease: bool,
    ) -> Result<Disposition, Unsettled> {
        let now = Utc::now();
        let deferral = store::Deferral {
            command_id: cmd.id.to_string(),
            backend: cmd.backend.clone(),
            session_id: cmd.session.as_str().to_owned(),
            lane: store::GroupKey::of(cmd).lane(),
            priority: Class::of(cmd.kind).priority(),
            // Due at once: due since it arrived, so that a session's backlog keeps its
            // order of arrival whatever order its deferrals were written in.
            due_at: if due_in.is_zero() {
                received.arrived_at.min(now)
            } else {
                now + chrono::Duration::from_std(due_in).unwrap_or(chrono::Duration::MAX)
            },
            received_at: received.arrived_at,
            body: received.body.to_vec(),
            origin: received.origin.to_vec(),
            release_lease,
        };
        self.persist("deferring the command", || {
            let committed = self.db.deferrals.call(deferral.clone());
            // Handed to the queue, which commits in order: the session's later arrivals
            // may follow it now.
            if let Some(arrival) = received.arrival {
                arrival.handed_on();
            }
            committed
        })
        .await?;
        m::deferred(cmd.kind);
        self.release_wakeup.notify_one();
        Ok(Disposition::Deferred)
    }

    /// Registers a delivery among its session's arrivals, in the order deliveries come
    /// (call it before processing them concurrently); `None` for a message that is no
    /// valid command.
    pub(super) fn arrival(&self, body: &[u8]) -> Option<Arrival> {
        let cmd = command::parse(body, self).ok()?;
        Some(self.arrivals.register(&cmd.backend, cmd.session.as_str()))
    }

    /// Settles one message body: a delivery's, or (with `first`, the slot its session's
    /// releaser took for it) a deferred command's, now due.
    /// `origin`: the delivery's headers a dead-lettered copy keeps
    /// ([`crate::domain::events::origin_headers`]); `arrived_at`: when the command first
    /// reached a worker; `arrival`: a delivery's place among its session's arrivals (see
    /// [`Pipeline::arrival`]).
    pub(super) async fn process(
        &self,
        body: &[u8],
        origin: &[(String, String)],
        arrived_at: chrono::DateTime<Utc>,
        arrival: Option<&Arrival>,
        first: Option<Ticket>,
    ) -> Result<Disposition, Interrupted> {
        let received = Received {
            body,
            origin,
            arrived_at,
            arrival,
        };
        match self.process_inner(received, first).await {
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
        received: Received<'_>,
        first: Option<Ticket>,
    ) -> Result<Disposition, Unsettled> {
        match command::parse(received.body, self) {
            Err(rejection) => {
                self.reject(&rejection, received.body, received.origin)
                    .await
            }
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
                // A child of the publisher's span when the command carries its trace
                // context (kept across deferral and redelivery with the origin headers).
                trace::adopt(&span, received.origin);
                let started = std::time::Instant::now();
                let result = self.run(&cmd, received, first).instrument(span).await;
                m::command_duration(cmd.kind, started.elapsed());
                result
            }
        }
    }
}
