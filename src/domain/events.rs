//! Event bodies (docs/contract.md §5) and the outbox messages that carry them, including
//! dead-letter copies of commands.

use chrono::{DateTime, SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use uuid::Uuid;

use super::{BackendError, CommandType, ErrorKind, Link};

pub const SCHEMA_VERSION: u32 = 1;
pub const ROTATED: &str = "invite_link.rotated";
pub const ROTATION_FAILED: &str = "invite_link.rotation_failed";
/// Header on dead-lettered commands carrying the short reason.
pub const ERROR_HEADER: &str = "x-invite-error";

/// A message to publish once its transaction commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxMessage {
    pub exchange: String,
    pub routing_key: String,
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    pub correlation_id: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl OutboxMessage {
    /// The message with these headers added (an event's trace context, say).
    pub fn with_headers(mut self, headers: &[(String, String)]) -> Self {
        self.headers.extend_from_slice(headers);
        self
    }
}

/// Who and what an event is about: the part shared by both event types.
#[derive(Clone, Debug)]
pub struct Subject {
    pub command_id: Option<String>,
    /// `None` for an invalid command whose type could not be read (and then no trigger).
    pub command_type: Option<CommandType>,
    pub backend: Option<String>,
    pub session_id: Option<String>,
    pub group_id: Option<String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// Why a link was rotated: `revoke` for a `revoke_invite` command, `expiry` for a
/// `rotate_expiring_link` one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Revoke,
    Expiry,
}

impl From<CommandType> for Trigger {
    fn from(kind: CommandType) -> Self {
        match kind {
            CommandType::RevokeInvite => Self::Revoke,
            CommandType::RotateExpiringLink => Self::Expiry,
        }
    }
}

// The structs below are serialised as the events' bodies and give their JSON Schemas
// (`super::schema`): their doc comments become the schemas' descriptions.

/// The envelope both event types share (docs/contract.md §5). Every field is always
/// present, null where the contract says so.
#[derive(Serialize, JsonSchema)]
pub(super) struct Envelope<'a, B: Serialize> {
    /// Unique per event and stable across redeliveries: deduplicate by it.
    #[schemars(with = "Uuid")]
    event_id: String,
    /// The routing key of the event.
    #[schemars(with = "String")]
    event_type: &'static str,
    /// Bumped by a breaking change only.
    #[schemars(extend("const" = SCHEMA_VERSION))]
    schema_version: u32,
    /// When the outcome was decided, RFC 3339 UTC to the second.
    #[schemars(with = "DateTime<Utc>")]
    occurred_at: String,
    /// The command this event reports on.
    #[schemars(with = "Uuid")]
    command_id: &'a Option<String>,
    /// Null for an invalid command whose type could not be read.
    command_type: Option<CommandType>,
    /// `revoke` for `revoke_invite`, `expiry` for `rotate_expiring_link`; null when the
    /// command type is.
    trigger: Option<Trigger>,
    /// The configured backend name; null when an invalid command's does not fit.
    #[schemars(length(min = 1, max = 64))]
    backend: &'a Option<String>,
    /// Null when an invalid command's does not fit.
    #[schemars(length(min = 1, max = 128))]
    session_id: &'a Option<String>,
    /// Null when an invalid command's does not fit.
    #[schemars(length(min = 1, max = 256))]
    group_id: &'a Option<String>,
    /// Tries of the reset call, from 1; 0 when no reset was tried.
    #[schemars(range(min = 0))]
    attempts: i32,
    /// As the command gave it; null when it gave none.
    #[schemars(length(max = 500))]
    reason: &'a Option<String>,
    /// As the command gave it; null when it gave none.
    #[schemars(length(max = 500))]
    requested_by: &'a Option<String>,
    #[serde(flatten)]
    body: B,
}

/// What `invite_link.rotated` adds to the envelope.
#[derive(Serialize, JsonSchema)]
pub(super) struct RotatedBody {
    /// The new link, `https://chat.whatsapp.com/<invite_code>`.
    #[schemars(pattern(LINK_PATTERN))]
    invite_link: String,
    /// The new code.
    #[schemars(pattern(CODE_PATTERN))]
    invite_code: String,
    /// The code replaced; null when unknown (a meta_cloud group not tracked before).
    #[schemars(pattern(CODE_PATTERN))]
    previous_invite_code: Option<String>,
    /// When the new link is taken to expire, RFC 3339 UTC to the second.
    #[schemars(with = "DateTime<Utc>")]
    expires_at: String,
    expires_at_source: ExpirySource,
}

/// What `invite_link.rotation_failed` adds to the envelope.
#[derive(Serialize, JsonSchema)]
pub(super) struct FailedBody<'a> {
    error: ErrorBody<'a>,
}

/// Why the command failed.
#[derive(Serialize, JsonSchema)]
struct ErrorBody<'a> {
    kind: ErrorKind,
    /// A human-readable cause; never contains a token.
    message: &'a str,
    /// The provider's HTTP status; null when no HTTP answer was involved.
    #[schemars(range(min = 100, max = 599))]
    http_status: Option<u16>,
}

