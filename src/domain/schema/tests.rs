//! The schemas against the files in `schemas/` and against the parser: what the command
//! schema accepts parses, and the rejected commands of the tests are rejected by it too.

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::domain::{BackendResolver, ErrorKind, GroupIdStyle, command};

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("a valid JSON Schema")
}

#[test]
fn the_files_in_schemas_are_what_the_code_generates() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for (name, file, schema) in ALL {
        let path = dir.join(file);
        let kept = std::fs::read_to_string(&path).unwrap_or_default();
        let kept: Value = serde_json::from_str(&kept).unwrap_or(Value::Null);
        assert!(
            kept == schema(),
            "{} differs from what the code generates; update it with \
             `cargo run -- schema {name} > schemas/{file}`",
            path.display()
        );
        assert_eq!(by_name(name), Some(schema()));
        assert_eq!(
            kept["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
    }
}

/// Every backend is configured, with the group-id style its command's group has: what the
/// schema cannot know (the backend's kind) never decides.
struct AnyBackend<'a>(&'a str);

impl BackendResolver for AnyBackend<'_> {
    fn default_backend(&self) -> &str {
        "sim"
    }
    fn group_style(&self, _: &str) -> Option<GroupIdStyle> {
        Some(match self.0.ends_with("@g.us") {
            true => GroupIdStyle::Jid,
            false => GroupIdStyle::Opaque,
        })
    }
}

fn parses(v: &Value) -> Result<(), String> {
    let group = v["group_id"].as_str().unwrap_or_default();
    let body = serde_json::to_vec(v).unwrap_or_default();
    command::parse(&body, &AnyBackend(group))
        .map(drop)
        .map_err(|r| r.reason)
}

fn valid() -> Value {
    json!({
        "command_id": "0b6f4f8e-6d8a-4a56-9d7c-2f0c1c7f9a10",
        "type": "revoke_invite",
        "session_id": "sales-team",
        "group_id": "120363041234567890@g.us",
        "reason": "leaked",
    })
}

fn with(changes: &[(&str, Value)]) -> Value {
    let mut v = valid();
    for (field, value) in changes {
        v[*field] = value.clone();
    }
    v
}

#[test]
fn commands_the_schema_accepts_parse() {
    let schema = validator(&command());
    let accepted = [
        valid(),
        with(&[("type", json!("rotate_expiring_link"))]),
        with(&[("backend", json!("meta")), ("group_id", json!("grp_9-A"))]),
        with(&[("group_id", json!("120363041234567890-1612345678@g.us"))]),
        with(&[("group_id", json!(format!("{}@g.us", "1".repeat(251))))]),
        with(&[("session_id", json!("team:1@host+x..y"))]),
        with(&[("session_id", json!("...")), ("requested_by", json!("me"))]),
        with(&[("reason", json!("é".repeat(500))), ("backend", Value::Null)]),
        with(&[("requested_by", Value::Null), ("extra", json!({"any": 1}))]),
    ];
    for command in accepted {
        let errors: Vec<String> = schema
            .iter_errors(&command)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{command}: {errors:?}");
        assert_eq!(parses(&command), Ok(()), "{command}");
    }
}

#[test]
fn the_rejected_commands_of_the_tests_are_rejected_by_the_schema_too() {
    let schema = validator(&command());
    let mut missing_id = valid();
    missing_id.as_object_mut().map(|o| o.remove("command_id"));
    let rejected = [
        missing_id,
        json!({ "type": "revoke_invite" }),
        json!([1, 2, 3]),
        with(&[("command_id", json!("not-a-uuid"))]),
        with(&[("command_id", json!(42))]),
        with(&[("type", json!("delete_group"))]),
        with(&[("group_id", json!("../../admin?x=1"))]),
        with(&[("group_id", json!("../../etc"))]),
        with(&[("group_id", json!(format!("{}@g.us", "1".repeat(252))))]),
        with(&[("session_id", json!("."))]),
        with(&[("session_id", json!(".."))]),
        with(&[("session_id", json!("a/b"))]),
        with(&[("session_id", json!("s".repeat(129)))]),
        with(&[("session_id", json!(""))]),
        with(&[("reason", json!("x".repeat(501)))]),
        with(&[("requested_by", json!("x".repeat(501)))]),
        with(&[("reason", json!(5))]),
        with(&[("backend", json!(5))]),
    ];
    for command in rejected {
        assert!(!schema.is_valid(&command), "the schema accepts {command}");
        assert!(parses(&command).is_err(), "the parser accepts {command}");
    }
}

#[test]
fn an_unknown_backend_passes_the_schema_and_is_left_to_the_configuration() {
    let command = with(&[("backend", json!("acme"))]);
    assert!(validator(&super::command()).is_valid(&command));
    struct NoAcme;
    impl BackendResolver for NoAcme {
        fn default_backend(&self) -> &str {
            "sim"
        }
        fn group_style(&self, b: &str) -> Option<GroupIdStyle> {
            (b == "sim").then_some(GroupIdStyle::Jid)
        }
    }
    let body = serde_json::to_vec(&command).unwrap_or_default();
    let rejection = command::parse(&body, &NoAcme).unwrap_err();
    assert_eq!(rejection.kind, ErrorKind::UnknownBackend);
}

fn field() -> impl Strategy<Value = (&'static str, Option<Value>)> {
    let value = prop_oneof![
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        "[0-9]{1,20}(-[0-9]{0,5})?@g\\.us".prop_map(Value::from),
        "[A-Za-z0-9._:@+_-]{0,140}".prop_map(Value::from),
        "[0-9A-Fa-f-]{30,40}".prop_map(Value::from),
        Just(Value::from("rotate_expiring_link")),
        Just(Value::from("3F2504E0-4F89-11D3-9A0C-0305E82C3301")),
        Just(Value::from("x".repeat(501))),
    ];
    let name = prop::sample::select(
        &[
            "command_id",
            "type",
            "session_id",
            "group_id",
            "backend",
            "reason",
            "requested_by",
        ][..],
    );
    (name, prop::option::of(value))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn whatever_the_schema_accepts_parses(changes in prop::collection::vec(field(), 1..4)) {
        let mut v = valid();
        for (name, value) in changes {
            match value {
                Some(value) => v[name] = value,
                None => { v.as_object_mut().map(|o| o.remove(name)); }
            }
        }
        if validator(&command()).is_valid(&v) {
            prop_assert_eq!(parses(&v), Ok(()), "{}", v);
        }
    }
}
