//! What a connection declares, in two parts. Consuming and publishing need the
//! exchanges, the commands queue and its binding: without them a connection is not set
//! up. The rest (the dead-letter queue) may fail — its home node down, another type
//! already declared — without stopping anything: the failure is logged once per change,
//! reported (`/readyz`, `/metrics`) and retried in the background, while dead letters
//! wait in the outbox (they are published `mandatory`, so one the broker cannot route
//! comes back instead of being dropped).

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use lapin::{
    Channel, Connection,
    options::QueueDeclareOptions,
    protocol::{AMQPErrorKind, AMQPSoftError},
};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::topology::{DURABLE, QueueOptions, Topology, bind_commands_queue, declare_exchanges};
use crate::ops::metrics as m;

/// The dead-letter queue, as `/readyz` and `/metrics` name it.
pub const DEAD_LETTER_QUEUE: &str = "dead_letter_queue";
/// The commands queue's arguments (its delivery limit and dead-lettering).
pub const COMMANDS_QUEUE_ARGUMENTS: &str = "commands_queue_arguments";
/// Every name a declaration is reported under.
pub const NAMES: [&str; 2] = [COMMANDS_QUEUE_ARGUMENTS, DEAD_LETTER_QUEUE];

/// How long the auxiliary declarations may take before they count as failed.
const AUXILIARY_TIMEOUT: Duration = Duration::from_secs(5);

/// The outcome of one declaration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Declared,
    /// Not declared: the broker's answer (a home node down, an exclusive lock, no
    /// answer, or a dead letter that came back unroutable).
    Missing(String),
    /// The queue exists with another type or other arguments (PRECONDITION_FAILED).
    Inequivalent(String),
}

impl State {
    fn from_error(e: &lapin::Error) -> Self {
        match e.kind() {
            lapin::ErrorKind::ProtocolError(p) => {
                let text = p.get_message().to_string();
                if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) {
                    Self::Inequivalent(text)
                } else {
                    Self::Missing(text)
                }
            }
            _ => Self::Missing(e.to_string()),
        }
    }

    pub fn is_failing(&self) -> bool {
        !matches!(self, Self::Declared)
    }

    /// As `/readyz` shows it: `ok`, `missing (…)` or `inequivalent (…)`.
    pub fn describe(&self) -> String {
        match self {
            Self::Declared => "ok".to_owned(),
            Self::Missing(why) => format!("missing ({why})"),
            Self::Inequivalent(why) => format!("inequivalent ({why})"),
        }
    }
}

/// The state of each declaration that can fail without stopping the worker.
#[derive(Default)]
pub struct Declarations {
    states: Mutex<BTreeMap<&'static str, State>>,
    /// Woken when a declaration to retry starts failing.
    failing: Notify,
}

impl Declarations {
    /// Records `state` for `name`; logs and updates the metric only when it changed.
    pub(super) fn set(&self, name: &'static str, state: State, topo: &Topology) {
        let old = self
            .lock()
            .insert(name, state.clone())
            .unwrap_or(State::Declared);
        if old == state {
            return;
        }
        m::broker_declaration(name, state.is_failing());
        log_change(name, &old, &state, topo);
        if state.is_failing() && name == DEAD_LETTER_QUEUE {
            self.failing.notify_one();
        }
    }

