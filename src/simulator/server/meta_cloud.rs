//! The Graph API's dialect (meta_cloud): Bearer auth, POST and DELETE on a group's
//! `invite_link`, no session in the path, Graph error codes in refusals.

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::Response,
    routing::post,
};
use serde_json::{Value, json};

use super::{Api, AppState, Call, Refusal, reason, url_of};
use crate::simulator::world::{Op, random_code};

/// The world session that `meta_cloud` groups live in: Graph paths carry no session.
pub const META_SESSION: &str = "meta";

/// The provider's own paths, relative to its prefix.
pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/{version}/{group_id}/invite_link",
        post(meta_create).delete(meta_delete),
    )
}

async fn meta_create(
    State(st): State<AppState>,
    Path((_version, group)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let call = Call::new(Api::MetaCloud, Op::Reset, META_SESSION.to_owned(), group);
    if let Some(r) = st.unauthorized(&call, Api::MetaCloud.presented_token(&headers, None)) {
        return r;
    }
    if !names_whatsapp(&body) {
        return call.refuse(
            &Refusal::Invalid("(#100) The parameter messaging_product is required"),
            None,
        );
    }
    st.run(
        call,
        |link| json!({ "messaging_product": "whatsapp", "invite_link": url_of(link) }),
    )
    .await
}

/// Deleting a link is simulated as a reset whose new code is not returned (the old link
/// stops working either way); it counts as the route `meta_cloud.delete`.
async fn meta_delete(
    State(st): State<AppState>,
    Path((_version, group)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut call = Call::new(Api::MetaCloud, Op::Reset, META_SESSION.to_owned(), group);
    call.route = format!("{}.delete", Api::MetaCloud.name());
    if let Some(r) = st.unauthorized(&call, Api::MetaCloud.presented_token(&headers, None)) {
        return r;
    }
    st.run(
        call,
        |_| json!({ "messaging_product": "whatsapp", "success": true }),
    )
    .await
}

/// Whether a Graph request body carries `messaging_product=whatsapp` (JSON or form).
fn names_whatsapp(body: &[u8]) -> bool {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => v.get("messaging_product").and_then(Value::as_str) == Some("whatsapp"),
        Err(_) => url::form_urlencoded::parse(body)
            .any(|(k, v)| k == "messaging_product" && v == "whatsapp"),
    }
}

pub(super) fn error(call: &Call, refusal: &Refusal) -> (StatusCode, Value) {
    let not_found = format!(
        "Unsupported post request. Object with ID '{}' does not exist, cannot be loaded due \
         to missing permissions, or does not support this operation",
        call.group
    );
    let (status, message) = match refusal {
        Refusal::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "Invalid OAuth access token - Cannot parse access token".to_owned(),
        ),
        Refusal::Invalid(m) => (StatusCode::BAD_REQUEST, (*m).to_owned()),
        Refusal::SessionNotFound | Refusal::GroupNotFound => (StatusCode::NOT_FOUND, not_found),
        Refusal::SessionDisconnected => (
            StatusCode::SERVICE_UNAVAILABLE,
            "(#2) Service temporarily unavailable".to_owned(),
        ),
        Refusal::NotAdmin => (
            StatusCode::FORBIDDEN,
            "(#10) Application does not have permission for this action".to_owned(),
        ),
        Refusal::Status(s) if *s == StatusCode::TOO_MANY_REQUESTS => {
            (*s, "(#130429) Rate limit hit".to_owned())
        }
        Refusal::Status(s) if *s == StatusCode::NOT_FOUND => (*s, not_found),
        Refusal::Status(s) => (*s, reason(*s).to_owned()),
    };
    // Graph's error code (and subcode, where Graph sets one) follows from the status.
    let (code, subcode) = match status.as_u16() {
        400 => (100, None),
        401 => (190, None),
        403 => (10, None),
        404 => (100, Some(33)),
        429 => (130429, Some(2494055)),
        503 => (2, None),
        _ => (1, None),
    };
    let mut error = json!({
        "message": message,
        "type": "OAuthException",
        "code": code,
        "fbtrace_id": format!("A{}", random_code()),
    });
    if let Some(subcode) = subcode {
        error["error_subcode"] = json!(subcode);
    }
    (status, json!({ "error": error }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(op: Op) -> Call {
        Call::new(Api::MetaCloud, op, "s".into(), "1@g.us".into())
    }

    #[test]
    fn graph_codes_follow_the_status() {
        let (_, throttled) = error(
            &call(Op::Reset),
            &Refusal::Status(StatusCode::TOO_MANY_REQUESTS),
        );
        assert_eq!(throttled["error"]["code"], 130429);
        let (status, bad_token) = error(&call(Op::Reset), &Refusal::Unauthorized);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(bad_token["error"]["code"], 190);
        assert!(bad_token["error"].get("error_subcode").is_none());
    }
}
