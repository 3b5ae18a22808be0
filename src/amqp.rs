//! RabbitMQ plumbing: topology names and declaration (docs/contract.md §2), a shared
//! connection that is re-established after a loss, and a publisher with confirms.

use std::{sync::Arc, task::Poll, time::Duration};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ConnectionStatus, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::Mutex;

use crate::{config::QueueType, events::OutboxMessage};

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

fn text(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

/// A message's headers that have a text value (long or short string), by name; other
/// values (tables, arrays, numbers such as RabbitMQ's `x-death`) are left out.
pub fn text_headers(props: &BasicProperties) -> Vec<(String, String)> {
    let Some(headers) = props.headers() else {
        return Vec::new();
    };
    headers
        .inner()
        .iter()
        .filter_map(|(name, value)| {
            let value = match value {
                AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                AMQPValue::ShortString(s) => s.to_string(),
                _ => return None,
            };
            Some((name.to_string(), value))
        })
        .collect()
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

/// How long closing a channel or connection may take before it is abandoned (a peer
/// that stopped answering never sends close-ok).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long establishing a connection (TCP, handshake, topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One AMQP connection shared by the consumer and the publishers, re-established
/// (with topology re-declared) when it is lost.
pub struct Broker {
    url: String,
    topo: Topology,
    queue_type: QueueType,
    conn: Mutex<Option<Arc<Connection>>>,
    /// The current connection's live status, readable without awaiting.
    status: std::sync::Mutex<Option<ConnectionStatus>>,
}

impl Broker {
    pub fn new(url: &str, topo: Topology, queue_type: QueueType) -> Arc<Self> {
        Arc::new(Self {
            url: url.to_owned(),
            topo,
            queue_type,
            conn: Mutex::new(None),
            status: std::sync::Mutex::new(None),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    fn set_status(&self, status: Option<ConnectionStatus>) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Whether a connection is established and lapin still reports it connected (a
    /// lost socket flips this at once, without waiting for anyone to use it).
    pub fn is_up(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| s.connected())
    }

    /// The current connection, connecting and declaring the topology if needed.
    pub async fn connection(&self) -> lapin::Result<Arc<Connection>> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        self.set_status(None);
        if let Some(old) = guard.take() {
            close_quietly(&old, 320, "reconnecting").await;
        }
        let props = ConnectionProperties::default().with_connection_name("invite-worker".into());
        let setup = async {
            let conn = Connection::connect(&self.url, props).await?;
            let ch = conn.create_channel().await?;
            declare(&ch, &self.topo, self.queue_type).await?;
            let _ = ch.close(200, "OK".into()).await;
            Ok::<_, lapin::Error>(conn)
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(r) => Arc::new(r?),
            Err(_) => return Err(timed_out()),
        };
        self.set_status(Some(conn.status().clone()));
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Drops `conn` if it is still the current connection, so that the next user
    /// reconnects. A connection that another user already replaced is left alone.
    pub async fn invalidate(&self, conn: &Arc<Connection>) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.set_status(None);
            guard.take();
            drop(guard);
            close_quietly(conn, 320, "reconnecting").await;
        }
    }

    /// A new channel on the current connection, and that connection.
    pub async fn open_channel(&self) -> lapin::Result<(Arc<Connection>, Channel)> {
        let conn = self.connection().await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, conn.create_channel()).await {
            Ok(ch) => Ok((conn, ch?)),
            Err(_) => Err(timed_out()),
        }
    }

    pub async fn channel(&self) -> lapin::Result<Channel> {
        Ok(self.open_channel().await?.1)
    }

    pub async fn close(&self) {
        self.set_status(None);
        if let Some(c) = self.conn.lock().await.take() {
            close_quietly(&c, 200, "OK").await;
        }
    }
}

fn timed_out() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

async fn close_quietly(conn: &Connection, code: u16, text: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(code, text.into())).await;
}

/// Why a publish did not get a positive confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
}

/// Publishes with publisher confirms on one channel, re-created after failures.
pub struct Publisher {
    broker: Arc<Broker>,
    channel: Mutex<Option<Channel>>,
    confirm_timeout: Duration,
}

