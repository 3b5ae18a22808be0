//! The consume loop and the handling of one delivery: commands are taken with manual
//! acks (prefetch-bounded concurrency), processed, moved to the dead-letter queue when
//! the pipeline says so, and acknowledged only after their outcome (or their deferral)
//! is committed.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{
    Worker,
    acks::Acks,
    pipeline::{Arrival, Disposition, Pipeline},
    retry::infra_backoff,
};
use crate::{
    broker::{Publisher, text_headers},
    domain::events::{self, OutboxMessage},
    ops::metrics as m,
};

impl Worker {
    /// Consumes commands until `shutdown`, reconnecting after a lost channel; each
    /// delivery runs as a task of `in_flight`.
    pub(super) async fn consume(&self, shutdown: &CancellationToken, in_flight: &TaskTracker) {
        let prefetch = self.pipeline.settings.amqp.prefetch;
        let slots = Arc::new(Semaphore::new(usize::from(prefetch)));
        let queue = self.pipeline.topology.commands_queue();
        let mut backoff = infra_backoff();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        'connect: while !shutdown.is_cancelled() {
            self.health.tick();
            // A fresh channel each time, so prefetch (basic_qos) is applied again after
            // every reconnect.
            let setup = async {
                let (conn, ch) = self.broker.open_channel().await?;
                let consume = async {
                    ch.basic_qos(prefetch, BasicQosOptions::default()).await?;
                    ch.basic_consume(
                        queue.as_str().into(),
                        "".into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
                };
                match consume.await {
                    Ok(consumer) => Ok((conn, ch, consumer)),
                    Err(e) => {
                        self.broker.invalidate(&conn).await;
                        Err(e)
                    }
                }
            };
            let (conn, ch, mut consumer) = match setup.await {
                Ok(c) => c,
                Err(e) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    warn!(error = %e, ?wait, "cannot consume from the broker; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue 'connect,
                        _ = shutdown.cancelled() => break 'connect,
                    }
                }
            };
            backoff = infra_backoff();
            // This channel's acker; it finishes (tracked with the commands) once the
            // last delivery of the channel is settled.
            let (acks, acker) = Acks::start(ch.clone());
            in_flight.spawn(acker);
            self.health.consuming.store(true, Ordering::Relaxed);
            info!(queue = %queue, prefetch, "consuming commands");
            let tag = consumer.tag();
            let cancel = || async {
                let options = BasicCancelOptions::default();
                let stop = ch.basic_cancel(tag.clone(), options);
                let _ = tokio::time::timeout(Duration::from_secs(2), stop).await;
            };
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        cancel().await;
                        break 'connect;
                    }
                    _ = ticker.tick() => self.health.tick(),
                    next = consumer.next() => match next {
                        Some(Ok(delivery)) => {
                            let arrived_at = chrono::Utc::now();
                            // In delivery order, before the deliveries run concurrently.
                            let arrival = self.pipeline.arrival(&delivery.data);
                            self.health.tick();
                            // All slots can stay busy for long (a database outage, or
                            // deliveries of a lost channel): keep reporting liveness,
                            // and never let the wait delay a shutdown.
                            let acquire = slots.clone().acquire_owned();
                            tokio::pin!(acquire);
                            let permit = loop {
                                tokio::select! {
                                    p = &mut acquire => match p {
                                        Ok(p) => break p,
                                        Err(_) => break 'connect,
                                    },
                                    _ = ticker.tick() => self.health.tick(),
                                    _ = shutdown.cancelled() => {
                                        cancel().await;
                                        break 'connect;
                                    }
                                }
                            };
                            let pipeline = self.pipeline.clone();
                            let publisher = self.publisher.clone();
                            acks.delivered(delivery.delivery_tag);
                            let acks = acks.clone();
                            in_flight.spawn(async move {
                                m::in_flight(1.0);
                                let arrived = (arrived_at, arrival);
                                handle(&pipeline, &publisher, &acks, delivery, arrived).await;
                                m::in_flight(-1.0);
                                drop(permit);
                            });
                        }
                        Some(Err(e)) => {
                            warn!(error = %e, "consumer failed; reconnecting");
                            break;
                        }
                        None => {
                            warn!("consumer stream ended; reconnecting");
                            break;
                        }
                    }
                }
            }
            self.health.consuming.store(false, Ordering::Relaxed);
            self.broker.invalidate(&conn).await;
        }
        self.health.consuming.store(false, Ordering::Relaxed);
    }
}

/// The delivery's text headers and routing key, as its deferred or dead-lettered copies
/// keep them (see [`events::origin_headers`]).
fn origin(delivery: &Delivery) -> Vec<(String, String)> {
    events::origin_headers(
        text_headers(&delivery.properties),
        delivery.routing_key.as_str(),
    )
}

/// Settles one delivery: process, then ack (after publishing a dead-letter copy when the
/// command cannot be stored). A delivery that cannot be settled (shutdown) is left
/// unacked and returns to the queue when the channel closes.
async fn handle(
    pipeline: &Pipeline,
    publisher: &Publisher,
    acks: &Acks,
    delivery: Delivery,
    (arrived_at, arrival): (chrono::DateTime<chrono::Utc>, Option<Arrival>),
) {
    let origin = origin(&delivery);
    let disposition = match pipeline
        .process(&delivery.data, &origin, arrived_at, arrival.as_ref(), None)
        .await
    {
        Ok(d) => d,
        Err(_) => {
            debug!("interrupted; leaving the delivery unacknowledged");
            return;
        }
    };
    if let Disposition::DeadLetter(reason) = disposition {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string());
        let copy = events::dead_letter(
            &pipeline.topology.dead_queue(),
            &delivery.data,
            &reason,
            message_id,
            &origin,
        );
        if !publish_until_confirmed(pipeline, publisher, &copy).await {
            return;
        }
    }
    acks.settled(delivery.delivery_tag);
}

/// Publishes `msg`, retrying until the broker confirms it; false when in-flight work
/// must stop first.
pub(super) async fn publish_until_confirmed(
    pipeline: &Pipeline,
    publisher: &Publisher,
    msg: &OutboxMessage,
) -> bool {
    let mut backoff = infra_backoff();
    loop {
        match publisher.publish(msg).await {
            Ok(()) => return true,
            Err(e) => {
                let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                warn!(error = %e, "could not move the command; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = pipeline.abort.cancelled() => return false,
                }
            }
        }
    }
}
