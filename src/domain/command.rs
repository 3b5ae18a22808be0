//! Wire format of commands (docs/contract.md §4) and the validated domain types they
//! parse into; nothing downstream of [`parse`] sees raw strings from a message. Also the
//! [`CommandSpec`] a command is published from.

use std::fmt;

use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use super::error::ErrorKind;

/// Largest accepted command body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_ID_CHARS: usize = 128;
const MAX_TEXT_CHARS: usize = 500;
/// The longest backend name: configured names are limited to it (see `config`), so a
/// longer one in a command is never configured, and the store's columns hold it.
pub const MAX_BACKEND_CHARS: usize = 64;

/// Free text as the store can hold it: PostgreSQL text cannot contain NUL (U+0000),
/// so each is replaced by U+FFFD, in the store and in events alike.
pub(crate) fn storable(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// The idempotency key of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CommandId(pub Uuid);

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a command asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandType {
    RevokeInvite,
    RotateExpiringLink,
}

impl CommandType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RevokeInvite => "revoke_invite",
            Self::RotateExpiringLink => "rotate_expiring_link",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "revoke_invite" => Some(Self::RevokeInvite),
            "rotate_expiring_link" => Some(Self::RotateExpiringLink),
            _ => None,
        }
    }

    /// The `trigger` field of events caused by this command type.
    pub fn trigger(self) -> &'static str {
        match self {
            Self::RevokeInvite => "revoke",
            Self::RotateExpiringLink => "expiry",
        }
    }

    pub fn routing_key(self) -> String {
        format!("command.{}", self.as_str())
    }
}

/// Why a session or group id is refused; shown as the rejection's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("session_id must be 1..={} characters", MAX_ID_CHARS)]
    SessionLength,
    #[error("session_id may only contain A-Za-z0-9._:@+-")]
    SessionCharacters,
    #[error("session_id may not be \".\" or \"..\"")]
    SessionDots,
    #[error("group_id must be a group JID like 120363041234567890@g.us")]
    NotAJid,
    #[error("group_id must be at most {} characters", MAX_ID_CHARS * 2)]
    JidLength,
    #[error("group_id must be 1..={} characters of A-Za-z0-9_-", MAX_ID_CHARS)]
    NotAnOpaqueId,
}

