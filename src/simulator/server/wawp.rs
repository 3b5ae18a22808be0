//! wawp's dialect: WAHA-style paths under `/v2`, the session as the `instance_id` query
//! parameter and the token as `access_token`; refusals as WAHA's.

use std::collections::HashMap;

use axum::{
    Router,
    extract::{Path, Query, State},
    http::HeaderMap,
    response::Response,
    routing::{get, post},
};
use serde_json::json;

use super::{Api, AppState, Call, Refusal};
use crate::simulator::world::Op;

/// The provider's own paths, relative to its prefix.
pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v2/groups/{group}/invite-code",
            get(|st, p, q| wawp(st, p, q, Op::Read)),
        )
        .route(
            "/v2/groups/{group}/invite-code/revoke",
            post(|st, p, q| wawp(st, p, q, Op::Reset)),
        )
}

async fn wawp(
    State(st): State<AppState>,
    Path(group): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    op: Op,
) -> Response {
    let session = query.get("instance_id").cloned().unwrap_or_default();
    let call = Call::new(Api::Wawp, op, session, group);
    if let Some(r) = st.unauthorized(
        &call,
        Api::Wawp.presented_token(&HeaderMap::new(), Some(&query)),
    ) {
        return r;
    }
    if call.session.is_empty() {
        return call.refuse(&Refusal::Invalid("instance_id is required"), None);
    }
    st.run(call, |link| json!({ "code": link.code })).await
}
