//! Wasend's dialect: Bearer auth, the `invite-link` and older `invite-code` endpoint
//! families, `{"success": false, "error": …}` refusals. The `invite-code` family answers
//! as the service answers Wasend's official SDK, which declares a plain string: the bare
//! code (as WAHA, on which it runs, does).

use axum::{
    Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::{get, post},
};
use chrono::SecondsFormat;
use serde_json::{Value, json};

use super::{Api, AppState, Call, Refusal, reason, url_of};
use crate::simulator::world::Op;

/// The provider's own paths, relative to its prefix.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/{session}/groups/{group}/invite-link",
            get(|st, p, h| wasend(st, p, h, WasendFamily::Link, Op::Read)),
        )
        .route(
            "/{session}/groups/{group}/invite-link/revoke",
            post(|st, p, h| wasend(st, p, h, WasendFamily::Link, Op::Reset)),
        )
        .route(
            "/{session}/groups/{group}/invite-code",
            get(|st, p, h| wasend(st, p, h, WasendFamily::Code, Op::Read)),
        )
        .route(
            "/{session}/groups/{group}/invite-code/revoke",
            post(|st, p, h| wasend(st, p, h, WasendFamily::Code, Op::Reset)),
        )
}

#[derive(Clone, Copy)]
enum WasendFamily {
    /// `invite-link`, the seeds' family: full link plus `expiresAt`.
    Link,
    /// `invite-code`, the family of the official SDK (`wasend` on PyPI, `@wasend/core`):
    /// the code as a bare JSON string, the SDK's declared answer. An object in its place
    /// makes the SDK raise after the reset went through.
    Code,
}

async fn wasend(
    State(st): State<AppState>,
    Path((session, group)): Path<(String, String)>,
    headers: HeaderMap,
    family: WasendFamily,
    op: Op,
) -> Response {
    let call = Call::new(Api::Wasend, op, session, group);
    if let Some(r) = st.unauthorized(&call, Api::Wasend.presented_token(&headers, None)) {
        return r;
    }
    st.run(call, |link| match family {
        WasendFamily::Link => json!({
            "success": true,
            "inviteLink": url_of(link),
            "expiresAt": link.expires_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        }),
        WasendFamily::Code => Value::String(link.code.clone()),
    })
    .await
}

pub(super) fn error(refusal: &Refusal) -> (StatusCode, Value) {
    let (status, message) = match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized - Invalid or missing API key",
        ),
        Refusal::Invalid(m) => (StatusCode::BAD_REQUEST, *m),
        Refusal::SessionNotFound => (StatusCode::NOT_FOUND, "Session not found"),
        Refusal::SessionDisconnected => (StatusCode::SERVICE_UNAVAILABLE, "session disconnected"),
        Refusal::GroupNotFound => (StatusCode::NOT_FOUND, "Group not found"),
        Refusal::NotAdmin => (
            StatusCode::FORBIDDEN,
            "Forbidden - not an admin of the group",
        ),
        Refusal::Status(s) => (*s, reason(*s)),
    };
    (status, json!({ "success": false, "error": message }))
}
