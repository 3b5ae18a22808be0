//! The control API under `/_control`: JSON endpoints that shape the world (sessions,
//! groups, faults, latency) and read its counters and request log, for tests, demos and
//! benchmarks.

use std::time::Duration;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, url_of};
use crate::simulator::world::{FaultSpec, GroupSpec, SessionSpec, SimLink};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/sessions", post(control_session))
        .route("/groups", post(control_group))
        .route("/groups/external_reset", post(control_external_reset))
        .route("/groups/link", get(control_link))
        .route(
            "/faults",
            post(control_add_fault).delete(control_clear_faults),
        )
        .route("/latency", post(control_latency))
        .route("/auto_create", post(control_auto_create))
        .route("/stats", get(control_stats))
        .route("/requests", get(control_requests))
        .route("/stats/reset", post(control_reset_stats))
}

#[derive(Deserialize)]
struct GroupKey {
    session: String,
    group: String,
}

/// `ms` alone: a fixed latency; with `max_ms`: uniform in `[ms, max_ms]`.
#[derive(Deserialize)]
struct Latency {
    ms: u64,
    #[serde(default)]
    max_ms: Option<u64>,
}

#[derive(Deserialize)]
struct RequestsQuery {
    #[serde(default)]
    session: Option<String>,
}

#[derive(Deserialize)]
struct AutoCreate {
    enabled: bool,
}

fn control_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn link_body(link: &SimLink) -> Value {
    json!({
        "code": link.code,
        "url": url_of(link),
        "expires_at": link.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
    })
}

async fn control_session(State(st): State<AppState>, Json(spec): Json<SessionSpec>) -> Response {
    st.world.upsert_session(spec);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_group(State(st): State<AppState>, Json(spec): Json<GroupSpec>) -> Response {
    if let Some(code) = &spec.code
        && (code.is_empty() || !code.bytes().all(|b| b.is_ascii_alphanumeric()))
    {
        return control_error(StatusCode::BAD_REQUEST, "code must be A-Za-z0-9");
    }
    st.world.upsert_group(spec);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_external_reset(State(st): State<AppState>, Json(key): Json<GroupKey>) -> Response {
    match st.world.external_reset(&key.session, &key.group) {
        Some(_) => match st.world.peek(&key.session, &key.group) {
            Some(link) => Json(link_body(&link)).into_response(),
            None => control_error(StatusCode::NOT_FOUND, "group not found"),
        },
        None => control_error(StatusCode::NOT_FOUND, "group not found"),
    }
}

async fn control_link(State(st): State<AppState>, Query(key): Query<GroupKey>) -> Response {
    match st.world.peek(&key.session, &key.group) {
        Some(link) => Json(link_body(&link)).into_response(),
        None => control_error(StatusCode::NOT_FOUND, "group not found"),
    }
}

async fn control_add_fault(State(st): State<AppState>, Json(fault): Json<FaultSpec>) -> Response {
    st.world.add_fault(fault);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_clear_faults(State(st): State<AppState>) -> Response {
    st.world.clear_faults();
    StatusCode::NO_CONTENT.into_response()
}

async fn control_latency(State(st): State<AppState>, Json(l): Json<Latency>) -> Response {
    let max = l.max_ms.unwrap_or(l.ms);
    if max < l.ms {
        return control_error(StatusCode::BAD_REQUEST, "max_ms must be at least ms");
    }
    st.world
        .set_latency_between(Duration::from_millis(l.ms), Duration::from_millis(max));
    StatusCode::NO_CONTENT.into_response()
}

async fn control_auto_create(State(st): State<AppState>, Json(a): Json<AutoCreate>) -> Response {
    st.world.set_auto_create(a.enabled);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_stats(State(st): State<AppState>) -> Response {
    Json(st.world.stats()).into_response()
}

/// The request log, oldest first, optionally of one session; `at_ms` is the arrival in
/// milliseconds since the world started.
async fn control_requests(State(st): State<AppState>, Query(q): Query<RequestsQuery>) -> Response {
    let requests: Vec<Value> = st
        .world
        .requests()
        .into_iter()
        .filter(|r| q.session.as_deref().is_none_or(|s| s == r.session))
        .map(|r| {
            json!({
                "route": r.route,
                "op": r.op.as_str(),
                "session": r.session,
                "group": r.group,
                "at_ms": r.at.as_secs_f64() * 1000.0,
            })
        })
        .collect();
    Json(json!({ "requests": requests })).into_response()
}

async fn control_reset_stats(State(st): State<AppState>) -> Response {
    st.world.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}