/// An invite code as events carry it.
pub(super) const CODE_PATTERN: &str = "^[A-Za-z0-9]+$";
/// An invite link as events carry it.
pub(super) const LINK_PATTERN: &str = "^https://chat\\.whatsapp\\.com/[A-Za-z0-9]+$";

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn event<B: Serialize>(
    exchange: &str,
    event_type: &'static str,
    subject: &Subject,
    attempts: i32,
    occurred_at: DateTime<Utc>,
    body: B,
) -> OutboxMessage {
    let event_id = Uuid::new_v4().to_string();
    let envelope = Envelope {
        event_id: event_id.clone(),
        event_type,
        schema_version: SCHEMA_VERSION,
        occurred_at: rfc3339(occurred_at),
        command_id: &subject.command_id,
        command_type: subject.command_type,
        trigger: subject.command_type.map(Trigger::from),
        backend: &subject.backend,
        session_id: &subject.session_id,
        group_id: &subject.group_id,
        attempts,
        reason: &subject.reason,
        requested_by: &subject.requested_by,
        body,
    };
    OutboxMessage {
        exchange: exchange.to_owned(),
        routing_key: event_type.to_owned(),
        message_id: Some(event_id),
        message_type: Some(event_type.to_owned()),
        correlation_id: subject.command_id.clone(),
        headers: Vec::new(),
        payload: serde_json::to_vec(&envelope).unwrap_or_default(),
    }
}

/// Where the reported expiry came from: `backend` when the provider reported it (only
/// wasend does), `policy` for issue time + `rotation.link_ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpirySource {
    Backend,
    Policy,
}

impl ExpirySource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backend => "backend",
            Self::Policy => "policy",
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn rotated(
    exchange: &str,
    subject: &Subject,
    attempts: i32,
    link: &Link,
    previous_code: Option<&str>,
    expires_at: DateTime<Utc>,
    source: ExpirySource,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let body = RotatedBody {
        invite_link: link.code.url(),
        invite_code: link.code.as_str().to_owned(),
        previous_invite_code: previous_code.map(str::to_owned),
        expires_at: rfc3339(expires_at),
        expires_at_source: source,
    };
    event(exchange, ROTATED, subject, attempts, now, body)
}

pub fn rotation_failed(
    exchange: &str,
    subject: &Subject,
    attempts: i32,
    error: &BackendError,
    now: DateTime<Utc>,
) -> OutboxMessage {
    let body = FailedBody {
        error: ErrorBody {
            kind: error.kind,
            message: &error.message,
            http_status: error.http_status,
        },
    };
    event(exchange, ROTATION_FAILED, subject, attempts, now, body)
}

/// A copy of a command body for the dead-letter queue, with its reason in a header.
/// `origin`: what the command arrived with that the copy keeps (see [`origin_headers`]).
pub fn dead_letter(
    queue: &str,
    body: &[u8],
    reason: &str,
    command_id: Option<String>,
    origin: &[(String, String)],
) -> OutboxMessage {
    let short: String = reason.chars().take(240).collect();
    let mut headers: Vec<(String, String)> = origin
        .iter()
        .filter(|(name, _)| name != ERROR_HEADER)
        .cloned()
        .collect();
    headers.push((ERROR_HEADER.to_owned(), short));
    OutboxMessage {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        message_id: command_id.clone(),
        message_type: None,
        correlation_id: command_id,
        headers,
        payload: body.to_vec(),
    }
}

/// The header of a parked or dead-lettered copy naming the routing key the command was
/// first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-original-routing-key";

/// The headers a parked or dead-lettered copy of a command keeps from its delivery: every
/// header with a text value (an upstream's trace id, say; RabbitMQ's structured `x-death`
/// is left out), and [`ORIGINAL_ROUTING_KEY_HEADER`] set to `routing_key` unless the
/// delivery already carries it (a copy that came back through an old delay queue).
pub fn origin_headers(
    text_headers: Vec<(String, String)>,
    routing_key: &str,
) -> Vec<(String, String)> {
    let mut out = text_headers;
    if !out
        .iter()
        .any(|(name, _)| name == ORIGINAL_ROUTING_KEY_HEADER)
    {
        out.push((
            ORIGINAL_ROUTING_KEY_HEADER.to_owned(),
            routing_key.to_owned(),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::InviteCode;

    fn subject() -> Subject {
        Subject {
            command_id: Some("c1".into()),
            command_type: Some(CommandType::RevokeInvite),
            backend: Some("sim".into()),
            session_id: Some("s".into()),
            group_id: Some("1@g.us".into()),
            reason: None,
            requested_by: Some("me".into()),
        }
    }

    #[test]
    fn rotated_event_has_contract_fields() {
        let link = Link {
            code: InviteCode::parse("AbC").unwrap(),
            expires_at: None,
        };
        let now = Utc::now();
        let m = rotated(
            "ex",
            &subject(),
            2,
            &link,
            Some("Old"),
            now,
            ExpirySource::Policy,
            now,
        );
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["event_type"], ROTATED);
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["invite_link"], "https://chat.whatsapp.com/AbC");
        assert_eq!(v["previous_invite_code"], "Old");
        assert_eq!(v["expires_at_source"], "policy");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["event_id"].as_str(), m.message_id.as_deref());
        assert_eq!(m.correlation_id.as_deref(), Some("c1"));
        assert_eq!(m.routing_key, ROTATED);
    }

    #[test]
    fn failed_event_carries_error() {
        let e = BackendError::new(ErrorKind::NotAdmin, "nope").with_status(403);
        let m = rotation_failed("ex", &subject(), 1, &e, Utc::now());
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(v["error"]["kind"], "not_admin");
        assert_eq!(v["error"]["http_status"], 403);
        assert!(v.get("invite_link").is_none());
    }
}
