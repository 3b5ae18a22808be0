//! The changes the API and the console make: replaying dead letters, sending commands,
//! pausing and resuming; each validated first and logged with who made it.

use super::*;

/// Which dead letters to replay: `command_ids`, or `all`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReplayRequest {
    #[serde(default)]
    pub command_ids: Vec<Uuid>,
    #[serde(default)]
    pub all: bool,
}

#[derive(Serialize)]
pub(crate) struct Kept {
    pub command_id: String,
    pub reason: String,
}

/// What a replay did, as `dead-letters replay` reports it.
#[derive(Serialize)]
pub(crate) struct ReplayOut {
    pub replayed: Vec<String>,
    pub duplicates_removed: usize,
    pub kept: Vec<Kept>,
    pub not_found: Vec<Uuid>,
}

pub(crate) async fn replay(
    s: &AdminState,
    caller: &Caller,
    req: ReplayRequest,
) -> Result<ReplayOut, Invalid> {
    operator(caller)?;
    let selection = match (req.all, req.command_ids.is_empty()) {
        (true, true) => Selection::All,
        (false, false) if req.command_ids.len() <= 1000 => Selection::Ids(req.command_ids),
        (false, false) => return Err(input("command_ids: at most 1000 at a time")),
        _ => return Err(input("give either command_ids or all: true")),
    };
    let report = {
        let _one_at_a_time = s.dead_letters.lock().await;
        dead_letters::replay(&s.settings, &s.store, &selection).await?
    };
    info!(
        who = %caller.name,
        action = "replay",
        selection = ?selection,
        replayed = ?report.replayed,
        "admin change: dead letters replayed"
    );
    Ok(ReplayOut {
        replayed: report.replayed,
        duplicates_removed: report.duplicates_removed,
        kept: report
            .kept
            .into_iter()
            .map(|(command_id, reason)| Kept { command_id, reason })
            .collect(),
        not_found: report.not_found,
    })
}

/// A command to publish, as `send` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SendRequest {
    pub session_id: String,
    pub group_id: String,
    #[serde(default)]
    pub backend: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub command_id: Option<Uuid>,
}

#[derive(Serialize)]
pub(crate) struct Sent {
    pub command_id: Uuid,
}

/// Publishes one command exactly as `invite-worker send` does, with `requested_by`
/// `admin:<token name>`, and returns its command_id once the broker confirmed it.
pub(crate) async fn send(
    s: &AdminState,
    caller: &Caller,
    kind: CommandType,
    req: SendRequest,
) -> Result<Sent, Invalid> {
    operator(caller)?;
    let spec = CommandSpec {
        kind,
        session: req.session_id.trim().to_owned(),
        group: req.group_id.trim().to_owned(),
        backend: given(&req.backend).map(str::to_owned),
        reason: text("reason", &req.reason)?,
        requested_by: Some(caller.requested_by()),
        command_id: req.command_id,
    };
    spec.validate(&*s.settings)
        .map_err(|e| input(format!("{}: {}", e.field, e.message)))?;
    let ids = send::publish(&s.settings, std::slice::from_ref(&spec))
        .await
        .map_err(|e| Invalid::Failed(StatusCode::BAD_GATEWAY, format!("broker: {e}")))?;
    let command_id = ids
        .first()
        .copied()
        .ok_or_else(|| Invalid::Failed(StatusCode::BAD_GATEWAY, "nothing published".into()))?;
    info!(
        who = %caller.name,
        action = kind.as_str(),
        %command_id,
        backend = spec.backend.as_deref().unwrap_or(&s.settings.default_backend),
        session = %spec.session,
        group = %spec.group,
        "admin change: command published"
    );
    Ok(Sent { command_id })
}

/// A pause or resume: a backend, and one of its sessions or all of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PauseRequest {
    pub backend: String,
    #[serde(default)]
    pub session_id: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

fn target(s: &AdminState, req: &PauseRequest) -> Result<(String, Option<String>), Invalid> {
    let b = backend(s, req.backend.trim())?;
    let session = given(&req.session_id).map(session).transpose()?;
    Ok((b, session))
}

fn describe(backend: &str, session: Option<&str>) -> String {
    match session {
        Some(s) => format!("backend {backend} session {s}"),
        None => format!("backend {backend} (every session)"),
    }
}

/// Pauses a backend or one of its sessions; says what was paused.
pub(crate) async fn pause(
    s: &AdminState,
    caller: &Caller,
    req: PauseRequest,
) -> Result<String, Invalid> {
    operator(caller)?;
    let (backend, session) = target(s, &req)?;
    let reason = text("reason", &req.reason)?;
    s.store
        .pause(&backend, session.as_deref(), reason.as_deref())
        .await?;
    let what = describe(&backend, session.as_deref());
    info!(who = %caller.name, action = "pause", target = %what, reason = reason.as_deref().unwrap_or(""), "admin change: paused");
    Ok(format!("paused {what}"))
}

/// Resumes exactly what a pause named; 404 when it was not paused.
pub(crate) async fn resume(
    s: &AdminState,
    caller: &Caller,
    req: PauseRequest,
) -> Result<String, Invalid> {
    operator(caller)?;
    let (backend, session) = target(s, &req)?;
    let what = describe(&backend, session.as_deref());
    if !s.store.resume(&backend, session.as_deref()).await? {
        return Err(Invalid::NotFound(format!("{what} is not paused")));
    }
    info!(who = %caller.name, action = "resume", target = %what, "admin change: resumed");
    Ok(format!("resumed {what}"))
}
