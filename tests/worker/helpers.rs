//! Test harness: an isolated environment per test (own AMQP name prefix, own SQLite file
//! or PostgreSQL database), a worker running in-process, and taps on events and
//! dead letters. Everything is removed when the environment is dropped.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use futures::StreamExt;
use invite_worker::{
    broker::Topology,
    cli::send,
    config::{QueueType, Secret, Settings},
    domain::{CommandSpec, CommandType},
    simulator::SimWorld,
    store::Store,
    worker::{Worker, WorkerError},
};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
        ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
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
                super::$name($crate::helpers::Db::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Db::Postgres).await
            }
        }
    )*};
}

pub struct TestEnv {
    pub settings: Settings,
    pub topology: Topology,
    pub world: SimWorld,
    pg_db: Option<String>,
    _dir: tempfile::TempDir,
}

impl TestEnv {
    pub async fn new(db: Db) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        let db_path = dir.path().join("test.db");
        let mut settings = Settings::default();
        settings.backends.insert(
            "sim".into(),
            invite_worker::config::BackendSettings::simulator(),
        );
        settings.amqp.url = Secret::new(AMQP_URL);
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
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// A connection to the environment's database, as the worker sees it.
    pub async fn store(&self) -> Store {
        Store::connect(self.settings.database.url.expose(), 2)
            .await
            .expect("connect to the test database")
    }

