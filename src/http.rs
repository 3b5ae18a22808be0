//! Operational HTTP endpoints: `/healthz`, `/readyz`, `/metrics` (docs/contract.md §6.9).

use std::{sync::Arc, time::Duration};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::worker::Health;

/// How long the consume loop may stay silent before `/healthz` reports a stall.
const STALL: Duration = Duration::from_secs(30);

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

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let db = s.health.db_up.load(std::sync::atomic::Ordering::Relaxed);
    let broker = s.health.broker.get().is_some_and(|b| b.is_up());
    let body = format!("database: {}\nbroker: {}\n", up(db), up(broker));
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

async fn metrics_text(State(s): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
