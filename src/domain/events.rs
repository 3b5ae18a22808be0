//! Event bodies (docs/contract.md §5) and the outbox messages that carry them, including
//! dead-letter copies of commands.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{BackendError, ErrorKind, Link};

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

/// Who and what an event is about: the part shared by both event types.
#[derive(Clone, Debug, Serialize)]
pub struct Subject {
    pub command_id: Option<String>,
    pub command_type: Option<String>,
    pub trigger: Option<String>,
    pub backend: Option<String>,
    pub session_id: Option<String>,
    pub group_id: Option<String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a, B: Serialize> {
    event_id: String,
    event_type: &'static str,
    schema_version: u32,
    occurred_at: String,
    command_id: &'a Option<String>,
    command_type: &'a Option<String>,
    trigger: &'a Option<String>,
    backend: &'a Option<String>,
    session_id: &'a Option<String>,
    group_id: &'a Option<String>,
    attempts: i32,
    reason: &'a Option<String>,
    requested_by: &'a Option<String>,
    #[serde(flatten)]
    body: B,
}

#[derive(Serialize)]
struct RotatedBody {
    invite_link: String,
    invite_code: String,
    previous_invite_code: Option<String>,
    expires_at: String,
    expires_at_source: &'static str,
}

#[derive(Serialize)]
struct FailedBody<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    kind: ErrorKind,
    message: &'a str,
    http_status: Option<u16>,
}

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
        command_type: &subject.command_type,
        trigger: &subject.trigger,
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

/// Where the reported expiry came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
        expires_at_source: source.as_str(),
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
            command_type: Some("revoke_invite".into()),
            trigger: Some("revoke".into()),
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
