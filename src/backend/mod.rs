//! The provider boundary: every backend kind offers `current_link` (where it can read)
//! and `reset_link`, normalised to [`Link`], with failures classified into the contract's
//! error kinds, each permanent or transient.

pub mod evolution;
pub mod gateway;
pub mod http;
pub mod meta_cloud;
pub mod simulator;
pub mod waha;
pub mod wasend;
pub mod wawp;

use std::{fmt, sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::command::{GroupId, GroupIdStyle, SessionId};

pub const LINK_PREFIX: &str = "https://chat.whatsapp.com/";

/// The kinds of backend the worker can talk to (`kind` in a backend's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Wasend,
    Wawp,
    Gateway,
    MetaCloud,
    Waha,
    Evolution,
    Simulator,
}

impl BackendKind {
    pub const ALL: [BackendKind; 7] = [
        Self::Wasend,
        Self::Wawp,
        Self::Gateway,
        Self::MetaCloud,
        Self::Waha,
        Self::Evolution,
        Self::Simulator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wasend => "wasend",
            Self::Wawp => "wawp",
            Self::Gateway => "gateway",
            Self::MetaCloud => "meta_cloud",
            Self::Waha => "waha",
            Self::Evolution => "evolution",
            Self::Simulator => "simulator",
        }
    }

    pub fn group_style(self) -> GroupIdStyle {
        match self {
            Self::MetaCloud => GroupIdStyle::Opaque,
            _ => GroupIdStyle::Jid,
        }
    }

    /// Whether the kind can read the current link without changing it.
    pub fn can_read(self) -> bool {
        !matches!(self, Self::MetaCloud)
    }

    /// Default `rate_limit_per_session` in requests per second.
    pub fn default_rate_per_second(self) -> f64 {
        match self {
            Self::Simulator => 1000.0,
            Self::MetaCloud => 10.0,
            _ => 5.0,
        }
    }

    pub fn needs_token(self) -> bool {
        !matches!(self, Self::Simulator)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated invite code: a non-empty run of `A-Za-z0-9`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct InviteCode(String);

impl InviteCode {
    /// Accepts a bare code or a full `https://chat.whatsapp.com/<code>` link.
    pub fn parse(raw: &str) -> Result<Self, BackendError> {
        let raw = raw.trim();
        let code = raw.strip_prefix(LINK_PREFIX).unwrap_or(raw);
        if !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(Self(code.to_owned()))
        } else {
            Err(BackendError::protocol(format!(
                "not a WhatsApp invite link or code: {:?}",
                fingerprint_raw(raw)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn url(&self) -> String {
        format!("{LINK_PREFIX}{}", self.0)
    }

    /// A short, non-reversible label safe for info-level logs and text output.
    pub fn fingerprint(&self) -> String {
        fingerprint_code(&self.0)
    }
}

/// `AbCd…` style shortening used in logs and text output.
pub fn fingerprint_code(code: &str) -> String {
    let head: String = code.chars().take(4).collect();
    format!("{head}…")
}

fn fingerprint_raw(raw: &str) -> String {
    let head: String = raw.chars().take(12).collect();
    if raw.chars().count() > 12 {
        format!("{head}…")
    } else {
        head
    }
}

/// A normalised invite link as returned by a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub code: InviteCode,
    /// Only wasend reports an expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The contract's error kinds (docs/contract.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidCommand,
    UnknownBackend,
    Unauthorized,
    NotAdmin,
    GroupNotFound,
    SessionNotFound,
    SessionDisconnected,
    RateLimited,
    BackendUnavailable,
    BackendProtocol,
}

impl ErrorKind {
    /// Transient kinds are retried with backoff; all others end the command at once.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::SessionDisconnected | Self::RateLimited | Self::BackendUnavailable
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidCommand => "invalid_command",
            Self::UnknownBackend => "unknown_backend",
            Self::Unauthorized => "unauthorized",
            Self::NotAdmin => "not_admin",
            Self::GroupNotFound => "group_not_found",
            Self::SessionNotFound => "session_not_found",
            Self::SessionDisconnected => "session_disconnected",
            Self::RateLimited => "rate_limited",
            Self::BackendUnavailable => "backend_unavailable",
            Self::BackendProtocol => "backend_protocol",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::InvalidCommand,
            Self::UnknownBackend,
            Self::Unauthorized,
            Self::NotAdmin,
            Self::GroupNotFound,
            Self::SessionNotFound,
            Self::SessionDisconnected,
            Self::RateLimited,
            Self::BackendUnavailable,
            Self::BackendProtocol,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed backend operation. The kind decides what the pipeline does next.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct BackendError {
    pub kind: ErrorKind,
    /// Human-readable cause; never contains tokens.
    pub message: String,
    pub http_status: Option<u16>,
    /// From a `Retry-After` header, when the provider sent one.
    pub retry_after: Option<Duration>,
}

impl BackendError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            http_status: None,
            retry_after: None,
        }
    }

    pub fn protocol(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BackendProtocol, message)
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.http_status = Some(status);
        self
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

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
        BackendKind::Wawp | BackendKind::Waha => waha::read_reply(reply),
        BackendKind::Gateway => gateway::read_reply(reply),
        BackendKind::MetaCloud => meta_cloud::read_reply(reply),
        BackendKind::Evolution => evolution::read_reply(reply),
        BackendKind::Simulator => Err(BackendError::protocol(
            "the simulator kind has no HTTP answers",
        )),
    }
}

/// Builds the backend named `name` from its settings. HTTP kinds get one pooled client
/// each; the simulator kind runs against `world`.
pub fn build(
    name: &str,
    settings: &crate::config::BackendSettings,
    world: &crate::simulator::SimWorld,
) -> Result<SharedBackend, String> {
    fn shared<B: Backend + 'static>(backend: Result<B, String>) -> Result<SharedBackend, String> {
        backend.map(|b| Arc::new(b) as SharedBackend)
    }
    let backend = match settings.kind {
        BackendKind::Simulator => Ok(Arc::new(simulator::SimulatorBackend::new(
            world.clone(),
            settings.timeout,
        )) as SharedBackend),
        BackendKind::Wasend => shared(wasend::Wasend::new(settings)),
        BackendKind::Wawp => shared(wawp::Wawp::new(settings)),
        BackendKind::Gateway => shared(gateway::Gateway::new(settings)),
        BackendKind::MetaCloud => shared(meta_cloud::MetaCloud::new(settings)),
        BackendKind::Waha => shared(waha::Waha::new(settings)),
        BackendKind::Evolution => shared(evolution::Evolution::new(settings)),
    };
    backend.map_err(|e| format!("backends.{name}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_code_accepts_code_or_link() {
        assert_eq!(InviteCode::parse("AbC123").unwrap().as_str(), "AbC123");
        let c = InviteCode::parse("https://chat.whatsapp.com/AbC123").unwrap();
        assert_eq!(c.url(), "https://chat.whatsapp.com/AbC123");
    }

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

    #[test]
    fn invite_code_rejects_other_links() {
        for bad in [
            "",
            "https://evil.example/AbC",
            "Ab C",
            "https://chat.whatsapp.com/",
            "abc/def",
        ] {
            assert_eq!(
                InviteCode::parse(bad).unwrap_err().kind,
                ErrorKind::BackendProtocol,
                "{bad}"
            );
        }
    }

    #[test]
    fn transient_kinds_are_exactly_the_contracts() {
        let transient: Vec<_> = [
            ErrorKind::InvalidCommand,
            ErrorKind::UnknownBackend,
            ErrorKind::Unauthorized,
            ErrorKind::NotAdmin,
            ErrorKind::GroupNotFound,
            ErrorKind::SessionNotFound,
            ErrorKind::SessionDisconnected,
            ErrorKind::RateLimited,
            ErrorKind::BackendUnavailable,
            ErrorKind::BackendProtocol,
        ]
        .into_iter()
        .filter(|k| k.is_transient())
        .collect();
        assert_eq!(
            transient,
            [
                ErrorKind::SessionDisconnected,
                ErrorKind::RateLimited,
                ErrorKind::BackendUnavailable
            ]
        );
    }
}
