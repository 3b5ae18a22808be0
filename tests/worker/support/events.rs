//! The broker side of a test: publishing commands (through `send`'s code path, or raw
//! bytes), a tap on every event (each checked against its JSON Schema in `schemas/`),
//! and draining the dead-letter queue.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use futures::StreamExt;
use invite_worker::{
    broker,
    cli::send,
    config::QueueType,
    domain::{CommandSpec, events, schema},
    ops::trace,
};
use lapin::{
    BasicProperties, Connection,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        QueueBindOptions, QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

use super::TestEnv;

/// A non-zero span id.
fn rand_span_id() -> u64 {
    (Uuid::new_v4().as_u128() as u64).max(1)
}

impl TestEnv {
    /// Publishes commands through the same code path as `invite-worker send`.
    pub(crate) async fn send(&self, specs: &[CommandSpec]) -> Vec<Uuid> {
        send::publish(&self.settings, specs).await.expect("send")
    }

    /// Publishes commands as `send` would, each with a `traceparent` header of a trace
    /// of its own; returns their ids and trace ids.
    pub(crate) async fn send_traced(&self, specs: &[CommandSpec]) -> Vec<(Uuid, String)> {
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            let id = spec.command_id.unwrap_or_else(Uuid::new_v4);
            let trace_id = format!("{:032x}", Uuid::new_v4().as_u128());
            let parent = format!("00-{trace_id}-{:016x}-01", rand_span_id());
            let mut headers = FieldTable::default();
            headers.insert("traceparent".into(), AMQPValue::LongString(parent.into()));
            let key = spec.kind.routing_key();
            self.publish_raw_with(&spec.body(id), &key, headers).await;
            out.push((id, trace_id));
        }
        out
    }

    /// Publishes raw bytes to the commands exchange.
    pub(crate) async fn publish_raw(&self, body: &[u8]) {
        self.publish_raw_with(body, "command.revoke_invite", FieldTable::default())
            .await;
    }

    /// [`TestEnv::publish_raw`] with a routing key and headers of its own.
    pub(crate) async fn publish_raw_with(
        &self,
        body: &[u8],
        routing_key: &str,
        headers: FieldTable,
    ) {
        let (conn, ch) = self.channel().await;
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        ch.basic_publish(
            self.topology.commands_exchange().as_str().into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        let _ = conn.close(200, "OK".into()).await;
    }

    /// A queue bound to every event; call before the events are produced.
    pub(crate) async fn tap_events(&self) -> EventTap {
        let (conn, ch) = self.channel().await;
        broker::declare(&ch, &self.topology, QueueType::Classic)
            .await
            .expect("declare");
        let q = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        ch.queue_bind(
            q.name().clone(),
            self.topology.events_exchange().as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
        let mut consumer = ch
            .basic_consume(
                q.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let body: Value = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                let props = EventProps {
                    message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
                    kind: d.properties.kind().as_ref().map(|s| s.to_string()),
                    correlation_id: d
                        .properties
                        .correlation_id()
                        .as_ref()
                        .map(|s| s.to_string()),
                    persistent: *d.properties.delivery_mode() == Some(2),
                    routing_key: d.routing_key.to_string(),
                    headers: broker::text_headers(&d.properties),
                };
                if tx.send((props, body)).is_err() {
                    break;
                }
            }
        });
        EventTap {
            rx,
            _conn: conn,
            task,
        }
    }

    /// Drains the dead-letter queue: (body, x-invite-error header).
    pub(crate) async fn dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        self.dead_letters_with_headers()
            .await
            .into_iter()
            .map(|(body, mut headers)| (body, headers.remove("x-invite-error").unwrap_or_default()))
            .collect()
    }

    /// Drains the dead-letter queue: (body, headers with text values).
    pub(crate) async fn dead_letters_with_headers(
        &self,
    ) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
        let (conn, ch) = self.channel().await;
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                self.topology.dead_queue().as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .expect("basic_get")
        {
            let headers = broker::text_headers(&m.delivery.properties)
                .into_iter()
                .collect();
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            out.push((m.delivery.data.clone(), headers));
        }
        let _ = conn.close(200, "OK".into()).await;
        out
    }
}

