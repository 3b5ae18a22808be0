//! Publishing with publisher confirms on one channel (re-created after a failure), and
//! the AMQP properties and text headers of the messages the worker publishes and reads.

use std::{sync::Arc, task::Poll, time::Duration};

use lapin::{
    BasicProperties, Channel,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use tokio::sync::Mutex;

use super::{
    connection::{Broker, CLOSE_TIMEOUT},
    topology::text,
};
use crate::domain::events::OutboxMessage;

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