/// Provider session / instance / phone-number id: 1..=128 of `A-Za-z0-9._:@+-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:@+-".contains(c);
        if raw.is_empty() || raw.chars().count() > MAX_ID_CHARS {
            return Err(IdError::SessionLength);
        }
        if !raw.chars().all(ok_char) {
            return Err(IdError::SessionCharacters);
        }
        // The two values a URL parser resolves as path navigation: no adapter could send
        // them as a path segment (`...` is an ordinary segment).
        if raw == "." || raw == ".." {
            return Err(IdError::SessionDots);
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which group-id syntax a backend kind accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupIdStyle {
    /// WhatsApp-Web style backends: `<digits>[-<digits>]@g.us`.
    Jid,
    /// Meta Cloud API: opaque `A-Za-z0-9_-`, 1..=128.
    Opaque,
}

/// A group id validated for the style of the backend it is sent to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(String);

impl GroupId {
    pub fn parse(raw: &str, style: GroupIdStyle) -> Result<Self, IdError> {
        match style {
            GroupIdStyle::Jid => {
                let Some(local) = raw.strip_suffix("@g.us") else {
                    return Err(IdError::NotAJid);
                };
                let mut parts = local.splitn(2, '-');
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                if raw.len() > MAX_ID_CHARS * 2 {
                    return Err(IdError::JidLength);
                }
                let first_ok = parts.next().is_some_and(digits);
                let second_ok = parts.next().is_none_or(digits);
                if first_ok && second_ok {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(IdError::NotAJid)
                }
            }
            GroupIdStyle::Opaque => {
                let ok = !raw.is_empty()
                    && raw.len() <= MAX_ID_CHARS
                    && raw
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if ok {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err(IdError::NotAnOpaqueId)
                }
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A command ready to execute: every field validated, the backend resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub id: CommandId,
    pub kind: CommandType,
    pub session: SessionId,
    pub group: GroupId,
    pub backend: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// Why a message could not become a [`Command`], with whatever could still be read
/// from it (for the `invalid_command` failure event).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub kind: ErrorKind,
    pub reason: String,
    pub command_id: Option<CommandId>,
    pub command_type: Option<CommandType>,
    pub session_id: Option<String>,
    pub group_id: Option<String>,
    pub backend: Option<String>,
    pub reason_field: Option<String>,
    pub requested_by: Option<String>,
}

impl Rejection {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::InvalidCommand,
            reason: reason.into(),
            command_id: None,
            command_type: None,
            session_id: None,
            group_id: None,
            backend: None,
            reason_field: None,
            requested_by: None,
        }
    }

    /// Whether enough was read to publish a `rotation_failed` event.
    pub fn is_attributable(&self) -> bool {
        self.command_id.is_some() && self.session_id.is_some() && self.group_id.is_some()
    }
}

/// The JSON body as received. Every field optional so that a missing one becomes a
/// precise rejection rather than a serde error.
#[derive(Deserialize, Default)]
struct WireCommand {
    command_id: Option<serde_json::Value>,
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    session_id: Option<serde_json::Value>,
    group_id: Option<serde_json::Value>,
    backend: Option<serde_json::Value>,
    reason: Option<serde_json::Value>,
    requested_by: Option<serde_json::Value>,
}

fn as_text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().and_then(|v| v.as_str()).map(str::to_owned)
}

/// Resolves a backend name to the group-id style of its kind; `None` when no
/// backend of that name is configured.
pub trait BackendResolver {
    fn default_backend(&self) -> &str;
    fn group_style(&self, backend: &str) -> Option<GroupIdStyle>;
}

/// Parses a message body into a validated [`Command`] or a typed [`Rejection`].
pub fn parse(body: &[u8], backends: &dyn BackendResolver) -> Result<Command, Box<Rejection>> {
    if body.len() > MAX_BODY_BYTES {
        return Err(Box::new(Rejection::new(format!(
            "body of {} bytes exceeds the {MAX_BODY_BYTES} byte limit",
            body.len()
        ))));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Box::new(Rejection::new(format!("body is not JSON: {e}"))))?;
    if !value.is_object() {
        return Err(Box::new(Rejection::new("body is not a JSON object")));
    }
    let wire: WireCommand = serde_json::from_value(value).unwrap_or_default();

    let mut rej = Rejection::new("");
    rej.command_id = as_text(&wire.command_id)
        .and_then(|s| Uuid::parse_str(&s).ok())
        .map(CommandId);
    rej.command_type = as_text(&wire.kind).as_deref().and_then(CommandType::parse);
    // What the failure event can carry: every field that could be read as a string and
    // fits the store, valid or not (an invalid session_id or group_id is reported back
    // as sent).
    rej.session_id = as_text(&wire.session_id)
        .filter(|s| s.chars().count() <= MAX_ID_CHARS)
        .map(storable);
    rej.group_id = as_text(&wire.group_id)
        .filter(|s| s.chars().count() <= MAX_ID_CHARS * 2)
        .map(storable);
    rej.backend = match &wire.backend {
        None | Some(serde_json::Value::Null) => Some(backends.default_backend().to_owned()),
        named => as_text(named)
            .filter(|s| s.chars().count() <= MAX_BACKEND_CHARS)
            .map(storable),
    };
    rej.reason_field = as_text(&wire.reason)
        .filter(|s| s.chars().count() <= MAX_TEXT_CHARS)
        .map(storable);
    rej.requested_by = as_text(&wire.requested_by)
        .filter(|s| s.chars().count() <= MAX_TEXT_CHARS)
        .map(storable);
    let fail = |mut rej: Rejection, reason: String| {
        rej.reason = reason;
        Err(Box::new(rej))
    };

    let Some(id) = rej.command_id else {
        return fail(rej, "command_id is missing or not a UUID".into());
    };
    let Some(kind) = rej.command_type else {
        return fail(
            rej,
            "type must be revoke_invite or rotate_expiring_link".into(),
        );
    };
    let session = match wire.session_id.as_ref().map(|v| v.as_str()) {
        Some(Some(s)) => match SessionId::parse(s) {
            Ok(s) => s,
            Err(e) => return fail(rej, e.to_string()),
        },
        _ => return fail(rej, "session_id is missing or not a string".into()),
    };
    let Some(raw_group) = as_text(&wire.group_id) else {
        return fail(rej, "group_id is missing or not a string".into());
    };
    let backend = match &wire.backend {
        None | Some(serde_json::Value::Null) => backends.default_backend().to_owned(),
        Some(serde_json::Value::String(b)) => b.clone(),
        Some(_) => return fail(rej, "backend must be a string".into()),
    };
    for (name, v) in [
        ("reason", &wire.reason),
        ("requested_by", &wire.requested_by),
    ] {
        match v {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::String(s)) if s.chars().count() <= MAX_TEXT_CHARS => {}
            Some(serde_json::Value::String(_)) => {
                return fail(rej, format!("{name} exceeds {MAX_TEXT_CHARS} characters"));
            }
            Some(_) => return fail(rej, format!("{name} must be a string")),
        }
    }
    let Some(style) = backends.group_style(&backend) else {
        rej.kind = ErrorKind::UnknownBackend;
        rej.backend =
            Some(storable(backend.clone())).filter(|b| b.chars().count() <= MAX_BACKEND_CHARS);
        return fail(rej, format!("backend {backend:?} is not configured"));
    };
    let group = match GroupId::parse(&raw_group, style) {
        Ok(g) => g,
        Err(e) => return fail(rej, e.to_string()),
    };
    Ok(Command {
        id,
        kind,
        session,
        group,
        backend,
        reason: as_text(&wire.reason).map(storable),
        requested_by: as_text(&wire.requested_by).map(storable),
    })
}

