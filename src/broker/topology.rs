//! Exchange and queue names (docs/contract.md §2), all under an optional deployment
//! prefix, and their declaration. Commands that must wait do so in the database, not in
//! broker delay queues (see `worker::release`).

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use crate::config::{AmqpSettings, QueueType};

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

    /// Where `dead-letters migrate` keeps the dead letters while it replaces their queue.
    pub fn dead_queue_migration(&self) -> String {
        format!("{}.migrating", self.dead_queue())
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

/// How the worker's queues are declared, from `[amqp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueOptions {
    pub queue_type: QueueType,
    /// `x-delivery-limit` of a quorum commands queue; 0: none.
    pub delivery_limit: u32,
}

impl From<QueueType> for QueueOptions {
    /// That type, without a delivery limit.
    fn from(queue_type: QueueType) -> Self {
        Self {
            queue_type,
            delivery_limit: 0,
        }
    }
}

impl QueueOptions {
    pub fn from_settings(amqp: &AmqpSettings) -> Self {
        Self {
            queue_type: amqp.queue_type,
            delivery_limit: amqp.delivery_limit,
        }
    }

    fn typed(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), text("quorum"));
        }
        args
    }

    /// The commands queue's arguments: its type and, on a quorum queue with a delivery
    /// limit, the limit and where the broker moves a command that reaches it (the
    /// dead-letter queue, at least once: the command stays in the commands queue until
    /// the dead-letter queue has taken it).
    pub fn commands_queue_args(&self, topo: &Topology) -> FieldTable {
        let mut args = self.typed();
        if self.queue_type == QueueType::Quorum && self.delivery_limit > 0 {
            let limit = AMQPValue::LongLongInt(i64::from(self.delivery_limit));
            args.insert("x-delivery-limit".into(), limit);
            args.insert("x-dead-letter-exchange".into(), text(""));
            args.insert("x-dead-letter-routing-key".into(), text(&topo.dead_queue()));
            args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
            args.insert("x-overflow".into(), text("reject-publish"));
        }
        args
    }

    /// The dead-letter queue's arguments: its type.
    pub fn dead_queue_args(&self) -> FieldTable {
        self.typed()
    }
}

/// A durable queue, declared (not passively).
pub const DURABLE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// Declares the exchanges, the commands queue and its binding: what consuming and
/// publishing need.
pub(super) async fn declare_essential(
    ch: &Channel,
    topo: &Topology,
    opts: QueueOptions,
) -> lapin::Result<()> {
    declare_exchanges(ch, topo).await?;
    ch.queue_declare(
        topo.commands_queue().as_str().into(),
        DURABLE,
        opts.commands_queue_args(topo),
    )
    .await?;
    bind_commands_queue(ch, topo).await
}

pub(super) async fn declare_exchanges(ch: &Channel, topo: &Topology) -> lapin::Result<()> {
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
    Ok(())
}

pub(super) async fn bind_commands_queue(ch: &Channel, topo: &Topology) -> lapin::Result<()> {
    ch.queue_bind(
        topo.commands_queue().as_str().into(),
        topo.commands_exchange().as_str().into(),
        COMMANDS_BINDING.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Declares exchanges, queues and bindings, every one of them or an error; idempotent.
/// (The worker's own connections declare what they need first and the rest in the
/// background, see `Broker`.)
pub async fn declare(
    ch: &Channel,
    topo: &Topology,
    opts: impl Into<QueueOptions>,
) -> lapin::Result<()> {
    let opts = opts.into();
    declare_essential(ch, topo, opts).await?;
    ch.queue_declare(
        topo.dead_queue().as_str().into(),
        DURABLE,
        opts.dead_queue_args(),
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

    fn keys(args: &FieldTable) -> Vec<String> {
        args.inner().keys().map(|k| k.to_string()).collect()
    }

    #[test]
    fn a_quorum_commands_queue_gets_the_delivery_limit_and_dead_lettering() {
        let t = Topology::new("t1.");
        let quorum = QueueOptions {
            queue_type: QueueType::Quorum,
            delivery_limit: 20,
        };
        let args = quorum.commands_queue_args(&t);
        assert_eq!(
            args.inner().get("x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(20))
        );
        assert_eq!(
            args.inner().get("x-dead-letter-routing-key"),
            Some(&text("t1.invite_link.commands.dead"))
        );
        assert_eq!(keys(&quorum.dead_queue_args()), ["x-queue-type"]);
        let unlimited = QueueOptions {
            delivery_limit: 0,
            ..quorum
        };
        assert_eq!(keys(&unlimited.commands_queue_args(&t)), ["x-queue-type"]);
        let classic = QueueOptions {
            queue_type: QueueType::Classic,
            ..quorum
        };
        assert!(classic.commands_queue_args(&t).inner().is_empty());
        assert!(classic.dead_queue_args().inner().is_empty());
    }
}
