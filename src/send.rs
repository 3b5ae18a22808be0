//! `send`: publishes commands to the commands exchange with publisher confirms.

use std::time::Duration;

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use serde_json::json;
use uuid::Uuid;

use crate::{
    amqp::{Broker, Topology, declare},
    command::CommandType,
    config::Settings,
};

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
}

/// Publishes commands and returns their ids, each confirmed by the broker.
pub async fn publish(settings: &Settings, specs: &[CommandSpec]) -> anyhow::Result<Vec<Uuid>> {
    let topo = Topology::new(&settings.amqp.name_prefix);
    let broker = Broker::new(
        settings.amqp.url.expose(),
        topo.clone(),
        settings.amqp.queue_type,
    );
    let ch = broker.channel().await?;
    declare(&ch, &topo, settings.amqp.queue_type).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut ids = Vec::with_capacity(specs.len());
    let mut pending = Vec::with_capacity(specs.len());
    for spec in specs {
        let id = spec.command_id.unwrap_or_else(Uuid::new_v4);
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id.to_string()));
        let confirm = ch
            .basic_publish(
                topo.commands_exchange().as_str().into(),
                spec.kind.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &spec.body(id),
                props,
            )
            .await?;
        pending.push(confirm);
        ids.push(id);
    }
    for p in pending {
        let confirmed = tokio::time::timeout(Duration::from_secs(30), p).await??;
        if !confirmed.is_ack() {
            anyhow::bail!("the broker refused a command (nack)");
        }
    }
    broker.close().await;
    Ok(ids)
}
