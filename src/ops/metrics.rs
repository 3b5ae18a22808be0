//! Prometheus metrics (all prefixed `invite_worker_`, base units, low-cardinality labels)
//! and the process-wide exporter.

use std::{sync::OnceLock, time::Duration};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::domain::{BackendError, CommandType, ErrorKind, Link};

const COMMAND_TYPES: [CommandType; 2] =
    [CommandType::RevokeInvite, CommandType::RotateExpiringLink];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder once per process and returns the handle that renders it.
pub(crate) fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ])
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("invite_worker_db_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
                    )
                })
                .ok()
                .and_then(|b| b.install_recorder().ok())
                .unwrap_or_else(|| PrometheusBuilder::new().build_recorder().handle());
            drain_histograms(handle.clone());
            describe();
            gauge!("invite_worker_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            register_unlabelled();
            pruned_rows(0, 0);
            handle
        })
        .clone()
}

/// How often the recorder folds recorded histogram samples into its buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the histogram samples recorded since the last scrape into their buckets every
/// [`UPKEEP_EVERY`], on a thread of its own for the life of the process. Without it the
/// recorder keeps every sample until `/metrics` is scraped: a worker nobody scrapes (or a
/// long backlog between scrapes) grows by a few samples per command, without bound.
fn drain_histograms(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histogram samples are kept until /metrics is scraped");
    }
}

/// Registers at zero the labelled series whose label values are known at start-up: per
/// configured backend (its breaker, pause and rotation fit, session `*`), per error kind
/// (dead letters), per command type and outcome. Dashboards then show 0 instead of no
/// data, and `increase()` in alerts sees the first event. Adding 0 never resets a value.
pub(crate) fn register_known<'a>(backends: impl IntoIterator<Item = &'a str>) {
    for backend in backends {
        let b = backend.to_owned();
        gauge!("invite_worker_breaker_open", "backend" => b.clone(), "session" => "*")
            .increment(0.0);
        gauge!("invite_worker_paused", "backend" => b.clone(), "session" => "*").increment(0.0);
        counter!("invite_worker_breaker_trips_total", "backend" => b.clone()).increment(0);
        gauge!("invite_worker_rotations_late", "backend" => b).increment(0.0);
    }
    for kind in ErrorKind::ALL {
        counter!("invite_worker_dead_lettered_total", "kind" => kind.as_str()).increment(0);
    }
    for kind in COMMAND_TYPES {
        let t = kind.as_str();
        counter!("invite_worker_commands_deferred_total", "type" => t).increment(0);
        for outcome in ["rotated", "skipped", "failed"] {
            counter!("invite_worker_commands_total", "type" => t, "outcome" => outcome)
                .increment(0);
        }
    }
    counter!("invite_worker_commands_total", "type" => "invalid", "outcome" => "failed")
        .increment(0);
}

/// Registers the series without labels at zero so that they exist (for dashboards and
/// `absent()`-free alerts) before their first event. Adding 0 never resets a value.
fn register_unlabelled() {
    for name in [
        "invite_worker_retries_scheduled_total",
        "invite_worker_rate_limit_waits_total",
        "invite_worker_duplicates_total",
        "invite_worker_db_errors_total",
        "invite_worker_events_published_total",
        "invite_worker_acks_total",
        "invite_worker_ack_frames_total",
        "invite_worker_commands_released_total",
    ] {
        counter!(name).increment(0);
    }
    for name in [
        "invite_worker_commands_in_flight",
        "invite_worker_outbox_pending",
        "invite_worker_outbox_oldest_age_seconds",
        "invite_worker_deferred_commands",
        "invite_worker_ready",
    ] {
        gauge!(name).increment(0.0);
    }
}

