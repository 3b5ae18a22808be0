//! `asyncapi.yaml` is a valid AsyncAPI 3.0.0 document (against the official JSON Schema
//! kept in `schemas/vendor/`), its payloads are the JSON Schemas in `schemas/`, and its
//! channels, operations, routing keys and headers are the names the code uses.

use std::collections::BTreeSet;

use invite_worker::{
    broker::{COMMANDS_BINDING, Topology},
    domain::{CommandType, events, schema},
};
use serde_json::Value;

use super::root;

fn document() -> Value {
    let text = std::fs::read_to_string(root().join("asyncapi.yaml")).expect("asyncapi.yaml");
    serde_norway::from_str(&text).expect("asyncapi.yaml is YAML")
}

fn json(path: &str) -> Value {
    let text = std::fs::read_to_string(root().join(path)).expect(path);
    serde_json::from_str(&text).expect(path)
}

/// A set of the strings at `pointer` in each value of the object at `map`.
fn each(doc: &Value, map: &str, pointer: &str) -> BTreeSet<String> {
    doc.pointer(map)
        .and_then(Value::as_object)
        .expect(map)
        .values()
        .filter_map(|v| v.pointer(pointer).and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

fn set<const N: usize>(items: [&str; N]) -> BTreeSet<String> {
    items.into_iter().map(str::to_owned).collect()
}

#[test]
fn asyncapi_yaml_is_valid_against_the_official_asyncapi_3_0_0_schema() {
    let meta = json("schemas/vendor/asyncapi-3.0.0.json");
    let validator = jsonschema::validator_for(&meta).expect("the AsyncAPI schema compiles");
    let doc = document();
    let errors: Vec<String> = validator
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(doc["asyncapi"], "3.0.0");

    // The check has teeth, down to the AMQP bindings: a document that breaks the
    // specification is refused.
    let mut broken = doc.clone();
    broken["operations"]["sendRotated"]["action"] = "publish".into();
    assert!(!validator.is_valid(&broken));
    let mut broken = doc.clone();
    broken["channels"]["commandsQueue"]["bindings"]["amqp"]["is"] = "stream".into();
    assert!(!validator.is_valid(&broken));
    let mut broken = doc;
    broken["operations"]["sendRotated"]["bindings"]["amqp"]["deliveryMode"] = 3.into();
    assert!(!validator.is_valid(&broken));
}

#[test]
fn asyncapi_names_are_the_codes() {
    let doc = document();
    let topology = Topology::new("");
    let addresses = each(&doc, "/channels", "/address");
    let code: BTreeSet<String> = topology
        .exchanges()
        .into_iter()
        .chain(topology.queues())
        .collect();
    assert_eq!(addresses, code, "channel addresses");
    for (channel, name) in [
        ("commandsExchange", topology.commands_exchange()),
        ("eventsExchange", topology.events_exchange()),
    ] {
        let binding = &doc["channels"][channel]["bindings"]["amqp"];
        assert_eq!(binding["is"], "routingKey", "{channel}");
        assert_eq!(binding["exchange"]["name"], name.as_str(), "{channel}");
        assert_eq!(binding["exchange"]["type"], "topic", "{channel}");
    }
    for (channel, name) in [
        ("commandsQueue", topology.commands_queue()),
        ("deadLetterQueue", topology.dead_queue()),
    ] {
        let binding = &doc["channels"][channel]["bindings"]["amqp"];
        assert_eq!(binding["is"], "queue", "{channel}");
        assert_eq!(binding["queue"]["name"], name.as_str(), "{channel}");
    }
    let binding = doc["channels"]["commandsQueue"]["description"].as_str();
    assert!(binding.is_some_and(|d| d.contains(COMMANDS_BINDING)));

    // Each operation routes by one key, and the operations' keys are the code's.
    let operations = doc["operations"].as_object().expect("operations");
    let mut keys = BTreeSet::new();
    for (name, op) in operations {
        let cc = op["bindings"]["amqp"]["cc"].as_array().expect(name);
        assert_eq!(cc.len(), 1, "{name}");
        let key = cc[0].as_str().expect(name);
        assert_eq!(op["title"], key, "{name}: titled by its routing key");
        keys.insert(key.to_owned());
    }
    let routing_keys =
        [CommandType::RevokeInvite, CommandType::RotateExpiringLink].map(CommandType::routing_key);
    let mut code: BTreeSet<String> = routing_keys.iter().cloned().collect();
    code.extend(set([events::ROTATED, events::ROTATION_FAILED]));
    code.insert(topology.dead_queue());
    assert_eq!(keys, code, "routing keys");
    assert!(
        routing_keys
            .iter()
            .all(|k| k.starts_with(COMMANDS_BINDING.trim_end_matches('#')))
    );

    // Messages: commands by type, events by type (also their AMQP `type`).
    let names = each(&doc, "/components/messages", "/name");
    assert_eq!(
        names,
        set([
            CommandType::RevokeInvite.as_str(),
            CommandType::RotateExpiringLink.as_str(),
            events::ROTATED,
            events::ROTATION_FAILED,
            "dead_letter",
        ])
    );
    for event in ["rotated", "rotationFailed"] {
        let message = &doc["components"]["messages"][event];
        assert_eq!(message["bindings"]["amqp"]["messageType"], message["name"]);
    }
    let dead = &doc["components"]["schemas"]["deadLetterHeaders"];
    assert_eq!(dead["required"][0], events::ERROR_HEADER);
    assert!(dead["properties"][events::ORIGINAL_ROUTING_KEY_HEADER].is_object());
}

#[test]
fn asyncapi_payloads_are_the_json_schemas_in_schemas() {
    let doc = document();
    let payloads = each(&doc, "/components/messages", "/payload/$ref");
    let files: BTreeSet<String> = schema::ALL
        .iter()
        .map(|(_, file, _)| format!("./schemas/{file}"))
        .collect();
    assert_eq!(payloads, files);
    for file in &files {
        assert!(root().join(file).is_file(), "{file}");
    }
    let commands = ["revokeInvite", "rotateExpiringLink"]
        .map(|m| doc["components"]["messages"][m]["payload"]["$ref"].clone());
    assert!(commands.iter().all(|r| r == "./schemas/command.json"));
}
