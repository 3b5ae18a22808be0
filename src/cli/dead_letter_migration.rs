//! `dead-letters migrate`: makes the classic dead-letter queue of an older version a
//! quorum queue without losing a dead letter. Its messages move to a temporary quorum
//! queue, each copy confirmed by the broker before its original is acknowledged; the
//! classic queue is deleted only once empty (`if-empty`: dead letters that arrive
//! meanwhile are moved too), declared again as a quorum queue, and the messages move
//! back the same way. Run again after a crash at any step, it goes on from where it
//! stopped: a message may then be moved twice, never lost. One run at a time.

use lapin::{
    BasicProperties, Channel, Confirmation,
    message::BasicGetMessage,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::FieldTable,
};

use crate::{
    broker::{Broker, DURABLE},
    config::Settings,
};

/// Messages held unacknowledged at a time while moving.
const BATCH: usize = 256;
/// Times the old queue is emptied before giving up, should dead letters keep arriving
/// between emptying it and deleting it.
const ROUNDS: usize = 20;

/// What a migration did.
#[derive(Debug, Default)]
pub struct Migration {
    /// The dead-letter queue.
    pub queue: String,
    /// Whether it was a quorum queue already (or did not exist).
    pub already: bool,
    /// Dead letters now in the new queue that were moved into it.
    pub moved: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not confirm a message moved to {0} (nack, return or timeout)")]
    NotConfirmed(String),
    #[error("messages kept arriving in {0}; run the migration again")]
    StillFilling(String),
}

fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Migrates the dead-letter queue of `settings` to a quorum queue (`amqp.queue_type`
/// must be `quorum`: the caller checks).
pub async fn migrate(settings: &Settings) -> Result<Migration, MigrateError> {
    let broker = Broker::undeclared(&settings.amqp);
    let result = run(&broker, settings).await;
    broker.close().await;
    result
}

async fn run(broker: &Broker, settings: &Settings) -> Result<Migration, MigrateError> {
    let topo = broker.topology();
    let args = broker.queue_options().dead_queue_args();
    let (dead, temp) = (topo.dead_queue(), topo.dead_queue_migration());
    let timeout = settings.amqp.confirm_timeout;
    // Each step on a fresh channel: a refused declaration or deletion closes its channel.
    broker
        .channel()
        .await?
        .queue_declare(temp.as_str().into(), DURABLE, args.clone())
        .await?;
    let declared = broker
        .channel()
        .await?
        .queue_declare(dead.as_str().into(), DURABLE, args.clone())
        .await;
    let mut migration = Migration {
        queue: dead.clone(),
        ..Default::default()
    };
    match declared {
        Ok(_) => migration.already = true,
        Err(e) if is_precondition_failed(&e) => {
            empty_and_delete(broker, &dead, &temp, timeout).await?;
            broker
                .channel()
                .await?
                .queue_declare(dead.as_str().into(), DURABLE, args)
                .await?;
        }
        Err(e) => return Err(e.into()),
    }
    // Only this tool writes to the temporary queue, and a quorum queue cannot be
    // deleted `if-empty`: it is emptied until a passive declaration finds it empty.
    for _ in 0..ROUNDS {
        migration.moved += move_all(broker, &temp, &dead, timeout).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..DURABLE
        };
        let ch = broker.channel().await?;
        let left = ch
            .queue_declare(temp.as_str().into(), passive, FieldTable::default())
            .await?;
        if left.message_count() == 0 {
            ch.queue_delete(temp.as_str().into(), QueueDeleteOptions::default())
                .await?;
            return Ok(migration);
        }
    }
    Err(MigrateError::StillFilling(temp))
}

/// Moves everything from `dead` (classic) to `temp` and deletes `dead` once it is empty.
async fn empty_and_delete(
    broker: &Broker,
    dead: &str,
    temp: &str,
    timeout: std::time::Duration,
) -> Result<(), MigrateError> {
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    for _ in 0..ROUNDS {
        move_all(broker, dead, temp, timeout).await?;
        let deleted = broker
            .channel()
            .await?
            .queue_delete(dead.into(), if_empty)
            .await;
        match deleted {
            Ok(_) => return Ok(()),
            // Not empty: dead letters arrived since it was emptied.
            Err(e) if is_precondition_failed(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(MigrateError::StillFilling(dead.to_owned()))
}

/// Moves every message of `from` to `to` in batches: each copy published `mandatory`
/// and confirmed before the originals are acknowledged. Returns how many moved.
async fn move_all(
    broker: &Broker,
    from: &str,
    to: &str,
    timeout: std::time::Duration,
) -> Result<usize, MigrateError> {
    let get = broker.channel().await?;
    let publish = broker.channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut moved = 0;
    loop {
        let mut held = Vec::with_capacity(BATCH);
        while held.len() < BATCH {
            match get
                .basic_get(from.into(), BasicGetOptions { no_ack: false })
                .await?
            {
                Some(m) => held.push(m),
                None => break,
            }
        }
        if held.is_empty() {
            break;
        }
        copy(&publish, &held, to, timeout).await?;
        for m in &held {
            m.delivery.ack(BasicAckOptions::default()).await?;
        }
        moved += held.len();
    }
    let _ = get.close(200, "OK".into()).await;
    let _ = publish.close(200, "OK".into()).await;
    Ok(moved)
}

/// Publishes copies of `held` to the queue `to` and waits for every confirm.
async fn copy(
    publish: &Channel,
    held: &[BasicGetMessage],
    to: &str,
    timeout: std::time::Duration,
) -> Result<(), MigrateError> {
    let mut confirms = Vec::with_capacity(held.len());
    for m in held {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let props = without_delivery_count(&m.delivery.properties);
        let confirm = publish
            .basic_publish("".into(), to.into(), options, &m.delivery.data, props)
            .await?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match tokio::time::timeout(timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None))) => {}
            Ok(Err(e)) => return Err(e.into()),
            _ => return Err(MigrateError::NotConfirmed(to.to_owned())),
        }
    }
    Ok(())
}

/// The properties as they were, but for the count of deliveries a quorum queue adds.
fn without_delivery_count(props: &BasicProperties) -> BasicProperties {
    let Some(headers) = props.headers() else {
        return props.clone();
    };
    let mut kept = FieldTable::default();
    for (name, value) in headers.inner() {
        if name.as_str() != "x-delivery-count" {
            kept.insert(name.clone(), value.clone());
        }
    }
    props.clone().with_headers(kept)
}