fn describe() {
    describe_counter!(
        "invite_worker_pruned_rows_total",
        "Rows deleted past their retention window, by table (commands, history)"
    );
    describe_counter!(
        "invite_worker_commands_total",
        "Commands settled, by type and outcome"
    );
    describe_histogram!(
        "invite_worker_command_duration_seconds",
        "Time from consume to settlement"
    );
    describe_counter!(
        "invite_worker_backend_requests_total",
        "Backend requests by backend, operation and result"
    );
    describe_histogram!(
        "invite_worker_backend_request_duration_seconds",
        "Backend request latency"
    );
    describe_counter!(
        "invite_worker_retries_scheduled_total",
        "Transient failures that scheduled a retry"
    );
    describe_counter!(
        "invite_worker_rate_limit_waits_total",
        "Backend requests that waited for the rate limiter"
    );
    describe_counter!(
        "invite_worker_commands_deferred_total",
        "Commands put to wait in the database (session at its rate limit, backoff, \
         Retry-After, group busy), by type"
    );
    describe_counter!(
        "invite_worker_commands_released_total",
        "Deferred commands claimed by this process when due"
    );
    describe_gauge!(
        "invite_worker_deferred_commands",
        "Commands waiting in the database (all processes)"
    );
    describe_gauge!(
        "invite_worker_rotations_late",
        "Due links that would expire before their rotation at rotation.rate_share of \
         their session's rate (the log names the sessions)"
    );
    describe_gauge!(
        "invite_worker_paused",
        "1 while an operator's pause holds the commands of a backend (session \"*\") or \
         of one of its sessions"
    );
    describe_gauge!(
        "invite_worker_breaker_open",
        "1 while this process holds calls to a backend (session \"*\") or one of its \
         sessions behind an open or half-open circuit"
    );
    describe_counter!(
        "invite_worker_breaker_trips_total",
        "Circuits opened, by backend"
    );
    describe_gauge!(
        "invite_worker_ready",
        "1 while /readyz answers 200 (database and broker up), else 0; set on each scrape"
    );
    describe_gauge!(
        "invite_worker_live_replicas",
        "Worker processes with a recent heartbeat on the database (PostgreSQL)"
    );
    describe_gauge!(
        "invite_worker_commands_in_flight",
        "Commands being processed"
    );
    describe_gauge!(
        "invite_worker_outbox_pending",
        "Outbox rows not yet published"
    );
    describe_gauge!(
        "invite_worker_outbox_oldest_age_seconds",
        "Age of the oldest unpublished outbox row"
    );
    describe_counter!(
        "invite_worker_dead_lettered_total",
        "Commands sent to the dead-letter queue, by error kind"
    );
    describe_gauge!(
        "invite_worker_links_due",
        "Tracked links due for rotation at the last scan"
    );
    describe_counter!(
        "invite_worker_duplicates_total",
        "Deliveries of already completed commands"
    );
    describe_counter!("invite_worker_db_errors_total", "Database errors (retried)");
    describe_histogram!(
        "invite_worker_db_batch_size",
        "Requests of concurrent commands executed together, by statement"
    );
    describe_histogram!(
        "invite_worker_db_batch_duration_seconds",
        "Time to execute one batch of requests, by statement"
    );
    describe_counter!(
        "invite_worker_events_published_total",
        "Outbox messages confirmed by the broker"
    );
    describe_counter!(
        "invite_worker_acks_total",
        "Command deliveries acknowledged"
    );
    describe_gauge!(
        "invite_worker_broker_declarations_failing",
        "1 while a broker declaration the worker can do without (the dead-letter queue, \
         the commands queue's arguments) fails, by name"
    );
    describe_counter!(
        "invite_worker_ack_frames_total",
        "basic.ack frames sent for them (one multiple ack covers a run of deliveries)"
    );
}

pub(crate) fn command_outcome(kind: Option<CommandType>, outcome: &'static str) {
    let t = kind.map_or("invalid", |k| k.as_str());
    counter!("invite_worker_commands_total", "type" => t, "outcome" => outcome).increment(1);
}

pub(crate) fn command_duration(kind: CommandType, d: Duration) {
    histogram!("invite_worker_command_duration_seconds", "type" => kind.as_str())
        .record(d.as_secs_f64());
}

pub(crate) fn backend_request(
    backend: &str,
    op: &'static str,
    result: &Result<Link, BackendError>,
) {
    let label = match result {
        Ok(_) => "ok",
        Err(e) => e.kind.as_str(),
    };
    counter!("invite_worker_backend_requests_total", "backend" => backend.to_owned(), "operation" => op, "result" => label)
        .increment(1);
}

pub(crate) fn backend_duration(backend: &str, op: &'static str, d: Duration) {
    histogram!("invite_worker_backend_request_duration_seconds", "backend" => backend.to_owned(), "operation" => op)
        .record(d.as_secs_f64());
}

/// How many requests one batched statement served, and how long it took.
pub(crate) fn batch(statement: &'static str, n: usize, took: Duration) {
    histogram!("invite_worker_db_batch_size", "statement" => statement).record(n as f64);
    histogram!("invite_worker_db_batch_duration_seconds", "statement" => statement)
        .record(took.as_secs_f64());
}

