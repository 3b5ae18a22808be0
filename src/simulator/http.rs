//! The simulator over HTTP (`invite-worker simulate`): all six provider APIs on one port,
//! each under its own prefix and in its own dialect (paths, auth, bodies, errors), over one
//! shared [`SimWorld`], plus JSON control endpoints under `/_control`. See docs/simulator.md.

use std::{collections::HashMap, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::SecondsFormat;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::world::{
    FaultSpec, GroupSpec, Op, SessionSpec, SimError, SimLink, SimWorld, random_code, route,
};
use crate::backend::LINK_PREFIX;

/// The world session that `meta_cloud` groups live in: Graph paths carry no session.
pub const META_SESSION: &str = "meta";

/// The provider APIs the simulator speaks. Each is served under `/<name>` and counts its
/// requests as the world routes `<name>.read` / `<name>.reset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    Wasend,
    Wawp,
    Gateway,
    MetaCloud,
    Waha,
    Evolution,
}

impl Api {
    pub const ALL: [Api; 6] = [
        Api::Wasend,
        Api::Wawp,
        Api::Gateway,
        Api::MetaCloud,
        Api::Waha,
        Api::Evolution,
    ];

    /// The path prefix (without the slash) and the world route prefix.
    pub fn name(self) -> &'static str {
        match self {
            Api::Wasend => "wasend",
            Api::Wawp => "wawp",
            Api::Gateway => "gateway",
            Api::MetaCloud => "meta_cloud",
            Api::Waha => "waha",
            Api::Evolution => "evolution",
        }
    }

    /// The provider's own paths, relative to the prefix.
    fn routes(self) -> Router<AppState> {
        match self {
            Api::Wasend => Router::new()
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
                ),
            Api::Wawp => Router::new()
                .route(
                    "/v2/groups/{group}/invite-code",
                    get(|st, p, q| wawp(st, p, q, Op::Read)),
                )
                .route(
                    "/v2/groups/{group}/invite-code/revoke",
                    post(|st, p, q| wawp(st, p, q, Op::Reset)),
                ),
            Api::Gateway => Router::new().route(
                "/api/v1/sessions/{session}/groups/{gid}/invite",
                get(|st, p, h| gateway(st, p, h, Op::Read))
                    .delete(|st, p, h| gateway(st, p, h, Op::Reset)),
            ),
            Api::MetaCloud => Router::new().route(
                "/{version}/{group_id}/invite_link",
                post(meta_create).delete(meta_delete),
            ),
            Api::Waha => Router::new()
                .route(
                    "/api/{session}/groups/{group}/invite-code",
                    get(|st, p, h| waha(st, p, h, Op::Read)),
                )
                .route(
                    "/api/{session}/groups/{group}/invite-code/revoke",
                    post(|st, p, h| waha(st, p, h, Op::Reset)),
                ),
            Api::Evolution => Router::new()
                .route(
                    "/group/inviteCode/{instance}",
                    get(|st, p, q, h| evolution(st, p, q, h, Op::Read)),
                )
                .route(
                    "/group/revokeInviteCode/{instance}",
                    post(|st, p, q, h| evolution(st, p, q, h, Op::Reset)),
                ),
        }
    }

    /// Where the API carries its token.
    fn presented_token<'a>(
        self,
        headers: &'a HeaderMap,
        query: Option<&'a HashMap<String, String>>,
    ) -> Option<&'a str> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match self {
            Api::Wasend | Api::Gateway | Api::MetaCloud => {
                let (scheme, token) = header(header::AUTHORIZATION.as_str())?.split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then_some(token.trim())
            }
            Api::Wawp => query?.get("access_token").map(String::as_str),
            Api::Waha => header("x-api-key"),
            Api::Evolution => header("apikey"),
        }
    }

    /// Dresses a refusal in this API's status and error body.
    fn render(self, call: &Call, refusal: &Refusal) -> (StatusCode, Value) {
        match self {
            Api::Wasend => wasend_error(refusal),
            Api::Wawp | Api::Waha => waha_error(call, refusal),
            Api::Gateway => gateway_error(refusal),
            Api::MetaCloud => meta_error(call, refusal),
            Api::Evolution => evolution_error(call, refusal),
        }
    }
}

/// Why a provider request is refused, in provider-neutral terms; [`Api::render`] turns it
/// into each provider's status and body.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    Unauthorized,
    /// The request itself is malformed (a missing parameter or body field).
    Invalid(&'static str),
    SessionNotFound,
    SessionDisconnected,
    GroupNotFound,
    NotAdmin,
    /// An injected fault: the status is answered as given.
    Status(StatusCode),
}