    /// Each declaration attempted so far and its state, by name.
    pub fn report(&self) -> Vec<(&'static str, State)> {
        self.lock().iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Whether the auxiliary declarations need another try.
    pub(super) fn retry_due(&self) -> bool {
        self.lock()
            .get(DEAD_LETTER_QUEUE)
            .is_some_and(State::is_failing)
    }

    /// Completes once an auxiliary declaration starts failing.
    pub(super) async fn failed(&self) {
        self.failing.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn log_change(name: &'static str, old: &State, new: &State, topo: &Topology) {
    match (name, new) {
        (_, State::Declared) if old.is_failing() => info!(declaration = name, "declared"),
        (_, State::Declared) => {}
        (DEAD_LETTER_QUEUE, State::Missing(why)) => warn!(
            queue = %topo.dead_queue(),
            error = %why,
            "cannot declare the dead-letter queue; dead letters wait in the outbox \
             meanwhile, and the declaration is retried"
        ),
        (DEAD_LETTER_QUEUE, State::Inequivalent(why)) => warn!(
            queue = %topo.dead_queue(),
            error = %why,
            "the dead-letter queue exists with another type or other arguments; dead \
             letters still reach it. To make it the configured type, run \
             `invite-worker dead-letters migrate` (docs/operations.md)"
        ),
        (_, State::Inequivalent(why)) => warn!(
            queue = %topo.commands_queue(),
            error = %why,
            "the commands queue exists without the configured arguments (delivery limit, \
             dead-lettering); consuming it as it is. Fix: apply the RabbitMQ policy of \
             docs/operations.md and set amqp.delivery_limit = 0, or delete the drained \
             queue so that it is declared again"
        ),
        (_, State::Missing(why)) => warn!(declaration = name, error = %why, "not declared"),
    }
}

/// Declares what consuming and publishing need on `conn`. An existing commands queue
/// with other arguments is taken as it is (declared passively) and reported.
pub(super) async fn essential(
    conn: &Connection,
    topo: &Topology,
    opts: QueueOptions,
    states: &Declarations,
) -> lapin::Result<()> {
    let mut ch = conn.create_channel().await?;
    declare_exchanges(&ch, topo).await?;
    let queue = topo.commands_queue();
    let declared = ch
        .queue_declare(
            queue.as_str().into(),
            DURABLE,
            opts.commands_queue_args(topo),
        )
        .await;
    match declared {
        Ok(_) => states.set(COMMANDS_QUEUE_ARGUMENTS, State::Declared, topo),
        Err(e) => match State::from_error(&e) {
            inequivalent @ State::Inequivalent(_) => {
                // The failed declaration closed the channel.
                ch = conn.create_channel().await?;
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..DURABLE
                };
                ch.queue_declare(queue.as_str().into(), passive, Default::default())
                    .await?;
                states.set(COMMANDS_QUEUE_ARGUMENTS, inequivalent, topo);
            }
            _ => return Err(e),
        },
    }
    bind_commands_queue(&ch, topo).await?;
    close(ch).await;
    Ok(())
}

/// Declares the rest (the dead-letter queue) on a fresh channel of `conn`, recording
/// the outcome; never fails.
pub(super) async fn auxiliary(
    conn: &Connection,
    topo: &Topology,
    opts: QueueOptions,
    states: &Declarations,
) {
    let no_answer = || State::Missing(format!("no answer within {AUXILIARY_TIMEOUT:?}"));
    let ch = match tokio::time::timeout(AUXILIARY_TIMEOUT, conn.create_channel()).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => return states.set(DEAD_LETTER_QUEUE, State::from_error(&e), topo),
        Err(_) => return states.set(DEAD_LETTER_QUEUE, no_answer(), topo),
    };
    let declare = ch.queue_declare(
        topo.dead_queue().as_str().into(),
        DURABLE,
        opts.dead_queue_args(),
    );
    let state = match tokio::time::timeout(AUXILIARY_TIMEOUT, declare).await {
        Ok(Ok(_)) => State::Declared,
        Ok(Err(e)) => State::from_error(&e),
        Err(_) => no_answer(),
    };
    // In the background: a broker that does not answer must not hold the caller. (A
    // failed declaration has closed the channel already.)
    tokio::spawn(close(ch));
    states.set(DEAD_LETTER_QUEUE, state, topo);
}

async fn close(ch: Channel) {
    let _ =
        tokio::time::timeout(super::connection::CLOSE_TIMEOUT, ch.close(200, "OK".into())).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_recorded_and_reported_by_name() {
        let topo = Topology::new("t.");
        let states = Declarations::default();
        assert!(!states.retry_due());
        states.set(
            DEAD_LETTER_QUEUE,
            State::Missing("NOT_FOUND - home node down".into()),
            &topo,
        );
        assert!(states.retry_due());
        let report = states.report();
        assert_eq!(report.len(), 1);
        assert_eq!(
            report[0].1.describe(),
            "missing (NOT_FOUND - home node down)"
        );
        states.set(DEAD_LETTER_QUEUE, State::Declared, &topo);
        assert!(!states.retry_due());
        assert_eq!(states.report()[0].1.describe(), "ok");
    }
}
