//! `links list` and `links show`: tracked links and per-group history, as views that
//! print as stable JSON (full values) or as text (see [`super::output`]).

use serde::Serialize;

use crate::{
    domain::{LINK_PREFIX, events::rfc3339},
    store::{GroupKey, Store, StoreError},
};

#[derive(Serialize)]
pub struct LinkView {
    pub backend: String,
    pub session_id: String,
    pub group_id: String,
    pub invite_link: Option<String>,
    pub invite_code: Option<String>,
    pub issued_at: Option<String>,
    pub expires_at: Option<String>,
    pub expires_at_source: Option<String>,
    pub rotation_count: i32,
    pub last_rotated_at: Option<String>,
    pub last_command_id: Option<String>,
}

#[derive(Serialize)]
pub struct HistoryView {
    pub command_id: Option<String>,
    pub command_type: Option<String>,
    pub trigger: Option<String>,
    pub outcome: String,
    pub attempts: i32,
    pub old_code: Option<String>,
    pub new_code: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub started_at: Option<String>,
    pub occurred_at: String,
}

impl From<entity::history::Model> for HistoryView {
    fn from(h: entity::history::Model) -> Self {
        Self {
            command_id: h.command_id,
            command_type: h.command_type,
            trigger: h.trigger,
            outcome: h.outcome,
            attempts: h.attempts,
            old_code: h.old_code,
            new_code: h.new_code,
            error_kind: h.error_kind,
            error_message: h.error_message,
            started_at: h.started_at.map(rfc3339),
            occurred_at: rfc3339(h.occurred_at),
        }
    }
}

#[derive(Serialize)]
pub struct LinkDetail {
    pub link: Option<LinkView>,
    pub history: Vec<HistoryView>,
}

/// A `links` row as the CLI shows it.
pub fn view(l: entity::link::Model) -> LinkView {
    LinkView {
        invite_link: l.invite_code.as_ref().map(|c| format!("{LINK_PREFIX}{c}")),
        invite_code: l.invite_code,
        backend: l.backend,
        session_id: l.session_id,
        group_id: l.group_id,
        issued_at: l.issued_at.map(rfc3339),
        expires_at: l.expires_at.map(rfc3339),
        expires_at_source: l.expires_at_source,
        rotation_count: l.rotation_count,
        last_rotated_at: l.last_rotated_at.map(rfc3339),
        last_command_id: l.last_command_id,
    }
}

pub async fn list(store: &Store) -> Result<Vec<LinkView>, StoreError> {
    Ok(store.links().await?.into_iter().map(view).collect())
}

pub async fn show(store: &Store, key: &GroupKey) -> Result<LinkDetail, StoreError> {
    let link = store.link_get(key).await?.map(view);
    let history = store
        .history(key)
        .await?
        .into_iter()
        .map(HistoryView::from)
        .collect();
    Ok(LinkDetail { link, history })
}
