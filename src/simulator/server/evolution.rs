//! Evolution API's dialect: `apikey` header auth, the instance in the path and the group
//! in `groupJid`, WhatsApp failures wrapped in 404s as its Baileys service does.

use std::collections::HashMap;

use axum::{
    Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::{get, post},
};
use serde_json::{Value, json};

use super::{Api, AppState, Call, Refusal, reason, url_of};
use crate::simulator::world::Op;

/// The provider's own paths, relative to its prefix.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/group/inviteCode/{instance}",
            get(|st, p, q, h| evolution(st, p, q, h, Op::Read)),
        )
        .route(
            "/group/revokeInviteCode/{instance}",
            post(|st, p, q, h| evolution(st, p, q, h, Op::Reset)),
        )
}

async fn evolution(
    State(st): State<AppState>,
    Path(instance): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    op: Op,
) -> Response {
    let group = query.get("groupJid").cloned().unwrap_or_default();
    let call = Call::new(Api::Evolution, op, instance, group);
    if let Some(r) = st.unauthorized(&call, Api::Evolution.presented_token(&headers, None)) {
        return r;
    }
    if call.group.is_empty() {
        return call.refuse(
            &Refusal::Invalid("The group id needs to be informed in the query"),
            None,
        );
    }
    st.run(call, |link| match op {
        Op::Read => json!({ "inviteUrl": url_of(link), "inviteCode": link.code }),
        Op::Reset => json!({ "revoked": true, "inviteCode": link.code }),
    })
    .await
}

/// Evolution wraps every WhatsApp failure of a group call as a 404 whose messages are the
/// call's context and the underlying error, as its Baileys service does.
pub(super) fn error(call: &Call, refusal: &Refusal) -> (StatusCode, Value) {
    let context = match call.op {
        Op::Read => "No invite code",
        Op::Reset => "Revoke error",
    };
    let wrapped = |status: StatusCode, message: Value| {
        (
            status,
            json!({ "status": status.as_u16(), "error": reason(status), "response": { "message": message } }),
        )
    };
    let whatsapp = |error: &str| wrapped(StatusCode::NOT_FOUND, json!([context, error]));
    match refusal {
        Refusal::Unauthorized => wrapped(StatusCode::UNAUTHORIZED, json!("Unauthorized")),
        Refusal::Invalid(m) => wrapped(StatusCode::BAD_REQUEST, json!([m])),
        Refusal::SessionNotFound => wrapped(
            StatusCode::NOT_FOUND,
            json!([format!("The \"{}\" instance does not exist", call.session)]),
        ),
        Refusal::SessionDisconnected => whatsapp("Error: Connection Closed"),
        Refusal::GroupNotFound => whatsapp("Error: item-not-found"),
        Refusal::NotAdmin => whatsapp("Error: not-authorized"),
        Refusal::Status(s) => wrapped(*s, json!([reason(*s)])),
    }
}
