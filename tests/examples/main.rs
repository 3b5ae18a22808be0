//! The README's Rust publisher (`examples/publish_command.rs`, compiled into this test as
//! a module, so the very same code runs) against the real RabbitMQ: what it publishes
//! reaches the worker's commands queue as a valid command with the documented
//! properties. Everything is declared under a name prefix of its own and deleted after.

#[allow(dead_code, unreachable_pub)]
#[path = "../../examples/publish_command.rs"]
mod publish_command;

use std::{panic::AssertUnwindSafe, time::Duration};

use futures::FutureExt;
use invite_worker::{
    broker::{Topology, declare},
    config::{BackendSettings, QueueType, Settings},
    domain::{CommandType, command},
};
use lapin::{
    Channel,
    options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions},
};
use uuid::Uuid;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SESSION: &str = "sales-team";
const GROUP: &str = "120363041234567890@g.us";

#[tokio::test]
async fn the_readme_publisher_sends_a_valid_persistent_command_with_its_id() {
    let prefix = format!("example-{}.", &Uuid::new_v4().simple().to_string()[..12]);
    let topology = Topology::new(&prefix);
    let (connection, channel) = publish_command::connect(AMQP_URL)
        .await
        .expect("broker (run .ci/services-up)");
    let outcome = AssertUnwindSafe(publish_and_check(&channel, &topology))
        .catch_unwind()
        .await;
    for queue in topology.queues() {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in topology.exchanges() {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = connection.close(200, "OK".into()).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn publish_and_check(channel: &Channel, topology: &Topology) {
    declare(channel, topology, QueueType::Classic)
        .await
        .expect("declare the topology");
    let command_id = Uuid::new_v4();
    publish_command::revoke_invite(
        channel,
        &topology.commands_exchange(),
        command_id,
        SESSION,
        GROUP,
        "link leaked on a public forum",
    )
    .await
    .expect("published and confirmed");

    let mut delivery = None;
    for _ in 0..50 {
        delivery = channel
            .basic_get(
                topology.commands_queue().as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic.get");
        if delivery.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivery = delivery.expect("the command reached the worker's queue");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");

    assert_eq!(delivery.routing_key.as_str(), "command.revoke_invite");
    let props = &delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|t| t.as_str()),
        Some("application/json")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    let message_id = command_id.to_string();
    assert_eq!(
        props.message_id().as_ref().map(|m| m.as_str()),
        Some(message_id.as_str())
    );

    let mut settings = Settings::default();
    settings
        .backends
        .insert("sim".into(), BackendSettings::simulator());
    let command = command::parse(&delivery.data, &settings).expect("a valid command");
    assert_eq!(command.id.0, command_id);
    assert_eq!(command.kind, CommandType::RevokeInvite);
    assert_eq!(command.session.as_str(), SESSION);
    assert_eq!(command.group.as_str(), GROUP);
    assert_eq!(command.backend, "sim");
    assert_eq!(command.requested_by.as_deref(), Some("support-portal"));
}
