//! Pacing at the provider's rate (docs/contract.md §6.6): a session's backlog waits in the
//! database and runs in its slot order: revokes before the session's waiting rotations,
//! revokes among themselves first come, first served; no window of the limit's period
//! ever holds more requests than the limit, with one process or two; a crash while
//! commands wait loses none of them and spends no attempt.

use std::{collections::HashSet, os::unix::process::ExitStatusExt, time::Duration};

use entity::{command, deferred_command};
use invite_worker::{domain::CommandSpec, simulator::SimWorld};
use sea_orm::{EntityTrait, PaginatorTrait};
use uuid::Uuid;

use crate::support::{
    Db, SimulatorProcess, TestEnv, WorkerProcess, group, revoke, rotate, wait_until,
};

const WAIT: Duration = Duration::from_secs(90);
const TOKEN: &str = "pacing-token-5d1e";
const SIGKILL: i32 = 9;

/// The groups of `session` in the order of their first request at the provider.
fn first_requests(world: &SimWorld, session: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    world
        .requests()
        .into_iter()
        .filter(|r| r.session == session && seen.insert(r.group.clone()))
        .map(|r| r.group)
        .collect()
}

fn limited(env: &TestEnv, rate: &str) -> invite_worker::config::Settings {
    let mut settings = env.settings.clone();
    let sim = settings.backends.get_mut("sim").expect("sim backend");
    sim.rate_limit_per_session = Some(rate.into());
    settings
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_overtakes_the_rotations_waiting_for_its_session() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(limited(&env, "4/s")).await;

    let rotations: Vec<CommandSpec> = (0..24).map(|i| rotate("hot", &group(i))).collect();
    env.send(&rotations).await;
    let leak = group(100);
    let id = env.send(&[revoke("hot", &leak)]).await[0];
    let before = tap.until_command(id, WAIT).await.len() - 1;

    // A rotation or two may have started before the revoke arrived; the 20-odd others
    // waited behind it.
    let order = first_requests(&env.world, "hot");
    let place = order
        .iter()
        .position(|g| *g == leak)
        .expect("the revoke ran");
    assert!(place <= 2, "the revoke came {place}th: {order:?}");
    assert!(before <= 2, "{before} rotations finished before the revoke");
    assert!(
        env.world.busiest_window("hot", Duration::from_secs(1)) <= 4,
        "over the limit"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revokes_of_one_session_take_its_slots_first_come_first_served() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(limited(&env, "5/s")).await;

    let groups: Vec<String> = (0..16).map(group).collect();
    let specs: Vec<CommandSpec> = groups.iter().map(|g| revoke("queue", g)).collect();
    env.send(&specs).await;
    tap.take(groups.len(), WAIT).await;

    // The first few may race for the first slots as they arrive; the backlog behind them
    // runs in the order it came.
    let order = first_requests(&env.world, "queue");
    assert_eq!(order.len(), groups.len());
    let backlog: Vec<&String> = order.iter().filter(|g| **g >= groups[4]).collect();
    let expected: Vec<&String> = groups[4..].iter().collect();
    let log: Vec<String> = env
        .world
        .requests()
        .iter()
        .map(|r| format!("{:?} {} {}", r.at, r.route, &r.group[13..18]))
        .collect();
    assert_eq!(backlog, expected, "provider order {order:?} {log:#?}");
    worker.stop().await;
}

/// 300 revokes for one session limited to 10/s wait in the database, not in consumer
/// slots: another session's commands sent after them finish long before them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_at_its_limit_does_not_hold_back_other_sessions() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(limited(&env, "10/s")).await;

    let busy: Vec<_> = (0..300).map(|i| revoke("busy", &group(i % 60))).collect();
    let busy: HashSet<String> = env
        .send(&busy)
        .await
        .into_iter()
        .map(|i| i.to_string())
        .collect();
    let other: Vec<_> = (0..10).map(|i| revoke("other", &group(i))).collect();
    let other: HashSet<String> = env
        .send(&other)
        .await
        .into_iter()
        .map(|i| i.to_string())
        .collect();

    // The first command of each of the 60 busy groups reads, then resets; the others
    // reset the stored link: 360 requests at 10/s is over half a minute, and the other
    // session's commands must not wait for that.
    let mut done_busy = HashSet::new();
    let mut done_other = HashSet::new();
    let started = tokio::time::Instant::now();
    while done_other.len() < other.len() {
        let (_, ev) = tap.take(1, Duration::from_secs(30)).await.remove(0);
        let id = ev["command_id"].as_str().unwrap_or_default().to_owned();
        if other.contains(&id) {
            done_other.insert(id);
        } else {
            done_busy.insert(id);
        }
    }
    assert!(
        done_busy.len() < 100,
        "the other session finished after {:?}, while the busy one had {} of 300 done",
        started.elapsed(),
        done_busy.len()
    );
    while done_busy.len() < busy.len() {
        let (_, ev) = tap.take(1, Duration::from_secs(60)).await.remove(0);
        done_busy.insert(ev["command_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(done_busy, busy);

    let stats = env.world.stats();
    assert_eq!(
        (
            stats.routes["simulator.read"],
            stats.routes["simulator.reset"]
        ),
        (60 + 10, 300 + 10)
    );
    let most = env.world.busiest_window("busy", Duration::from_secs(1));
    assert!(most <= 10, "{most} requests within one second");
    assert!(most >= 9, "paced near the limit, not far below: {most}");
    worker.stop().await;
}

/// One worker process, and two on one PostgreSQL database: every window of a second
/// holds at most the limit, counted at the provider, and the limit is used.
async fn a_backlog_stays_within_the_limit_in_every_window(replicas: usize) {
    let env = TestEnv::new(if replicas > 1 {
        Db::Postgres
    } else {
        Db::Sqlite
    })
    .await;
    let settings = limited(&env, "10/s");
    let mut tap = env.tap_events().await;
    let mut workers = Vec::new();
    for _ in 0..replicas {
        workers.push(env.start_worker_with(settings.clone()).await);
    }
    // 30 untracked groups: a read and a reset each, then two more resets each.
    let specs: Vec<CommandSpec> = (0..90).map(|i| revoke("busy", &group(i % 30))).collect();
    let sent: HashSet<Uuid> = env.send(&specs).await.into_iter().collect();
    let done: HashSet<Uuid> = tap
        .take(sent.len(), WAIT)
        .await
        .into_iter()
        .filter_map(|(_, e)| e["command_id"].as_str().and_then(|c| c.parse().ok()))
        .collect();
    assert_eq!(done, sent);

    let requests = env.world.requests();
    assert_eq!(requests.len(), 120, "30 reads and 90 resets");
    let most = env.world.busiest_window("busy", Duration::from_secs(1));
    assert!(most <= 10, "{most} requests within one second");
    assert!(most >= 9, "paced near the limit, not far below: {most}");
    for worker in workers {
        worker.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_stays_within_the_limit_in_every_window() {
    a_backlog_stays_within_the_limit_in_every_window(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_stay_within_the_limit_together_in_every_window() {
    a_backlog_stays_within_the_limit_in_every_window(2).await;
}

/// A worker killed while most of a session's backlog waits in the database: after a
/// restart every command completes once, on its first attempt, with one reset each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_commands_wait_loses_none_and_spends_no_attempt() {
    let sim = SimulatorProcess::spawn(TOKEN);
    let env = TestEnv::new(Db::Postgres).await;
    let groups: Vec<String> = (0..12).map(|i| group(200 + i)).collect();
    let specs: Vec<CommandSpec> = groups
        .iter()
        .map(|g| CommandSpec {
            backend: Some("waha".into()),
            ..revoke("sales", g)
        })
        .collect();
    let mut penv = env.process_env();
    penv.extend(
        [
            ("KIND", "waha".to_owned()),
            ("BASE_URL", format!("{}/waha", sim.base)),
            ("TOKEN", TOKEN.to_owned()),
            ("RATE_LIMIT_PER_SESSION", "3/s".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INVITE_WORKER__BACKENDS__WAHA__{k}"), v)),
    );
    let mut tap = env.tap_events().await;
    let log = env.dir().join("worker.log");
    let mut first = WorkerProcess::spawn(&penv, None, log.clone());
    let ids = env.send(&specs).await;

    let store = env.store().await;
    wait_until(WAIT, || async {
        let waiting = deferred_command::Entity::find()
            .count(store.connection())
            .await
            .unwrap_or(0);
        let resets = sim.stats().await["routes"]["waha.reset"]
            .as_u64()
            .unwrap_or(0);
        waiting >= 5 && resets >= 2
    })
    .await;
    first.kill().await;
    let status = first.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.signal(), Some(SIGKILL));
    // The commands that were waiting when it died: deferred, no attempt spent yet (a
    // command in flight may have spent one, which the restart then counts on).
    let attempted: HashSet<String> = command::Entity::find()
        .all(store.connection())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.attempts > 0)
        .map(|r| r.command_id)
        .collect();
    let waiting: HashSet<String> = deferred_command::Entity::find()
        .all(store.connection())
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.command_id)
        .filter(|id| !attempted.contains(id))
        .collect();
    assert!(waiting.len() >= 5, "{} were waiting", waiting.len());

    let mut worker = WorkerProcess::spawn(&penv, None, log);
    let mut done = HashSet::new();
    while done.len() < ids.len() {
        let (_, e) = tap.take(1, WAIT).await.remove(0);
        assert_eq!(e["event_type"], "invite_link.rotated", "{e:#}");
        let id = e["command_id"].as_str().unwrap_or_default().to_owned();
        if waiting.contains(&id) {
            assert_eq!(
                e["attempts"], 1,
                "a command that waited spent an attempt: {e:#}"
            );
        }
        done.insert(id);
    }
    worker.terminate();
    assert!(worker.exit_within(Duration::from_secs(30)).await.success());
    let expected: HashSet<String> = ids.iter().map(Uuid::to_string).collect();
    assert_eq!(done, expected);
    let stats = sim.stats().await;
    for g in &groups {
        assert_eq!(stats["resets"][format!("sales|{g}")], 1, "{g}");
    }
    let waiting = deferred_command::Entity::find()
        .count(store.connection())
        .await
        .unwrap();
    assert_eq!(waiting, 0, "every deferred row is settled");
    store.close().await;
}
