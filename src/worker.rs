//! `run`: wires store, broker, backends, relay, scheduler and HTTP endpoints together,
//! consumes commands with manual acks (prefetch-bounded concurrency) and shuts down
//! gracefully: stop consuming, finish in-flight work within the grace, flush the outbox.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, warn};

use crate::{
    acks::Acks,
    amqp::{Broker, Publisher, Topology, retry_tier},
    backend,
    config::Settings,
    events::OutboxMessage,
    lanes::Lanes,
    metrics as m,
    outbox::Relay,
    pipeline::{BackendEntry, Disposition, Pipeline},
    retry::{RetryPolicy, infra_backoff},
    simulator::SimWorld,
    store::Store,
};

/// Liveness and readiness, shared with the HTTP endpoints.
#[derive(Default)]
pub struct Health {
    pub db_up: AtomicBool,
    pub consuming: AtomicBool,
    /// Unix millis of the consume loop's last turn.
    pub last_tick_ms: AtomicI64,
    pub broker: std::sync::OnceLock<Arc<Broker>>,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.db_up.load(Ordering::Relaxed) && self.broker.get().is_some_and(|b| b.is_up())
    }

    /// Whether the consume loop turned within `max_silence`.
    pub fn alive(&self, max_silence: Duration) -> bool {
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        last == 0 || chrono::Utc::now().timestamp_millis() - last <= max_silence.as_millis() as i64
    }

    fn tick(&self) {
        self.last_tick_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }
}

/// A started worker: database migrated, backends built; not yet consuming.
pub struct Worker {
    pipeline: Arc<Pipeline>,
    broker: Arc<Broker>,
    publisher: Arc<Publisher>,
    pub health: Arc<Health>,
    pub world: SimWorld,
    /// The rate-limit share of this process, kept by [`crate::replicas::run`] (when
    /// the database can serve several processes).
    share: Option<tokio::sync::watch::Sender<u32>>,
}

