//! `dead-letters list|replay`: reads the dead-letter queue without losing messages, and
//! moves chosen commands back to the commands exchange with a fresh attempt cycle
//! (docs/contract.md §6.2), recorded as `replayed` in their group's history.
//!
//! Both take every message with `basic.get` and hold it unacknowledged, so each is seen
//! once; what is not replayed is requeued in place (or by the broker, should this
//! process die), keeping the queue's order. A message the worker dead-lettered says why
//! in `x-invite-error`; one the broker dead-lettered (the commands queue's delivery
//! limit) in RabbitMQ's `x-death`.

use lapin::{
    BasicProperties, Channel,
    message::BasicGetMessage,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, ShortString},
};
use serde::Serialize;
use uuid::Uuid;

use crate::{
    broker::{Broker, Topology},
    config::Settings,
    domain::{
        command,
        events::{ERROR_HEADER, ORIGINAL_ROUTING_KEY_HEADER},
    },
    store::{Store, StoreError},
};

/// One message of the dead-letter queue, as far as it could be read.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetter {
    pub command_id: Option<String>,
    #[serde(rename = "type")]
    pub command_type: Option<String>,
    pub backend: Option<String>,
    pub session_id: Option<String>,
    pub group_id: Option<String>,
    /// Why it was dead-lettered: the `x-invite-error` header, or for a message the
    /// broker moved here, what its `x-death` header says.
    pub error: String,
    /// The command body: its JSON, or the raw text when it is not JSON.
    pub body: serde_json::Value,
}

/// Which dead letters to replay.
#[derive(Clone, Debug)]
pub enum Selection {
    All,
    Ids(Vec<Uuid>),
}

/// What a replay did.
#[derive(Debug, Default, Serialize)]
pub struct ReplayReport {
    /// Commands published back to the commands exchange.
    pub replayed: Vec<String>,
    /// Further copies of a replayed command_id, removed from the queue.
    pub duplicates_removed: usize,
    /// Selected messages left in the queue, with why: (command_id or position, reason).
    pub kept: Vec<(String, String)>,
    /// Requested command_ids not found in the queue.
    pub not_found: Vec<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error("the broker did not confirm a replayed command (nack or timeout)")]
    NotConfirmed,
}

fn header(m: &BasicGetMessage) -> String {
    let headers = m.delivery.properties.headers().as_ref();
    let error = headers.and_then(|h| h.inner().get(ERROR_HEADER).cloned());
    match error {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.to_string(),
        Some(other) => format!("{other:?}"),
        None => headers.and_then(x_death).unwrap_or_default(),
    }
}

/// Why the broker dead-lettered a message, from its `x-death` header (the latest death
/// first): `delivery limit exceeded (x-death: delivery_limit, queue Q)`.
fn x_death(headers: &FieldTable) -> Option<String> {
    let AMQPValue::FieldArray(deaths) = headers.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |key: &str| match latest.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let reason = text("reason")?;
    let meaning = match reason.as_str() {
        "delivery_limit" => "delivery limit exceeded",
        "rejected" => "rejected by a consumer",
        "expired" => "expired",
        "maxlen" => "queue length limit exceeded",
        other => other,
    };
    let queue = text("queue").unwrap_or_default();
    Some(format!("{meaning} (x-death: {reason}, queue {queue})"))
}

/// Headers RabbitMQ adds when it dead-letters or redelivers a message: a replayed
/// command starts without them.
fn is_broker_header(name: &str) -> bool {
    name == "x-death"
        || name == "x-delivery-count"
        || name.starts_with("x-first-death-")
        || name.starts_with("x-last-death-")
}

/// The headers a replayed command is published with: the dead letter's own (what the
/// command arrived with, see `events::origin_headers`) without the failure reason; and
/// the routing key it was first published with, when known.
fn replayed_headers(m: &BasicGetMessage) -> (FieldTable, Option<String>) {
    let mut headers = FieldTable::default();
    let mut original_key = None;
    if let Some(h) = m.delivery.properties.headers() {
        for (name, value) in h.inner() {
            if name.as_str() == ERROR_HEADER || is_broker_header(name.as_str()) {
                continue;
            }
            if name.as_str() == ORIGINAL_ROUTING_KEY_HEADER
                && let AMQPValue::LongString(s) = value
            {
                original_key = Some(String::from_utf8_lossy(s.as_bytes()).into_owned());
            }
            headers.insert(name.clone(), value.clone());
        }
    }
    (headers, original_key)
}

fn describe(m: &BasicGetMessage) -> DeadLetter {
    let data = &m.delivery.data;
    let body = serde_json::from_slice::<serde_json::Value>(data)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into_owned()));
    let text = |k: &str| body.get(k).and_then(|v| v.as_str()).map(str::to_owned);
    let command_id = m
        .delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .filter(|s| Uuid::parse_str(s).is_ok())
        .or_else(|| text("command_id"));
    DeadLetter {
        command_id,
        command_type: text("type"),
        backend: text("backend"),
        session_id: text("session_id"),
        group_id: text("group_id"),
        error: header(m),
        body,
    }
}

/// Takes every message currently in the queue, unacknowledged.
async fn take_all(ch: &Channel, queue: &str) -> lapin::Result<Vec<BasicGetMessage>> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?
    {
        out.push(m);
    }
    Ok(out)
}

