//! The provider boundary: every backend kind offers `current_link` (where it can read)
//! and `reset_link`, normalised to [`Link`], with failures classified into the contract's
//! error kinds, each permanent or transient.

mod evolution;
mod gateway;
pub mod http;
mod meta_cloud;
mod simulator;
mod waha;
mod wasend;
mod wawp;

use std::sync::Arc;

use async_trait::async_trait;

use crate::{
    config::{BackendSettings, Provider},
    domain::{BackendError, BackendKind, GroupId, Link, SessionId},
    simulator::SimWorld,
};

/// One configured backend (a provider account, or the in-process simulator).
#[async_trait]
pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// Whether [`Backend::current_link`] is supported.
    fn can_read(&self) -> bool {
        self.kind().can_read()
    }

    /// Reads the group's current link without changing it.
    async fn current_link(
        &self,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError>;

    /// Invalidates the group's current link and returns the new one.
    async fn reset_link(&self, session: &SessionId, group: &GroupId) -> Result<Link, BackendError>;
}

pub type SharedBackend = Arc<dyn Backend>;

/// How `kind`'s adapter reads a provider's answer (to a read or a reset, which every
/// adapter reads alike): the link, or the classified refusal. Sends nothing; this is the
/// function the adapters use, exposed for fuzzing and tests.
pub fn read_reply(kind: BackendKind, reply: &http::Reply) -> Result<Link, BackendError> {
    match kind {
        BackendKind::Wasend => wasend::read_reply(reply),
        BackendKind::Wawp => wawp::read_reply(reply),
        BackendKind::Waha => waha::read_reply(reply),
        BackendKind::Gateway => gateway::read_reply(reply),
        BackendKind::MetaCloud => meta_cloud::read_reply(reply),
        BackendKind::Evolution => evolution::read_reply(reply),
        BackendKind::Simulator => Err(BackendError::protocol(
            "the simulator kind has no HTTP answers",
        )),
    }
}

/// A backend that cannot be built from its settings, named.
#[derive(Debug, thiserror::Error)]
#[error("backends.{name}: {problem}")]
pub struct BackendBuildError {
    pub name: String,
    pub problem: http::BuildError,
}

/// Builds the backend named `name` from its settings. HTTP kinds get one pooled client
/// each; the simulator kind runs against `world`.
pub fn build(
    name: &str,
    settings: &BackendSettings,
    world: &SimWorld,
) -> Result<SharedBackend, BackendBuildError> {
    fn shared<B: Backend + 'static>(
        backend: Result<B, http::BuildError>,
    ) -> Result<SharedBackend, http::BuildError> {
        backend.map(|b| Arc::new(b) as SharedBackend)
    }
    let timeout = settings.timeout;
    let backend = match &settings.provider {
        Provider::Simulator { .. } => {
            Ok(Arc::new(simulator::SimulatorBackend::new(world.clone(), timeout)) as SharedBackend)
        }
        Provider::Wasend { http, endpoints } => {
            shared(wasend::Wasend::new(http, timeout, *endpoints))
        }
        Provider::Wawp(http) => shared(wawp::Wawp::new(http, timeout)),
        Provider::Gateway(http) => shared(gateway::Gateway::new(http, timeout)),
        Provider::MetaCloud { http, api_version } => shared(meta_cloud::MetaCloud::new(
            http,
            timeout,
            api_version.as_deref(),
        )),
        Provider::Waha(http) => shared(waha::Waha::new(http, timeout)),
        Provider::Evolution(http) => shared(evolution::Evolution::new(http, timeout)),
    };
    backend.map_err(|problem| BackendBuildError {
        name: name.to_owned(),
        problem,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::ErrorKind;

    #[test]
    fn read_reply_reads_each_kinds_answers() {
        let ok = [
            (BackendKind::Wasend, r#"{"inviteLink":"AbC123"}"#),
            (BackendKind::Wawp, r#""AbC123""#),
            (BackendKind::Gateway, r#"{"invite":"AbC123"}"#),
            (BackendKind::MetaCloud, r#"{"invite_link":"AbC123"}"#),
            (BackendKind::Waha, r#""https://chat.whatsapp.com/AbC123""#),
            (BackendKind::Evolution, r#"{"inviteCode":"AbC123"}"#),
        ];
        for (kind, body) in ok {
            let reply = http::Reply::from_parts(200, &[], body.into());
            let link = read_reply(kind, &reply).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(link.code.as_str(), "AbC123", "{kind}");
        }
        let limited = http::Reply::from_parts(429, &[("retry-after", b"7")], b"{}".to_vec());
        let e = read_reply(BackendKind::Gateway, &limited).unwrap_err();
        assert_eq!(e.kind, ErrorKind::RateLimited);
        assert_eq!(e.http_status, Some(429));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }
}
