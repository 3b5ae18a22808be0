//! Graceful shutdown on SIGTERM (of the real binary) or cancellation: stop consuming, let
//! in-flight commands finish within `worker.shutdown_grace`, flush the outbox, exit 0.
//! What does not finish in time is redelivered to the next process, not lost.

use std::time::Duration;

use entity::command;
use invite_worker::{config::Secret, domain::CommandSpec};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use uuid::Uuid;

use crate::{
    support::proxy::Proxy,
    support::{Db, EventTap, SimulatorProcess, TestEnv, WorkerProcess, group, revoke, wait_until},
};

const TOKEN: &str = "shutdown-token-3f0d";
const IN_FLIGHT: usize = 50;

fn waha_env(env: &TestEnv, sim: &SimulatorProcess, grace: &str) -> Vec<(String, String)> {
    let mut e = env.process_env();
    for (k, v) in [
        ("BACKENDS__WAHA__KIND", "waha".to_owned()),
        ("BACKENDS__WAHA__BASE_URL", format!("{}/waha", sim.base)),
        ("BACKENDS__WAHA__TOKEN", TOKEN.to_owned()),
        (
            "BACKENDS__WAHA__RATE_LIMIT_PER_SESSION",
            "1000/s".to_owned(),
        ),
        ("BACKENDS__WAHA__TIMEOUT", "10s".to_owned()),
        ("WORKER__SHUTDOWN_GRACE", grace.to_owned()),
    ] {
        e.push((format!("INVITE_WORKER__{k}"), v));
    }
    e
}

/// Publishes 50 commands, starts the worker, and waits until all 50 are in flight (the
/// simulator has their reads, each taking 1 s).
async fn fifty_in_flight(
    env: &TestEnv,
    sim: &SimulatorProcess,
    grace: &str,
) -> (Vec<Uuid>, WorkerProcess) {
    sim.control("latency", serde_json::json!({"ms": 1000}))
        .await;
    let specs: Vec<CommandSpec> = (0..IN_FLIGHT)
        .map(|i| CommandSpec {
            backend: Some("waha".into()),
            ..revoke("sales", &group(300 + i))
        })
        .collect();
    let ids = env.send(&specs).await;
    let worker = WorkerProcess::spawn(
        &waha_env(env, sim, grace),
        None,
        env.dir().join("worker.log"),
    );
    wait_until(Duration::from_secs(30), || async {
        sim.stats().await["routes"]["waha.read"].as_u64() >= Some(IN_FLIGHT as u64)
    })
    .await;
    (ids, worker)
}

async fn done(env: &TestEnv) -> u64 {
    let store = env.store().await;
    let n = command::Entity::find()
        .filter(command::Column::Status.eq("done"))
        .count(store.connection())
        .await
        .unwrap();
    store.close().await;
    n
}

/// Waits until one rotated event per command arrived; returns how many events came.
async fn events_for_all(tap: &mut EventTap, ids: &[Uuid], within: Duration) -> usize {
    let mut missing: std::collections::HashSet<String> =
        ids.iter().map(|i| i.to_string()).collect();
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + within;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let got = tap.take(1, left).await;
        let (props, ev) = &got[0];
        assert_eq!(props.routing_key, "invite_link.rotated", "{ev:#}");
        missing.remove(ev["command_id"].as_str().unwrap_or_default());
        count += 1;
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_fifty_in_flight_commands_finish_and_exits_zero() {
    let sim = SimulatorProcess::spawn(TOKEN);
    let env = TestEnv::new(Db::Sqlite).await;
    let mut tap = env.tap_events().await;
    let (ids, mut worker) = fifty_in_flight(&env, &sim, "30s").await;

    worker.terminate();
    let status = worker.exit_within(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", worker.log_tail());
    assert_eq!(
        done(&env).await,
        IN_FLIGHT as u64,
        "all finished before exit"
    );
    // The outbox was flushed before exit: every event is already on its way.
    events_for_all(&mut tap, &ids, Duration::from_secs(10)).await;
    let stats = sim.stats().await;
    assert_eq!(stats["routes"]["waha.reset"], IN_FLIGHT);
}

/// A grace shorter than the work: the worker gives up on what is left, still exits 0,
/// and the next process completes every command, each with one reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_short_grace_hands_unfinished_commands_to_the_next_process() {
    let sim = SimulatorProcess::spawn(TOKEN);
    let env = TestEnv::new(Db::Postgres).await;
    let mut tap = env.tap_events().await;
    let (ids, mut worker) = fifty_in_flight(&env, &sim, "500ms").await;

    worker.terminate();
    let status = worker.exit_within(Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}\n{}", worker.log_tail());
    let finished = done(&env).await;
    assert!(
        finished < IN_FLIGHT as u64,
        "the grace was too short for all"
    );

    let mut next = WorkerProcess::spawn(
        &waha_env(&env, &sim, "30s"),
        None,
        env.dir().join("worker2.log"),
    );
    let events = events_for_all(&mut tap, &ids, Duration::from_secs(60)).await;
    assert!(events >= IN_FLIGHT);
    wait_until(Duration::from_secs(30), || async {
        done(&env).await == IN_FLIGHT as u64
    })
    .await;
    next.terminate();
    assert!(next.exit_within(Duration::from_secs(30)).await.success());
    let stats = sim.stats().await;
    for i in 0..IN_FLIGHT {
        let g = group(300 + i);
        assert_eq!(stats["resets"][format!("sales|{g}")], 1, "{g}");
    }
}

/// Shutting down while the database is unreachable: commands stuck waiting for it give
/// up after the grace, the worker still stops, and nothing is lost once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_during_a_database_outage_stops_and_loses_nothing() {
    let env = TestEnv::new(Db::Postgres).await;
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut settings = env.settings.clone();
    settings.database.url = Secret::new(proxy.url(settings.database.url.expose(), 5432));
    settings.worker.shutdown_grace = Duration::from_secs(1);
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

    proxy.cut();
    let specs: Vec<_> = (0..5).map(|i| revoke("sales", &group(350 + i))).collect();
    let ids = env.send(&specs).await;
    // Delivered and stuck on the database: the queue has nothing ready any more.
    let (conn, ch) = env.channel().await;
    wait_until(Duration::from_secs(10), || async {
        let q = ch
            .queue_declare(
                env.topology.commands_queue().as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                lapin::types::FieldTable::default(),
            )
            .await
            .expect("passive declare");
        q.message_count() == 0
    })
    .await;
    let _ = conn.close(200, "OK".into()).await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), worker.stop())
        .await
        .expect("the worker stops although the database is down");
    assert!(env.world.stats().resets.is_empty(), "nothing ran");

    proxy.restore();
    let worker = env.start_worker().await;
    events_for_all(&mut tap, &ids, Duration::from_secs(30)).await;
    worker.stop().await;
    assert!(started.elapsed() < Duration::from_secs(60));
}
