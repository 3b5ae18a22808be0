//! Publishing with publisher confirms on one channel (re-created after a failure), and
//! the AMQP properties and text headers of the messages the worker publishes and reads.
//! A message to the default exchange (a dead letter, addressed to its queue by name) is
//! published `mandatory`: should the queue be missing, the broker returns it, and it
//! counts as not published, instead of being confirmed and dropped.

use std::{sync::Arc, task::Poll, time::Duration};

use lapin::{
    BasicProperties, Channel, Confirmation,
    message::BasicReturnMessage,
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
    #[error("the broker returned the message: no queue {0:?} to take it")]
    Returned(String),
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
}

/// What became of one published message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// Confirmed by the broker, and routed.
    Ack,
    /// Refused by the broker (nack).
    Nack,
    /// Returned by the broker: a `mandatory` message no queue took.
    Returned,
}

impl Confirm {
    pub fn is_ack(self) -> bool {
        self == Self::Ack
    }
}

/// Publishes with publisher confirms on one channel, re-created after failures.
pub struct Publisher {
    broker: Arc<Broker>,
    channel: Mutex<Option<Channel>>,
    /// Held by the batch whose confirms are outstanding. lapin hands a returned message
    /// to whichever confirm arrives next on the channel, so with one batch at a time
    /// the returned messages a batch's confirms carry are its own.
    batch: Mutex<()>,
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
            batch: Mutex::new(()),
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
        match results[0] {
            Confirm::Ack => Ok(()),
            Confirm::Nack => Err(PublishError::Nacked),
            Confirm::Returned => Err(PublishError::Returned(m.routing_key.clone())),
        }
    }

    /// Publishes all messages pipelined, then waits for every confirm. Returns, per
    /// message, what became of it.
    pub async fn publish_batch(
        &self,
        msgs: &[OutboxMessage],
    ) -> Result<Vec<Confirm>, PublishError> {
        let batch = self.batch.lock().await;
        let result = self.try_publish_batch(msgs).await;
        drop(batch);
        // A channel that got a nack is replaced too: one opened before a quorum queue's
        // leader died can keep getting nacks for that queue.
        let nacked = result
            .as_ref()
            .is_ok_and(|confirms| confirms.contains(&Confirm::Nack));
        if result.is_err() || nacked {
            self.reset().await;
        }
        result
    }

    /// Everything, from getting a channel to the last confirm, within the confirm
    /// timeout: a broker that stopped answering must not hold the caller.
    async fn try_publish_batch(
        &self,
        msgs: &[OutboxMessage],
    ) -> Result<Vec<Confirm>, PublishError> {
        match tokio::time::timeout(self.confirm_timeout, self.publish_and_confirm(msgs)).await {
            Ok(r) => r,
            Err(_) => Err(PublishError::Timeout(self.confirm_timeout)),
        }
    }

    async fn publish_and_confirm(
        &self,
        msgs: &[OutboxMessage],
    ) -> Result<Vec<Confirm>, PublishError> {
        let ch = self.channel().await?;
        let mut sends: Vec<_> = msgs
            .iter()
            .map(|m| {
                let options = BasicPublishOptions {
                    mandatory: m.exchange.is_empty(),
                    ..Default::default()
                };
                Box::pin(ch.basic_publish(
                    m.exchange.as_str().into(),
                    m.routing_key.as_str().into(),
                    options,
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
        let mut confirms = Vec::with_capacity(pending.len());
        let mut returned = Vec::new();
        for p in pending {
            confirms.push(match p.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => Confirm::Ack,
                Confirmation::Ack(Some(r)) => {
                    returned.push(r);
                    Confirm::Ack
                }
                Confirmation::Nack(r) => {
                    returned.extend(r);
                    Confirm::Nack
                }
            });
        }
        for r in &returned {
            self.broker
                .returned(r.delivery.routing_key.as_str(), r.reply_text.as_str());
        }
        mark_returned(msgs, &mut confirms, &returned);
        Ok(confirms)
    }
}

/// Marks the messages `returned` stands for as returned: lapin attaches a returned
/// message to the next confirm that arrives, not necessarily its own, so each is matched
/// by exchange, routing key, message_id and body. One that matches none (not expected)
/// marks every `mandatory` message of the batch: a dead letter published twice is
/// harmless, one confirmed but dropped is lost.
fn mark_returned(
    msgs: &[OutboxMessage],
    confirms: &mut [Confirm],
    returned: &[BasicReturnMessage],
) {
    for r in returned {
        let d = &r.delivery;
        let message_id = d.properties.message_id().as_ref().map(|s| s.as_str());
        let found = msgs.iter().zip(confirms.iter()).position(|(m, c)| {
            *c != Confirm::Returned
                && m.exchange == d.exchange.as_str()
                && m.routing_key == d.routing_key.as_str()
                && m.message_id.as_deref() == message_id
                && m.payload == d.data
        });
        match found {
            Some(i) => confirms[i] = Confirm::Returned,
            None => {
                for (m, c) in msgs.iter().zip(confirms.iter_mut()) {
                    if m.exchange.is_empty() {
                        *c = Confirm::Returned;
                    }
                }
            }
        }
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