/// Time spent in one step of a command (database operations, lane waits), for profiling.
pub(crate) fn stage(step: &'static str, d: Duration) {
    histogram!("invite_worker_command_step_duration_seconds", "step" => step)
        .record(d.as_secs_f64());
}

pub(crate) fn retry_scheduled() {
    counter!("invite_worker_retries_scheduled_total").increment(1);
}

pub(crate) fn rate_limit_wait() {
    counter!("invite_worker_rate_limit_waits_total").increment(1);
}

pub(crate) fn deferred(kind: CommandType) {
    counter!("invite_worker_commands_deferred_total", "type" => kind.as_str()).increment(1);
}

pub(crate) fn released() {
    counter!("invite_worker_commands_released_total").increment(1);
}

pub(crate) fn deferred_waiting(n: u64) {
    gauge!("invite_worker_deferred_commands").set(n as f64);
}

pub(crate) fn rotations_late(backend: &str, n: usize) {
    gauge!("invite_worker_rotations_late", "backend" => backend.to_owned()).set(n as f64);
}

pub(crate) fn paused(backend: &str, session: &str, on: bool) {
    let (backend, session) = (backend.to_owned(), session.to_owned());
    gauge!("invite_worker_paused", "backend" => backend, "session" => session).set(if on {
        1.0
    } else {
        0.0
    });
}

pub(crate) fn breaker_open(backend: &str, session: &str, open: bool) {
    let (backend, session) = (backend.to_owned(), session.to_owned());
    gauge!("invite_worker_breaker_open", "backend" => backend, "session" => session).set(if open {
        1.0
    } else {
        0.0
    });
}

pub(crate) fn breaker_trip(backend: &str) {
    counter!("invite_worker_breaker_trips_total", "backend" => backend.to_owned()).increment(1);
}

/// Whether the process is ready, as `/readyz` answers.
pub(crate) fn ready(on: bool) {
    gauge!("invite_worker_ready").set(if on { 1.0 } else { 0.0 });
}

pub(crate) fn live_replicas(n: u32) {
    gauge!("invite_worker_live_replicas").set(f64::from(n));
}

pub(crate) fn in_flight(delta: f64) {
    gauge!("invite_worker_commands_in_flight").increment(delta);
}

pub(crate) fn outbox(pending: u64, oldest_age: Duration) {
    gauge!("invite_worker_outbox_pending").set(pending as f64);
    gauge!("invite_worker_outbox_oldest_age_seconds").set(oldest_age.as_secs_f64());
}

pub(crate) fn events_published(n: usize) {
    counter!("invite_worker_events_published_total").increment(n as u64);
}

/// One acker round: `frames` basic.ack frames for `deliveries` deliveries.
pub(crate) fn ack_frames(frames: usize, deliveries: usize) {
    counter!("invite_worker_ack_frames_total").increment(frames as u64);
    counter!("invite_worker_acks_total").increment(deliveries as u64);
}

/// Whether the declaration `name` fails (see `broker::Declarations`).
pub(crate) fn broker_declaration(name: &'static str, failing: bool) {
    gauge!("invite_worker_broker_declarations_failing", "name" => name).set(if failing {
        1.0
    } else {
        0.0
    });
}

/// Makes the declarations' series exist (at 0 unless already set).
pub(crate) fn broker_declarations(names: &[&'static str]) {
    for name in names {
        gauge!("invite_worker_broker_declarations_failing", "name" => *name).increment(0.0);
    }
}

pub(crate) fn dead_lettered(kind: ErrorKind) {
    counter!("invite_worker_dead_lettered_total", "kind" => kind.as_str()).increment(1);
}

pub(crate) fn links_due(n: u64) {
    gauge!("invite_worker_links_due").set(n as f64);
}

pub(crate) fn duplicate() {
    counter!("invite_worker_duplicates_total").increment(1);
}

pub(crate) fn db_error() {
    counter!("invite_worker_db_errors_total").increment(1);
}

/// Rows the pruner deleted in one batch.
pub(crate) fn pruned_rows(commands: u64, history: u64) {
    counter!("invite_worker_pruned_rows_total", "table" => "commands").increment(commands);
    counter!("invite_worker_pruned_rows_total", "table" => "history").increment(history);
}
