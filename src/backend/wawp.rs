//! The `wawp` backend kind: WAHA-style paths under `/v2`, authenticated by the
//! `instance_id` (the session) and `access_token` query parameters, which are never logged.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;

use super::{
    Backend,
    http::{Auth, BuildError, HttpApi, Reply},
    waha,
};
use crate::{
    config::HttpProvider,
    domain::{BackendError, BackendKind, ErrorKind, GroupId, Link, SessionId},
};

pub(super) struct Wawp {
    api: HttpApi,
}

impl Wawp {
    pub(super) fn new(http: &HttpProvider, timeout: Duration) -> Result<Self, BuildError> {
        Ok(Self {
            api: HttpApi::new(http, timeout, Auth::Query("access_token"), None)?,
        })
    }

    async fn invite_code(
        &self,
        method: Method,
        session: &SessionId,
        group: &GroupId,
        tail: &[&str],
    ) -> Result<Link, BackendError> {
        let path = [&["v2", "groups", group.as_str(), "invite-code"][..], tail].concat();
        // The documented URL also repeats the group as `id`; sending it suits both readings.
        let query = [("id", group.as_str()), ("instance_id", session.as_str())];
        let request = self.api.request(method, &path, &query)?;
        self.api.call(request, read_reply).await
    }
}

/// How a wawp answer reads: as WAHA's (see [`waha::read_reply`]).
pub(super) fn read_reply(reply: &Reply) -> Result<Link, BackendError> {
    reply.interpret(refusal_kind, |r| r.link(waha::CODE_FIELDS))
}

/// WAHA's classification, except that a page echoing wawp's request URL names its
/// `instance_id` parameter: not a word about the session.
fn refusal_kind(reply: &Reply, text: &str) -> ErrorKind {
    waha::refusal_kind(reply, &text.replace("instance_id", ""))
}

#[async_trait]
impl Backend for Wawp {
    fn kind(&self) -> BackendKind {
        BackendKind::Wawp
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_404_echoing_the_request_url_is_about_the_group() {
        let reply = Reply::from_parts(404, &[], Vec::new());
        let echo =
            "cannot post /v2/groups/1%40g.us/invite-code?instance_id=x&access_token=[redacted]";
        assert_eq!(refusal_kind(&reply, echo), ErrorKind::GroupNotFound);
        assert_eq!(
            refusal_kind(&reply, "instance not found"),
            ErrorKind::SessionNotFound
        );
    }
}
