//! What the API and the console read and do, shared by both: inputs validated like the
//! CLI's (configured backends, the domain's id syntax, bounded pages and texts), views in
//! the CLI's `--json` shapes with invite codes as fingerprints for viewers, and every
//! change logged with who made it.

mod changes;

use std::collections::BTreeMap;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use chrono::Utc;
use lapin::{options::QueueDeclareOptions, types::FieldTable};
use serde::{Deserialize, Serialize};
use tracing::info;
use uuid::Uuid;

pub(crate) use self::changes::*;
use super::{AdminState, auth::Caller, error};
use crate::{
    cli::{
        dead_letters::{self, DeadLetter, DeadLetterError, Selection},
        links::{self, HistoryView, LinkView},
        send,
    },
    domain::{
        CommandSpec, CommandType, GroupId, GroupIdStyle, SessionId, events::rfc3339,
        fingerprint_code,
    },
    store::{GroupKey, LinkFilter, StoreError},
};

/// Links per page unless asked otherwise, and the most one page may hold.
pub(crate) const PER_PAGE: u64 = 50;
pub(crate) const MAX_PER_PAGE: u64 = 200;
/// Reasons and other free texts: at most this many characters, as in commands.
const MAX_TEXT_CHARS: usize = 500;

/// Why a request was not done: its status and a message safe to show.
#[derive(Debug)]
pub enum Invalid {
    /// 400: an input is not acceptable; the message names it.
    Input(String),
    /// 403: a viewer asked for a change.
    Forbidden,
    /// 404
    NotFound(String),
    /// 500 (database) or 502 (broker).
    Failed(StatusCode, String),
}

impl Invalid {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Invalid::Input(_) => StatusCode::BAD_REQUEST,
            Invalid::Forbidden => StatusCode::FORBIDDEN,
            Invalid::NotFound(_) => StatusCode::NOT_FOUND,
            Invalid::Failed(s, _) => *s,
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            Invalid::Input(m) | Invalid::NotFound(m) | Invalid::Failed(_, m) => m.clone(),
            Invalid::Forbidden => "a viewer token cannot make changes".into(),
        }
    }
}

impl IntoResponse for Invalid {
    fn into_response(self) -> Response {
        error(self.status(), self.message())
    }
}

impl From<StoreError> for Invalid {
    fn from(e: StoreError) -> Self {
        Invalid::Failed(StatusCode::INTERNAL_SERVER_ERROR, format!("database: {e}"))
    }
}

impl From<DeadLetterError> for Invalid {
    fn from(e: DeadLetterError) -> Self {
        match e {
            DeadLetterError::Database(e) => e.into(),
            other => Invalid::Failed(StatusCode::BAD_GATEWAY, other.to_string()),
        }
    }
}

fn input(m: impl Into<String>) -> Invalid {
    Invalid::Input(m.into())
}

/// Only operators change anything.
pub(crate) fn operator(caller: &Caller) -> Result<(), Invalid> {
    if caller.is_operator() {
        Ok(())
    } else {
        Err(Invalid::Forbidden)
    }
}

/// A form or query value: an empty one counts as absent.
fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

/// A configured backend's name.
fn backend(s: &AdminState, name: &str) -> Result<String, Invalid> {
    if s.settings.backends.contains_key(name) {
        Ok(name.to_owned())
    } else {
        Err(input(format!(
            "backend: {name:?} is not a configured backend"
        )))
    }
}

fn session(raw: &str) -> Result<String, Invalid> {
    SessionId::parse(raw)
        .map(|s| s.as_str().to_owned())
        .map_err(|e| input(format!("session: {e}")))
}

