//! The `gateway` backend kind: the self-hosted "WhatsApp Gateway". Bearer auth; the link
//! is read with GET and reset with DELETE on `/api/v1/sessions/{session}/groups/{gid}/invite`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::Value;

use super::{
    Backend,
    http::{Auth, BuildError, HttpApi, Reply, classify, not_found},
};
use crate::{
    config::HttpProvider,
    domain::{BackendError, BackendKind, ErrorKind, GroupId, Link, SessionId},
};

pub(super) struct Gateway {
    api: HttpApi,
}

impl Gateway {
    pub(super) fn new(http: &HttpProvider, timeout: Duration) -> Result<Self, BuildError> {
        Ok(Self {
            api: HttpApi::new(http, timeout, Auth::Bearer, None)?,
        })
    }

    async fn invite(
        &self,
        method: Method,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        let path = [
            "api",
            "v1",
            "sessions",
            session.as_str(),
            "groups",
            group.as_str(),
            "invite",
        ];
        let request = self.api.request(method, &path, &[])?;
        self.api.call(request, read_reply).await
    }
}

/// How a gateway answer reads: `{"invite": …}`, or a refusal.
pub(super) fn read_reply(reply: &Reply) -> Result<Link, BackendError> {
    reply.interpret(refusal_kind, |r| r.link(&["invite"]))
}

/// By `error.code` where present: `not_implemented` (501) means the session is not
/// connected, a transient state.
fn refusal_kind(reply: &Reply, text: &str) -> ErrorKind {
    let body = reply.json().ok();
    let code = body
        .as_ref()
        .and_then(|b| b.pointer("/error/code"))
        .and_then(Value::as_str);
    match (reply.status, code) {
        (501, _) | (_, Some("not_implemented")) => ErrorKind::SessionDisconnected,
        (_, Some("forbidden")) => ErrorKind::NotAdmin,
        (_, Some("not_found")) => not_found(text),
        (_, Some("unauthorized")) => ErrorKind::Unauthorized,
        (_, Some("validation_error")) => ErrorKind::BackendProtocol,
        (status, _) => classify(status, text),
    }
}

#[async_trait]
impl Backend for Gateway {
    fn kind(&self) -> BackendKind {
        BackendKind::Gateway
    }

    async fn current_link(
        &self,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        self.invite(Method::GET, session, group).await
    }

    async fn reset_link(&self, session: &SessionId, group: &GroupId) -> Result<Link, BackendError> {
        self.invite(Method::DELETE, session, group).await
    }
}
