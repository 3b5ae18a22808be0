//! The `evolution` backend kind: Evolution API. `apikey` header auth; the session is the
//! instance in the path and the group JID goes in the `groupJid` query parameter.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;

use super::{
    Backend,
    http::{Auth, BuildError, HttpApi, Reply, classify, first_word, whatsapp_refusal},
};
use crate::{
    config::HttpProvider,
    domain::{BackendError, BackendKind, ErrorKind, GroupId, Link, SessionId},
};

pub(super) struct Evolution {
    api: HttpApi,
}

impl Evolution {
    pub(super) fn new(http: &HttpProvider, timeout: Duration) -> Result<Self, BuildError> {
        Ok(Self {
            api: HttpApi::new(http, timeout, Auth::Header("apikey"), None)?,
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
    reply.interpret(refusal_kind, |r| r.link(&["inviteUrl", "inviteCode"]))
}

/// WhatsApp's words first, then those of Baileys (the library Evolution runs on), which
/// Evolution wraps in a 404 like every refusal: both transient, unlike a 404's usual
/// meaning; then the default classification.
fn refusal_kind(reply: &Reply, text: &str) -> ErrorKind {
    whatsapp_refusal(text)
        .or_else(|| {
            first_word(
                text,
                &[
                    // The session's WhatsApp connection is gone.
                    ("connection closed", ErrorKind::SessionDisconnected),
                    // Baileys' own timeout.
                    ("timed out", ErrorKind::BackendUnavailable),
                ],
            )
        })
        .unwrap_or_else(|| classify(reply.status, text))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baileys_words_win_over_the_404s_usual_meaning() {
        fn kind(text: &str) -> ErrorKind {
            refusal_kind(&Reply::from_parts(404, &[], Vec::new()), text)
        }
        fn wrapped(error: &str) -> String {
            format!("[\"revoke error\", \"{error}\"]")
        }
        assert_eq!(
            kind(&wrapped("error: connection closed")),
            ErrorKind::SessionDisconnected
        );
        assert_eq!(
            kind(&wrapped("error: timed out")),
            ErrorKind::BackendUnavailable
        );
        assert_eq!(kind(&wrapped("error: not-authorized")), ErrorKind::NotAdmin);
        assert_eq!(kind(&wrapped("group not found")), ErrorKind::GroupNotFound);
    }
}
