//! JSON Schemas (draft 2020-12) of the command and both events, derived from the types
//! that parse and build them; `schemas/*.json` in the repository are their output
//! (`invite-worker schema command|rotated|rotation_failed`), kept equal by a test.

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    CommandType,
    events::{Envelope, FailedBody, ROTATED, ROTATION_FAILED, RotatedBody},
};

/// A session id: 1 to 128 of `A-Za-z0-9._:@+-` (besides, not `.` or `..`).
pub const SESSION_PATTERN: &str = "^[A-Za-z0-9._:@+-]{1,128}$";
/// A group JID, for every kind but meta_cloud (at most 256 characters).
pub const JID_PATTERN: &str = "^[0-9]+(-[0-9]+)?@g\\.us$";
/// meta_cloud's opaque group id.
pub const OPAQUE_GROUP_PATTERN: &str = "^[A-Za-z0-9_-]{1,128}$";
/// A backend name as the configuration allows it.
pub const BACKEND_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";

/// A command, published to `invite_link.commands` with routing key `command.<type>`
/// (docs/contract.md §4). Unknown fields are ignored; a body over 64 KiB is rejected.
/// Mirrors what `command::parse` accepts (it reads every field loosely, so that each
/// missing or bad one becomes a precise rejection).
#[derive(JsonSchema)]
#[schemars(title = "invite-worker command")]
#[allow(dead_code)]
struct WireCommand {
    /// The idempotency key: one command_id runs at most once. Any spelling of a UUID is
    /// read; the hyphenated form is the one to send.
    command_id: Uuid,
    #[serde(rename = "type")]
    kind: CommandType,
    /// The provider's session, instance or phone-number id; not `.` or `..`.
    #[schemars(pattern(SESSION_PATTERN), extend("not" = { "enum": [".", ".."] }))]
    session_id: String,
    /// A group JID `<digits>[-<digits>]@g.us` of at most 256 characters for every kind
    /// but meta_cloud; for meta_cloud an opaque id. Which one applies depends on the
    /// backend's kind.
    #[schemars(extend("anyOf" = [
        { "pattern": JID_PATTERN, "maxLength": 256 },
        { "pattern": OPAQUE_GROUP_PATTERN },
    ]))]
    group_id: String,
    /// A configured backend name; absent or null means `default_backend`.
    #[schemars(pattern(BACKEND_PATTERN))]
    backend: Option<String>,
    /// Why, copied into events.
    #[schemars(length(max = 500))]
    reason: Option<String>,
    /// Who asked, copied into events.
    #[schemars(length(max = 500))]
    requested_by: Option<String>,
}

/// A schema's name (as `invite-worker schema` takes it), its file in `schemas/`, and the
/// function generating it.
pub type Entry = (&'static str, &'static str, fn() -> Value);

/// Every schema.
pub const ALL: [Entry; 3] = [
    ("command", "command.json", command),
    ("rotated", "invite_link.rotated.json", rotated),
    (
        "rotation_failed",
        "invite_link.rotation_failed.json",
        rotation_failed,
    ),
];

/// The schema named `name` (see [`ALL`]).
pub fn by_name(name: &str) -> Option<Value> {
    ALL.iter().find(|(n, ..)| *n == name).map(|(.., f)| f())
}

/// A schema as `schemas/` holds it: pretty JSON ending in a newline.
pub fn to_file_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

fn root<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The command's schema.
pub fn command() -> Value {
    root::<WireCommand>()
}

/// The schema of `invite_link.rotated`.
pub fn rotated() -> Value {
    event(
        root::<Envelope<'static, RotatedBody>>(),
        ROTATED,
        "Published when a command rotated a group's invite link.",
    )
}

/// The schema of `invite_link.rotation_failed`.
pub fn rotation_failed() -> Value {
    event(
        root::<Envelope<'static, FailedBody<'static>>>(),
        ROTATION_FAILED,
        "Published when a command failed for good (docs/contract.md §5 lists the kinds).",
    )
}

/// Makes every property of an object schema required.
fn require_every_field(schema: &mut Value) {
    let Some(fields) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let fields: Vec<Value> = fields.keys().map(|k| json!(k)).collect();
    schema["required"] = Value::Array(fields);
}

/// An event's schema: named after its type, whose value it fixes, every field required
/// (a field without a value is null, never left out).
fn event(mut schema: Value, event_type: &str, description: &str) -> Value {
    require_every_field(&mut schema);
    if let Some(defs) = schema.get_mut("$defs").and_then(Value::as_object_mut) {
        defs.values_mut().for_each(require_every_field);
    }
    if let Some(map) = schema.as_object_mut() {
        map.insert("title".into(), json!(event_type));
        map.insert(
            "description".into(),
            json!(format!(
                "{description} Routing key and AMQP `type` = `{event_type}`; \
                 docs/contract.md §5. Consumers ignore fields they do not know."
            )),
        );
    }
    schema["properties"]["event_type"] = json!({
        "description": "The routing key of the event.",
        "const": event_type,
    });
    schema
}

#[cfg(test)]
mod tests;
