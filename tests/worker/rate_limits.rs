//! Per-session rate limiting (docs/contract.md §6.6): a backlog for one session is paced to
//! `rate_limit_per_session` as the provider sees it, while other sessions go on.

use std::{collections::HashSet, time::Duration};

use sea_orm::ConnectionTrait;

use crate::support::{Db, TestEnv, group, revoke};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_300_commands_for_one_session_stays_within_10_per_second() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut settings = env.settings.clone();
    let sim = settings.backends.get_mut("sim").expect("sim backend");
    sim.rate_limit_per_session = Some("10/s".into());
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

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
    let most = stats.max_requests_per_second["busy"];
    assert!(most <= 10, "{most} requests within one second");
    assert!(most >= 9, "paced near the limit, not far below: {most}");
    worker.stop().await;
}

/// Two worker processes on one PostgreSQL database share the limit (each paces a session
/// at half of it, the second holding its requests until the first paces for it too): the
/// provider sees at most the limit from both together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_postgresql_database_stay_within_the_limit_together() {
    let env = TestEnv::new(Db::Postgres).await;
    let mut settings = env.settings.clone();
    let sim = settings.backends.get_mut("sim").expect("sim backend");
    sim.rate_limit_per_session = Some("10/s".into());
    let mut tap = env.tap_events().await;
    let first = env.start_worker_with(settings.clone()).await;
    let second = env.start_worker_with(settings).await;

    // 20 untracked groups: a read and a reset each, then one more reset each.
    let specs: Vec<_> = (0..40).map(|i| revoke("busy", &group(i % 20))).collect();
    let sent: HashSet<String> = env
        .send(&specs)
        .await
        .into_iter()
        .map(|i| i.to_string())
        .collect();
    let done: HashSet<String> = tap
        .take(sent.len(), Duration::from_secs(60))
        .await
        .into_iter()
        .map(|(_, ev)| ev["command_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(done, sent);

    // Both processes did part of the work: each group's lease row keeps its last owner.
    let store = env.store().await;
    let owners = store
        .connection()
        .query_all_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT DISTINCT owner FROM group_leases",
        ))
        .await
        .expect("lease owners");
    assert_eq!(owners.len(), 2, "one process did all the work");
    store.close().await;

    let stats = env.world.stats();
    assert_eq!(
        stats.routes["simulator.read"] + stats.routes["simulator.reset"],
        60
    );
    let most = stats.max_requests_per_second["busy"];
    assert!(
        most <= 10,
        "{most} requests within one second from two processes"
    );
    first.stop().await;
    second.stop().await;
}
