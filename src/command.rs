//! Wire format of commands (docs/contract.md §4) and the validated domain types they parse into.
//! Nothing downstream of [`parse`] sees raw strings from a message.

use std::fmt;

use serde::Deserialize;
use uuid::Uuid;

use crate::backend::ErrorKind;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
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

/// Provider session / instance / phone-number id: 1..=128 of `A-Za-z0-9._:@+-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "._:@+-".contains(c);
        if raw.is_empty() || raw.chars().count() > MAX_ID_CHARS {
            return Err(format!("session_id must be 1..={MAX_ID_CHARS} characters"));
        }
        if !raw.chars().all(ok_char) {
            return Err("session_id may only contain A-Za-z0-9._:@+-".into());
        }
        // The two values a URL parser resolves as path navigation: no adapter could send
        // them as a path segment (`...` is an ordinary segment).
        if raw == "." || raw == ".." {
            return Err("session_id may not be \".\" or \"..\"".into());
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
    pub fn parse(raw: &str, style: GroupIdStyle) -> Result<Self, String> {
        match style {
            GroupIdStyle::Jid => {
                let Some(local) = raw.strip_suffix("@g.us") else {
                    return Err("group_id must be a group JID like 120363041234567890@g.us".into());
                };
                let mut parts = local.splitn(2, '-');
                let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
                if raw.len() > MAX_ID_CHARS * 2 {
                    return Err(format!(
                        "group_id must be at most {} characters",
                        MAX_ID_CHARS * 2
                    ));
                }
                let first_ok = parts.next().is_some_and(digits);
                let second_ok = parts.next().is_none_or(digits);
                if first_ok && second_ok {
                    Ok(Self(raw.to_owned()))
                } else {
                    Err("group_id must be a group JID like 120363041234567890@g.us".into())
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
                    Err(format!(
                        "group_id must be 1..={MAX_ID_CHARS} characters of A-Za-z0-9_-"
                    ))
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
            Err(e) => return fail(rej, e),
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
        Err(e) => return fail(rej, e),
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

#[cfg(test)]
mod tests {
    use super::*;

    struct OneBackend;
    impl BackendResolver for OneBackend {
        fn default_backend(&self) -> &str {
            "sim"
        }
        fn group_style(&self, backend: &str) -> Option<GroupIdStyle> {
            match backend {
                "sim" => Some(GroupIdStyle::Jid),
                "meta" => Some(GroupIdStyle::Opaque),
                _ => None,
            }
        }
    }

    fn body(v: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&v).unwrap()
    }

    fn valid() -> serde_json::Value {
        serde_json::json!({
            "command_id": "0b6f4f8e-6d8a-4a56-9d7c-2f0c1c7f9a10",
            "type": "revoke_invite",
            "session_id": "sales-team",
            "group_id": "120363041234567890@g.us",
            "reason": "leaked",
            "extra": 1
        })
    }

    #[test]
    fn valid_command_parses_with_default_backend() {
        let cmd = parse(&body(valid()), &OneBackend).unwrap();
        assert_eq!(cmd.backend, "sim");
        assert_eq!(cmd.kind, CommandType::RevokeInvite);
        assert_eq!(cmd.group.as_str(), "120363041234567890@g.us");
        assert_eq!(cmd.reason.as_deref(), Some("leaked"));
    }

    #[test]
    fn bad_group_is_rejected_but_attributable() {
        let mut v = valid();
        v["group_id"] = "../../etc".into();
        let rej = parse(&body(v), &OneBackend).unwrap_err();
        assert_eq!(rej.kind, ErrorKind::InvalidCommand);
        assert!(rej.is_attributable());
        assert!(rej.reason.contains("group_id"));
        assert_eq!(rej.backend.as_deref(), Some("sim"), "the default backend");
    }

    #[test]
    fn unknown_backend_is_its_own_kind() {
        let mut v = valid();
        v["backend"] = "nope".into();
        assert_eq!(
            parse(&body(v), &OneBackend).unwrap_err().kind,
            ErrorKind::UnknownBackend
        );
    }

    #[test]
    fn a_bad_session_is_reported_back_as_sent_when_it_fits_the_store() {
        for bad in ["a b", "a/b", "", "sé"] {
            let mut v = valid();
            v["session_id"] = bad.into();
            let rej = parse(&body(v), &OneBackend).unwrap_err();
            assert_eq!(rej.kind, ErrorKind::InvalidCommand);
            assert_eq!(rej.session_id.as_deref(), Some(bad));
            assert!(rej.is_attributable(), "{bad:?}");
        }
        let mut v = valid();
        v["session_id"] = "a".repeat(129).into();
        let rej = parse(&body(v), &OneBackend).unwrap_err();
        assert_eq!(rej.session_id, None, "longer than the store's column");
    }

    #[test]
    fn an_unknown_backend_is_named_only_when_it_fits_the_store() {
        let mut v = valid();
        v["backend"] = "b".repeat(MAX_BACKEND_CHARS).into();
        let rej = parse(&body(v.clone()), &OneBackend).unwrap_err();
        assert_eq!(rej.kind, ErrorKind::UnknownBackend);
        assert_eq!(
            rej.backend.as_deref().map(str::len),
            Some(MAX_BACKEND_CHARS)
        );
        v["backend"] = "b".repeat(MAX_BACKEND_CHARS + 1).into();
        let rej = parse(&body(v), &OneBackend).unwrap_err();
        assert_eq!(rej.kind, ErrorKind::UnknownBackend);
        assert_eq!(rej.backend, None);
        assert!(rej.is_attributable());
    }

    #[test]
    fn nul_characters_in_free_text_become_replacement_characters() {
        let mut v = valid();
        v["reason"] = "a\u{0}b".into();
        v["requested_by"] = "\u{0}".into();
        let cmd = parse(&body(v.clone()), &OneBackend).unwrap();
        assert_eq!(cmd.reason.as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(cmd.requested_by.as_deref(), Some("\u{FFFD}"));
        v["group_id"] = "1\u{0}@g.us".into();
        let rej = parse(&body(v), &OneBackend).unwrap_err();
        assert_eq!(rej.group_id.as_deref(), Some("1\u{FFFD}@g.us"));
        assert_eq!(rej.reason_field.as_deref(), Some("a\u{FFFD}b"));
    }

    #[test]
    fn long_jids_are_accepted_up_to_the_store_limit() {
        let jid = format!("{}@g.us", "1".repeat(100));
        assert!(GroupId::parse(&jid, GroupIdStyle::Jid).is_ok());
        let jid = format!("{}@g.us", "1".repeat(MAX_ID_CHARS * 2));
        assert!(GroupId::parse(&jid, GroupIdStyle::Jid).is_err());
    }

    #[test]
    fn meta_backend_takes_opaque_group_ids() {
        let mut v = valid();
        v["backend"] = "meta".into();
        v["group_id"] = "Abc_123-x".into();
        assert!(parse(&body(v), &OneBackend).is_ok());
    }

    #[test]
    fn garbage_and_non_objects_are_rejected() {
        for raw in [&b"\xff\xfe"[..], b"[1,2]", b"\"x\"", b"null", b""] {
            let rej = parse(raw, &OneBackend).unwrap_err();
            assert!(!rej.is_attributable(), "{raw:?}");
        }
    }

    #[test]
    fn oversized_body_is_rejected() {
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert!(
            parse(&big, &OneBackend)
                .unwrap_err()
                .reason
                .contains("exceeds")
        );
    }

    #[test]
    fn session_charset_is_enforced() {
        assert!(SessionId::parse("a/b").is_err());
        assert!(SessionId::parse("a?b").is_err());
        assert!(SessionId::parse("").is_err());
        assert!(SessionId::parse(&"a".repeat(129)).is_err());
        assert!(SessionId::parse("team-1_x:y@z+w.").is_ok());
        assert!(SessionId::parse("..").is_err());
        assert!(SessionId::parse(".").is_err());
        assert!(SessionId::parse("...").is_ok());
    }

    #[test]
    fn jid_with_suffix_part_is_accepted() {
        assert!(GroupId::parse("1234-5678@g.us", GroupIdStyle::Jid).is_ok());
        assert!(GroupId::parse("1234-@g.us", GroupIdStyle::Jid).is_err());
        assert!(GroupId::parse("12%34@g.us", GroupIdStyle::Jid).is_err());
    }

    #[test]
    fn deeply_nested_json_is_a_rejection_not_a_stack_overflow() {
        let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
        assert!(parse(deep.as_bytes(), &OneBackend).is_err());
        let deep = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        assert!(parse(deep.as_bytes(), &OneBackend).is_err());
    }

    /// Property tests: hostile bodies never panic and always give either a command whose
    /// every field passes validation again, or a typed rejection.
    mod props {
        use proptest::prelude::*;
        use serde_json::Value;

        use super::*;

        const FIELDS: [&str; 8] = [
            "command_id",
            "type",
            "session_id",
            "group_id",
            "backend",
            "reason",
            "requested_by",
            "extra",
        ];

        fn check(body: &[u8]) -> Result<(), TestCaseError> {
            match parse(body, &OneBackend) {
                Ok(cmd) => {
                    prop_assert!(SessionId::parse(cmd.session.as_str()).is_ok());
                    let style = OneBackend.group_style(&cmd.backend);
                    prop_assert!(style.is_some(), "unknown backend {}", cmd.backend);
                    if let Some(style) = style {
                        prop_assert!(GroupId::parse(cmd.group.as_str(), style).is_ok());
                    }
                    for text in [&cmd.reason, &cmd.requested_by].into_iter().flatten() {
                        prop_assert!(text.chars().count() <= MAX_TEXT_CHARS);
                        prop_assert!(!text.contains('\0'));
                    }
                }
                Err(rej) => {
                    prop_assert!(matches!(
                        rej.kind,
                        ErrorKind::InvalidCommand | ErrorKind::UnknownBackend
                    ));
                    prop_assert!(!rej.reason.is_empty());
                    // What the failure event and the store get fits the store's columns.
                    let fits = |v: &Option<String>, max: usize| {
                        v.as_deref()
                            .is_none_or(|s| s.chars().count() <= max && !s.contains('\0'))
                    };
                    prop_assert!(fits(&rej.session_id, MAX_ID_CHARS));
                    prop_assert!(fits(&rej.group_id, MAX_ID_CHARS * 2));
                    prop_assert!(fits(&rej.backend, MAX_BACKEND_CHARS));
                    prop_assert!(fits(&rej.reason_field, MAX_TEXT_CHARS));
                    prop_assert!(fits(&rej.requested_by, MAX_TEXT_CHARS));
                }
            }
            Ok(())
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,40}".prop_map(Value::from),
                "[0-9]{1,20}(-[0-9]{0,5})?@g\\.us".prop_map(Value::from),
                "[A-Za-z0-9._:@+-]{0,140}".prop_map(Value::from),
                Just(Value::from("0b6f4f8e-6d8a-4a56-9d7c-2f0c1c7f9a10")),
                Just(Value::from("rotate_expiring_link")),
                Just(Value::from("meta")),
                Just(Value::from("x".repeat(501))),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                    prop::collection::btree_map(".{0,8}", inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
                check(&bytes)?;
            }

            #[test]
            fn byte_mutations_of_a_valid_command_never_panic(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..8)
            ) {
                let mut b = body(valid());
                for (at, byte, op) in edits {
                    let i = at.index(b.len() + 1);
                    match op {
                        0 if i < b.len() => b[i] = byte,
                        1 => b.insert(i, byte),
                        _ if i < b.len() => { b.remove(i); }
                        _ => b.push(byte),
                    }
                }
                check(&b)?;
            }

            #[test]
            fn field_mutations_of_a_valid_command_give_a_command_or_a_typed_rejection(
                changes in prop::collection::vec(
                    (prop::sample::select(&FIELDS[..]), prop::option::of(json())), 1..4)
            ) {
                let mut v = valid();
                for (field, value) in &changes {
                    match value {
                        Some(value) => v[*field] = value.clone(),
                        None => { v.as_object_mut().map(|o| o.remove(*field)); }
                    }
                }
                let required_broken = ["command_id", "type", "session_id", "group_id"]
                    .iter()
                    .any(|f| !v.get(*f).is_some_and(Value::is_string));
                let b = body(v);
                check(&b)?;
                if required_broken {
                    prop_assert!(parse(&b, &OneBackend).is_err());
                }
            }
        }
    }
}
