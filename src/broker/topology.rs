//! Exchange and queue names (docs/contract.md §2), all under an optional deployment
//! prefix, and their declaration. Commands that must wait do so in the database, not in
//! broker delay queues (see `worker::release`).

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use crate::config::QueueType;

/// Exchange and queue names, all under an optional deployment prefix.
#[derive(Clone, Debug)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn name(&self, n: &str) -> String {
        format!("{}{n}", self.prefix)
    }

    pub fn commands_exchange(&self) -> String {
        self.name("invite_link.commands")
    }

    pub fn commands_queue(&self) -> String {
        self.name("invite_link.commands")
    }

    pub fn dead_queue(&self) -> String {
        self.name("invite_link.commands.dead")
    }

    pub fn events_exchange(&self) -> String {
        self.name("invite_link.events")
    }

    /// Every queue this topology declares (for clean-up in tests and tools).
    pub fn queues(&self) -> Vec<String> {
        vec![self.commands_queue(), self.dead_queue()]
    }

    pub fn exchanges(&self) -> Vec<String> {
        vec![self.commands_exchange(), self.events_exchange()]
    }
}

/// The binding of the commands queue to the commands exchange.
pub const COMMANDS_BINDING: &str = "command.#";

/// A header or argument value as AMQP text.
pub(super) fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

/// Declares exchanges, queues and bindings; idempotent.
pub async fn declare(ch: &Channel, topo: &Topology, queue_type: QueueType) -> lapin::Result<()> {
    let durable_exchange = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for ex in topo.exchanges() {
        ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange,
            FieldTable::default(),
        )
        .await?;
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut args = FieldTable::default();
    if queue_type == QueueType::Quorum {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    ch.queue_declare(topo.commands_queue().as_str().into(), durable, args)
        .await?;
    ch.queue_bind(
        topo.commands_queue().as_str().into(),
        topo.commands_exchange().as_str().into(),
        COMMANDS_BINDING.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        topo.dead_queue().as_str().into(),
        durable,
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix() {
        let t = Topology::new("t1.");
        assert_eq!(t.commands_queue(), "t1.invite_link.commands");
        assert!(t.queues().iter().all(|q| q.starts_with("t1.invite_link.")));
    }
}
