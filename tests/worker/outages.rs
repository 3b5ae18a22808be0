//! Broker and database outages, made with a TCP proxy in front of the worker's own
//! connections: the worker reconnects by itself, readiness follows the connections, and
//! no command is lost or executed twice.

use std::{collections::HashSet, time::Duration};

use entity::command;
use invite_worker::{
    broker::{Broker, Publisher},
    cli::send,
    config::{AmqpUrls, QueueType, Secret},
    domain::{CommandSpec, events::OutboxMessage},
};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{
    support::proxy::Proxy,
    support::{AMQP_URL, Db, EventTap, TestEnv, free_port, group, revoke, wait_until},
};

const STREAM: usize = 500;
const OUTAGE: Duration = Duration::from_secs(5);

/// Publishes `STREAM` commands over 50 groups in batches of 25, one batch every 250 ms
/// (about 5 s in all), straight to the broker.
fn command_stream(env: &TestEnv) -> JoinHandle<Vec<Uuid>> {
    let settings = env.settings.clone();
    tokio::spawn(async move {
        let specs: Vec<CommandSpec> = (0..STREAM)
            .map(|i| revoke("sales", &group(400 + i % 50)))
            .collect();
        let mut ids = Vec::with_capacity(STREAM);
        for chunk in specs.chunks(25) {
            ids.extend(send::publish(&settings, chunk).await.expect("send"));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ids
    })
}

/// Adds rotated events from the tap to `seen` (command_id, event_id) until `n` distinct
/// commands have one.
async fn rotated(
    tap: &mut EventTap,
    seen: &mut HashSet<(String, String)>,
    n: usize,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    let commands = |seen: &HashSet<(String, String)>| {
        seen.iter().map(|(c, _)| c).collect::<HashSet<_>>().len()
    };
    while commands(seen) < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let got = tap.take(1, left).await;
        let (props, ev) = &got[0];
        assert_eq!(props.routing_key, "invite_link.rotated", "{ev:#}");
        let c = ev["command_id"].as_str().unwrap_or_default().to_owned();
        let e = ev["event_id"].as_str().unwrap_or_default().to_owned();
        seen.insert((c, e));
    }
}

