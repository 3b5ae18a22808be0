//! An isolated console per test: its own AMQP name prefix and database, a worker with the
//! admin listener on a free port and an operator and a viewer token; everything removed
//! on drop. Also an HTTP client and the console's sign-in for tests without a browser.

use std::{path::Path, sync::atomic::Ordering, time::Duration};

use invite_worker::{
    config::{AdminToken, AmqpUrls, BackendSettings, QueueType, Role, Secret, Settings},
    simulator::SimWorld,
    store::Store,
    worker::{Worker, WorkerError},
};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use reqwest::{Client, Method, StatusCode, redirect::Policy};

use sea_orm::{ConnectionTrait, Database};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub(crate) use crate::teardown::{AMQP_URL, PG_ADMIN_URL};
pub(crate) const OPERATOR: &str = "operator-token-for-the-console-tests";
pub(crate) const VIEWER: &str = "viewer-token-for-the-console-tests";
/// The longest a start, a stop or a cleanup may take.
const BOUND: Duration = Duration::from_secs(90);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Db {
    Sqlite,
    Postgres,
}

pub(crate) fn group(n: usize) -> String {
    format!("1203630499999{n:05}@g.us")
}

/// Polls `cond` until it holds, failing the test after `within`.
pub(crate) async fn wait_until<F, Fut>(within: Duration, mut cond: F)
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A running worker with its admin listener, on its own broker names and database.
pub(crate) struct Console {
    pub base: String,
    pub store: Store,
    pub http: Client,
    stop: CancellationToken,
    handle: Option<JoinHandle<Result<(), WorkerError>>>,
    prefix: String,
    pg_db: Option<String>,
    dir: tempfile::TempDir,
}

impl Console {
    pub(crate) async fn start(db: Db) -> Self {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::default();
        settings
            .backends
            .insert("sim".into(), BackendSettings::simulator());
        settings.amqp.url = AmqpUrls::one(AMQP_URL);
        settings.amqp.name_prefix = format!("console-{id}.");
        settings.amqp.queue_type = QueueType::Classic;
        settings.http.listen = String::new();
        settings.rotation.enabled = false;
        settings.worker.shutdown_grace = Duration::from_secs(10);
        let mut pg_db = None;
        match db {
            Db::Sqlite => {
                let path = dir.path().join("console.db");
                settings.database.url =
                    Secret::new(format!("sqlite://{}?mode=rwc", path.display()));
            }
            Db::Postgres => {
                let name = format!("iw_console_{id}");
                let admin = Database::connect(PG_ADMIN_URL).await.expect("PostgreSQL");
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
        let port = free_port();
        settings.admin.listen = format!("127.0.0.1:{port}");
        settings.admin.tokens = vec![
            AdminToken {
                name: "oncall".into(),
                role: Role::Operator,
                token: Some(Secret::new(OPERATOR)),
                token_env: None,
            },
            AdminToken {
                name: "support".into(),
                role: Role::Viewer,
                token: Some(Secret::new(VIEWER)),
                token_env: None,
            },
        ];
        settings.validate().expect("valid settings");
        let worker = tokio::time::timeout(
            BOUND,
            Worker::start(settings.clone(), Some(SimWorld::new(true))),
        )
        .await
        .expect("the worker starts in time")
        .expect("the worker starts");
        let store = worker.store().clone();
        let health = worker.health.clone();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run(stop.clone()));
        wait_until(Duration::from_secs(20), || {
            let h = health.clone();
            async move { h.consuming.load(Ordering::Relaxed) }
        })
        .await;
        let http = Client::builder()
            .redirect(Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let base = format!("http://127.0.0.1:{port}");
        let console = Self {
            base,
            store,
            http,
            stop,
            handle: Some(handle),
            prefix: format!("console-{id}."),
            pg_db,
            dir,
        };
        wait_until(Duration::from_secs(10), || async {
            let r = console
                .http
                .get(console.url("/console/signin"))
                .send()
                .await;
            r.is_ok_and(|r| r.status() == StatusCode::OK)
        })
        .await;
        console
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Calls the API with `token` (none when `None`): status and JSON body.
    pub(crate) async fn api(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.expect("the admin listener answers");
        let status = r.status();
        let body = r.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Publishes a revoke through the API as the operator; its command_id.
    pub(crate) async fn revoke(&self, session: &str, group: &str) -> String {
        let body = serde_json::json!({"session_id": session, "group_id": group, "reason": "test"});
        let (status, body) = self
            .api(Method::POST, "/api/send/revoke", Some(OPERATOR), Some(body))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["command_id"].as_str().expect("command_id").to_owned()
    }

    /// Waits until the command is done.
    pub(crate) async fn wait_done(&self, command_id: &str) {
        wait_until(Duration::from_secs(20), || async {
            let row = self.store.find_command(command_id).await.ok().flatten();
            row.is_some_and(|r| r.status == "done")
        })
        .await;
    }

    /// Publishes a raw body to the commands exchange, as a service would.
    pub(crate) async fn publish_raw(&self, body: &[u8]) {
        let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
            .await
            .expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let exchange = invite_worker::broker::Topology::new(&self.prefix).commands_exchange();
        ch.basic_publish(
            exchange.as_str().into(),
            "command.revoke_invite".into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_content_type("application/json".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
        let _ = conn.close(200, "OK".into()).await;
    }

    /// Signs in on the console's own page with `token`: the session cookie.
    pub(crate) async fn sign_in(&self, token: &str) -> String {
        let r = self
            .http
            .post(self.url("/console/signin"))
            .header("origin", &self.base)
            .form_of(&[("token", token)])
            .send()
            .await
            .expect("sign-in answers");
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let cookie = r
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .expect("a session cookie")
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        cookie.split(';').next().unwrap_or_default().to_owned()
    }

    /// A console page with the session `cookie`: status and HTML.
    pub(crate) async fn page(&self, path: &str, cookie: &str) -> (StatusCode, String) {
        let r = self
            .http
            .get(self.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .expect("the console answers");
        (r.status(), r.text().await.unwrap_or_default())
    }

    pub(crate) async fn stop(mut self) {
        self.stop.cancel();
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(BOUND, h)
                .await
                .expect("the worker stops in time")
                .expect("worker task")
                .expect("the worker stops cleanly");
        }
    }

    pub(crate) async fn cleanup(prefix: String, pg_db: Option<String>) {
        let topology = invite_worker::broker::Topology::new(&prefix);
        crate::teardown::remove(&topology, pg_db.as_deref()).await;
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop.cancel();
        let (prefix, pg_db) = (self.prefix.clone(), self.pg_db.take());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                let cleanup =
                    async { tokio::time::timeout(BOUND, Self::cleanup(prefix, pg_db)).await };
                if rt.block_on(cleanup).is_err() {
                    eprintln!("console test cleanup did not finish within {BOUND:?}");
                }
            }
        })
        .join();
    }
}

/// A form body, as a browser posts it (reqwest's `form` is a feature not enabled here).
pub(crate) trait FormPost {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormPost for reqwest::RequestBuilder {
    fn form_of(self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}
