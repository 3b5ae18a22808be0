//! WAHA's dialect: `X-Api-Key` auth, the code as a bare JSON string, NestJS refusals
//! (wawp's too) with WhatsApp's own words in `exception.message`.

use axum::{
    Router,
    extract::{Path, State},
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
            "/api/{session}/groups/{group}/invite-code",
            get(|st, p, h| waha(st, p, h, Op::Read)),
        )
        .route(
            "/api/{session}/groups/{group}/invite-code/revoke",
            post(|st, p, h| waha(st, p, h, Op::Reset)),
        )
}

async fn waha(
    State(st): State<AppState>,
    Path((session, group)): Path<(String, String)>,
    headers: HeaderMap,
    op: Op,
) -> Response {
    let call = Call::new(Api::Waha, op, session, group);
    if let Some(r) = st.unauthorized(&call, Api::Waha.presented_token(&headers, None)) {
        return r;
    }
    st.run(call, |link| Value::String(url_of(link))).await
}

/// WAHA's errors (NestJS): also used by wawp, whose paths mirror WAHA's.
pub(super) fn error(call: &Call, refusal: &Refusal) -> (StatusCode, Value) {
    let nest = |status: StatusCode, message: &str| {
        (
            status,
            json!({ "statusCode": status.as_u16(), "message": message, "error": reason(status) }),
        )
    };
    let exception = |status: StatusCode, message: &str| {
        (
            status,
            json!({
                "statusCode": status.as_u16(),
                "exception": { "message": message, "name": "Error" },
            }),
        )
    };
    match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            json!({ "message": "Unauthorized", "statusCode": 401 }),
        ),
        Refusal::Invalid(m) => nest(StatusCode::BAD_REQUEST, m),
        Refusal::SessionNotFound => nest(StatusCode::NOT_FOUND, "Session not found"),
        Refusal::GroupNotFound => nest(StatusCode::NOT_FOUND, "Group not found"),
        Refusal::SessionDisconnected => (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({
                "error": "Session status is not as expected. Try again later or restart the session",
                "session": call.session,
                "status": "STOPPED",
                "expected": ["WORKING"],
            }),
        ),
        Refusal::NotAdmin => exception(StatusCode::INTERNAL_SERVER_ERROR, "not-authorized"),
        Refusal::Status(s) if *s == StatusCode::TOO_MANY_REQUESTS => {
            exception(*s, "rate-overlimit")
        }
        Refusal::Status(s) if s.is_server_error() => exception(*s, reason(*s)),
        Refusal::Status(s) => nest(*s, reason(*s)),
    }
}
