//! Invite links as the contract speaks of them: a validated invite code, the link a
//! backend returns (with its expiry when the provider reports one), and the shortened
//! form shown in logs and text output.

use chrono::{DateTime, Utc};

use super::error::BackendError;

pub const LINK_PREFIX: &str = "https://chat.whatsapp.com/";

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ErrorKind;

    #[test]
    fn invite_code_accepts_code_or_link() {
        assert_eq!(InviteCode::parse("AbC123").unwrap().as_str(), "AbC123");
        let c = InviteCode::parse("https://chat.whatsapp.com/AbC123").unwrap();
        assert_eq!(c.url(), "https://chat.whatsapp.com/AbC123");
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
}
