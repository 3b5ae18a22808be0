//! The `waha` backend kind: WAHA, the self-hosted WhatsApp HTTP API. `X-Api-Key` auth;
//! the invite code comes back as a bare JSON string (a code or a full link).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;

use super::{
    Backend,
    http::{Auth, BuildError, HttpApi, Reply, classify},
};
use crate::{
    config::HttpProvider,
    domain::{BackendError, BackendKind, ErrorKind, GroupId, Link, SessionId},
};

/// Fields tolerated around the code when the body is an object instead of a string.
pub(super) const CODE_FIELDS: &[&str] = &["code", "inviteCode"];

pub(super) struct Waha {
    api: HttpApi,
}

impl Waha {
    pub(super) fn new(http: &HttpProvider, timeout: Duration) -> Result<Self, BuildError> {
        Ok(Self {
            api: HttpApi::new(http, timeout, Auth::Header("X-Api-Key"), None)?,
        })
    }

    async fn invite_code(
        &self,
        method: Method,
        session: &SessionId,
        group: &GroupId,
        tail: &[&str],
    ) -> Result<Link, BackendError> {
        let path = [
            &[
                "api",
                session.as_str(),
                "groups",
                group.as_str(),
                "invite-code",
            ][..],
            tail,
        ]
        .concat();
        let request = self.api.request(method, &path, &[])?;
        self.api.call(request, read_reply).await
    }
}

/// How an answer of WAHA reads: a bare code or link, or a refusal (wawp's read alike).
pub(super) fn read_reply(reply: &Reply) -> Result<Link, BackendError> {
    reply.interpret(refusal_kind, |r| r.link(CODE_FIELDS))
}

/// WAHA's refusals (shared by wawp): 422 means the session is not working (transient);
/// WhatsApp's refusals arrive as 500 with `exception.message`, which [`classify`] reads.
pub(super) fn refusal_kind(reply: &Reply, text: &str) -> ErrorKind {
    match reply.status {
        422 => ErrorKind::SessionDisconnected,
        status => classify(status, text),
    }
}

#[async_trait]
impl Backend for Waha {
    fn kind(&self) -> BackendKind {
        BackendKind::Waha
    }

    async fn current_link(
        &self,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        self.invite_code(Method::GET, session, group, &[]).await
    }

    async fn reset_link(&self, session: &SessionId, group: &GroupId) -> Result<Link, BackendError> {
        self.invite_code(Method::POST, session, group, &["revoke"])
            .await
    }
}