/// A group id in the style of `backend`'s kind, or of any kind when no backend is named.
fn group(s: &AdminState, backend: Option<&str>, raw: &str) -> Result<String, Invalid> {
    let styles: Vec<GroupIdStyle> = match backend {
        Some(b) => s.settings.backends.get(b).map(|b| b.kind().group_style()),
        None => None,
    }
    .map_or_else(
        || vec![GroupIdStyle::Jid, GroupIdStyle::Opaque],
        |s| vec![s],
    );
    let mut last = None;
    for style in styles {
        match GroupId::parse(raw, style) {
            Ok(g) => return Ok(g.as_str().to_owned()),
            Err(e) => last = Some(e),
        }
    }
    Err(input(format!(
        "group: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

fn text(field: &str, v: &Option<String>) -> Result<Option<String>, Invalid> {
    match given(v) {
        Some(t) if t.chars().count() > MAX_TEXT_CHARS => Err(input(format!(
            "{field}: at most {MAX_TEXT_CHARS} characters"
        ))),
        t => Ok(t.map(str::to_owned)),
    }
}

fn number(field: &str, v: &Option<String>, default: u64, max: u64) -> Result<u64, Invalid> {
    let Some(raw) = given(v) else {
        return Ok(default);
    };
    match raw.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(input(format!(
            "{field}: must be a whole number from 1 to {max}"
        ))),
    }
}

/// The filters and page of a links listing, as given in a query string.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct LinksQuery {
    pub backend: Option<String>,
    pub session: Option<String>,
    pub group: Option<String>,
    pub page: Option<String>,
    pub per_page: Option<String>,
}

/// A link as `links list --json` prints it, plus the fingerprint of its code; for a
/// viewer `invite_link` and `invite_code` are null.
#[derive(Serialize)]
pub(crate) struct LinkOut {
    #[serde(flatten)]
    pub link: LinkView,
    pub invite_code_fingerprint: Option<String>,
}

/// A history entry as `links show --json` prints it, plus the fingerprints of its codes;
/// for a viewer `old_code` and `new_code` are null.
#[derive(Serialize)]
pub(crate) struct HistoryOut {
    #[serde(flatten)]
    pub entry: HistoryView,
    pub old_code_fingerprint: Option<String>,
    pub new_code_fingerprint: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct LinkPage {
    pub links: Vec<LinkOut>,
    pub page: u64,
    pub per_page: u64,
    pub total: u64,
}

#[derive(Serialize)]
pub(crate) struct LinkDetailOut {
    pub link: Option<LinkOut>,
    pub history: Vec<HistoryOut>,
}

fn fingerprint(code: &Option<String>) -> Option<String> {
    code.as_deref().map(fingerprint_code)
}

fn link_out(caller: &Caller, mut link: LinkView) -> LinkOut {
    let invite_code_fingerprint = fingerprint(&link.invite_code);
    if !caller.is_operator() {
        link.invite_code = None;
        link.invite_link = None;
    }
    LinkOut {
        link,
        invite_code_fingerprint,
    }
}

fn history_out(caller: &Caller, mut entry: HistoryView) -> HistoryOut {
    let old_code_fingerprint = fingerprint(&entry.old_code);
    let new_code_fingerprint = fingerprint(&entry.new_code);
    if !caller.is_operator() {
        entry.old_code = None;
        entry.new_code = None;
    }
    HistoryOut {
        entry,
        old_code_fingerprint,
        new_code_fingerprint,
    }
}

/// The validated filter of a links query, and its page and page size.
pub(crate) fn link_filter(
    s: &AdminState,
    q: &LinksQuery,
) -> Result<(LinkFilter, u64, u64), Invalid> {
    let backend = given(&q.backend).map(|b| backend(s, b)).transpose()?;
    let session_id = given(&q.session).map(session).transpose()?;
    let group_id = given(&q.group)
        .map(|g| group(s, backend.as_deref(), g))
        .transpose()?;
    let page = number("page", &q.page, 1, 1_000_000)?;
    let per_page = number("per_page", &q.per_page, PER_PAGE, MAX_PER_PAGE)?;
    let filter = LinkFilter {
        backend,
        session_id,
        group_id,
    };
    Ok((filter, page, per_page))
}

pub(crate) async fn links_page(
    s: &AdminState,
    caller: &Caller,
    q: &LinksQuery,
) -> Result<LinkPage, Invalid> {
    let (filter, page, per_page) = link_filter(s, q)?;
    let (rows, total) = s
        .store
        .links_page(&filter, (page - 1) * per_page, per_page)
        .await?;
    let links = rows
        .into_iter()
        .map(|r| link_out(caller, links::view(r)))
        .collect();
    Ok(LinkPage {
        links,
        page,
        per_page,
        total,
    })
}

/// The validated key of one group.
pub(crate) fn group_key(
    s: &AdminState,
    backend_name: &str,
    session_id: &str,
    group_id: &str,
) -> Result<GroupKey, Invalid> {
    let backend = backend(s, backend_name)?;
    let group_id = group(s, Some(&backend), group_id)?;
    Ok(GroupKey {
        session_id: session(session_id)?,
        group_id,
        backend,
    })
}

pub(crate) async fn link_detail(
    s: &AdminState,
    caller: &Caller,
    key: &GroupKey,
) -> Result<LinkDetailOut, Invalid> {
    let detail = links::show(&s.store, key).await?;
    Ok(LinkDetailOut {
        link: detail.link.map(|l| link_out(caller, l)),
        history: detail
            .history
            .into_iter()
            .map(|h| history_out(caller, h))
            .collect(),
    })
}

/// One pause as `pause list --json` prints it.
#[derive(Serialize)]
pub(crate) struct PauseView {
    pub backend: String,
    /// A session id, or `*` for every session of the backend.
    pub session_id: String,
    pub reason: Option<String>,
    pub paused_at: String,
}

pub(crate) async fn pauses(s: &AdminState) -> Result<Vec<PauseView>, Invalid> {
    Ok(s.store
        .pauses()
        .await?
        .into_iter()
        .map(|p| PauseView {
            backend: p.backend,
            session_id: p.session_id,
            reason: p.reason,
            paused_at: rfc3339(p.paused_at),
        })
        .collect())
}

/// What the overview shows.
#[derive(Serialize)]
pub(crate) struct Summary {
    /// Commands finished in the last minute, by outcome (`rotated`, `skipped`, `failed`).
    pub commands_per_minute: BTreeMap<String, u64>,
    /// Commands ready in the commands queue; null when the broker cannot be asked.
    pub backlog: Option<u32>,
    /// Messages in the dead-letter queue; null when the broker cannot be asked.
    pub dead_letters: Option<u32>,
    /// Commands waiting in the database (`deferred_commands`).
    pub deferred: u64,
    /// Events and dead letters committed but not yet confirmed by the broker.
    pub outbox_pending: u64,
    pub outbox_oldest: Option<String>,
    pub paused: Vec<PauseView>,
}

/// Messages ready in `queue`, asked with a passive declaration; `None` when the broker or
/// the queue cannot be reached.
async fn queue_len(s: &AdminState, queue: &str) -> Option<u32> {
    let ch = s.broker.channel().await.ok()?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = ch.close(200, "OK".into()).await;
    declared.ok().map(|q| q.message_count())
}

pub(crate) async fn summary(s: &AdminState) -> Result<Summary, Invalid> {
    let since = Utc::now() - chrono::Duration::minutes(1);
    let mut per_minute: BTreeMap<String, u64> = ["rotated", "skipped", "failed"]
        .into_iter()
        .map(|o| (o.to_owned(), 0))
        .collect();
    for (outcome, n) in s.store.outcomes_since(since).await? {
        per_minute.insert(outcome, n);
    }
    let (outbox_pending, oldest) = s.store.outbox_pending().await?;
    let topo = s.broker.topology();
    Ok(Summary {
        commands_per_minute: per_minute,
        backlog: queue_len(s, &topo.commands_queue()).await,
        dead_letters: queue_len(s, &topo.dead_queue()).await,
        deferred: s.store.deferred_count().await?,
        outbox_pending,
        outbox_oldest: oldest.map(rfc3339),
        paused: pauses(s).await?,
    })
}

/// The dead-lettered commands, oldest first; the queue is left as it was.
pub(crate) async fn dead_letters(s: &AdminState) -> Result<Vec<DeadLetter>, Invalid> {
    let _one_at_a_time = s.dead_letters.lock().await;
    Ok(dead_letters::list(&s.settings).await?)
}
