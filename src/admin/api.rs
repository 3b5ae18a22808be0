//! The JSON API under `/api/`: `Authorization: Bearer <token>` on every route (401
//! without a valid one), changes for operators only (403 for a viewer), 400 with
//! `{"error": "…"}` naming the input that is wrong (docs/console.md).

use axum::{
    Json, Router,
    extract::{
        Path, Query, State,
        rejection::{JsonRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    AdminState,
    auth::Caller,
    ops::{self, Invalid, LinksQuery, PauseRequest, ReplayRequest, SendRequest},
};
use crate::domain::CommandType;

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/summary", get(summary))
        .route("/links", get(links))
        .route("/links/{backend}/{session}/{group}", get(link))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/replay", post(replay))
        .route("/pauses", get(pauses).post(pause))
        .route("/pauses/resume", post(resume))
        .route("/send/revoke", post(send_revoke))
        .route("/send/rotate", post(send_rotate))
}

/// A JSON body, or a 400 saying why it is not one.
fn body<T: DeserializeOwned>(b: Result<Json<T>, JsonRejection>) -> Result<T, Invalid> {
    b.map(|Json(t)| t)
        .map_err(|e| Invalid::Input(format!("body: {}", e.body_text())))
}

fn reply<T: serde::Serialize>(r: Result<T, Invalid>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn summary(State(s): State<AdminState>, _caller: Caller) -> Response {
    reply(ops::summary(&s).await)
}

async fn links(
    State(s): State<AdminState>,
    caller: Caller,
    q: Result<Query<LinksQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return Invalid::Input("query: not understood".into()).into_response();
    };
    reply(ops::links_page(&s, &caller, &q).await)
}

async fn link(
    State(s): State<AdminState>,
    caller: Caller,
    Path((backend, session, group)): Path<(String, String, String)>,
) -> Response {
    let detail = async {
        let key = ops::group_key(&s, &backend, &session, &group)?;
        ops::link_detail(&s, &caller, &key).await
    };
    reply(detail.await)
}

async fn dead_letters(State(s): State<AdminState>, _caller: Caller) -> Response {
    reply(ops::dead_letters(&s).await)
}

async fn replay(
    State(s): State<AdminState>,
    caller: Caller,
    b: Result<Json<ReplayRequest>, JsonRejection>,
) -> Response {
    if let Err(e) = ops::operator(&caller) {
        return e.into_response();
    }
    let done = async { ops::replay(&s, &caller, body(b)?).await };
    reply(done.await)
}

async fn pauses(State(s): State<AdminState>, _caller: Caller) -> Response {
    reply(ops::pauses(&s).await)
}

async fn pause(
    State(s): State<AdminState>,
    caller: Caller,
    b: Result<Json<PauseRequest>, JsonRejection>,
) -> Response {
    if let Err(e) = ops::operator(&caller) {
        return e.into_response();
    }
    let done = async { ops::pause(&s, &caller, body(b)?).await };
    reply(done.await.map(|message| json!({ "message": message })))
}

async fn resume(
    State(s): State<AdminState>,
    caller: Caller,
    b: Result<Json<PauseRequest>, JsonRejection>,
) -> Response {
    if let Err(e) = ops::operator(&caller) {
        return e.into_response();
    }
    let done = async { ops::resume(&s, &caller, body(b)?).await };
    reply(done.await.map(|message| json!({ "message": message })))
}

async fn send(
    s: AdminState,
    caller: Caller,
    kind: CommandType,
    b: Result<Json<SendRequest>, JsonRejection>,
) -> Response {
    if let Err(e) = ops::operator(&caller) {
        return e.into_response();
    }
    match async { ops::send(&s, &caller, kind, body(b)?).await }.await {
        Ok(sent) => (StatusCode::ACCEPTED, Json(sent)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn send_revoke(
    State(s): State<AdminState>,
    caller: Caller,
    b: Result<Json<SendRequest>, JsonRejection>,
) -> Response {
    send(s, caller, CommandType::RevokeInvite, b).await
}

async fn send_rotate(
    State(s): State<AdminState>,
    caller: Caller,
    b: Result<Json<SendRequest>, JsonRejection>,
) -> Response {
    send(s, caller, CommandType::RotateExpiringLink, b).await
}
