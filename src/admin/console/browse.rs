//! Signing in and out, and the console's reading pages: the overview, the links with
//! their search, a link's history.

use super::*;

pub(super) async fn overview(State(s): State<AdminState>, who: SignedIn) -> Response {
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

pub(super) async fn signin_form() -> Response {
    page(
        StatusCode::OK,
        &SignInPage {
            nav: Nav::default(),
            error: None,
        },
    )
}

#[derive(Deserialize)]
pub(super) struct SignInForm {
    #[serde(default)]
    token: String,
}

pub(super) async fn signin(
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
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

pub(super) async fn signout(
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
pub(super) fn page_query(q: &LinksQuery, page: u64) -> String {
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

pub(super) async fn links(
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
pub(super) struct LinkQuery {
    published: Option<String>,
}

pub(super) async fn link(
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
