//! The `meta_cloud` backend kind: the WhatsApp Business Cloud API (Graph API). It can
//! only reset a link (POST `/{version}/{group_id}/invite_link`), not read the current one.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};

use super::{
    Backend,
    http::{Auth, BuildError, HttpApi, Reply, classify},
};
use crate::{
    config::HttpProvider,
    domain::{BackendError, BackendKind, ErrorKind, GroupId, Link, SessionId},
};

pub(super) const DEFAULT_BASE_URL: &str = "https://graph.facebook.com";
pub(super) const DEFAULT_API_VERSION: &str = "v23.0";

pub(super) struct MetaCloud {
    api: HttpApi,
    version: String,
}

impl MetaCloud {
    /// `api_version`: the Graph API version (`None`: [`DEFAULT_API_VERSION`]).
    pub(super) fn new(
        http: &HttpProvider,
        timeout: Duration,
        api_version: Option<&str>,
    ) -> Result<Self, BuildError> {
        Ok(Self {
            api: HttpApi::new(http, timeout, Auth::Bearer, Some(DEFAULT_BASE_URL))?,
            version: api_version.unwrap_or(DEFAULT_API_VERSION).to_owned(),
        })
    }
}

/// How a Graph answer reads: `{"invite_link": …}`, or a refusal.
pub(super) fn read_reply(reply: &Reply) -> Result<Link, BackendError> {
    reply.interpret(refusal_kind, |r| r.link(&["invite_link"]))
}

/// By the Graph error `code`: throttling (4, 80007, 130429), invalid token (190),
/// permission (10, 200–299), unknown object (100 with a 404 or "does not exist").
fn refusal_kind(reply: &Reply, text: &str) -> ErrorKind {
    let body = reply.json().ok();
    let code = body
        .as_ref()
        .and_then(|b| b.pointer("/error/code"))
        .and_then(Value::as_i64);
    match code {
        Some(4 | 80007 | 130429) => ErrorKind::RateLimited,
        Some(190) => ErrorKind::Unauthorized,
        Some(10 | 200..=299) => ErrorKind::NotAdmin,
        Some(100) if reply.status == 404 || text.contains("does not exist") => {
            ErrorKind::GroupNotFound
        }
        _ => classify(reply.status, text),
    }
}

#[async_trait]
impl Backend for MetaCloud {
    fn kind(&self) -> BackendKind {
        BackendKind::MetaCloud
    }

    /// The Cloud API has no read endpoint for the current link.
    async fn current_link(
        &self,
        _session: &SessionId,
        _group: &GroupId,
    ) -> Result<Link, BackendError> {
        Err(BackendError::protocol(
            "meta_cloud cannot read the current invite link; it can only reset it",
        ))
    }

    /// The session (the business phone-number id) does not appear in the path.
    async fn reset_link(
        &self,
        _session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        let path = [self.version.as_str(), group.as_str(), "invite_link"];
        let request = self
            .api
            .request(Method::POST, &path, &[])?
            .json(&json!({"messaging_product": "whatsapp"}));
        self.api.call(request, read_reply).await
    }
}
