//! Crash safety (docs/contract.md §6.1–6.3): the real binary is aborted at each failpoint (or
//! SIGKILLed mid-stream), restarted without it, and every command still ends with
//! exactly one outcome and one event_id; on a kind that can read the link, exactly one
//! reset happens per command and the announced link is the current one. Each event is in
//! its command's trace, also when published from the outbox after the crash.

use std::{
    collections::{HashMap, HashSet},
    os::unix::process::ExitStatusExt,
    time::Duration,
};

use entity::{command, history, outbox};
use invite_worker::{
    domain::{BackendKind, CommandSpec},
    ops::failpoint,
};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use uuid::Uuid;

use crate::support::{
    Db, EventTap, SimulatorProcess, TestEnv, WorkerProcess, group, revoke, wait_until,
};

const TOKEN: &str = "crash-token-71c2";
const COMMANDS: usize = 6;
const SIGABRT: i32 = 6;
const SIGKILL: i32 = 9;

/// Overrides that add one HTTP backend, named after its kind, on the simulate binary.
fn backend_env(kind: BackendKind, sim: &SimulatorProcess) -> Vec<(String, String)> {
    let name = kind.as_str().to_ascii_uppercase();
    [
        ("KIND", kind.as_str().to_owned()),
        ("BASE_URL", format!("{}/{}", sim.base, kind.as_str())),
        ("TOKEN", TOKEN.to_owned()),
        ("RATE_LIMIT_PER_SESSION", "1000/s".to_owned()),
        ("TIMEOUT", "5s".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("INVITE_WORKER__BACKENDS__{name}__{k}"), v))
    .chain([(
        "INVITE_WORKER__AMQP__CONFIRM_TIMEOUT".to_owned(),
        "2s".to_owned(),
    )])
    .collect()
}

/// The commands of one test: (world session, group) per command, and their specs.
fn commands(kind: BackendKind, n: usize) -> (Vec<(String, String)>, Vec<CommandSpec>) {
    (0..n)
        .map(|i| {
            let (session, world_session, g) = match kind {
                BackendKind::MetaCloud => ("106540352242922", "meta", format!("meta_group_{i}")),
                _ => ("sales", "sales", group(100 + i)),
            };
            let spec = CommandSpec {
                backend: Some(kind.as_str().into()),
                ..revoke(session, &g)
            };
            ((world_session.to_owned(), g), spec)
        })
        .unzip()
}

