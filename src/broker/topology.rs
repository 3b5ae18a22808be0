//! Exchange and queue names (docs/contract.md §2), all under an optional deployment
//! prefix, the retry delay tiers, and their declaration.

use std::time::Duration;

use lapin::{
    Channel, ExchangeKind,
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};

use crate::config::QueueType;

/// Delay tiers of the retry queues, in seconds.
pub const RETRY_TIERS: [u64; 9] = [1, 2, 5, 10, 30, 60, 120, 300, 900];

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

    pub fn retry_queue(&self, tier_secs: u64) -> String {
        self.name(&format!("invite_link.retry.{tier_secs}s"))
    }

    /// Every queue this topology declares (for clean-up in tests and tools).
    pub fn queues(&self) -> Vec<String> {
        let mut q = vec![self.commands_queue(), self.dead_queue()];
        q.extend(RETRY_TIERS.iter().map(|t| self.retry_queue(*t)));
        q
    }

    pub fn exchanges(&self) -> Vec<String> {
        vec![self.commands_exchange(), self.events_exchange()]
    }
}

/// The smallest retry tier not shorter than `delay` (the longest tier at most).
pub fn retry_tier(delay: Duration) -> u64 {
    let secs = delay.as_secs_f64();
    RETRY_TIERS
        .iter()
        .copied()
        .find(|t| *t as f64 >= secs)
        .unwrap_or(RETRY_TIERS[RETRY_TIERS.len() - 1])
}

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
        "command.#".into(),
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
    for tier in RETRY_TIERS {
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt((tier * 1000) as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            text(&topo.commands_exchange()),
        );
        args.insert("x-dead-letter-routing-key".into(), text("command.retry"));
        ch.queue_declare(topo.retry_queue(tier).as_str().into(), durable, args)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_tier_is_smallest_not_shorter() {
        assert_eq!(retry_tier(Duration::from_millis(100)), 1);
        assert_eq!(retry_tier(Duration::from_secs(2)), 2);
        assert_eq!(retry_tier(Duration::from_millis(2100)), 5);
        assert_eq!(retry_tier(Duration::from_secs(3600)), 900);
    }

    #[test]
    fn names_carry_the_prefix() {
        let t = Topology::new("t1.");
        assert_eq!(t.commands_queue(), "t1.invite_link.commands");
        assert_eq!(t.retry_queue(5), "t1.invite_link.retry.5s");
        assert!(t.queues().iter().all(|q| q.starts_with("t1.invite_link.")));
    }
}
