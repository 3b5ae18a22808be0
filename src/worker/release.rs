//! The releaser: runs deferred commands when they are due, in each session's slot order.
//! A command waits in `deferred_commands`, not in a consumer slot, while its session is
//! at its rate limit, during a backoff or `Retry-After`, or while its group is busy. Each
//! process looks for sessions with work due; for each, one driver task at a time claims
//! the session's next command (revokes first, then by due time and arrival), takes the
//! session's next slot for it and runs it. Processes sharing a database claim with row
//! locks and take slots from one row per session, so together they keep the order and
//! the rate. A paused session, or one behind an open circuit, is left alone.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, warn};

use super::{
    consume::publish_until_confirmed,
    pacing::{Class, Slot, Ticket},
    pipeline::{Disposition, Pipeline},
};
use crate::{
    broker::Publisher,
    domain::events,
    ops::metrics as m,
    store::{StoreError, origin_of},
};

/// How often other processes' deferrals and expired claims are looked for when nothing
/// nearer is known.
const POLL: Duration = Duration::from_millis(250);
/// How long a claimed command is kept from other processes, beyond two of its session's
/// intervals (the wait for its slot): one that crashes with a claim leaves the command
/// due again after this long.
const CLAIM_FOR: Duration = Duration::from_secs(30);
/// Sessions looked at per turn.
const SESSIONS_PER_TURN: u64 = 1024;
/// How often the number of waiting commands is counted for `/metrics`.
const COUNT_EVERY: Duration = Duration::from_secs(5);

type SessionKey = (String, String);

pub(super) struct Releaser {
    pipeline: Arc<Pipeline>,
    publisher: Arc<Publisher>,
    /// Bounds the released commands running at once.
    permits: Arc<Semaphore>,
    /// Sessions with a driver in this process.
    driving: Mutex<HashSet<SessionKey>>,
}

impl Releaser {
    /// `concurrency`: released commands run at once at most (`amqp.prefetch`).
    pub(super) fn new(
        pipeline: Arc<Pipeline>,
        publisher: Arc<Publisher>,
        concurrency: usize,
    ) -> Self {
        Self {
            pipeline,
            publisher,
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            driving: Mutex::default(),
        }
    }