#[derive(Clone, Debug)]
pub(crate) struct EventProps {
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub correlation_id: Option<String>,
    pub persistent: bool,
    pub routing_key: String,
    /// The headers with text values (`traceparent`, …).
    pub headers: Vec<(String, String)>,
}

impl EventProps {
    /// The trace id of the event's `traceparent` header, when it has a valid one.
    pub(crate) fn trace_id(&self) -> Option<String> {
        trace::trace_id(&self.headers)
    }
}

/// The validator of each event type's schema, as `schemas/` keeps it.
fn validators() -> &'static BTreeMap<&'static str, (Arc<jsonschema::Validator>, Value)> {
    static VALIDATORS: OnceLock<BTreeMap<&str, (Arc<jsonschema::Validator>, Value)>> =
        OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let file = |name: &str| {
            let (.., file, _) = schema::ALL.iter().find(|(n, ..)| *n == name).expect(name);
            let path = format!("{}/schemas/{file}", env!("CARGO_MANIFEST_DIR"));
            let text = std::fs::read_to_string(&path).expect("schema file");
            let schema: Value = serde_json::from_str(&text).expect("schema JSON");
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(&schema)
                .expect("a JSON Schema");
            (Arc::new(validator), schema)
        };
        BTreeMap::from([
            (events::ROTATED, file("rotated")),
            (events::ROTATION_FAILED, file("rotation_failed")),
        ])
    })
}

/// Fails the test unless the event is valid against its type's schema, with no field the
/// schema does not name.
fn checked(event: (EventProps, Value)) -> (EventProps, Value) {
    let body = &event.1;
    let kind = body["event_type"].as_str().unwrap_or_default();
    let (validator, schema) = validators()
        .get(kind)
        .unwrap_or_else(|| panic!("an event of no known type: {body}"));
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{kind} against its schema: {errors:?}\n{body:#}"
    );
    let named = schema["properties"].as_object().expect("properties");
    let unnamed: Vec<&String> = body
        .as_object()
        .map(|o| o.keys().filter(|k| !named.contains_key(*k)).collect())
        .unwrap_or_default();
    assert!(
        unnamed.is_empty(),
        "{kind}: fields the schema does not name: {unnamed:?}"
    );
    event
}

pub(crate) struct EventTap {
    rx: mpsc::UnboundedReceiver<(EventProps, Value)>,
    _conn: Connection,
    task: JoinHandle<()>,
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EventTap {
    /// The next `n` events, failing the test if they do not arrive within `within`.
    pub(crate) async fn take(&mut self, n: usize, within: Duration) -> Vec<(EventProps, Value)> {
        let got = self.take_unchecked(n, within).await;
        got.into_iter().map(checked).collect()
    }

    /// [`EventTap::take`] without the schema check: for a test that publishes messages
    /// of its own to the events exchange.
    pub(crate) async fn take_unchecked(
        &mut self,
        n: usize,
        within: Duration,
    ) -> Vec<(EventProps, Value)> {
        let mut out = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + within;
        while out.len() < n {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => out.push(e),
                _ => panic!(
                    "expected {n} events within {within:?}, got {}: {out:#?}",
                    out.len()
                ),
            }
        }
        out
    }

    /// Events until one for `command_id` arrives (inclusive).
    pub(crate) async fn until_command(
        &mut self,
        command_id: Uuid,
        within: Duration,
    ) -> Vec<(EventProps, Value)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
                    let e = checked(e);
                    let done = e.1["command_id"] == command_id.to_string();
                    out.push(e);
                    if done {
                        return out;
                    }
                }
                _ => panic!("no event for {command_id} within {within:?}; saw {out:#?}"),
            }
        }
    }

    /// Events already delivered, without waiting.
    pub(crate) fn drain_now(&mut self) -> Vec<(EventProps, Value)> {
        let mut out = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            out.push(checked(e));
        }
        out
    }
}
