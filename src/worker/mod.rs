//! `run`: wires store, broker, backends, relay, scheduler and HTTP endpoints together,
//! consumes commands with manual acks (prefetch-bounded concurrency) and shuts down
//! gracefully: stop consuming, finish in-flight work within the grace, flush the outbox.

pub mod acks;
mod consume;
mod holds;
pub mod lanes;
mod pacing;
mod pipeline;
mod release;
mod replicas;
pub mod retention;
mod retry;
pub mod scheduler;

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{error, info, warn};

use self::{
    lanes::Lanes,
    pipeline::{BackendEntry, Pipeline},
    retry::RetryPolicy,
};
use crate::{
    admin,
    backend::{self, BackendBuildError},
    broker::{Broker, DECLARATION_NAMES, Publisher, Relay},
    config::Settings,
    ops::{
        health::{self, Health},
        metrics as m,
    },
    simulator::SimWorld,
    store::{self, Store, StoreError},
};

/// Why the worker could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendBuildError),
    /// The HTTP endpoints' listener.
    #[error(transparent)]
    Listen(#[from] std::io::Error),
}

/// A started worker: database migrated, backends built; not yet consuming.
pub struct Worker {
    pipeline: Arc<Pipeline>,
    broker: Arc<Broker>,
    publisher: Arc<Publisher>,
    pub health: Arc<Health>,
    pub world: SimWorld,
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
    pub async fn start(settings: Settings, world: Option<SimWorld>) -> Result<Self, WorkerError> {
        let settings = Arc::new(settings);
        let store = Store::connect(
            settings.database.url.expose(),
            settings.database.max_connections,
        )
        .await?;
        store.migrate().await?;
        let world = world.unwrap_or_default();
        if let Some(latency) = settings.backends.values().find_map(|b| b.latency()) {
            world.set_latency(latency);
        }
        let mut backends = HashMap::new();
        for (name, b) in &settings.backends {
            let built = backend::build(name, b, &world)?;
            let share = settings.rotation.rate_share;
            let entry = BackendEntry::new(name, built, b, share, &store);
            backends.insert(name.clone(), entry);
        }
        let broker = Broker::from_settings(&settings.amqp);
        let topology = broker.topology().clone();
        let publisher = Arc::new(Publisher::new(
            broker.clone(),
            settings.amqp.confirm_timeout,
        ));
        let health = Arc::new(Health::default());
        health.db_up.store(true, Ordering::Relaxed);
        health.set_broker_probe({
            let broker = broker.clone();
            move || broker.is_up()
        });
        health.set_declarations_probe({
            let broker = broker.clone();
            move || {
                let report = broker.declarations().report();
                report.into_iter().map(|(n, s)| (n, s.describe())).collect()
            }
        });
        let id = instance_id(&settings);
        let holds = Arc::new(holds::Holds::new(settings.breaker.clone()));
        let pipeline = Arc::new(Pipeline {
            retry: RetryPolicy::from_settings(&settings.retry),
            db: store::Batches::start(&store, &id, settings.worker.group_lease),
            instance_id: id,
            settings,
            store,
            topology,
            backends,
            lanes: Lanes::default(),
            relay_wakeup: Arc::new(Notify::new()),
            release_wakeup: Arc::new(Notify::new()),
            arrivals: Default::default(),
            holds,
            abort: CancellationToken::new(),
        });
        Ok(Self {
            pipeline,
            broker,
            publisher,
            health,
            world,
        })
    }

    pub fn store(&self) -> &Store {
        &self.pipeline.store
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let settings = self.pipeline.settings.clone();
        let background = CancellationToken::new();
        let tasks = TaskTracker::new();

        let relay = Relay::new(
            self.pipeline.store.clone(),
            self.publisher.clone(),
            self.pipeline.relay_wakeup.clone(),
        );
        tasks.spawn(relay.run(background.clone()));
        tasks.spawn(self.broker.clone().keep_declaring(background.clone()));
        tasks.spawn(db_watch(
            self.pipeline.store.clone(),
            self.health.clone(),
            background.clone(),
        ));
        if settings.rotation.enabled {
            let scheduler = scheduler::Scheduler::new(
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
            let app = health::router(self.health.clone(), m::install());
            m::broker_declarations(&DECLARATION_NAMES);
            m::register_known(settings.backends.keys().map(String::as_str));
            let stop = background.clone();
            tasks.spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
            });
        }

        tasks.spawn(retention::run(
            self.pipeline.store.clone(),
            settings.retention.clone(),
            background.clone(),
        ));
        if !settings.admin.listen.is_empty() {
            let listener = tokio::net::TcpListener::bind(&settings.admin.listen).await?;
            let (settings, store) = (settings.clone(), self.pipeline.store.clone());
            tasks.spawn(admin::serve(listener, settings, store, background.clone()));
        }

        if self.pipeline.store.serves_replicas() {
            tasks.spawn(replicas::run(
                self.pipeline.store.clone(),
                self.pipeline.instance_id.clone(),
                background.clone(),
            ));
        }

        // Pauses are obeyed from the first command on, then read every second.
        self.pipeline.holds.load_pauses(&self.pipeline.store).await;
        let (holds, store, stop) = (
            self.pipeline.holds.clone(),
            self.pipeline.store.clone(),
            background.clone(),
        );
        tasks.spawn(async move { holds.watch_pauses(&store, &stop).await });
        let in_flight = TaskTracker::new();
        let releaser = Arc::new(release::Releaser::new(
            self.pipeline.clone(),
            self.publisher.clone(),
            usize::from(settings.amqp.prefetch),
        ));
        in_flight.spawn(releaser.run(shutdown.clone(), in_flight.clone()));
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
        let relay = Relay::new(
            self.pipeline.store.clone(),
            self.publisher.clone(),
            self.pipeline.relay_wakeup.clone(),
        );
        background.cancel();
        relay.drain(Duration::from_secs(10)).await;
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
        self.publisher.close().await;
        self.broker.close().await;
        info!("stopped");
        Ok(())
    }
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