    /// Environment overrides that make `invite-worker run` use this environment: its
    /// AMQP prefix and database, classic queues, no HTTP listener, no scheduler, short
    /// retries and a short group lease (a crashed process's lease expires quickly).
    pub fn process_env(&self) -> Vec<(String, String)> {
        [
            ("AMQP__URL", self.settings.amqp.url.expose()),
            ("AMQP__NAME_PREFIX", &self.settings.amqp.name_prefix),
            ("AMQP__QUEUE_TYPE", "classic"),
            ("DATABASE__URL", self.settings.database.url.expose()),
            ("HTTP__LISTEN", ""),
            ("ROTATION__ENABLED", "false"),
            ("RETRY__INITIAL_DELAY", "50ms"),
            ("RETRY__MAX_DELAY", "400ms"),
            ("WORKER__SHUTDOWN_GRACE", "10s"),
            ("WORKER__GROUP_LEASE", "3s"),
            ("LOG__FORMAT", "json"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INVITE_WORKER__{k}"), v.to_owned()))
        .collect()
    }

    /// Starts a worker in this process on these settings and this simulator world.
    /// The PostgreSQL database of a [`Db::Postgres`] environment.
    pub fn pg_database(&self) -> Option<&str> {
        self.pg_db.as_deref()
    }

    pub async fn start_worker(&self) -> RunningWorker {
        self.start_worker_with(self.settings.clone()).await
    }

    pub async fn start_worker_with(&self, settings: Settings) -> RunningWorker {
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

    pub async fn channel(&self) -> (Connection, Channel) {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        (conn, ch)
    }

    /// Publishes commands through the same code path as `invite-worker send`.
    pub async fn send(&self, specs: &[CommandSpec]) -> Vec<Uuid> {
        send::publish(&self.settings, specs).await.expect("send")
    }

    /// Publishes raw bytes to the commands exchange.
    pub async fn publish_raw(&self, body: &[u8]) {
        self.publish_raw_with(body, "command.revoke_invite", FieldTable::default())
            .await;
    }

    /// [`TestEnv::publish_raw`] with a routing key and headers of its own.
    pub async fn publish_raw_with(&self, body: &[u8], routing_key: &str, headers: FieldTable) {
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
    pub async fn tap_events(&self) -> EventTap {
        let (conn, ch) = self.channel().await;
        invite_worker::broker::declare(&ch, &self.topology, QueueType::Classic)
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
    pub async fn dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        self.dead_letters_with_headers()
            .await
            .into_iter()
            .map(|(body, mut headers)| (body, headers.remove("x-invite-error").unwrap_or_default()))
            .collect()
    }

    /// Drains the dead-letter queue: (body, headers with text values).
    pub async fn dead_letters_with_headers(
        &self,
    ) -> Vec<(Vec<u8>, std::collections::BTreeMap<String, String>)> {
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
            let headers = invite_worker::broker::text_headers(&m.delivery.properties)
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

    /// Environment overrides that point the `invite-worker` binary at this environment's
    /// broker names and database, with the HTTP endpoints and the scheduler off.
    pub fn cli_env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        [
            ("AMQP__URL", s.amqp.url.expose().to_owned()),
            ("AMQP__NAME_PREFIX", s.amqp.name_prefix.clone()),
            ("AMQP__QUEUE_TYPE", "classic".to_owned()),
            ("DATABASE__URL", s.database.url.expose().to_owned()),
            ("HTTP__LISTEN", String::new()),
            ("ROTATION__ENABLED", "false".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INVITE_WORKER__{k}"), v))
        .collect()
    }

    /// A `tokio::process::Command` for the binary with [`TestEnv::cli_env`] applied.
    pub fn cli_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_invite-worker"));
        cmd.args(args)
            .envs(self.cli_env())
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs the binary to completion: (exit code, stdout, stderr).
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.cli_command(args).output())
            .await
            .expect("the CLI finishes within 60s")
            .expect("run the CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Messages ready in one of this environment's queues.
    pub async fn queue_len(&self, queue: &str) -> u32 {
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
        if let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await {
            if let Ok(ch) = conn.create_channel().await {
                for q in topology.queues() {
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
                for e in topology.exchanges() {
                    let _ = ch
                        .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = conn.close(200, "OK".into()).await;
        }
        if let Some(name) = pg_db
            && let Ok(admin) = Database::connect(PG_ADMIN_URL).await
        {
            // A pool the test left open reconnects when FORCE ends its session, and a
            // connection arriving meanwhile makes the drop fail: try again.
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            for attempt in 1..=10 {
                match admin.execute_unprepared(&sql).await {
                    Ok(_) => break,
                    Err(e) if attempt == 10 => eprintln!("test cleanup: {name}: {e}"),
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            let _ = admin.close().await;
        }
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

pub struct RunningWorker {
    token: CancellationToken,
    handle: Option<JoinHandle<Result<(), WorkerError>>>,
    pub store: Store,
}

impl RunningWorker {
    pub async fn stop(mut self) {
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

#[derive(Clone, Debug)]
pub struct EventProps {
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub correlation_id: Option<String>,
    pub persistent: bool,
    pub routing_key: String,
}

pub struct EventTap {
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
    pub async fn take(&mut self, n: usize, within: Duration) -> Vec<(EventProps, Value)> {
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
    pub async fn until_command(
        &mut self,
        command_id: Uuid,
        within: Duration,
    ) -> Vec<(EventProps, Value)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
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
    pub fn drain_now(&mut self) -> Vec<(EventProps, Value)> {
        let mut out = Vec::new();
        while let Ok(e) = self.rx.try_recv() {
            out.push(e);
        }
        out
    }
}

pub fn revoke(session: &str, group: &str) -> CommandSpec {
    CommandSpec {
        kind: CommandType::RevokeInvite,
        session: session.into(),
        group: group.into(),
        backend: None,
        reason: Some("test".into()),
        requested_by: Some("tests".into()),
        command_id: None,
    }
}

pub fn rotate(session: &str, group: &str) -> CommandSpec {
    CommandSpec {
        kind: CommandType::RotateExpiringLink,
        ..revoke(session, group)
    }
}

pub fn group(n: usize) -> String {
    format!("1203630412345{n:05}@g.us")
}

/// Polls `cond` until it holds, failing the test after `within`.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running `invite-worker simulate` child process, killed on drop.
pub struct SimulatorProcess {
    child: std::process::Child,
    pub base: String,
    http: reqwest::Client,
}

impl SimulatorProcess {
    pub fn spawn(token: &str) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_invite-worker"))
            .args(["simulate", "--listen", "127.0.0.1:0", "--token", token])
            .env("INVITE_WORKER__LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn simulate");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listen line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening on ADDR")
            .to_owned();
        Self {
            child,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    pub async fn link(&self, session: &str, group: &str) -> Value {
        self.http
            .get(format!(
                "{}/_control/groups/link?session={}&group={}",
                self.base,
                percent_encoding::utf8_percent_encode(session, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(group, percent_encoding::NON_ALPHANUMERIC)
            ))
            .send()
            .await
            .expect("control request")
            .json()
            .await
            .expect("control json")
    }

    /// `POST /_control/<path>` with a JSON body.
    pub async fn control(&self, path: &str, body: Value) {
        let status = self
            .http
            .post(format!("{}/_control/{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("control request")
            .status();
        assert!(status.is_success(), "POST /_control/{path}: {status}");
    }

    pub async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_control/stats", self.base))
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats json")
    }
}

impl Drop for SimulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `invite-worker run` as a child process, configured through environment overrides,
/// its output kept in a log file. Killed (SIGKILL) on drop.
pub struct WorkerProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts the binary with `env` (`INVITE_WORKER__…` pairs) and, when given, the
    /// failpoint armed; the log goes to `log`.
    pub fn spawn(env: &[(String, String)], failpoint: Option<&str>, log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("worker log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_invite-worker"));
        cmd.arg("run")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove(invite_worker::ops::failpoint::ENV)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .kill_on_drop(true);
        if let Some(point) = failpoint {
            cmd.env(invite_worker::ops::failpoint::ENV, point);
        }
        let child = cmd.spawn().expect("spawn invite-worker run");
        Self { child, log }
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        let pid = self.child.id().expect("worker still running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Sends SIGKILL.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill worker");
    }

    /// Waits for the process to exit, failing the test (with the log) after `within`.
    pub async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for worker"),
            Err(_) => panic!(
                "worker did not exit within {within:?}; log:\n{}",
                self.log_tail()
            ),
        }
    }

    /// The worker's log so far (of every process that wrote to the same file).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the worker's log.
    pub fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