/// Event ids seen on the tap per command_id, polled until every id in `ids` has one;
/// each event of a command in `traces` (command_id → trace id) must be in that trace.
async fn event_ids(
    tap: &mut EventTap,
    ids: &[Uuid],
    seen: &mut HashMap<String, HashSet<String>>,
    traces: &HashMap<String, String>,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        for (props, e) in tap.drain_now() {
            if let (Some(c), Some(ev)) = (e["command_id"].as_str(), e["event_id"].as_str()) {
                if let Some(trace) = traces.get(c) {
                    assert_eq!(props.trace_id().as_ref(), Some(trace), "{c}: {props:?}");
                }
                seen.entry(c.to_owned()).or_default().insert(ev.to_owned());
            }
        }
        if ids.iter().all(|id| seen.contains_key(&id.to_string())) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events missing after {within:?}; saw {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every command done with one outcome (one history row) and one event_id, in the
/// inbox, the outbox and on the wire.
async fn assert_one_outcome_each(
    env: &TestEnv,
    ids: &[Uuid],
    seen: &HashMap<String, HashSet<String>>,
) -> Vec<command::Model> {
    let store = env.store().await;
    let db = store.connection();
    let events_exchange = env.topology.events_exchange();
    let mut rows = Vec::new();
    for id in ids {
        let id = id.to_string();
        let row = command::Entity::find_by_id(id.clone())
            .one(db)
            .await
            .unwrap()
            .expect("command row");
        assert_eq!(row.status, "done", "{id}");
        assert_eq!(row.outcome.as_deref(), Some("rotated"), "{id}");
        let outcomes = history::Entity::find()
            .filter(history::Column::CommandId.eq(&id))
            .all(db)
            .await
            .unwrap();
        assert_eq!(outcomes.len(), 1, "one outcome for {id}: {outcomes:#?}");
        // Published outbox rows are deleted (the wire is checked below); the deletion
        // follows the broker's confirm, so it may trail the event by a moment.
        wait_until(Duration::from_secs(10), || async {
            outbox::Entity::find()
                .filter(outbox::Column::CorrelationId.eq(&id))
                .filter(outbox::Column::Exchange.eq(&events_exchange))
                .count(db)
                .await
                .unwrap()
                == 0
        })
        .await;
        let wire: HashSet<Option<String>> = seen[&id].iter().cloned().map(Some).collect();
        assert_eq!(wire, HashSet::from([row.event_id.clone()]), "{id}");
        rows.push(row);
    }
    store.close().await;
    rows
}

/// Aborts the worker at `point`, restarts it, and checks the guarantees.
async fn crash_at(point: &str, kind: BackendKind) {
    crash_at_with(point, kind, false).await
}

/// With `tracked`, a first round of revokes (no failpoint) makes every group tracked, so
/// the crashed round resets the stored links without reading them first.
async fn crash_at_with(point: &str, kind: BackendKind, tracked: bool) {
    let sim = SimulatorProcess::spawn(TOKEN);
    let env = TestEnv::new(Db::Sqlite).await;
    let (groups, specs) = commands(kind, COMMANDS);
    let mut tap = env.tap_events().await;
    let mut penv = env.process_env();
    penv.extend(backend_env(kind, &sim));
    let log = env.dir().join("worker.log");
    let earlier_resets = u64::from(tracked);
    if tracked {
        let first = env.send(&specs).await;
        let mut worker = WorkerProcess::spawn(&penv, None, log.clone());
        event_ids(
            &mut tap,
            &first,
            &mut HashMap::new(),
            &HashMap::new(),
            Duration::from_secs(60),
        )
        .await;
        worker.terminate();
        let status = worker.exit_within(Duration::from_secs(30)).await;
        assert!(status.success(), "{status:?}\n{}", worker.log_tail());
    }
    let traced = env.send_traced(&specs).await;
    let ids: Vec<Uuid> = traced.iter().map(|(id, _)| *id).collect();
    let traces: HashMap<String, String> = traced
        .into_iter()
        .map(|(id, trace)| (id.to_string(), trace))
        .collect();

    let mut crashed = WorkerProcess::spawn(&penv, Some(point), log.clone());
    let status = crashed.exit_within(Duration::from_secs(60)).await;
    assert_eq!(
        status.signal(),
        Some(SIGABRT),
        "aborted at {point}: {status:?}\n{}",
        crashed.log_tail()
    );

    let mut worker = WorkerProcess::spawn(&penv, None, log);
    let mut seen = HashMap::new();
    let within = Duration::from_secs(60);
    event_ids(&mut tap, &ids, &mut seen, &traces, within).await;
    worker.terminate();
    let status = worker.exit_within(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", worker.log_tail());
    event_ids(&mut tap, &ids, &mut seen, &traces, Duration::ZERO).await;
    assert_one_outcome_each(&env, &ids, &seen).await;
    if point == failpoint::AFTER_RESET && kind.can_read() {
        assert!(
            worker.log().contains("an earlier reset went through"),
            "the restarted worker reconciled by reading:\n{}",
            worker.log_tail()
        );
    }

    let stats = sim.stats().await;
    for ((session, g), id) in groups.iter().zip(&ids) {
        let resets = stats["resets"][format!("{session}|{g}")]
            .as_u64()
            .unwrap_or(0);
        let resets = resets - earlier_resets;
        if kind.can_read() {
            assert_eq!(resets, 1, "{point}: one reset for {id}");
        } else {
            assert!(
                (1..=2).contains(&resets),
                "{point}: {resets} resets for {id}"
            );
        }
        // The announced link is the live one: nothing revoked it after the event.
        let ev_code = {
            let store = env.store().await;
            let row = command::Entity::find_by_id(id.to_string())
                .one(store.connection())
                .await
                .unwrap()
                .unwrap();
            store.close().await;
            row.new_code.unwrap()
        };
        assert_eq!(sim.link(session, g).await["code"], ev_code, "{point}: {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_reset_resets_once_after_restart() {
    crash_at(failpoint::BEFORE_RESET, BackendKind::Waha).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_reset_is_reconciled_by_reading_without_a_second_reset() {
    crash_at(failpoint::AFTER_RESET, BackendKind::Waha).await;
}

/// A tracked group's reset records the stored code (no read first) with the link read in
/// the same statement; a crash after that reset is still reconciled by reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_resetting_a_tracked_group_is_reconciled_without_a_second_reset() {
    crash_at_with(failpoint::AFTER_RESET, BackendKind::Waha, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_commit_acks_the_redelivery_without_resetting() {
    crash_at(failpoint::AFTER_COMMIT, BackendKind::Waha).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_relay_publishes_the_event_after_restart() {
    crash_at(failpoint::BEFORE_RELAY, BackendKind::Waha).await;
}

/// meta_cloud cannot read the current link, so an interrupted reset is done again; the
/// command still has one outcome and one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_reset_on_a_kind_that_cannot_read_still_ends_once() {
    crash_at(failpoint::AFTER_RESET, BackendKind::MetaCloud).await;
}

/// A plain SIGKILL while commands are in flight, at no chosen point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_mid_stream_loses_nothing_and_resets_once_per_command() {
    let sim = SimulatorProcess::spawn(TOKEN);
    sim.control("latency", serde_json::json!({"ms": 150})).await;
    let env = TestEnv::new(Db::Postgres).await;
    let (groups, specs) = commands(BackendKind::Waha, 40);
    let mut tap = env.tap_events().await;
    let ids = env.send(&specs).await;
    let mut penv = env.process_env();
    penv.extend(backend_env(BackendKind::Waha, &sim));
    penv.push(("INVITE_WORKER__AMQP__PREFETCH".into(), "8".into()));
    let log = env.dir().join("worker.log");

    let mut first = WorkerProcess::spawn(&penv, None, log.clone());
    wait_until(Duration::from_secs(60), || async {
        sim.stats().await["routes"]["waha.reset"].as_u64() >= Some(12)
    })
    .await;
    first.kill().await;
    let status = first.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.signal(), Some(SIGKILL));

    let mut worker = WorkerProcess::spawn(&penv, None, log);
    let mut seen = HashMap::new();
    let untraced = HashMap::new();
    event_ids(
        &mut tap,
        &ids,
        &mut seen,
        &untraced,
        Duration::from_secs(90),
    )
    .await;
    worker.terminate();
    assert!(worker.exit_within(Duration::from_secs(30)).await.success());
    event_ids(&mut tap, &ids, &mut seen, &untraced, Duration::ZERO).await;
    assert_one_outcome_each(&env, &ids, &seen).await;
    let stats = sim.stats().await;
    for (session, g) in &groups {
        assert_eq!(stats["resets"][format!("{session}|{g}")], 1, "{g}");
    }
}

/// The attempt count is in the database, not in the process: a command whose first reset
/// failed and whose second one went through just before a crash is recorded, after the
/// restart, as rotated on attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_count_survives_a_crash() {
    let sim = SimulatorProcess::spawn(TOKEN);
    sim.control(
        "faults",
        serde_json::json!({"route": "waha.reset", "count": 1, "status": 500}),
    )
    .await;
    let env = TestEnv::new(Db::Sqlite).await;
    let (groups, specs) = commands(BackendKind::Waha, 1);
    let mut tap = env.tap_events().await;
    let ids = env.send(&specs).await;
    let mut penv = env.process_env();
    penv.extend(backend_env(BackendKind::Waha, &sim));
    let log = env.dir().join("worker.log");

    let mut crashed = WorkerProcess::spawn(&penv, Some(failpoint::AFTER_RESET), log.clone());
    let status = crashed.exit_within(Duration::from_secs(60)).await;
    assert_eq!(status.signal(), Some(SIGABRT), "{}", crashed.log_tail());

    let mut worker = WorkerProcess::spawn(&penv, None, log);
    let got = tap.until_command(ids[0], Duration::from_secs(60)).await;
    let (_, ev) = got.last().unwrap();
    assert_eq!(ev["event_type"], "invite_link.rotated");
    assert_eq!(ev["attempts"], 2, "{ev:#}");
    worker.terminate();
    assert!(worker.exit_within(Duration::from_secs(30)).await.success());
    let stats = sim.stats().await;
    assert_eq!(stats["routes"]["waha.reset"], 2, "one failed, one done");
    let (session, g) = &groups[0];
    assert_eq!(stats["resets"][format!("{session}|{g}")], 1);
}
