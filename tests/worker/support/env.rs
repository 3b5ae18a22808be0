//! An isolated environment per test: its own AMQP name prefix, its own SQLite file or
//! PostgreSQL database, and a worker running in-process on it. Everything is removed
//! when the environment is dropped.

use std::{path::Path, time::Duration};

use invite_worker::{
    broker::Topology,
    config::{AmqpUrls, BackendSettings, QueueType, Secret, Settings},
    simulator::SimWorld,
    store::Store,
    worker::{Worker, WorkerError},
};
use lapin::{
    Channel, Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable,
};
use sea_orm::{ConnectionTrait, Database};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::wait_until;

pub(crate) use super::teardown::{AMQP_URL, PG_ADMIN_URL};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
}

/// Generates `sqlite` and `postgres` variants of an async test function taking a [`Db`].
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::support::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::support::Db::Postgres).await
            }
        }
    )*};
}

pub(crate) struct TestEnv {
    pub settings: Settings,
    pub topology: Topology,
    pub world: SimWorld,
    pg_db: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestEnv {
    pub(crate) async fn new(db: Db) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        let db_path = dir.path().join("test.db");
        let mut settings = Settings::default();
        settings
            .backends
            .insert("sim".into(), BackendSettings::simulator());
        settings.amqp.url = AmqpUrls::one(AMQP_URL);
        settings.amqp.name_prefix = format!("test-{id}.");
        settings.amqp.queue_type = QueueType::Classic;
        settings.http.listen = String::new();
        settings.rotation.enabled = false;
        settings.worker.shutdown_grace = Duration::from_secs(10);
        settings.retry.initial_delay = Duration::from_millis(50);
        settings.retry.max_delay = Duration::from_millis(400);
        let mut pg_db = None;
        match db {
            Db::Sqlite => {
                settings.database.url =
                    Secret::new(format!("sqlite://{}?mode=rwc", db_path.display()));
            }
            Db::Postgres => {
                let name = format!("iw_test_{id}");
                let admin = Database::connect(PG_ADMIN_URL)
                    .await
                    .expect("connect to PostgreSQL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create database");
                let _ = admin.close().await;
                settings.database.url =
                    Secret::new(format!("postgres://postgres@127.0.0.1:5432/{name}"));
                pg_db = Some(name);
            }
        }
        let topology = Topology::new(&settings.amqp.name_prefix);
        Self {
            settings,
            topology,
            world: SimWorld::new(true),
            pg_db,
            _dir: dir,
        }
    }

    /// The environment's own temporary directory (removed on drop).
    pub(crate) fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A connection to the environment's database, as the worker sees it.
    pub(crate) async fn store(&self) -> Store {
        Store::connect(self.settings.database.url.expose(), 2)
            .await
            .expect("connect to the test database")
    }

    /// The PostgreSQL database of a [`Db::Postgres`] environment.
    pub(crate) fn pg_database(&self) -> Option<&str> {
        self.pg_db.as_deref()
    }

    /// Starts a worker in this process on these settings and this simulator world.
    pub(crate) async fn start_worker(&self) -> RunningWorker {
        self.start_worker_with(self.settings.clone()).await
    }

    pub(crate) async fn start_worker_with(&self, settings: Settings) -> RunningWorker {
        let worker = tokio::time::timeout(BOUND, Worker::start(settings, Some(self.world.clone())))
            .await
            .unwrap_or_else(|_| panic!("the worker did not start within {BOUND:?}"))
            .expect("worker starts");
        let store = worker.store().clone();
        let health = worker.health.clone();
        let token = CancellationToken::new();
        let handle = tokio::spawn(worker.run(token.clone()));
        // Ready once the consumer is attached.
        wait_until(Duration::from_secs(20), || {
            let h = health.clone();
            async move { h.consuming.load(std::sync::atomic::Ordering::Relaxed) }
        })
        .await;
        RunningWorker {
            token,
            handle: Some(handle),
            store,
        }
    }

    pub(crate) async fn channel(&self) -> (Connection, Channel) {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }

    /// Messages ready in one of this environment's queues.
    pub(crate) async fn queue_len(&self, queue: &str) -> u32 {
        let (conn, ch) = self.channel().await;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = conn.close(200, "OK".into()).await;
        q.message_count()
    }

    async fn cleanup(topology: Topology, pg_db: Option<String>) {
        super::teardown::remove(&topology, pg_db.as_deref()).await;
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let topology = self.topology.clone();
        let pg_db = self.pg_db.take();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                let what = format!("{:?} / {pg_db:?}", topology.exchanges());
                // The timer is made inside the runtime (outside, tokio panics).
                let cleanup =
                    async { tokio::time::timeout(BOUND, Self::cleanup(topology, pg_db)).await };
                if rt.block_on(cleanup).is_err() {
                    eprintln!("test cleanup did not finish within {BOUND:?}: {what}");
                }
            }
        })
        .join();
    }
}

/// The longest a worker's start or stop, or a test's cleanup, may take: a hang fails the
/// test with its cause instead of stalling the suite (a stop waits at most the shutdown
/// grace, 30 s by default, plus the outbox drain).
const BOUND: Duration = Duration::from_secs(90);

pub(crate) struct RunningWorker {
    token: CancellationToken,
    handle: Option<JoinHandle<Result<(), WorkerError>>>,
    pub store: Store,
}

impl RunningWorker {
    pub(crate) async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(BOUND, h)
                .await
                .unwrap_or_else(|_| panic!("the worker did not stop within {BOUND:?}"))
                .expect("worker task")
                .expect("worker exits cleanly");
        }
    }
}

impl Drop for RunningWorker {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
