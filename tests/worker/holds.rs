//! Holds (docs/contract.md §1, §6.5): an operator's pause holds a session's commands
//! (they wait, spending no attempt) until it is resumed; a provider failing for everyone
//! opens its backend's circuit, which is probed instead of hammered, and every held
//! command rotates once the provider recovers.

use std::{collections::HashSet, time::Duration};

use entity::deferred_command;
use invite_worker::{domain::CommandSpec, simulator::FaultSpec};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Db, TestEnv, group, revoke, wait_until};

const WAIT: Duration = Duration::from_secs(60);
/// The bound for every command to rotate once a provider is back: generous, as a
/// half-open circuit's probe left unanswered holds it for up to a minute (`PROBE_LIMIT`);
/// a failure here is worth investigating, not retrying.
const RECOVERY: Duration = Duration::from_secs(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_session_waits_without_spending_attempts_and_runs_once_resumed() {
    let env = TestEnv::new(Db::Sqlite).await;
    let (code, out, err) = env
        .cli(&[
            "pause",
            "--backend",
            "sim",
            "--session",
            "held",
            "--reason",
            "leak drill",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "paused backend sim session held");
    let (code, out, _) = env.cli(&["pause", "list", "--json"]).await;
    assert_eq!(code, 0);
    let list: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(list[0]["session_id"], "held");
    assert_eq!(list[0]["reason"], "leak drill");

    let mut tap = env.tap_events().await;
    let worker = env.start_worker().await;
    let held: Vec<CommandSpec> = (0..3).map(|i| revoke("held", &group(i))).collect();
    let held: HashSet<Uuid> = env.send(&held).await.into_iter().collect();
    let free = env.send(&[revoke("free", &group(10))]).await[0];
    let got = tap.until_command(free, WAIT).await;
    assert_eq!(
        got.len(),
        1,
        "only the free session's command ran: {got:#?}"
    );

    // The held commands wait in the database, untouched at the provider.
    let waiting = || async {
        deferred_command::Entity::find()
            .filter(deferred_command::Column::SessionId.eq("held"))
            .count(worker.store.connection())
            .await
            .unwrap_or(0)
    };
    wait_until(WAIT, || async { waiting().await == 3 }).await;
    assert!(env.world.requests().iter().all(|r| r.session != "held"));

    let (code, out, err) = env
        .cli(&["resume", "--backend", "sim", "--session", "held"])
        .await;
    assert_eq!(
        (code, out.trim()),
        (0, "resumed backend sim session held"),
        "{err}"
    );
    let done: HashSet<Uuid> = tap
        .take(3, WAIT)
        .await
        .into_iter()
        .map(|(_, e)| {
            assert_eq!(e["event_type"], "invite_link.rotated", "{e:#}");
            assert_eq!(e["attempts"], 1, "{e:#}");
            e["command_id"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(done, held);
    assert_eq!(waiting().await, 0);
    let (code, _, err) = env
        .cli(&["resume", "--backend", "sim", "--session", "held"])
        .await;
    assert_eq!(code, 1, "resuming what is not paused fails: {err}");
    assert!(err.contains("is not paused"), "{err}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_refuse_an_unknown_backend_or_a_bad_session() {
    let env = TestEnv::new(Db::Sqlite).await;
    for args in [
        &["pause", "--backend", "nowhere"][..],
        &["pause", "--backend", "sim", "--session", "bad/session"],
        &["resume", "--backend", "nowhere"],
        &["pause"],
    ] {
        let (code, _, err) = env.cli(args).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}

/// 30 commands on 30 sessions while the provider answers 503 to everything for 10 s:
/// the backend's circuit opens after five failures and only probes follow, at growing
/// intervals; once the provider is back, a probe closes it and all 30 rotate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_down_for_everyone_is_probed_not_hammered_and_all_rotate_after() {
    let env = TestEnv::new(Db::Sqlite).await;
    env.world.add_fault(FaultSpec {
        route: "*".into(),
        count: 1_000_000,
        status: 503,
        retry_after: None,
        hang: false,
    });
    let mut tap = env.tap_events().await;
    let worker = env.start_worker().await;
    let specs: Vec<CommandSpec> = (0..30)
        .map(|i| revoke(&format!("s{i}"), &group(i)))
        .collect();
    let sent: HashSet<Uuid> = env.send(&specs).await.into_iter().collect();
    let outage = tokio::time::Instant::now();
    wait_until(WAIT, || async { !env.world.requests().is_empty() }).await;
    tokio::time::sleep_until(outage + Duration::from_secs(10)).await;
    env.world.clear_faults();
    let during = env.world.requests().len();
    assert!(
        during <= 40,
        "{during} requests while the provider was down"
    );

    let done: HashSet<Uuid> = tap
        .take(30, RECOVERY)
        .await
        .into_iter()
        .map(|(_, e)| {
            assert_eq!(e["event_type"], "invite_link.rotated", "{e:#}");
            e["command_id"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(done, sent);
    worker.stop().await;
}

/// A command that arrives after a circuit's cool-down takes the probe with its first
/// slot, before its receipt; it goes out as that probe and its answer closes the circuit.
/// (It used to meet its own probe at the next check and wait in the database behind it,
/// holding the circuit half-open for `PROBE_LIMIT`, a minute.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_arriving_after_the_cool_down_goes_as_the_probe_and_closes_the_circuit() {
    for db in [Db::Sqlite, Db::Postgres] {
        let env = TestEnv::new(db).await;
        let mut settings = env.settings.clone();
        settings.breaker.failures = 1;
        settings.breaker.cooldown = Duration::from_secs(1);
        // A failed reset is final: nothing waits to probe the circuit but the next command.
        settings.retry.max_attempts = 1;
        let mut tap = env.tap_events().await;
        let worker = env.start_worker_with(settings).await;
        // A tracked group, so that its next revoke is a reset without a read.
        let tracked = env.send(&[revoke("first", &group(1))]).await[0];
        let got = tap.until_command(tracked, WAIT).await;
        assert_eq!(
            got[0].1["event_type"], "invite_link.rotated",
            "{db:?}: {got:#?}"
        );

        env.world.add_fault(FaultSpec {
            route: "*".into(),
            count: 1,
            status: 503,
            retry_after: None,
            hang: false,
        });
        let failed = env.send(&[revoke("first", &group(1))]).await[0];
        let got = tap.until_command(failed, WAIT).await;
        assert_eq!(got.len(), 1, "{db:?}: {got:#?}");
        assert_eq!(
            got[0].1["event_type"], "invite_link.rotation_failed",
            "{db:?}"
        );
        // The circuit opened on that 503; its cool-down ends a second later.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let before = env.world.requests().len();

        let probe = env.send(&[revoke("second", &group(2))]).await[0];
        let got = tap.until_command(probe, Duration::from_secs(20)).await;
        assert_eq!(got.len(), 1, "{db:?}: {got:#?}");
        assert_eq!(got[0].1["event_type"], "invite_link.rotated", "{db:?}");
        assert_eq!(got[0].1["attempts"], 1, "{db:?}");
        let requests = env.world.requests();
        assert!(
            requests.len() > before && requests[before..].iter().all(|r| r.session == "second"),
            "{db:?}: {requests:#?}"
        );
        worker.stop().await;
    }
}