/// Returns held messages to the queue in their places.
async fn requeue(ch: &Channel, held: &[&BasicGetMessage]) -> lapin::Result<()> {
    for m in held {
        ch.basic_nack(
            m.delivery.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await?;
    }
    Ok(())
}

fn broker(settings: &Settings) -> std::sync::Arc<Broker> {
    Broker::from_settings(&settings.amqp)
}

/// The dead-lettered commands, oldest first. The queue is left as it was.
pub async fn list(settings: &Settings) -> Result<Vec<DeadLetter>, DeadLetterError> {
    let broker = broker(settings);
    let result = async {
        let ch = broker.channel().await?;
        let held = take_all(&ch, &broker.topology().dead_queue()).await?;
        let letters = held.iter().map(describe).collect();
        requeue(&ch, &held.iter().collect::<Vec<_>>()).await?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(letters)
    }
    .await;
    broker.close().await;
    result
}

/// Replays the selected dead letters: each command that is valid under `settings` gets
/// a new attempt cycle in `store` (when recorded as failed), is published to the commands
/// exchange with a confirm, and only then removed from the dead-letter queue. Commands
/// that would be rejected again stay in the queue.
pub async fn replay(
    settings: &Settings,
    store: &Store,
    selection: &Selection,
) -> Result<ReplayReport, DeadLetterError> {
    let broker = broker(settings);
    let result = async {
        let topo = broker.topology().clone();
        let get = broker.channel().await?;
        let publish = broker.channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let held = take_all(&get, &topo.dead_queue()).await?;
        let outcome = replay_held(settings, store, selection, &topo, &get, &publish, &held).await;
        // Whatever was not acked goes back, in place; closing the channel would too.
        let _ = get.close(200, "OK".into()).await;
        let _ = publish.close(200, "OK".into()).await;
        outcome
    }
    .await;
    broker.close().await;
    result
}

async fn replay_held(
    settings: &Settings,
    store: &Store,
    selection: &Selection,
    topo: &Topology,
    get: &Channel,
    publish: &Channel,
    held: &[BasicGetMessage],
) -> Result<ReplayReport, DeadLetterError> {
    let mut report = ReplayReport::default();
    let mut unselected = Vec::new();
    for (position, m) in held.iter().enumerate() {
        let letter = describe(m);
        let selected = match selection {
            Selection::All => true,
            Selection::Ids(ids) => letter
                .command_id
                .as_deref()
                .and_then(|c| Uuid::parse_str(c).ok())
                .is_some_and(|c| ids.contains(&c)),
        };
        if !selected {
            unselected.push(m);
            continue;
        }
        let label = letter
            .command_id
            .clone()
            .unwrap_or_else(|| format!("message #{}", position + 1));
        let cmd = match command::parse(&m.delivery.data, settings) {
            Ok(cmd) => cmd,
            Err(rej) => {
                report
                    .kept
                    .push((label, format!("still invalid: {}", rej.reason)));
                unselected.push(m);
                continue;
            }
        };
        let id = cmd.id.to_string();
        if report.replayed.contains(&id) {
            ack(m).await?;
            report.duplicates_removed += 1;
            continue;
        }
        // A new cycle first, so that the worker does not take it for a duplicate. A
        // command not recorded as failed (unknown here, or already reopened) is
        // republished as is: the inbox decides.
        store.replay_failed(&id).await?;
        let (headers, original_key) = replayed_headers(m);
        let routing_key = original_key
            .filter(|k| k.starts_with("command."))
            .unwrap_or_else(|| cmd.kind.routing_key());
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(ShortString::from(id.as_str()))
            .with_headers(headers);
        let confirm = publish
            .basic_publish(
                topo.commands_exchange().as_str().into(),
                routing_key.as_str().into(),
                Default::default(),
                &m.delivery.data,
                props,
            )
            .await?;
        let confirmed = tokio::time::timeout(settings.amqp.confirm_timeout, confirm)
            .await
            .map_err(|_| DeadLetterError::NotConfirmed)??;
        if !confirmed.is_ack() {
            return Err(DeadLetterError::NotConfirmed);
        }
        ack(m).await?;
        report.replayed.push(id);
    }
    if let Selection::Ids(ids) = selection {
        report.not_found = ids
            .iter()
            .filter(|id| {
                let id = id.to_string();
                !report.replayed.contains(&id) && !report.kept.iter().any(|(l, _)| *l == id)
            })
            .copied()
            .collect();
    }
    requeue(get, &unselected).await?;
    Ok(report)
}

async fn ack(m: &BasicGetMessage) -> lapin::Result<()> {
    m.delivery.ack(BasicAckOptions::default()).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldArray, LongString};

    use super::*;

    fn text(s: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(s))
    }

    #[test]
    fn a_broker_dead_letter_says_why_from_its_latest_x_death() {
        let death = |reason: &str, queue: &str| {
            let mut t = FieldTable::default();
            t.insert("reason".into(), text(reason));
            t.insert("queue".into(), text(queue));
            t.insert("count".into(), AMQPValue::LongLongInt(1));
            AMQPValue::FieldTable(t)
        };
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("delivery_limit", "p.invite_link.commands"),
                death("rejected", "elsewhere"),
            ])),
        );
        assert_eq!(
            x_death(&headers).as_deref(),
            Some("delivery limit exceeded (x-death: delivery_limit, queue p.invite_link.commands)")
        );
        assert_eq!(x_death(&FieldTable::default()), None);
        assert!(is_broker_header("x-death") && is_broker_header("x-first-death-reason"));
        assert!(!is_broker_header(ERROR_HEADER));
    }
}
