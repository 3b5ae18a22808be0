//! The `evolution` backend kind: Evolution API. `apikey` header auth; the session is the
//! instance in the path and the group JID goes in the `groupJid` query parameter.

use async_trait::async_trait;
use reqwest::Method;

use super::{
    Backend,
    http::{Auth, HttpApi, Reply, classify_reply},
};
use crate::{
    config::BackendSettings,
    domain::{BackendError, BackendKind, GroupId, Link, SessionId},
};

pub struct Evolution {
    api: HttpApi,
}

impl Evolution {
    pub fn new(settings: &BackendSettings) -> Result<Self, String> {
        Ok(Self {
            api: HttpApi::new(settings, Auth::Header("apikey"), None)?,
        })
    }

    /// Evolution wraps WhatsApp's refusals in 400/404 bodies whose messages the default
    /// classification reads (`not-authorized`, "instance").
    async fn invite(
        &self,
        method: Method,
        action: &str,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        let path = ["group", action, session.as_str()];
        let request = self
            .api
            .request(method, &path, &[("groupJid", group.as_str())])?;
        self.api.call(request, read_reply).await
    }
}

/// How an Evolution answer reads: `inviteUrl` or `inviteCode`, or a refusal.
pub(super) fn read_reply(reply: &Reply) -> Result<Link, BackendError> {
    reply.interpret(classify_reply, |r| r.link(&["inviteUrl", "inviteCode"]))
}

#[async_trait]
impl Backend for Evolution {
    fn kind(&self) -> BackendKind {
        BackendKind::Evolution
    }

    async fn current_link(
        &self,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        self.invite(Method::GET, "inviteCode", session, group).await
    }

    async fn reset_link(&self, session: &SessionId, group: &GroupId) -> Result<Link, BackendError> {
        self.invite(Method::POST, "revokeInviteCode", session, group)
            .await
    }
}
