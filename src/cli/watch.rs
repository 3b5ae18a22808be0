//! `watch`: prints events from the events exchange as JSON lines, for demos and
//! debugging (a temporary exclusive queue; nothing is taken from other consumers).

use futures::StreamExt;
use lapin::{
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::{broker::Broker, config::Settings};

/// Prints every event routed with `pattern` until `stop` completes.
pub(super) async fn watch(
    settings: &Settings,
    pattern: &str,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Connecting declares the topology (see `Broker`).
    let broker = Broker::from_settings(&settings.amqp);
    let topo = broker.topology().clone();
    let ch = broker.channel().await?;
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
        .await?;
    ch.queue_bind(
        q.name().clone(),
        topo.events_exchange().as_str().into(),
        pattern.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
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
        .await?;
    eprintln!(
        "watching {} ({pattern}); Ctrl-C to stop",
        topo.events_exchange()
    );
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            next = consumer.next() => match next {
                Some(Ok(d)) => println!("{}", String::from_utf8_lossy(&d.data)),
                Some(Err(e)) => return Err(e.into()),
                None => break,
            }
        }
    }
    broker.close().await;
    Ok(())
}