/// One command to publish, as given on the command line or in a bulk file.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub kind: CommandType,
    pub session: String,
    pub group: String,
    pub backend: Option<String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub command_id: Option<Uuid>,
}

impl CommandSpec {
    pub fn body(&self, id: Uuid) -> Vec<u8> {
        let mut v = json!({
            "command_id": id.to_string(),
            "type": self.kind.as_str(),
            "session_id": self.session,
            "group_id": self.group,
        });
        for (k, val) in [
            ("backend", &self.backend),
            ("reason", &self.reason),
            ("requested_by", &self.requested_by),
        ] {
            if let Some(val) = val {
                v[k] = json!(val);
            }
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Checks the spec as the worker would parse it: session id, group id in the style
    /// of the backend's kind, and a configured backend.
    pub fn validate(&self, backends: &dyn BackendResolver) -> Result<(), SpecError> {
        SessionId::parse(&self.session).map_err(|e| SpecError::new("session", e.to_string()))?;
        let backend = self
            .backend
            .as_deref()
            .unwrap_or(backends.default_backend());
        let style = backends.group_style(backend).ok_or_else(|| {
            SpecError::new(
                "backend",
                format!("{backend:?} is not a configured backend"),
            )
        })?;
        GroupId::parse(&self.group, style).map_err(|e| SpecError::new("group", e.to_string()))?;
        for (field, text) in [
            ("reason", &self.reason),
            ("requested_by", &self.requested_by),
        ] {
            if text.as_ref().is_some_and(|t| t.chars().count() > 500) {
                return Err(SpecError::new(field, "at most 500 characters"));
            }
        }
        Ok(())
    }
}

/// A field of a [`CommandSpec`] that the worker would reject.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

impl SpecError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;
