//! The self-hosted WhatsApp Gateway's dialect: Bearer auth, GET and DELETE on one
//! invite path, `{"error": {"code": …}}` refusals.

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::get,
};
use serde_json::{Value, json};

use super::{Api, AppState, Call, Refusal, reason, url_of};
use crate::simulator::world::Op;

/// The provider's own paths, relative to its prefix.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/api/v1/sessions/{session}/groups/{gid}/invite",
        get(|st, p, h| gateway(st, p, h, Op::Read)).delete(|st, p, h| gateway(st, p, h, Op::Reset)),
    )
}

async fn gateway(
    State(st): State<AppState>,
    Path((session, gid)): Path<(String, String)>,
    headers: HeaderMap,
    op: Op,
) -> Response {
    let call = Call::new(Api::Gateway, op, session, gid);
    if let Some(r) = st.unauthorized(&call, Api::Gateway.presented_token(&headers, None)) {
        return r;
    }
    if !call.group.ends_with("@g.us") {
        return call.refuse(
            &Refusal::Invalid("gid must be a group JID ending in @g.us"),
            None,
        );
    }
    st.run(call, |link| json!({ "invite": url_of(link) })).await
}

pub(super) fn error(refusal: &Refusal) -> (StatusCode, Value) {
    let (status, code, message) = match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        ),
        Refusal::Invalid(m) => (StatusCode::BAD_REQUEST, "validation_error", *m),
        Refusal::SessionNotFound => (StatusCode::NOT_FOUND, "not_found", "session not found"),
        Refusal::GroupNotFound => (StatusCode::NOT_FOUND, "not_found", "group not found"),
        Refusal::SessionDisconnected => (
            StatusCode::NOT_IMPLEMENTED,
            "not_implemented",
            "session is not connected",
        ),
        Refusal::NotAdmin => (
            StatusCode::FORBIDDEN,
            "forbidden",
            "the session's account is not an admin of this group",
        ),
        Refusal::Status(s) => {
            let code = match s.as_u16() {
                400 => "validation_error",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                429 => "rate_limited",
                501 => "not_implemented",
                _ => "internal",
            };
            (*s, code, reason(*s))
        }
    };
    (
        status,
        json!({ "error": { "code": code, "message": message, "details": {} } }),
    )
}
