//! The console's pages that change things, each behind the anti-CSRF and cross-site
//! checks: a revoke with its confirmation step, dead letters with replay, pauses with
//! pause and resume.

use super::*;

#[derive(Deserialize)]
pub(super) struct GroupQuery {
    #[serde(default)]
    backend: String,
    #[serde(default)]
    session: String,
    #[serde(default)]
    group: String,
}

/// The confirmation step before a revoke: what it will do, and the form that does it.
pub(super) async fn confirm_revoke(
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
pub(super) struct RevokeForm {
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

pub(super) async fn revoke(
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

pub(super) async fn dead_letters(State(s): State<AdminState>, who: SignedIn) -> Response {
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
pub(super) struct ReplayForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(default)]
    all: Option<String>,
}

pub(super) async fn replay(
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

pub(super) async fn pauses(State(s): State<AdminState>, who: SignedIn) -> Response {
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
pub(super) struct PauseForm {
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

pub(super) async fn pause(
    State(s): State<AdminState>,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<PauseForm>, FormRejection>,
) -> Response {
    change_pause(s, who, headers, form, true).await
}

pub(super) async fn resume(
    State(s): State<AdminState>,
    who: SignedIn,
    headers: HeaderMap,
    form: Result<Form<PauseForm>, FormRejection>,
) -> Response {
    change_pause(s, who, headers, form, false).await
}

pub(super) async fn change_pause(
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
