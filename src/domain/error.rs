//! The contract's error kinds (docs/contract.md §5) and the error a backend operation
//! fails with: its kind decides whether the pipeline retries or fails the command.

use std::{fmt, time::Duration};

use serde::Serialize;

/// The contract's error kinds (docs/contract.md §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, schemars::JsonSchema)]
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

    /// Every kind, in declaration order.
    pub const ALL: [Self; 10] = [
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
    ];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
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

#[cfg(test)]
mod tests {
    use super::*;

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
