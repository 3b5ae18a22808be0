//! The `wasend` backend kind: Bearer auth, either the `invite-link` endpoint family of
//! the docs (the only provider reporting `expiresAt`) or the SDK's older `invite-code` one.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde_json::Value;

use super::{
    Backend,
    http::{Auth, BuildError, HttpApi, Reply, classify, described, invite_code},
};
use crate::{
    config::{HttpProvider, WasendEndpoints},
    domain::{BackendError, BackendKind, ErrorKind, GroupId, Link, SessionId},
};

/// Both families answer with one of these (or, for `invite-code`, a bare string).
const LINK_FIELDS: &[&str] = &["inviteLink", "inviteCode", "code"];

pub(super) struct Wasend {
    api: HttpApi,
    /// The last path segment before `/revoke`: `invite-link` or `invite-code`.
    family: &'static str,
}

impl Wasend {
    /// `endpoints`: the endpoint family (`None`: `invite-link`).
    pub(super) fn new(
        http: &HttpProvider,
        timeout: Duration,
        endpoints: Option<WasendEndpoints>,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            api: HttpApi::new(http, timeout, Auth::Bearer, None)?,
            family: endpoints.unwrap_or(WasendEndpoints::InviteLink).as_str(),
        })
    }

    async fn invite(
        &self,
        method: Method,
        session: &SessionId,
        group: &GroupId,
        tail: &[&str],
    ) -> Result<Link, BackendError> {
        let path = [
            &[session.as_str(), "groups", group.as_str(), self.family][..],
            tail,
        ]
        .concat();
        let request = self.api.request(method, &path, &[])?;
        self.api.call(request, read_reply).await
    }
}

/// How a wasend answer reads: the link and its `expiresAt`, or a refusal.
pub(super) fn read_reply(reply: &Reply) -> Result<Link, BackendError> {
    reply.interpret(refusal_kind, |reply| {
        let body = reply.json_or_code()?;
        Ok(Link {
            code: invite_code(&body, LINK_FIELDS)?,
            expires_at: expires_at(&body),
        })
    })
}

/// The default classification, except that a server error saying the session is
/// disconnected (Wasend's 503) is reported as such; both are transient.
fn refusal_kind(reply: &Reply, text: &str) -> ErrorKind {
    match classify(reply.status, text) {
        ErrorKind::BackendUnavailable
            if (500..=599).contains(&reply.status)
                && described(text) == Some(ErrorKind::SessionDisconnected) =>
        {
            ErrorKind::SessionDisconnected
        }
        kind => kind,
    }
}

/// `expiresAt` as ISO 8601: RFC 3339, or a date and time without an offset (read as
/// UTC); absent or unreadable means no reported expiry (the policy applies, and says so
/// in the event's `expires_at_source`).
fn expires_at(body: &Value) -> Option<DateTime<Utc>> {
    let raw = body.get("expiresAt")?.as_str()?.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(raw) {
        return Some(at.with_timezone(&Utc));
    }
    let naive = chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%dT%H:%M:%S%.f");
    match naive {
        Ok(at) => Some(at.and_utc()),
        Err(_) => {
            tracing::debug!(expires_at = raw, "unreadable expiresAt; the policy applies");
            None
        }
    }
}

#[async_trait]
impl Backend for Wasend {
    fn kind(&self) -> BackendKind {
        BackendKind::Wasend
    }

    async fn current_link(
        &self,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        self.invite(Method::GET, session, group, &[]).await
    }

    async fn reset_link(&self, session: &SessionId, group: &GroupId) -> Result<Link, BackendError> {
        self.invite(Method::POST, session, group, &["revoke"]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_saying_the_session_is_disconnected_is_session_disconnected() {
        let kind = |status, text| refusal_kind(&Reply::from_parts(status, &[], Vec::new()), text);
        assert_eq!(
            kind(503, "session disconnected"),
            ErrorKind::SessionDisconnected
        );
        assert_eq!(kind(503, ""), ErrorKind::BackendUnavailable);
        assert_eq!(
            kind(200, "session is not connected"),
            ErrorKind::SessionDisconnected
        );
    }

    #[test]
    fn expires_at_reads_rfc_3339_and_offsetless_iso_8601_as_utc() {
        let at = |raw: &str| expires_at(&serde_json::json!({ "expiresAt": raw }));
        let want = "2026-11-29T10:00:00Z".parse::<DateTime<Utc>>().ok();
        assert_eq!(at("2026-11-29T10:00:00Z"), want);
        assert_eq!(at("2026-11-29T12:00:00+02:00"), want);
        assert_eq!(at("2026-11-29T10:00:00"), want);
        assert_eq!(at("2026-11-29T10:00:00.000"), want);
        assert_eq!(at("next week"), None);
    }
}