fn instance_id(settings: &Settings) -> String {
    if !settings.worker.instance_id.is_empty() {
        return settings.worker.instance_id.clone();
    }
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
    format!(
        "{}-{}-{}",
        host.trim(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Worker {
    /// Connects the database (migrating it) and builds the backends. `world` is the
    /// simulator world for `simulator` backends (a fresh one when `None`).
    pub async fn start(settings: Settings, world: Option<SimWorld>) -> anyhow::Result<Self> {
        let settings = Arc::new(settings);
        let store = Store::connect(
            settings.database.url.expose(),
            settings.database.max_connections,
        )
        .await?;
        store.migrate().await?;
        // PostgreSQL can serve several processes: they share each rate limit, and hold
        // their requests until their heartbeats have counted them (`replicas`).
        let shared = store.backend() == sea_orm::DbBackend::Postgres;
        let (share_tx, share) = tokio::sync::watch::channel(if shared { 0 } else { 1 });
        let world = world.unwrap_or_default();
        if let Some(latency) = settings.backends.values().find_map(|b| b.latency) {
            world.set_latency(latency);
        }
        let mut backends = HashMap::new();
        for (name, b) in &settings.backends {
            let built = backend::build(name, b, &world).map_err(|e| anyhow::anyhow!(e))?;
            backends.insert(name.clone(), BackendEntry::new(built, b, share.clone()));
        }
        let topology = Topology::new(&settings.amqp.name_prefix);
        let broker = Broker::new(
            settings.amqp.url.expose(),
            topology.clone(),
            settings.amqp.queue_type,
        );
        let publisher = Arc::new(Publisher::new(
            broker.clone(),
            settings.amqp.confirm_timeout,
        ));
        let health = Arc::new(Health::default());
        health.db_up.store(true, Ordering::Relaxed);
        let _ = health.broker.set(broker.clone());
        let id = instance_id(&settings);
        let pipeline = Arc::new(Pipeline {
            retry: RetryPolicy::from_settings(&settings.retry),
            db: crate::store::Batches::start(&store, &id, settings.worker.group_lease),
            instance_id: id,
            settings,
            store,
            topology,
            backends,
            lanes: Lanes::default(),
            relay_wakeup: Arc::new(Notify::new()),
            abort: CancellationToken::new(),
        });
        Ok(Self {
            pipeline,
            broker,
            publisher,
            health,
            world,
            share: shared.then_some(share_tx),
        })
    }

    pub fn store(&self) -> &Store {
        &self.pipeline.store
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = self.pipeline.settings.clone();
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();

        let relay = Relay {
            store: self.pipeline.store.clone(),
            publisher: self.publisher.clone(),
            wakeup: self.pipeline.relay_wakeup.clone(),
        };
        tasks.spawn(relay.run(background.clone()));
        tasks.spawn(db_watch(
            self.pipeline.store.clone(),
            self.health.clone(),
            background.clone(),
        ));
        if settings.rotation.enabled {
            let scheduler = crate::scheduler::Scheduler::new(
                self.pipeline.store.clone(),
                self.publisher.clone(),
                self.pipeline.topology.clone(),
                settings.clone(),
            );
            tasks.spawn(scheduler.run(background.clone()));
        }
        if !settings.http.listen.is_empty() {
            let listener = tokio::net::TcpListener::bind(&settings.http.listen).await?;
            info!(addr = %listener.local_addr()?, "serving /healthz, /readyz, /metrics");
            let app = crate::http::router(self.health.clone(), m::install());
            let stop = background.clone();
            tasks.spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
        }

        match &self.share {
            Some(tx) => {
                let longest_period = settings
                    .backends
                    .values()
                    .map(|b| b.rate_limit().period)
                    .max()
                    .unwrap_or_default();
                tasks.spawn(crate::replicas::run(
                    self.pipeline.store.clone(),
                    self.pipeline.instance_id.clone(),
                    crate::replicas::Share::new(longest_period),
                    tx.clone(),
                    background.clone(),
                ));
            }
            None => m::rate_limit_share(1),
        }

        if let Some(tx) = &self.share {
            // Take no commands before this process's share of the rate limits is known:
            // meanwhile (a second or so alone, longer beside others) the other
            // processes serve them.
            let mut share = tx.subscribe();
            info!("counting the worker processes that share the rate limits");
            tokio::select! {
                _ = share.wait_for(|n| *n > 0) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        let in_flight = TaskTracker::new();
        self.consume(&shutdown, &in_flight).await;

        info!("stopping: waiting for in-flight commands");
        in_flight.close();
        if tokio::time::timeout(settings.worker.shutdown_grace, in_flight.wait())
            .await
            .is_err()
        {
            warn!("shutdown grace elapsed; unfinished commands will be redelivered");
            self.pipeline.abort.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), in_flight.wait()).await;
        }
        let relay = Relay {
            store: self.pipeline.store.clone(),
            publisher: self.publisher.clone(),
            wakeup: self.pipeline.relay_wakeup.clone(),
        };
        background.cancel();
        relay.drain(Duration::from_secs(10)).await;
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        self.publisher.close().await;
        self.broker.close().await;
        info!("stopped");
        Ok(())
    }

    async fn consume(&self, shutdown: &CancellationToken, in_flight: &TaskTracker) {
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
                                handle(&pipeline, &publisher, &acks, delivery).await;
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

/// The delivery's text headers and routing key, as its parked or dead-lettered copies
/// keep them (see [`crate::events::origin_headers`]).
fn origin(delivery: &Delivery) -> Vec<(String, String)> {
    crate::events::origin_headers(
        crate::amqp::text_headers(&delivery.properties),
        delivery.routing_key.as_str(),
    )
}

/// Settles one delivery: process, then park or ack. A delivery that cannot be settled
/// (shutdown) is left unacked and returns to the queue when the channel closes.
async fn handle(pipeline: &Pipeline, publisher: &Publisher, acks: &Acks, delivery: Delivery) {
    let origin = origin(&delivery);
    let disposition = match pipeline.process(&delivery.data, &origin).await {
        Ok(d) => d,
        Err(_) => {
            debug!("interrupted; leaving the delivery unacknowledged");
            return;
        }
    };
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string());
    let copy = match disposition {
        Disposition::Ack => None,
        Disposition::Park(delay) => Some(OutboxMessage {
            exchange: String::new(),
            routing_key: pipeline.topology.retry_queue(retry_tier(delay)),
            message_id,
            message_type: None,
            correlation_id: None,
            headers: origin,
            payload: delivery.data.clone(),
        }),
        Disposition::DeadLetter(reason) => Some(crate::events::dead_letter(
            &pipeline.topology.dead_queue(),
            &delivery.data,
            &reason,
            message_id,
            &origin,
        )),
    };
    if let Some(msg) = copy {
        let mut backoff = infra_backoff();
        loop {
            match publisher.publish(&msg).await {
                Ok(()) => break,
                Err(e) => {
                    let wait = backoff.next().unwrap_or(Duration::from_secs(5));
                    warn!(error = %e, "could not move the command; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = pipeline.abort.cancelled() => return,
                    }
                }
            }
        }
    }
    acks.settled(delivery.delivery_tag);
}

async fn db_watch(store: Store, health: Arc<Health>, stop: CancellationToken) {
    loop {
        let up = store.ping().await;
        if health.db_up.swap(up, Ordering::Relaxed) != up {
            if up {
                info!("database is reachable again")
            } else {
                error!("database is unreachable")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
