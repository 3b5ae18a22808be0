//! Parsing tests: valid commands, each kind of rejection, and property tests with
//! hostile bodies.

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
