//! One scenario on the cluster: workers in this process (in-process simulator, SQLite or
//! PostgreSQL) under a fresh name prefix, a stream of 1,000 revokes published through
//! haproxy, a node lost 2 s in, then the checks: every command done once, one event_id
//! each on the wire, one provider reset each, all within 30 s of the loss.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use entity::{command, outbox};
use invite_worker::{
    broker::{Broker, DURABLE, QueueOptions, Topology},
    cli::send,
    config::{AmqpUrls, BackendSettings, Secret, Settings},
    domain::{CommandSpec, CommandType},
    simulator::SimWorld,
    store::Store,
    worker::{Worker, WorkerError},
};
use lapin::{
    Channel, Connection, ConnectionProperties,
    options::{BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeleteOptions},
    types::FieldTable,
};
use sea_orm::{ColumnTrait, ConnectionTrait, Database, EntityTrait, PaginatorTrait, QueryFilter};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Cluster;

pub(crate) const COMMANDS: usize = 1000;
/// When the node is lost, after the first publish.
const LOSS_AT: Duration = Duration::from_secs(2);
/// The longest the commands may take to complete after the loss.
const WITHIN: Duration = Duration::from_secs(30);
const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How a node is lost.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Loss {
    /// The worker's node (node 1) stopped gracefully.
    StopWorkersNode,
    /// The worker's node (node 1) killed with SIGKILL.
    KillWorkersNode,
    /// The node leading the commands queue, not the worker's, killed with SIGKILL.
    KillLeader,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Scenario {
    pub name: &'static str,
    pub loss: Loss,
    pub workers: usize,
    pub postgres: bool,
    /// Workers connect with the list of node URLs instead of through haproxy.
    pub url_list: bool,
}

/// What a scenario measured.
#[derive(Debug)]
pub(crate) struct Figures {
    pub scenario: &'static str,
    pub lost_node: u8,
    /// From the loss to the last command done.
    pub completed_after: Duration,
    /// The longest time without a command completing, from the loss on.
    pub longest_stall: Duration,
    /// Events seen again on the wire with an event_id already seen (same event).
    pub repeated_events: usize,
    pub total: Duration,
}

/// A worker running in this process, stopped on drop.
struct RunningWorker {
    token: CancellationToken,
    handle: JoinHandle<Result<(), WorkerError>>,
}

async fn start_worker(settings: Settings, world: &SimWorld) -> RunningWorker {
    let worker = Worker::start(settings, Some(world.clone()))
        .await
        .expect("worker starts");
    let health = worker.health.clone();
    let token = CancellationToken::new();
    let handle = tokio::spawn(worker.run(token.clone()));
    wait_for("the worker consumes", Duration::from_secs(60), || {
        let h = health.clone();
        async move { h.consuming.load(std::sync::atomic::Ordering::Relaxed) }
    })
    .await;
    RunningWorker { token, handle }
}

/// Polls `cond` every 50 ms until it holds, failing the test after `within`.
pub(crate) async fn wait_for<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn settings(cluster: &Cluster, s: &Scenario, prefix: &str, db_url: String) -> Settings {
    let mut settings = Settings::default();
    settings
        .backends
        .insert("sim".into(), BackendSettings::simulator());
    settings.amqp.url = if s.url_list {
        AmqpUrls::new(cluster.urls())
    } else {
        AmqpUrls::one(cluster.haproxy_url())
    };
    settings.amqp.name_prefix = prefix.to_owned();
    settings.amqp.confirm_timeout = Duration::from_secs(5);
    settings.database.url = Secret::new(db_url);
    settings.http.listen = String::new();
    settings.rotation.enabled = false;
    settings.worker.shutdown_grace = Duration::from_secs(10);
    settings
}

async fn amqp(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to the cluster");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// The topology declared through `url` (its queues led by that node), and a quorum
/// queue bound to every event, so that events survive the loss of any one node.
async fn prepare_topology(url: &str, topo: &Topology, opts: QueueOptions) -> String {
    let broker = Broker::new(url, topo.clone(), opts);
    broker.connection().await.expect("declare the topology");
    broker.close().await;
    let tap = format!("{}tap", topo_prefix(topo));
    let (conn, ch) = amqp(url).await;
    ch.queue_declare(tap.as_str().into(), DURABLE, opts.dead_queue_args())
        .await
        .expect("declare the event tap");
    ch.queue_bind(
        tap.as_str().into(),
        topo.events_exchange().as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind the event tap");
    let _ = conn.close(200, "OK".into()).await;
    tap
}

fn topo_prefix(topo: &Topology) -> String {
    topo.commands_queue()
        .trim_end_matches("invite_link.commands")
        .to_owned()
}

/// Publishes the commands in batches of 25 every 100 ms, each batch again until the
/// broker confirms it (same command_ids: a batch published twice is deduplicated).
fn publish_stream(settings: Settings, specs: Vec<CommandSpec>) -> JoinHandle<()> {
    tokio::spawn(async move {
        for chunk in specs.chunks(25) {
            let deadline = Instant::now() + WITHIN;
            while let Err(e) = send::publish(&settings, chunk).await {
                assert!(Instant::now() < deadline, "publishing: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn done_count(store: &Store) -> u64 {
    command::Entity::find()
        .filter(command::Column::Status.eq("done"))
        .count(store.connection())
        .await
        .unwrap_or(0)
}

async fn create_pg_database(name: &str) -> String {
    let admin = Database::connect(PG_ADMIN_URL).await.expect("PostgreSQL");
    admin
        .execute_unprepared(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let _ = admin.close().await;
    format!("postgres://postgres@127.0.0.1:5432/{name}")
}

async fn drop_pg_database(name: &str) {
    if let Ok(admin) = Database::connect(PG_ADMIN_URL).await {
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        let _ = admin.execute_unprepared(&sql).await;
        let _ = admin.close().await;
    }
}

/// Runs `s` on `cluster` (all three nodes up) and leaves all three up again.
pub(crate) async fn run(cluster: &Cluster, s: Scenario) -> Figures {
    let started = Instant::now();
    let id = &Uuid::new_v4().simple().to_string()[..10];
    let prefix = format!("cl-{}-{id}.", s.name);
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = s.postgres.then(|| format!("iw_cluster_{id}"));
    let db_url = match &pg {
        Some(name) => create_pg_database(name).await,
        None => format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display()),
    };
    let settings = settings(cluster, &s, &prefix, db_url);
    let topo = Topology::new(&prefix);
    let opts = QueueOptions::from_settings(&settings.amqp);
    // The commands queue led by node 2 when its leader is to die without the worker's
    // node, else by node 1, the worker's.
    let declare_on = match s.loss {
        Loss::KillLeader => 2,
        _ => 1,
    };
    let tap = prepare_topology(&cluster.node_url(declare_on), &topo, opts).await;

    let world = SimWorld::new(true);
    world.set_latency(Duration::from_millis(5));
    let mut workers = Vec::new();
    for _ in 0..s.workers {
        workers.push(start_worker(settings.clone(), &world).await);
    }
    let store = Store::connect(settings.database.url.expose(), 2)
        .await
        .expect("the scenario's database");
    let specs: Vec<CommandSpec> = (0..COMMANDS)
        .map(|i| CommandSpec {
            kind: CommandType::RevokeInvite,
            session: format!("s{}", i % 10),
            group: format!("1203630412345{:05}@g.us", i % 200),
            backend: None,
            reason: Some("cluster test".into()),
            requested_by: None,
            command_id: Some(Uuid::new_v4()),
        })
        .collect();
    let ids: HashSet<String> = specs
        .iter()
        .filter_map(|s| s.command_id.map(|u| u.to_string()))
        .collect();
    let stream = publish_stream(settings.clone(), specs);

    tokio::time::sleep(LOSS_AT).await;
    let lost_node = match s.loss {
        Loss::StopWorkersNode | Loss::KillWorkersNode => 1,
        Loss::KillLeader => cluster.leader(&topo.commands_queue()),
    };
    if matches!(s.loss, Loss::KillLeader) {
        assert_ne!(
            lost_node, 1,
            "the commands queue is led by the worker's node"
        );
    }
    let lost_at = Instant::now();
    let done_before = done_count(&store).await;
    match s.loss {
        Loss::StopWorkersNode => cluster.stop_node(lost_node),
        Loss::KillWorkersNode | Loss::KillLeader => cluster.kill_node(lost_node),
    }

    // Completion, and the longest time without progress after the loss.
    let (mut last, mut last_change, mut stall) = (done_before, lost_at, Duration::ZERO);
    loop {
        let done = done_count(&store).await;
        let now = Instant::now();
        if done != last {
            stall = stall.max(now - last_change);
            (last, last_change) = (done, now);
        }
        if done as usize == COMMANDS {
            break;
        }
        assert!(
            now - lost_at < WITHIN,
            "{}: {done} of {COMMANDS} done {WITHIN:?} after losing node {lost_node}",
            s.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let completed_after = lost_at.elapsed();
    stream.await.expect("publisher");
    wait_for("the outbox is published", WITHIN, || async {
        outbox::Entity::find()
            .count(store.connection())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await;

    let repeated_events = check(&s, &store, &world, &ids, &cluster.haproxy_url(), &tap).await;
    for w in workers {
        w.token.cancel();
        let stopped = tokio::time::timeout(Duration::from_secs(60), w.handle).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "worker stopped: {stopped:?}"
        );
    }
    store.close().await;
    cluster.start_node(lost_node);
    cleanup(&cluster.haproxy_url(), &topo, &tap).await;
    if let Some(name) = pg {
        drop_pg_database(&name).await;
    }
    Figures {
        scenario: s.name,
        lost_node,
        completed_after,
        longest_stall: stall,
        repeated_events,
        total: started.elapsed(),
    }
}

/// Every command done and rotated once, one provider reset each, and on the wire one
/// event_id per command, the one stored. Returns how many events arrived again.
async fn check(
    s: &Scenario,
    store: &Store,
    world: &SimWorld,
    ids: &HashSet<String>,
    url: &str,
    tap: &str,
) -> usize {
    let rows = command::Entity::find()
        .all(store.connection())
        .await
        .expect("command rows");
    assert_eq!(rows.len(), COMMANDS, "{}", s.name);
    let stored: HashMap<String, Option<String>> = rows
        .into_iter()
        .map(|r| {
            assert_eq!(r.outcome.as_deref(), Some("rotated"), "{r:?}");
            (r.command_id, r.event_id)
        })
        .collect();
    assert!(ids.iter().all(|id| stored.contains_key(id)));
    let resets: u64 = world.stats().resets.values().sum();
    assert_eq!(resets, COMMANDS as u64, "{}: provider resets", s.name);

    let (conn, ch) = amqp(url).await;
    let mut wire: HashMap<String, HashSet<String>> = HashMap::new();
    let mut messages = 0;
    while let Some(m) = ch
        .basic_get(tap.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get from the tap")
    {
        messages += 1;
        let e: serde_json::Value = serde_json::from_slice(&m.delivery.data).unwrap_or_default();
        let (Some(c), Some(ev)) = (e["command_id"].as_str(), e["event_id"].as_str()) else {
            panic!("not an event: {e}");
        };
        wire.entry(c.to_owned()).or_default().insert(ev.to_owned());
    }
    let _ = conn.close(200, "OK".into()).await;
    assert_eq!(wire.len(), COMMANDS, "{}: commands with an event", s.name);
    for (c, events) in &wire {
        assert_eq!(events.len(), 1, "{}: event_ids of {c}: {events:?}", s.name);
        let stored = stored.get(c).cloned().flatten();
        assert_eq!(events.iter().next(), stored.as_ref(), "{c}");
    }
    messages - COMMANDS
}

async fn cleanup(url: &str, topo: &Topology, tap: &str) {
    let Ok(conn) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in topo.queues().iter().map(String::as_str).chain([tap]) {
            let _ = ch
                .queue_delete(q.into(), QueueDeleteOptions::default())
                .await;
        }
        for e in topo.exchanges() {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "OK".into()).await;
}
