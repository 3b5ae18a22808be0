//! What the benchmarks share (included by each with `#[path]`): the local broker and
//! PostgreSQL, a fresh AMQP name prefix and a fresh database per scenario, publishing
//! commands with confirms, a sink of the worker's events, and the worker as a child
//! process (`BENCH_WORKER` runs another build). Each benchmark uses part of it.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    ffi::OsString,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use invite_worker::{
    broker::{QueueOptions, Topology, declare},
    config::Settings,
    domain::command::CommandSpec,
};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
        QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, Database};
use uuid::Uuid;

pub(crate) const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub(crate) const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub(crate) fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether `BENCH_SKIP` (a comma list) names the scenario.
pub(crate) fn skip(name: &str) -> bool {
    std::env::var("BENCH_SKIP").is_ok_and(|s| s.split(',').any(|x| x.trim() == name))
}

pub(crate) async fn channel() -> (Connection, Channel) {
    let conn = Connection::connect(AMQP, ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// A topology under a fresh name prefix, so that a scenario shares nothing with another
/// (or with a worker on the defaults).
pub(crate) fn new_topology() -> Topology {
    Topology::new(&format!(
        "bench-{}.",
        &Uuid::new_v4().simple().to_string()[..8]
    ))
}

/// The name prefix `topo` was made with (`amqp.name_prefix` of its workers).
pub(crate) fn topo_prefix(topo: &Topology) -> String {
    topo.commands_queue()
        .trim_end_matches("invite_link.commands")
        .to_owned()
}

pub(crate) async fn declare_topology(topo: &Topology) {
    let (conn, ch) = channel().await;
    // As the workers declare it (default settings), so that theirs is no different.
    let opts = QueueOptions::from_settings(&Settings::default().amqp);
    declare(&ch, topo, opts).await.unwrap();
    let _ = conn.close(200, "OK".into()).await;
}

/// Deletes every queue and exchange of `topo`.
pub(crate) async fn cleanup(topo: &Topology) {
    let (conn, ch) = channel().await;
    for q in topo.queues() {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in topo.exchanges() {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "OK".into()).await;
}

/// A fresh database for one scenario: a SQLite file in a temporary directory, or a
/// PostgreSQL database dropped by [`BenchDb::drop_it`].
pub(crate) struct BenchDb {
    pub(crate) url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl BenchDb {
    /// `kind`: `sqlite` or `postgres`.
    pub(crate) async fn new(kind: &str) -> Self {
        if kind == "sqlite" {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("bench.db").display()
            );
            Self {
                url,
                pg_name: None,
                _dir: Some(dir),
            }
        } else {
            let name = format!("iw_bench_{}", &Uuid::new_v4().simple().to_string()[..8]);
            let admin = Database::connect(PG_ADMIN).await.unwrap();
            admin
                .execute_unprepared(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
            let _ = admin.close().await;
            Self {
                url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
                pg_name: Some(name),
                _dir: None,
            }
        }
    }

    pub(crate) async fn drop_it(self) {
        if let Some(name) = self.pg_name {
            let admin = Database::connect(PG_ADMIN).await.unwrap();
            let _ = admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// Publishes `commands` (a fresh command_id each), pipelined with publisher confirms;
/// returns each one's id and the instant it was published, in order.
pub(crate) async fn publish(
    topo: &Topology,
    commands: impl IntoIterator<Item = CommandSpec>,
) -> Vec<(Uuid, Instant)> {
    let (conn, ch) = channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let exchange = topo.commands_exchange();
    let mut sent = Vec::new();
    let mut pending = Vec::new();
    for spec in commands {
        let id = Uuid::new_v4();
        sent.push((id, Instant::now()));
        let confirm = ch
            .basic_publish(
                exchange.as_str().into(),
                spec.kind.routing_key().as_str().into(),
                BasicPublishOptions::default(),
                &spec.body(id),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into())
                    .with_message_id(id.to_string().as_str().into()),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() >= 1000 {
            for c in pending.drain(..) {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }
    for c in pending {
        assert!(c.await.unwrap().is_ack());
    }
    let _ = conn.close(200, "OK".into()).await;
    sent
}

/// Every event of one topology, by command_id: when it arrived (the first event of a
/// command; there is one per command), and how many were `invite_link.rotation_failed`.
pub(crate) struct EventSink {
    pub(crate) arrivals: Arc<Mutex<HashMap<String, Instant>>>,
    failed: Arc<AtomicUsize>,
    conn: Connection,
}

/// A sink on an exclusive queue bound to the events exchange with `#`.
pub(crate) async fn sink(topo: &Topology) -> EventSink {
    let (conn, ch) = channel().await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    ch.queue_bind(
        q.name().clone(),
        topo.events_exchange().as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
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
        .unwrap();
    let arrivals = Arc::new(Mutex::new(HashMap::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let (a, f) = (arrivals.clone(), failed.clone());
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            let at = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap_or_default();
            if v["event_type"] == "invite_link.rotation_failed" {
                f.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(id) = v["command_id"].as_str() {
                a.lock().unwrap().entry(id.to_owned()).or_insert(at);
            }
        }
    });
    EventSink {
        arrivals,
        failed,
        conn,
    }
}

impl EventSink {
    /// Waits until `n` commands have their event; false after `limit`.
    pub(crate) async fn wait_for(&self, n: usize, limit: Duration) -> bool {
        self.wait_until(limit, |a| a.len() >= n).await
    }

    /// Waits until command `id` has its event; false after `limit`.
    pub(crate) async fn wait_for_id(&self, id: Uuid, limit: Duration) -> bool {
        let id = id.to_string();
        self.wait_until(limit, |a| a.contains_key(&id)).await
    }

    async fn wait_until(
        &self,
        limit: Duration,
        done: impl Fn(&HashMap<String, Instant>) -> bool,
    ) -> bool {
        let end = Instant::now() + limit;
        while !done(&self.arrivals.lock().unwrap()) {
            if Instant::now() > end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.arrivals.lock().unwrap().len()
    }

    pub(crate) fn arrival(&self, id: Uuid) -> Option<Instant> {
        self.arrivals.lock().unwrap().get(&id.to_string()).copied()
    }

    /// `invite_link.rotation_failed` events seen.
    pub(crate) fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }

    /// Closes its connection (and so its exclusive queue).
    pub(crate) async fn close(self) {
        let _ = self.conn.close(200, "OK".into()).await;
    }

    /// Forgets the events seen so far (after a warm-up).
    pub(crate) fn clear(&self) {
        self.arrivals.lock().unwrap().clear();
        self.failed.store(0, Ordering::Relaxed);
    }
}

/// The worker binary: `BENCH_WORKER` (another build, for A/B comparisons) or this one.
pub(crate) fn worker_bin() -> OsString {
    std::env::var_os("BENCH_WORKER").unwrap_or_else(|| env!("CARGO_BIN_EXE_invite-worker").into())
}

/// The worker's command (`args`, e.g. `run`) on `db_url`, under the AMQP name prefix
/// `prefix`, its HTTP endpoints off, the scheduler off and its log at `warn`; `env` is
/// applied last. Every other `INVITE_WORKER__…` variable of the benchmark's own
/// environment reaches the worker.
pub(crate) fn worker_command(
    args: &[&str],
    prefix: &str,
    db_url: &str,
    env: &[(&str, String)],
) -> Command {
    let mut cmd = Command::new(worker_bin());
    cmd.args(args)
        .env("INVITE_WORKER__AMQP__NAME_PREFIX", prefix)
        .env("INVITE_WORKER__DATABASE__URL", db_url)
        .env("INVITE_WORKER__HTTP__LISTEN", "")
        .env("INVITE_WORKER__ROTATION__ENABLED", "false")
        .env("INVITE_WORKER__LOG__FILTER", "warn")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    cmd
}

/// A child process, stopped with SIGTERM by [`Process::stop`] and killed if dropped
/// still running (a benchmark that panics leaves no process behind).
pub(crate) struct Process {
    child: Child,
}

impl Process {
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        Self { child }
    }

    pub(crate) fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its standard output, when piped.
    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then up to `grace` for a graceful exit, then SIGKILL.
    pub(crate) async fn stop_within(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        if self.wait_exit(grace).await.is_none() {
            eprintln!(
                "process {} still running {grace:?} after SIGTERM: killed",
                self.id()
            );
        }
    }

    /// SIGTERM and a wait for the exit, however long the graceful shutdown takes.
    pub(crate) fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