/// Every command of the stream rotated exactly once: one event_id each, 500 resets.
async fn assert_all_rotated_once(env: &TestEnv, ids: &[Uuid], seen: &HashSet<(String, String)>) {
    let sent: HashSet<String> = ids.iter().map(|i| i.to_string()).collect();
    let with_event: HashSet<&String> = seen.iter().map(|(c, _)| c).collect();
    assert_eq!(with_event.len(), STREAM);
    assert!(with_event.iter().all(|c| sent.contains(*c)));
    assert_eq!(seen.len(), STREAM, "one event_id per command");
    let store = env.store().await;
    let rotated = command::Entity::find()
        .filter(command::Column::Outcome.eq("rotated"))
        .count(store.connection())
        .await
        .unwrap();
    assert_eq!(rotated, STREAM as u64);
    store.close().await;
    let resets: u64 = env.world.stats().resets.values().sum();
    assert_eq!(resets, STREAM as u64, "no command reset twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_of_five_seconds_during_a_stream_of_500_commands_loses_nothing() {
    let env = TestEnv::new(Db::Sqlite).await;
    env.world.set_latency(Duration::from_millis(5));
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut settings = env.settings.clone();
    settings.amqp.url = AmqpUrls::one(proxy.url(AMQP_URL, 5672));
    settings.amqp.confirm_timeout = Duration::from_secs(2);
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

    let stream = command_stream(&env);
    let mut seen = HashSet::new();
    rotated(&mut tap, &mut seen, 50, Duration::from_secs(60)).await;
    proxy.cut();
    tokio::time::sleep(OUTAGE).await;
    proxy.restore();
    let ids = stream.await.unwrap();
    rotated(&mut tap, &mut seen, STREAM, Duration::from_secs(120)).await;
    worker.stop().await;
    seen.extend(tap.drain_now().into_iter().map(|(_, e)| {
        (
            e["command_id"].as_str().unwrap_or_default().to_owned(),
            e["event_id"].as_str().unwrap_or_default().to_owned(),
        )
    }));
    assert_all_rotated_once(&env, &ids, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_cut_of_five_seconds_during_a_stream_of_500_commands_loses_nothing() {
    let env = TestEnv::new(Db::Postgres).await;
    env.world.set_latency(Duration::from_millis(5));
    let proxy = Proxy::start("127.0.0.1:5432").await;
    let mut settings = env.settings.clone();
    settings.database.url = Secret::new(proxy.url(settings.database.url.expose(), 5432));
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

    let stream = command_stream(&env);
    let mut seen = HashSet::new();
    rotated(&mut tap, &mut seen, 50, Duration::from_secs(60)).await;
    proxy.cut();
    tokio::time::sleep(OUTAGE).await;
    proxy.restore();
    let ids = stream.await.unwrap();
    rotated(&mut tap, &mut seen, STREAM, Duration::from_secs(120)).await;
    worker.stop().await;
    seen.extend(tap.drain_now().into_iter().map(|(_, e)| {
        (
            e["command_id"].as_str().unwrap_or_default().to_owned(),
            e["event_id"].as_str().unwrap_or_default().to_owned(),
        )
    }));
    assert_all_rotated_once(&env, &ids, &seen).await;
}

async fn readyz(port: u16) -> u16 {
    match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// `/readyz`'s status, and `invite_worker_ready` scraped right after it, agree.
async fn ready(port: u16, status: u16) -> bool {
    let gauge = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let gauge = gauge
        .lines()
        .find_map(|l| l.strip_prefix("invite_worker_ready "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    let expected = if status == 200 { 1.0 } else { 0.0 };
    readyz(port).await == status && gauge == Some(expected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_broker_or_the_database_is_cut() {
    let env = TestEnv::new(Db::Postgres).await;
    let amqp = Proxy::start("127.0.0.1:5672").await;
    let pg = Proxy::start("127.0.0.1:5432").await;
    let port = free_port();
    let mut settings = env.settings.clone();
    settings.amqp.url = AmqpUrls::one(amqp.url(AMQP_URL, 5672));
    settings.database.url = Secret::new(pg.url(settings.database.url.expose(), 5432));
    settings.http.listen = format!("127.0.0.1:{port}");
    let worker = env.start_worker_with(settings).await;
    let within = Duration::from_secs(15);

    // `invite_worker_ready` follows, for the alert on readiness.
    wait_until(within, || ready(port, 200)).await;
    amqp.cut();
    wait_until(within, || ready(port, 503)).await;
    amqp.restore();
    wait_until(within, || ready(port, 200)).await;

    pg.cut();
    wait_until(within, || ready(port, 503)).await;
    pg.restore();
    wait_until(within, || ready(port, 200)).await;

    // Still working after both outages.
    let mut tap = env.tap_events().await;
    let id = env.send(&[revoke("sales", &group(499))]).await[0];
    tap.until_command(id, Duration::from_secs(30)).await;
    worker.stop().await;
}

/// A broker that stops answering (connection open, nothing comes back): a publish ends
/// with a timeout instead of hanging, and publishing works again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_confirms_that_never_arrive_time_out_and_publishing_recovers() {
    let env = TestEnv::new(Db::Sqlite).await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let mut tap = env.tap_events().await;
    let broker = Broker::new(
        &proxy.url(AMQP_URL, 5672),
        env.topology.clone(),
        QueueType::Classic,
    );
    let timeout = Duration::from_millis(500);
    let publisher = Publisher::new(broker.clone(), timeout);
    let event = |id: &str| OutboxMessage {
        exchange: env.topology.events_exchange(),
        routing_key: "invite_link.rotated".into(),
        message_id: Some(id.into()),
        message_type: Some("invite_link.rotated".into()),
        correlation_id: None,
        headers: Vec::new(),
        payload: format!(r#"{{"event_id":"{id}"}}"#).into_bytes(),
    };
    publisher.publish(&event("before")).await.expect("publish");

    proxy.stall();
    let started = tokio::time::Instant::now();
    let stalled = publisher.publish(&event("stalled")).await;
    assert!(
        matches!(
            stalled,
            Err(invite_worker::broker::PublishError::Timeout(_))
        ),
        "{stalled:?}"
    );
    assert!(started.elapsed() < timeout * 4, "{:?}", started.elapsed());
    proxy.restore();

    // Retried as the relay does, until confirmed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = publisher.publish(&event("after")).await {
        assert!(tokio::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids = HashSet::new();
    while !ids.contains("after") {
        // This test's own messages, not the worker's events.
        let got = tap.take_unchecked(1, Duration::from_secs(10)).await;
        ids.insert(got[0].1["event_id"].as_str().unwrap_or_default().to_owned());
    }
    assert!(ids.contains("before"));
    broker.close().await;
}
