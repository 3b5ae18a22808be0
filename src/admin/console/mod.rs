//! The web console under `/console/`: server-rendered pages (askama, which escapes every
//! value), usable without JavaScript. Sign-in opens a server-side session; every form
//! carries the session's anti-CSRF token, and posts from another site are refused (403)
//! before anything is read or changed.

mod actions;
mod browse;

use askama::Template;
use axum::{
    Form, Router,
    extract::{
        Path, Query, State,
        rejection::{FormRejection, QueryRejection},
    },
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::map_response,
    response::{Html, IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tracing::{info, warn};
use uuid::Uuid;

use self::{actions::*, browse::*};
use super::{
    AdminState,
    auth::{COOKIE, SESSION_TTL, SignedIn, same_origin, session_cookie},
    ops::{
        self, Invalid, LinkDetailOut, LinkOut, LinksQuery, PauseRequest, PauseView, ReplayRequest,
        SendRequest, Summary,
    },
};
use crate::{cli::dead_letters::DeadLetter, domain::CommandType, store::GroupKey};

pub(super) fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(overview))
        .route("/signin", get(signin_form).post(signin))
        .route("/signout", post(signout))
        .route("/links", get(links))
        .route("/links/{backend}/{session}/{group}", get(link))
        .route("/revoke", get(confirm_revoke).post(revoke))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/replay", post(replay))
        .route("/pauses", get(pauses).post(pause))
        .route("/pauses/resume", post(resume))
        .layer(map_response(protect))
}

/// Headers on every console answer: no script, no framing, nothing cached.
async fn protect(mut r: Response) -> Response {
    let h = r.headers_mut();
    let csp = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; \
               frame-ancestors 'none'; base-uri 'none'";
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The header of every page: who is signed in, and the anti-CSRF token of its forms.
#[derive(Default)]
struct Nav {
    signed_in: bool,
    name: String,
    role: &'static str,
    csrf: String,
    operator: bool,
}

impl Nav {
    fn of(who: &SignedIn) -> Self {
        Self {
            signed_in: true,
            name: who.caller.name.clone(),
            role: who.caller.role.as_str(),
            csrf: who.csrf.clone(),
            operator: who.caller.is_operator(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/signin.html")]
struct SignInPage {
    nav: Nav,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "console/message.html")]
struct MessagePage {
    nav: Nav,
    title: String,
    message: String,
    failed: bool,
    details: Vec<String>,
    back: String,
}

#[derive(Template)]
#[template(path = "console/overview.html")]
struct OverviewPage {
    nav: Nav,
    summary: Summary,
}

#[derive(Template)]
#[template(path = "console/links.html")]
struct LinksPage {
    nav: Nav,
    backends: Vec<String>,
    filter_backend: String,
    filter_session: String,
    filter_group: String,
    error: Option<String>,
    total: u64,
    page: u64,
    pages: u64,
    links: Vec<LinkOut>,
    prev: Option<String>,
    next: Option<String>,
}

#[derive(Template)]
#[template(path = "console/link.html")]
struct LinkPage {
    nav: Nav,
    key: GroupKey,
    detail: LinkDetailOut,
    published: Option<String>,
}

#[derive(Template)]
#[template(path = "console/confirm.html")]
struct ConfirmPage {
    nav: Nav,
    key: GroupKey,
    fingerprint: Option<String>,
}

/// A dead letter with the command's own texts, as far as its body has them.
struct LetterRow {
    letter: DeadLetter,
    reason: String,
    requested_by: String,
}

#[derive(Template)]
#[template(path = "console/dead_letters.html")]
struct DeadLettersPage {
    nav: Nav,
    letters: Vec<LetterRow>,
}

#[derive(Template)]
#[template(path = "console/pauses.html")]
struct PausesPage {
    nav: Nav,
    pauses: Vec<PauseView>,
    backends: Vec<String>,
}

fn page(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {e}"),
        )
            .into_response(),
    }
}

fn message(nav: Nav, status: StatusCode, title: &str, text: String, back: &str) -> Response {
    let failed = !status.is_success();
    let m = MessagePage {
        nav,
        title: title.into(),
        message: text,
        failed,
        details: Vec::new(),
        back: back.into(),
    };
    page(status, &m)
}

fn failure(who: &SignedIn, e: Invalid, back: &str) -> Response {
    let title = match e.status() {
        StatusCode::BAD_REQUEST => "Not accepted",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        _ => "Failed",
    };
    message(Nav::of(who), e.status(), title, e.message(), back)
}

/// A form post is accepted only from this site and with the session's anti-CSRF token:
/// anything else is a 403 and changes nothing.
fn refuse_cross_site(headers: &HeaderMap, who: &SignedIn, csrf: &str) -> Option<Response> {
    if same_origin(headers) && who.csrf_ok(csrf) {
        return None;
    }
    warn!(who = %who.caller.name, "admin console: a post without this site's origin or anti-CSRF token was refused");
    let text = "This form did not come from this console (missing or wrong anti-CSRF token, \
                or another site's origin). Nothing was changed."
        .to_owned();
    Some(message(
        Nav::of(who),
        StatusCode::FORBIDDEN,
        "Refused",
        text,
        "/console",
    ))
}