impl Refusal {
    /// The one mapping from the world's errors (with their Retry-After seconds), shared
    /// by every API. `None` for a hang, which is never answered.
    fn from_world(e: SimError) -> Option<(Self, Option<u64>)> {
        Some(match e {
            SimError::Fault {
                status,
                retry_after,
            } => (
                Refusal::Status(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                ),
                retry_after,
            ),
            SimError::SessionNotFound => (Refusal::SessionNotFound, None),
            SimError::SessionDisconnected => (Refusal::SessionDisconnected, None),
            SimError::GroupNotFound => (Refusal::GroupNotFound, None),
            SimError::NotAdmin => (Refusal::NotAdmin, None),
            SimError::Hang => return None,
        })
    }
}

fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

/// One provider request, as the world sees it.
struct Call {
    api: Api,
    op: Op,
    /// The world route counted and matched against faults (normally `<api>.<op>`).
    route: String,
    session: String,
    group: String,
}

impl Call {
    fn new(api: Api, op: Op, session: String, group: String) -> Self {
        Self {
            api,
            op,
            route: route(api.name(), op),
            session,
            group,
        }
    }

    fn refuse(&self, refusal: &Refusal, retry_after: Option<u64>) -> Response {
        let (status, body) = self.api.render(self, refusal);
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[derive(Clone)]
struct AppState {
    world: SimWorld,
    token: Option<Arc<str>>,
    /// Cancelled on shutdown, so that hung requests let the server stop.
    stop: CancellationToken,
}

impl AppState {
    /// The 401 answer, when the simulator requires a token and `presented` is not it.
    fn unauthorized(&self, call: &Call, presented: Option<&str>) -> Option<Response> {
        match (&self.token, presented) {
            (None, _) => None,
            (Some(expected), Some(given)) if constant_time_eq(expected, given) => None,
            _ => Some(call.refuse(&Refusal::Unauthorized, None)),
        }
    }

    /// Runs the call against the world and answers it: `success` builds the provider's
    /// body from the link; refusals are rendered in the API's dialect; a hang is never
    /// answered (until shutdown).
    async fn run(&self, call: Call, success: impl FnOnce(&SimLink) -> Value) -> Response {
        tracing::debug!(
            route = %call.route,
            session = %call.session,
            group = %call.group,
            "simulated request"
        );
        let world = self.world.clone();
        let (route, session, group, op) = (
            call.route.clone(),
            call.session.clone(),
            call.group.clone(),
            call.op,
        );
        // Spawned so that a client giving up mid-latency neither cancels a reset the
        // "provider" already started nor leaves the world's in-flight count raised.
        let outcome =
            tokio::spawn(async move { world.call(&route, &session, &group, op).await }).await;
        match outcome {
            Ok(Ok(link)) => Json(success(&link)).into_response(),
            Ok(Err(e)) => match Refusal::from_world(e) {
                Some((refusal, retry_after)) => call.refuse(&refusal, retry_after),
                None => {
                    self.stop.cancelled().await;
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            },
            Err(_) => call.refuse(&Refusal::Status(StatusCode::INTERNAL_SERVER_ERROR), None),
        }
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn url_of(link: &SimLink) -> String {
    format!("{LINK_PREFIX}{}", link.code)
}

// ---------------------------------------------------------------------------------------
// The six dialects: handlers (request shape, success body) and error renderers.

#[derive(Clone, Copy)]
enum WasendFamily {
    /// `invite-link`, the seeds' family: full link plus `expiresAt`.
    Link,
    /// `invite-code`, the older SDK family: `inviteCode` only.
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
        WasendFamily::Code => json!({ "success": true, "inviteCode": link.code }),
    })
    .await
}

fn wasend_error(refusal: &Refusal) -> (StatusCode, Value) {
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

/// WAHA's errors (NestJS): also used by wawp, whose paths mirror WAHA's.
fn waha_error(call: &Call, refusal: &Refusal) -> (StatusCode, Value) {
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

fn gateway_error(refusal: &Refusal) -> (StatusCode, Value) {
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

fn meta_error(call: &Call, refusal: &Refusal) -> (StatusCode, Value) {
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
fn evolution_error(call: &Call, refusal: &Refusal) -> (StatusCode, Value) {
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

// ---------------------------------------------------------------------------------------
// Control API.

fn control() -> Router<AppState> {
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
        .route("/stats/reset", post(control_reset_stats))
}

#[derive(Deserialize)]
struct GroupKey {
    session: String,
    group: String,
}

#[derive(Deserialize)]
struct Latency {
    ms: u64,
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
    st.world.set_latency(Duration::from_millis(l.ms));
    StatusCode::NO_CONTENT.into_response()
}

async fn control_auto_create(State(st): State<AppState>, Json(a): Json<AutoCreate>) -> Response {
    st.world.set_auto_create(a.enabled);
    StatusCode::NO_CONTENT.into_response()
}

async fn control_stats(State(st): State<AppState>) -> Response {
    Json(st.world.stats()).into_response()
}

async fn control_reset_stats(State(st): State<AppState>) -> Response {
    st.world.reset_stats();
    StatusCode::NO_CONTENT.into_response()
}

// ---------------------------------------------------------------------------------------
// Assembly and serving.

fn app(state: AppState) -> Router {
    let mut router = Router::new().nest("/_control", control());
    for api in Api::ALL {
        router = router.nest(&format!("/{}", api.name()), api.routes());
    }
    router.with_state(state)
}

/// Every provider API under `/<api>` plus `/_control`, over `world`. `token`: the token
/// every provider route requires in its own style; `None` disables auth. Hung requests
/// of a router built here stay unanswered for good; [`serve`] ends them at shutdown.
pub fn router(world: SimWorld, token: Option<String>) -> Router {
    app(AppState {
        world,
        token: token.map(Arc::from),
        stop: CancellationToken::new(),
    })
}

/// Serves the simulator on `listener` until `shutdown` completes, then stops gracefully
/// (hung requests are answered 503 so that their connections can close).
pub async fn serve(
    listener: tokio::net::TcpListener,
    world: SimWorld,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let app = app(AppState {
        world,
        token: token.map(Arc::from),
        stop: stop.clone(),
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
}

/// `invite-worker simulate`: binds `listen`, announces the bound address, and serves a
/// fresh auto-creating world until `shutdown` completes.
pub async fn run_simulate(
    listen: SocketAddr,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the simulator to {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the simulator's bound address")?;
    tracing::info!(%addr, auth = token.is_some(), "provider simulator listening");
    println!("listening on {addr}");
    serve(listener, SimWorld::default(), token, shutdown)
        .await
        .context("serving the simulator")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(api: Api, op: Op) -> Call {
        Call::new(api, op, "s".into(), "1@g.us".into())
    }

    #[test]
    fn every_api_answers_each_refusal_with_an_error_status() {
        let refusals = [
            Refusal::Unauthorized,
            Refusal::Invalid("bad"),
            Refusal::SessionNotFound,
            Refusal::SessionDisconnected,
            Refusal::GroupNotFound,
            Refusal::NotAdmin,
            Refusal::Status(StatusCode::TOO_MANY_REQUESTS),
            Refusal::Status(StatusCode::BAD_GATEWAY),
        ];
        for api in Api::ALL {
            for r in &refusals {
                let (status, body) = api.render(&call(api, Op::Reset), r);
                assert!(
                    status.is_client_error() || status.is_server_error(),
                    "{api:?} {r:?}"
                );
                assert!(body.is_object(), "{api:?} {r:?}");
            }
        }
    }

    #[test]
    fn injected_statuses_are_answered_as_given() {
        for api in Api::ALL {
            for code in [400, 401, 403, 404, 429, 500, 502, 503] {
                let s = StatusCode::from_u16(code).unwrap();
                let (status, _) = api.render(&call(api, Op::Read), &Refusal::Status(s));
                assert_eq!(status, s, "{api:?}");
            }
        }
    }

    #[test]
    fn graph_codes_follow_the_status() {
        let (_, throttled) = meta_error(
            &call(Api::MetaCloud, Op::Reset),
            &Refusal::Status(StatusCode::TOO_MANY_REQUESTS),
        );
        assert_eq!(throttled["error"]["code"], 130429);
        let (status, bad_token) =
            meta_error(&call(Api::MetaCloud, Op::Reset), &Refusal::Unauthorized);
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(bad_token["error"]["code"], 190);
        assert!(bad_token["error"].get("error_subcode").is_none());
    }

    #[test]
    fn tokens_compare_by_content() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secreT"));
        assert!(!constant_time_eq("secret", "secret2"));
    }
}
