//! The admin listener (`[admin]`, off by default): a JSON API under `/api/` for bearer
//! tokens, and a server-rendered web console under `/console/` for the same tokens
//! signed in. Both read and act through [`ops`]; viewers see invite codes as fingerprints
//! only, and every change is logged with the token's name (docs/console.md).

mod api;
mod auth;
mod console;
mod ops;

use std::sync::Arc;

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde_json::json;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::info;

use self::auth::{Sessions, Tokens};
use crate::{broker::Broker, config::Settings, store::Store};

pub use self::ops::Invalid;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AdminState {
    settings: Arc<Settings>,
    store: Store,
    /// For the backlog: passive declarations of the commands queue.
    broker: Arc<Broker>,
    tokens: Arc<Tokens>,
    sessions: Arc<Sessions>,
    /// Dead-letter listings and replays hold the queue's messages while they work: one
    /// at a time, so that none sees fewer than there are.
    dead_letters: Arc<Mutex<()>>,
}

/// The admin API and console on `state`'s settings.
pub fn router(settings: Arc<Settings>, store: Store) -> Router {
    let state = AdminState {
        broker: Broker::undeclared(&settings.amqp),
        tokens: Arc::new(Tokens::new(&settings.admin.tokens)),
        sessions: Arc::new(Sessions::default()),
        dead_letters: Arc::new(Mutex::new(())),
        settings,
        store,
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/console") }))
        .nest("/api", api::routes())
        .nest("/console", console::routes())
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .with_state(state)
}

/// Serves the admin API and console on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    settings: Arc<Settings>,
    store: Store,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving the admin API (/api) and console (/console)");
    }
    let app = router(settings, store);
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
}

/// A JSON error body, `{"error": "…"}`, with its status.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}
