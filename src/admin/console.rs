//! The web console under `/console/`: server-rendered pages (askama, which escapes every
//! value), usable without JavaScript. Sign-in opens a server-side session; every form
//! carries the session's anti-CSRF token, and posts from another site are refused (403)
//! before anything is read or changed.

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

async fn overview(State(s): State<AdminState>, who: SignedIn) -> Response {
    match ops::summary(&s).await {
        Ok(summary) => page(
            StatusCode::OK,
            &OverviewPage {
                nav: Nav::of(&who),
                summary,
            },
        ),
        Err(e) => failure(&who, e, "/console"),
    }
}

async fn signin_form() -> Response {
    page(
        StatusCode::OK,
        &SignInPage {
            nav: Nav::default(),
            error: None,
        },
    )
}

#[derive(Deserialize)]
struct SignInForm {
    #[serde(default)]
    token: String,
}

async fn signin(
    State(s): State<AdminState>,
    headers: HeaderMap,
    form: Result<Form<SignInForm>, FormRejection>,
) -> Response {
    let again = |status, error: &str| {
        page(
            status,
            &SignInPage {
                nav: Nav::default(),
                error: Some(error.into()),
            },
        )
    };
    if !same_origin(&headers) {
        return again(
            StatusCode::FORBIDDEN,
            "Sign in from this console's own page.",
        );
    }
    let token = form.map(|Form(f)| f.token).unwrap_or_default();
    let Some(caller) = s.tokens.check(token.trim()) else {
        warn!("admin console: sign-in with an unknown token refused");
        return again(StatusCode::UNAUTHORIZED, "That token is not valid.");
    };
    info!(who = %caller.name, role = caller.role.as_str(), "admin console: signed in");
    let id = s.sessions.open(caller);
    let secure = if s.settings.admin.secure_cookie {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut r = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn signout(
    State(s): State<AdminState>,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let csrf = form.map(|Form(f)| f.csrf).unwrap_or_default();
    if let Some(refused) = refuse_cross_site(&headers, &who, &csrf) {
        return refused;
    }
    if let Some(id) = session_cookie(&headers) {
        s.sessions.close(&id);
    }
    info!(who = %who.caller.name, "admin console: signed out");
    let mut r = Redirect::to("/console/signin").into_response();
    let gone = format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0");
    if let Ok(v) = HeaderValue::from_str(&gone) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// The query string of another page of the same search.
fn page_query(q: &LinksQuery, page: u64) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in [
        ("backend", &q.backend),
        ("session", &q.session),
        ("group", &q.group),
        ("per_page", &q.per_page),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.append_pair(k, v);
        }
    }
    out.append_pair("page", &page.to_string());
    out.finish()
}

async fn links(
    State(s): State<AdminState>,
    who: SignedIn,
    q: Result<Query<LinksQuery>, QueryRejection>,
) -> Response {
    let q = q.map(|Query(q)| q).unwrap_or_default();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut p = LinksPage {
        nav: Nav::of(&who),
        backends: s.settings.backends.keys().cloned().collect(),
        filter_backend: text(&q.backend),
        filter_session: text(&q.session),
        filter_group: text(&q.group),
        error: None,
        total: 0,
        page: 1,
        pages: 1,
        links: Vec::new(),
        prev: None,
        next: None,
    };
    match ops::links_page(&s, &who.caller, &q).await {
        Ok(found) => {
            p.pages = found.total.div_ceil(found.per_page).max(1);
            p.page = found.page;
            p.total = found.total;
            p.prev = (found.page > 1).then(|| page_query(&q, found.page - 1));
            p.next = (found.page < p.pages).then(|| page_query(&q, found.page + 1));
            p.links = found.links;
            page(StatusCode::OK, &p)
        }
        Err(Invalid::Input(e)) => {
            p.error = Some(e);
            page(StatusCode::BAD_REQUEST, &p)
        }
        Err(e) => failure(&who, e, "/console/links"),
    }
}

#[derive(Deserialize)]
struct LinkQuery {
    published: Option<String>,
}

async fn link(
    State(s): State<AdminState>,
    who: SignedIn,
    Path((backend, session, group)): Path<(String, String, String)>,
    q: Result<Query<LinkQuery>, QueryRejection>,
) -> Response {
    let published = q
        .ok()
        .and_then(|Query(q)| q.published)
        .and_then(|id| Uuid::parse_str(&id).ok())
        .map(|id| id.to_string());
    let shown = async {
        let key = ops::group_key(&s, &backend, &session, &group)?;
        let detail = ops::link_detail(&s, &who.caller, &key).await?;
        Ok::<_, Invalid>((key, detail))
    };
    match shown.await {
        Ok((key, detail)) => page(
            StatusCode::OK,
            &LinkPage {
                nav: Nav::of(&who),
                key,
                detail,
                published,
            },
        ),
        Err(e) => failure(&who, e, "/console/links"),
    }
}

#[derive(Deserialize)]
struct GroupQuery {
    #[serde(default)]
    backend: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    group: String,
}

/// The confirmation step before a revoke: what it will do, and the form that does it.
async fn confirm_revoke(
    State(s): State<AdminState>,
    who: SignedIn,
    q: Result<Query<GroupQuery>, QueryRejection>,
) -> Response {
    let shown = async {
        ops::operator(&who.caller)?;
        let Ok(Query(q)) = q else {
            return Err(Invalid::Input(
                "backend, session and group are needed".into(),
            ));
        };
        let key = ops::group_key(&s, &q.backend, &q.session, &q.group)?;
        let detail = ops::link_detail(&s, &who.caller, &key).await?;
        let fingerprint = detail.link.and_then(|l| l.invite_code_fingerprint);
        Ok((key, fingerprint))
    };
    match shown.await {
        Ok((key, fingerprint)) => page(
            StatusCode::OK,
            &ConfirmPage {
                nav: Nav::of(&who),
                key,
                fingerprint,
            },
        ),
        Err(e) => failure(&who, e, "/console/links"),
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    group: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn revoke(
    State(s): State<AdminState>,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return failure(
            &who,
            Invalid::Input("the form is not readable".into()),
            "/console",
        );
    };
    if let Some(refused) = refuse_cross_site(&headers, &who, &f.csrf) {
        return refused;
    }
    let done = async {
        let key = ops::group_key(&s, &f.backend, &f.session, &f.group)?;
        let req = SendRequest {
            session_id: key.session_id.clone(),
            group_id: key.group_id.clone(),
            backend: Some(key.backend.clone()),
            reason: f.reason.clone(),
            command_id: None,
        };
        let sent = ops::send(&s, &who.caller, CommandType::RevokeInvite, req).await?;
        Ok::<_, Invalid>((key, sent.command_id))
    };
    match done.await {
        Ok((key, id)) => {
            let path = |v: &str| {
                percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            Redirect::to(&format!(
                "/console/links/{}/{}/{}?published={id}",
                path(&key.backend),
                path(&key.session_id),
                path(&key.group_id)
            ))
            .into_response()
        }
        Err(e) => failure(&who, e, "/console/links"),
    }
}

async fn dead_letters(State(s): State<AdminState>, who: SignedIn) -> Response {
    match ops::dead_letters(&s).await {
        Ok(letters) => {
            let letters = letters
                .into_iter()
                .map(|letter| {
                    let text = |k: &str| {
                        letter
                            .body
                            .get(k)
                            .and_then(|v| v.as_str())
                            .unwrap_or("-")
                            .to_owned()
                    };
                    LetterRow {
                        reason: text("reason"),
                        requested_by: text("requested_by"),
                        letter,
                    }
                })
                .collect();
            page(
                StatusCode::OK,
                &DeadLettersPage {
                    nav: Nav::of(&who),
                    letters,
                },
            )
        }
        Err(e) => failure(&who, e, "/console"),
    }
}

#[derive(Deserialize)]
struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(default)]
    all: Option<String>,
}

async fn replay(
    State(s): State<AdminState>,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<ReplayForm>, FormRejection>,
) -> Response {
    const BACK: &str = "/console/dead-letters";
    let Ok(Form(f)) = form else {
        return failure(
            &who,
            Invalid::Input("the form is not readable".into()),
            BACK,
        );
    };
    if let Some(refused) = refuse_cross_site(&headers, &who, &f.csrf) {
        return refused;
    }
    let done = async {
        ops::operator(&who.caller)?;
        let req = match (f.all.as_deref(), f.command_id.as_deref()) {
            (Some("true"), _) => ReplayRequest {
                all: true,
                ..Default::default()
            },
            (_, Some(id)) => ReplayRequest {
                command_ids: vec![
                    Uuid::parse_str(id.trim())
                        .map_err(|_| Invalid::Input("command_id: not a UUID".into()))?,
                ],
                all: false,
            },
            _ => return Err(Invalid::Input("choose a dead letter to replay".into())),
        };
        ops::replay(&s, &who.caller, req).await
    };
    match done.await {
        Ok(report) => {
            let mut details: Vec<String> = report
                .kept
                .iter()
                .map(|k| {
                    format!(
                        "{}: left in the dead-letter queue: {}",
                        k.command_id, k.reason
                    )
                })
                .collect();
            details.extend(
                report
                    .not_found
                    .iter()
                    .map(|id| format!("{id}: not in the dead-letter queue")),
            );
            let mut text = format!("replayed {}", report.replayed.len());
            if report.duplicates_removed > 0 {
                text.push_str(&format!(
                    " ({} duplicate copies removed)",
                    report.duplicates_removed
                ));
            }
            let m = MessagePage {
                nav: Nav::of(&who),
                title: "Replay".into(),
                message: text,
                failed: !details.is_empty(),
                details,
                back: BACK.into(),
            };
            page(StatusCode::OK, &m)
        }
        Err(e) => failure(&who, e, BACK),
    }
}

async fn pauses(State(s): State<AdminState>, who: SignedIn) -> Response {
    match ops::pauses(&s).await {
        Ok(pauses) => page(
            StatusCode::OK,
            &PausesPage {
                nav: Nav::of(&who),
                pauses,
                backends: s.settings.backends.keys().cloned().collect(),
            },
        ),
        Err(e) => failure(&who, e, "/console"),
    }
}

#[derive(Deserialize)]
struct PauseForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    session: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

impl PauseForm {
    fn request(self) -> PauseRequest {
        PauseRequest {
            backend: self.backend,
            session_id: self.session,
            reason: self.reason,
        }
    }
}

async fn pause(
    State(s): State<AdminState>,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<PauseForm>, FormRejection>,
) -> Response {
    change_pause(s, who, headers, form, true).await
}

async fn resume(
    State(s): State<AdminState>,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<PauseForm>, FormRejection>,
) -> Response {
    change_pause(s, who, headers, form, false).await
}

async fn change_pause(
    s: AdminState,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<PauseForm>, FormRejection>,
    pause: bool,
) -> Response {
    const BACK: &str = "/console/pauses";
    let Ok(Form(f)) = form else {
        return failure(
            &who,
            Invalid::Input("the form is not readable".into()),
            BACK,
        );
    };
    if let Some(refused) = refuse_cross_site(&headers, &who, &f.csrf) {
        return refused;
    }
    let done = if pause {
        ops::pause(&s, &who.caller, f.request()).await
    } else {
        ops::resume(&s, &who.caller, f.request()).await
    };
    match done {
        Ok(text) => message(Nav::of(&who), StatusCode::OK, "Pauses", text, BACK),
        Err(e) => failure(&who, e, BACK),
    }
}
