//! A worker running on PostgreSQL (its own database and AMQP name prefix) against the
//! in-process simulator, scraped: every `invite_worker_…` metric the dashboard and the
//! rules read is in its `/metrics`, including those that only move on rare events.

use std::{
    collections::BTreeSet,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use invite_worker::{
    broker::Topology,
    cli::send,
    config::{AmqpUrls, BackendSettings, QueueType, Secret, Settings},
    domain::{CommandSpec, CommandType},
    simulator::SimWorld,
    worker::Worker,
};
use sea_orm::{ConnectionTrait, Database};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    DASHBOARD, RULES, dashboard_expressions, recorded, rule_expressions,
    teardown::{AMQP_URL, PG_ADMIN_URL},
    worker_metrics,
};

const WAIT: Duration = Duration::from_secs(60);

/// This test's database and broker names, removed on drop.
struct Scratch {
    database: String,
    topology: Topology,
}

impl Scratch {
    async fn new() -> (Self, Settings) {
        let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("iw_test_deploy_{id}");
        let admin = Database::connect(PG_ADMIN_URL).await.expect("PostgreSQL");
        admin
            .execute_unprepared(&format!("CREATE DATABASE {database}"))
            .await
            .expect("create database");
        let _ = admin.close().await;
        let mut settings = Settings::default();
        settings
            .backends
            .insert("sim".into(), BackendSettings::simulator());
        settings.amqp.url = AmqpUrls::one(AMQP_URL);
        settings.amqp.name_prefix = format!("test-{id}.");
        settings.amqp.queue_type = QueueType::Classic;
        settings.database.url =
            Secret::new(format!("postgres://postgres@127.0.0.1:5432/{database}"));
        settings.rotation.enabled = true;
        settings.rotation.scan_interval = Duration::from_millis(500);
        settings.worker.shutdown_grace = Duration::from_secs(10);
        let topology = Topology::new(&settings.amqp.name_prefix);
        (Self { database, topology }, settings)
    }

    async fn remove(database: String, topology: Topology) {
        crate::teardown::remove(&topology, Some(&database)).await;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let (database, topology) = (self.database.clone(), self.topology.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Runtime::new() {
                let _ = rt.block_on(async {
                    tokio::time::timeout(WAIT, Self::remove(database, topology)).await
                });
            }
        })
        .join();
    }
}

/// The sample names and the `# TYPE` names of an exposition.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let name = match line.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        };
        names.extend(name.filter(|n| !n.is_empty()).map(str::to_owned));
    }
    names
}

/// The value of the sample `series` (its name and labels as exposed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_rules_read_is_exported_by_a_running_worker() {
    let mut wanted = worker_metrics(DASHBOARD, &dashboard_expressions(), None);
    wanted.extend(worker_metrics(
        RULES,
        &rule_expressions(),
        Some(&recorded()),
    ));
    assert!(wanted.len() >= 20, "found only {wanted:?}");

    let (scratch, mut settings) = Scratch::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    settings.http.listen = format!("127.0.0.1:{port}");
    let worker = tokio::time::timeout(
        WAIT,
        Worker::start(settings.clone(), Some(SimWorld::new(true))),
    )
    .await
    .expect("the worker starts in time")
    .expect("the worker starts");
    let health = worker.health.clone();
    let token = CancellationToken::new();
    let running = tokio::spawn(worker.run(token.clone()));

    // A little traffic: one revoke makes the per-command and per-request series.
    let deadline = Instant::now() + WAIT;
    while !health.consuming.load(Ordering::Relaxed) {
        assert!(
            Instant::now() < deadline,
            "the worker never started consuming"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revoke = CommandSpec {
        kind: CommandType::RevokeInvite,
        session: "sales".into(),
        group: "120363041234500001@g.us".into(),
        backend: None,
        reason: Some("monitoring pack".into()),
        requested_by: Some("tests".into()),
        command_id: None,
    };
    send::publish(&settings, &[revoke]).await.expect("send");

    let url = format!("http://127.0.0.1:{port}/metrics");
    let rotated = r#"invite_worker_commands_total{type="revoke_invite",outcome="rotated"}"#;
    let (text, missing) = loop {
        let text = match reqwest::get(&url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let names = exported(&text);
        let missing: Vec<&String> = wanted.iter().filter(|w| !names.contains(*w)).collect();
        let settled = value(&text, rotated).is_some_and(|v| v >= 1.0);
        if (missing.is_empty() && settled) || Instant::now() > deadline {
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            break (text, missing);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    token.cancel();
    let _ = tokio::time::timeout(WAIT, running).await;
    drop(scratch);

    assert!(
        missing.is_empty(),
        "metrics the dashboard or the rules read that the worker does not export:\n{}\n\n\
         scrape:\n{text}",
        missing
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        value(&text, rotated),
        Some(1.0),
        "the revoke settled:\n{text}"
    );
    // Ready, and the series of rare events present at zero for the configured backend.
    for (series, expected) in [
        ("invite_worker_ready", 1.0),
        (
            r#"invite_worker_breaker_open{backend="sim",session="*"}"#,
            0.0,
        ),
        (r#"invite_worker_paused{backend="sim",session="*"}"#, 0.0),
        (r#"invite_worker_breaker_trips_total{backend="sim"}"#, 0.0),
        (r#"invite_worker_rotations_late{backend="sim"}"#, 0.0),
        (
            r#"invite_worker_dead_lettered_total{kind="unauthorized"}"#,
            0.0,
        ),
    ] {
        assert_eq!(value(&text, series), Some(expected), "{series}:\n{text}");
    }
}
