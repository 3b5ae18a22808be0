//! Operational HTTP endpoints: `/healthz`, `/readyz`, `/metrics` (docs/contract.md §6.9),
//! and the liveness and readiness state they report, kept by the worker.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

use super::metrics as m;

/// How long the consume loop may stay silent before `/healthz` reports a stall.
const STALL: Duration = Duration::from_secs(30);

/// Whether the broker connection is up, asked on each readiness check.
pub type BrokerProbe = Box<dyn Fn() -> bool + Send + Sync>;

/// The broker declarations the worker can do without, each with its state as text
/// (`ok`, or why not), asked on each readiness check.
pub type DeclarationsProbe = Box<dyn Fn() -> Vec<(&'static str, String)> + Send + Sync>;

/// Liveness and readiness, shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    pub db_up: AtomicBool,
    pub consuming: AtomicBool,
    /// Unix millis of the consume loop's last turn.
    pub last_tick_ms: AtomicI64,
    broker_up: OnceLock<BrokerProbe>,
    declarations: OnceLock<DeclarationsProbe>,
}

impl Health {
    /// Sets how readiness learns whether the broker is up (once; later calls are ignored).
    pub fn set_broker_probe(&self, probe: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.broker_up.set(Box::new(probe));
    }

    /// Sets how readiness learns the state of the broker declarations (once).
    pub fn set_declarations_probe(
        &self,
        probe: impl Fn() -> Vec<(&'static str, String)> + Send + Sync + 'static,
    ) {
        let _ = self.declarations.set(Box::new(probe));
    }

    /// Each broker declaration the worker can do without, and its state.
    pub fn declarations(&self) -> Vec<(&'static str, String)> {
        self.declarations.get().map(|p| p()).unwrap_or_default()
    }

    /// Whether the broker is up; false until a probe is set.
    pub fn broker_up(&self) -> bool {
        self.broker_up.get().is_some_and(|up| up())
    }

    pub fn ready(&self) -> bool {
        self.db_up.load(Ordering::Relaxed) && self.broker_up()
    }

    /// Whether the consume loop turned within `max_silence`.
    pub fn alive(&self, max_silence: Duration) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        last == 0 || chrono::Utc::now().timestamp_millis() - last <= max_silence.as_millis() as i64
    }

    /// Records a turn of the consume loop.
    pub fn tick(&self) {
        self.last_tick_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { health, metrics })
}

async fn healthz(State(s): State<AppState>) -> impl IntoResponse {
    if s.health.alive(STALL) {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "consume loop stalled\n")
    }
}

/// 200 while the database and the broker are up, 503 otherwise. The declarations the
/// worker can do without (the dead-letter queue, the commands queue's arguments) are
/// listed with their state but do not change the status: commands are consumed and
/// events published without them.
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let db = s.health.db_up.load(Ordering::Relaxed);
    let broker = s.health.broker_up();
    let mut body = format!("database: {}\nbroker: {}\n", up(db), up(broker));
    for (name, state) in s.health.declarations() {
        body.push_str(&format!("{name}: {state}\n"));
    }
    m::ready(db && broker);
    let status = if db && broker {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

fn up(b: bool) -> &'static str {
    if b { "up" } else { "down" }
}

/// The exposition, with `invite_worker_ready` set to what `/readyz` would answer now.
async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    m::ready(s.health.ready());
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
