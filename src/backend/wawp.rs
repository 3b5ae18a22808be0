//! The `wawp` backend kind: WAHA-style paths under `/v2`, authenticated by the
//! `instance_id` (the session) and `access_token` query parameters, which are never logged.

use async_trait::async_trait;
use reqwest::Method;

use super::{
    Backend,
    http::{Auth, HttpApi},
    waha,
};
use crate::{
    config::BackendSettings,
    domain::{BackendError, BackendKind, GroupId, Link, SessionId},
};

pub struct Wawp {
    api: HttpApi,
}

impl Wawp {
    pub fn new(settings: &BackendSettings) -> Result<Self, String> {
        Ok(Self {
            api: HttpApi::new(settings, Auth::Query("access_token"), None)?,
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
        self.api.call(request, waha::read_reply).await
    }
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