    /// Looks for due sessions until `stop`, starting a driver for each; drivers and the
    /// commands they release run as tasks of `in_flight`.
    pub(super) async fn run(self: Arc<Self>, stop: CancellationToken, in_flight: TaskTracker) {
        let store = &self.pipeline.store;
        let wakeup = self.pipeline.release_wakeup.clone();
        let mut counted = tokio::time::Instant::now() - COUNT_EVERY;
        while !stop.is_cancelled() {
            let turn = async {
                let now = Utc::now();
                for session in store.due_sessions(now, SESSIONS_PER_TURN).await? {
                    // A paused session, or one behind an open circuit, stays put.
                    if self.pipeline.holds.is_held(&session.0, &session.1) {
                        continue;
                    }
                    if self.lock().insert(session.clone()) {
                        let this = self.clone();
                        let (stop, tasks) = (stop.clone(), in_flight.clone());
                        in_flight.spawn(async move { this.drive(session, stop, tasks).await });
                    }
                }
                if counted.elapsed() >= COUNT_EVERY {
                    m::deferred_waiting(store.deferred_count().await?);
                    counted = tokio::time::Instant::now();
                }
                let next = store.next_due(now).await?;
                Ok::<_, StoreError>(next.map(|t| (t - Utc::now()).to_std().unwrap_or_default()))
            };
            let wait = match turn.await {
                Ok(next) => next.unwrap_or(POLL).min(POLL),
                Err(e) => {
                    warn!(error = %e, "cannot look for deferred commands; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wakeup.notified() => {}
                _ = stop.cancelled() => {}
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<SessionKey>> {
        self.driving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims the session's due commands one at a time, each with the session's next
    /// slot, until none is left (or `stop`).
    async fn drive(
        self: Arc<Self>,
        session: SessionKey,
        stop: CancellationToken,
        tasks: TaskTracker,
    ) {
        let (backend, session_id) = (&session.0, &session.1);
        let pipeline = &self.pipeline;
        loop {
            if pipeline.holds.is_held(backend, session_id) {
                break;
            }
            let permit = tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = stop.cancelled() => break,
            };
            let now = Utc::now();
            let hold = CLAIM_FOR + self.interval(backend) * 2;
            let until = now + chrono::Duration::from_std(hold).unwrap_or_default();
            let claimed = pipeline
                .store
                .claim_deferred(backend, session_id, &pipeline.instance_id, now, until)
                .await;
            let row = match claimed {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "cannot claim a deferred command");
                    break;
                }
            };
            m::released();
            let class = if row.priority == Class::Revoke.priority() {
                Class::Revoke
            } else {
                Class::Rotation
            };
            let Some(ticket) = self.slot(backend, session_id, class, &stop).await else {
                // Stopping: hand the command back at once instead of after the claim.
                let _ = pipeline
                    .store
                    .unclaim_deferred(&row.command_id, &pipeline.instance_id)
                    .await;
                break;
            };
            let this = self.clone();
            tasks.spawn(async move {
                m::in_flight(1.0);
                this.release(row, ticket).await;
                m::in_flight(-1.0);
                drop(permit);
            });
        }
        self.lock().remove(&session);
    }

    /// The interval between two requests of a session of `backend` (zero for a backend no
    /// longer configured).
    fn interval(&self, backend: &str) -> Duration {
        self.pipeline
            .backends
            .get(backend)
            .map_or(Duration::ZERO, |e| e.pacer.grid().interval)
    }

    /// The session's next slot, waiting while it is more than one interval away; `None`
    /// when stopping. A backend no longer configured has no slots: its commands run (and
    /// fail as such) at once.
    async fn slot(
        &self,
        backend: &str,
        session: &str,
        class: Class,
        stop: &CancellationToken,
    ) -> Option<Ticket> {
        let Some(entry) = self.pipeline.backends.get(backend) else {
            return Some(Ticket::after(Duration::ZERO));
        };
        let lookahead = entry.pacer.grid().interval;
        loop {
            let wait = match entry.pacer.take(session, class, lookahead, false).await {
                Ok(Slot::Taken(wait)) => return Some(Ticket::after(wait)),
                Ok(Slot::Busy(retry)) => retry,
                Err(e) => {
                    warn!(error = %e, "cannot take a request slot; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return None,
            }
        }
    }

    /// Runs a claimed command at its slot and settles its row: forgotten once its
    /// outcome is committed (or it went to the dead-letter queue), kept when it was
    /// deferred again or interrupted (its claim then expires).
    async fn release(&self, row: entity::deferred_command::Model, ticket: Ticket) {
        let pipeline = &self.pipeline;
        let origin = origin_of(&row);
        let outcome = pipeline
            .process(&row.body, &origin, row.received_at, None, Some(ticket))
            .await;
        let settled = match outcome {
            Ok(Disposition::Ack) => true,
            Ok(Disposition::Deferred) => false,
            Ok(Disposition::DeadLetter(reason)) => {
                let copy = events::dead_letter(
                    &pipeline.topology.dead_queue(),
                    &row.body,
                    &reason,
                    Some(row.command_id.clone()),
                    &origin,
                );
                publish_until_confirmed(pipeline, &self.publisher, &copy).await
            }
            Err(_) => {
                debug!("interrupted; the deferred command's claim will expire");
                false
            }
        };
        if settled
            && let Err(e) = pipeline
                .store
                .forget_deferred(std::slice::from_ref(&row.command_id))
                .await
        {
            // Claimed again once the claim expires, it is then a duplicate.
            warn!(error = %e, "cannot forget a settled deferred command");
        }
    }
}
