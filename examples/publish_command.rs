//! Publishes one `revoke_invite` command to invite-worker and waits for the broker's
//! confirm: the publisher shown in the README ("Publishing commands from your service").
//! `AMQP_URL` (default: the local broker) and `COMMANDS_EXCHANGE` (default
//! `invite_link.commands`) say where. `tests/examples.rs` runs the same code.
//!
//! ```sh
//! cargo run --example publish_command
//! ```

// [publish]
use lapin::{BasicProperties, Channel, Confirmation, options::BasicPublishOptions};
use serde_json::json;
use uuid::Uuid;

/// Publishes a `revoke_invite` and awaits its confirm; on error, retry with the same id.
pub async fn revoke_invite(
    channel: &Channel,
    exchange: &str,
    command_id: Uuid,
    session_id: &str,
    group_id: &str,
    reason: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let body = serde_json::to_vec(&json!({
        "command_id": command_id,
        "type": "revoke_invite",
        "session_id": session_id,
        "group_id": group_id,
        "reason": reason,
        "requested_by": "support-portal",
    }))?;
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2) // persistent
        .with_message_id(command_id.to_string().into());
    let options = BasicPublishOptions {
        mandatory: true, // returned, not dropped, when no queue is bound
        ..Default::default()
    };
    let key = "command.revoke_invite".into();
    let publish = channel.basic_publish(exchange.into(), key, options, &body, properties);
    match publish.await?.await? {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err("no queue bound: start the worker once".into()),
        _ => Err("the broker refused the command".into()),
    }
}
// [/publish]

/// A channel with publisher confirms; keep the connection for the life of your service.
pub async fn connect(amqp_url: &str) -> lapin::Result<(lapin::Connection, Channel)> {
    let properties = lapin::ConnectionProperties::default();
    let connection = lapin::Connection::connect(amqp_url, properties).await?;
    let channel = connection.create_channel().await?;
    let options = lapin::options::ConfirmSelectOptions::default();
    channel.confirm_select(options).await?;
    Ok((connection, channel))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let exchange =
        std::env::var("COMMANDS_EXCHANGE").unwrap_or_else(|_| "invite_link.commands".to_owned());
    let (connection, channel) = connect(&url).await?;
    let command_id = Uuid::new_v4();
    revoke_invite(
        &channel,
        &exchange,
        command_id,
        "sales-team",
        "120363041234567890@g.us",
        "link leaked on a public forum",
    )
    .await?;
    println!("{command_id}");
    connection.close(200, "OK".into()).await?;
    Ok(())
}
