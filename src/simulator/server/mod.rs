//! The simulator over HTTP (`invite-worker simulate`): all six provider APIs on one port,
//! each under its own prefix and in its own dialect (paths, auth, bodies, errors), over one
//! shared [`SimWorld`], plus JSON control endpoints under `/_control`. See docs/simulator.md.

mod control;
mod evolution;
mod gateway;
mod meta_cloud;
mod waha;
mod wasend;
mod wawp;

use std::{collections::HashMap, future::Future, sync::Arc};

use axum::{
    Json, Router,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub use meta_cloud::META_SESSION;

use super::world::{Op, SimError, SimLink, SimWorld, route};
use crate::domain::LINK_PREFIX;

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
            Api::Wasend => wasend::routes(),
            Api::Wawp => wawp::routes(),
            Api::Gateway => gateway::routes(),
            Api::MetaCloud => meta_cloud::routes(),
            Api::Waha => waha::routes(),
            Api::Evolution => evolution::routes(),
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
            Api::Wasend => wasend::error(refusal),
            Api::Wawp | Api::Waha => waha::error(call, refusal),
            Api::Gateway => gateway::error(refusal),
            Api::MetaCloud => meta_cloud::error(call, refusal),
            Api::Evolution => evolution::error(call, refusal),
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

fn app(state: AppState) -> Router {
    let mut router = Router::new().nest("/_control", control::routes());
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
    fn tokens_compare_by_content() {
        assert!(constant_time_eq("secret", "secret"));
        assert!(!constant_time_eq("secret", "secreT"));
        assert!(!constant_time_eq("secret", "secret2"));
    }
}