pub fn properties(m: &OutboxMessage) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64);
    if m.routing_key.starts_with("invite_link.") && !m.exchange.is_empty()
        || m.message_type.is_some()
    {
        p = p.with_content_type("application/json".into());
    }
    if let Some(id) = &m.message_id {
        p = p.with_message_id(ShortString::from(id.as_str()));
    }
    if let Some(t) = &m.message_type {
        p = p.with_type(ShortString::from(t.as_str()));
    }
    if let Some(c) = &m.correlation_id {
        p = p.with_correlation_id(ShortString::from(c.as_str()));
    }
    if !m.headers.is_empty() {
        let mut h = FieldTable::default();
        for (k, v) in &m.headers {
            h.insert(ShortString::from(k.as_str()), text(v));
        }
        p = p.with_headers(h);
    }
    p
}

impl Publisher {
    pub fn new(broker: Arc<Broker>, confirm_timeout: Duration) -> Self {
        Self {
            broker,
            channel: Mutex::new(None),
            confirm_timeout,
        }
    }

    async fn channel(&self) -> lapin::Result<Channel> {
        let mut guard = self.channel.lock().await;
        if let Some(ch) = guard.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let ch = self.broker.channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        *guard = Some(ch.clone());
        Ok(ch)
    }

    /// The longest a publish may wait for its confirms.
    pub fn confirm_timeout(&self) -> Duration {
        self.confirm_timeout
    }

    /// Drops the channel after a failure; the next publish opens a new one. The old one
    /// is closed in the background: a broker that stopped answering would hold the
    /// caller until the close timed out.
    async fn reset(&self) {
        let taken = self.channel.lock().await.take();
        if let Some(ch) = taken {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, "OK".into())).await;
            });
        }
    }

    /// Closes the channel (before the connection closes, so that lapin does not report
    /// the connection closing under an open channel).
    pub async fn close(&self) {
        let taken = self.channel.lock().await.take();
        if let Some(ch) = taken {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, "OK".into())).await;
        }
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, m: &OutboxMessage) -> Result<(), PublishError> {
        let results = self.publish_batch(std::slice::from_ref(m)).await?;
        if results[0] {
            Ok(())
        } else {
            Err(PublishError::Nacked)
        }
    }

    /// Publishes all messages pipelined, then waits for every confirm. Returns, per
    /// message, whether the broker confirmed it.
    pub async fn publish_batch(&self, msgs: &[OutboxMessage]) -> Result<Vec<bool>, PublishError> {
        let result = self.try_publish_batch(msgs).await;
        if result.is_err() {
            self.reset().await;
        }
        result
    }

    /// Everything, from getting a channel to the last confirm, within the confirm
    /// timeout: a broker that stopped answering must not hold the caller.
    async fn try_publish_batch(&self, msgs: &[OutboxMessage]) -> Result<Vec<bool>, PublishError> {
        match tokio::time::timeout(self.confirm_timeout, self.publish_and_confirm(msgs)).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
        }
    }

    async fn publish_and_confirm(&self, msgs: &[OutboxMessage]) -> Result<Vec<bool>, PublishError> {
        let ch = self.channel().await?;
        let mut sends: Vec<_> = msgs
            .iter()
            .map(|m| {
                Box::pin(ch.basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &m.payload,
                    properties(m),
                ))
            })
            .collect();
        // Each publish queues its frames (and takes its confirm's number) when first
        // polled, then waits until they are written. Polled once each, in order, before
        // any is awaited: the batch goes out in one write instead of one wake-up of
        // lapin's I/O thread per message, in the same order.
        let mut first = Vec::with_capacity(sends.len());
        for send in &mut sends {
            first.push(match futures::poll!(send.as_mut()) {
                Poll::Ready(sent) => Some(sent),
                Poll::Pending => None,
            });
        }
        let mut pending = Vec::with_capacity(msgs.len());
        for (send, sent) in sends.into_iter().zip(first) {
            pending.push(match sent {
                Some(sent) => sent?,
                None => send.await?,
            });
        }
        let mut acks = Vec::with_capacity(pending.len());
        for p in pending {
            acks.push(p.await?.is_ack());
        }
        Ok(acks)
    }
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
