//! The command pipeline: events, idempotency, skipping, dead letters, per-group lanes.

use std::{collections::HashSet, time::Duration};

use entity::command;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use uuid::Uuid;

use crate::{
    on_both_databases,
    support::{Db, TestEnv, group, revoke, rotate},
};

const WAIT: Duration = Duration::from_secs(30);

on_both_databases!(
    revoke_publishes_one_rotated_event_matching_store_and_simulator,
    same_command_id_twice_resets_once_with_one_event_id,
    rotate_of_a_freshly_rotated_group_is_skipped_without_backend_call,
    bad_input_is_dead_lettered_and_a_later_command_still_completes,
    text_the_store_cannot_hold_loses_no_command_and_no_event,
    commands_for_one_group_run_one_at_a_time_while_groups_overlap,
);

async fn revoke_publishes_one_rotated_event_matching_store_and_simulator(db: Db) {
    let env = TestEnv::new(db).await;
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;
    let g = group(1);
    let [id] = env.send(&[revoke("sales", &g)]).await[..] else {
        panic!("one id")
    };

    let got = events.take(1, WAIT).await;
    let (props, ev) = &got[0];
    assert_eq!(props.routing_key, "invite_link.rotated");
    assert_eq!(props.kind.as_deref(), Some("invite_link.rotated"));
    assert_eq!(props.correlation_id, Some(id.to_string()));
    assert_eq!(props.message_id.as_deref(), ev["event_id"].as_str());
    assert!(props.persistent);
    assert_eq!(ev["command_id"], id.to_string());
    assert_eq!(ev["trigger"], "revoke");
    assert_eq!(ev["attempts"], 1);
    assert_eq!(ev["expires_at_source"], "policy");
    assert_eq!(ev["reason"], "test");

    let sim = env
        .world
        .peek("sales", &g)
        .expect("group exists in the simulator");
    assert_eq!(ev["invite_code"], sim.code.as_str());
    assert_eq!(
        ev["invite_link"],
        format!("https://chat.whatsapp.com/{}", sim.code)
    );
    let stored = worker
        .store
        .link_get(&key(&g))
        .await
        .unwrap()
        .expect("link is tracked");
    assert_eq!(stored.invite_code.as_deref(), Some(sim.code.as_str()));
    assert_ne!(ev["previous_invite_code"], ev["invite_code"]);
    assert_eq!(env.world.stats().resets[&format!("sales|{g}")], 1);

    worker.stop().await;
    assert!(events.drain_now().is_empty(), "exactly one event");
}

fn key(g: &str) -> invite_worker::store::GroupKey {
    invite_worker::store::GroupKey {
        backend: "sim".into(),
        session_id: "sales".into(),
        group_id: g.into(),
    }
}

async fn same_command_id_twice_resets_once_with_one_event_id(db: Db) {
    let env = TestEnv::new(db).await;
    let mut settings = env.settings.clone();
    settings.amqp.prefetch = 1; // sequential, so the sentinel settles after the duplicate
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;
    let g = group(2);
    let id = Uuid::new_v4();
    let spec = invite_worker::domain::CommandSpec {
        command_id: Some(id),
        ..revoke("sales", &g)
    };
    env.send(std::slice::from_ref(&spec)).await;
    let first = events.until_command(id, WAIT).await;
    env.send(&[spec]).await;
    let sentinel = env.send(&[revoke("sales", &group(3))]).await[0];
    let after = events.until_command(sentinel, WAIT).await;

    let for_id: Vec<_> = first
        .iter()
        .chain(&after)
        .filter(|(_, e)| e["command_id"] == id.to_string())
        .collect();
    assert_eq!(for_id.len(), 1, "one event for the command: {for_id:#?}");
    assert_eq!(env.world.stats().resets[&format!("sales|{g}")], 1);
    let row = command::Entity::find_by_id(id.to_string())
        .one(worker.store.connection())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.outcome.as_deref(), Some("rotated"));
    assert_eq!(row.event_id.as_deref(), for_id[0].1["event_id"].as_str());
    worker.stop().await;
}

async fn rotate_of_a_freshly_rotated_group_is_skipped_without_backend_call(db: Db) {
    let env = TestEnv::new(db).await;
    let mut settings = env.settings.clone();
    settings.amqp.prefetch = 1;
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;
    let g = group(4);
    let first = env.send(&[revoke("sales", &g)]).await[0];
    events.until_command(first, WAIT).await;
    let before = env.world.stats();

    let rot = env.send(&[rotate("sales", &g)]).await[0];
    let sentinel = env.send(&[revoke("sales", &group(5))]).await[0];
    let seen = events.until_command(sentinel, WAIT).await;
    assert!(
        seen.iter().all(|(_, e)| e["command_id"] != rot.to_string()),
        "no event for a skipped rotation"
    );

    let after = env.world.stats();
    let k = format!("sales|{g}");
    assert_eq!(after.resets[&k], before.resets[&k]);
    assert_eq!(
        after.routes.get("simulator.read"),
        Some(&(before.routes["simulator.read"] + 1)),
        "only the sentinel read"
    );
    let row = command::Entity::find_by_id(rot.to_string())
        .one(worker.store.connection())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.outcome.as_deref(), Some("skipped"));
    assert_eq!(row.attempts, 0);
    worker.stop().await;
}

async fn bad_input_is_dead_lettered_and_a_later_command_still_completes(db: Db) {
    let env = TestEnv::new(db).await;
    let mut settings = env.settings.clone();
    settings.amqp.prefetch = 1;
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;
    let bad_group_id = Uuid::new_v4();
    let bodies: Vec<Vec<u8>> = vec![
        b"\x00\xffgarbage".to_vec(),
        b"[1,2,3]".to_vec(),
        br#"{"type":"revoke_invite"}"#.to_vec(),
        serde_json::to_vec(&serde_json::json!({
            "command_id": bad_group_id.to_string(), "type": "revoke_invite",
            "session_id": "sales", "group_id": "../../admin?x=1"
        }))
        .unwrap(),
        vec![b'{'; 1024 * 1024],
    ];
    for b in &bodies {
        env.publish_raw(b).await;
    }
    let good = env.send(&[revoke("sales", &group(6))]).await[0];
    let seen = events.until_command(good, WAIT).await;
    assert_eq!(seen.last().unwrap().1["event_type"], "invite_link.rotated");

    let failed: Vec<_> = seen
        .iter()
        .filter(|(_, e)| e["event_type"] == "invite_link.rotation_failed")
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "only the attributable bad command gets a failure event: {failed:#?}"
    );
    assert_eq!(failed[0].1["command_id"], bad_group_id.to_string());
    assert_eq!(failed[0].1["error"]["kind"], "invalid_command");

    // The relay publishes dead letters after commit; wait for all five.
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.len() < bodies.len() && tokio::time::Instant::now() < deadline {
        dead.extend(env.dead_letters().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(dead.len(), bodies.len());
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons.iter().all(|r| r.starts_with("invalid_command: ")),
        "{reasons:?}"
    );
    let got_bodies: HashSet<&Vec<u8>> = dead.iter().map(|(b, _)| b).collect();
    assert!(
        bodies.iter().all(|b| got_bodies.contains(b)),
        "dead letters keep the original bodies"
    );
    assert!(reasons.iter().any(|r| r.contains("exceeds")));
    assert!(reasons.iter().any(|r| r.contains("group_id")));
    worker.stop().await;
}

/// A NUL character (which PostgreSQL text cannot hold) in a free-text field, an invalid
/// session and an unknown backend name longer than any configured one: each command gets
/// its event, nothing fails inside the worker.
async fn text_the_store_cannot_hold_loses_no_command_and_no_event(db: Db) {
    let env = TestEnv::new(db).await;
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;
    let (nul, bad_session, long_backend) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let body = |id: Uuid, session: &str, group: &str, backend: Option<&str>| {
        serde_json::to_vec(&serde_json::json!({
            "command_id": id.to_string(), "type": "revoke_invite", "session_id": session,
            "group_id": group, "backend": backend, "reason": "a\u{0}b",
            "requested_by": "\u{0}",
        }))
        .unwrap()
    };
    env.publish_raw(&body(nul, "sales", &group(40), None)).await;
    env.publish_raw(&body(bad_session, "a b", &group(41), None))
        .await;
    let backend = "b".repeat(100);
    env.publish_raw(&body(long_backend, "sales", &group(42), Some(&backend)))
        .await;

    let got = events.take(3, WAIT).await;
    let by_id = |id: Uuid| {
        got.iter()
            .map(|(_, e)| e)
            .find(|e| e["command_id"] == id.to_string())
            .unwrap_or_else(|| panic!("an event for {id}: {got:#?}"))
    };
    let rotated = by_id(nul);
    assert_eq!(rotated["event_type"], "invite_link.rotated");
    assert_eq!(rotated["reason"], "a\u{FFFD}b");
    assert_eq!(rotated["requested_by"], "\u{FFFD}");
    let invalid = by_id(bad_session);
    assert_eq!(invalid["error"]["kind"], "invalid_command");
    assert_eq!(invalid["session_id"], "a b", "reported back as sent");
    assert_eq!(
        invalid["backend"], "sim",
        "the default backend, as the command named none"
    );
    let unknown = by_id(long_backend);
    assert_eq!(unknown["error"]["kind"], "unknown_backend");
    assert_eq!(unknown["backend"], serde_json::Value::Null);

    let rows = command::Entity::find()
        .filter(command::Column::CommandId.is_in([
            nul.to_string(),
            bad_session.to_string(),
            long_backend.to_string(),
        ]))
        .all(worker.store.connection())
        .await
        .unwrap();
    assert_eq!(rows.len(), 3, "all three recorded");
    assert!(rows.iter().all(|r| r.status == "done"));
    worker.stop().await;
}

async fn commands_for_one_group_run_one_at_a_time_while_groups_overlap(db: Db) {
    let env = TestEnv::new(db).await;
    env.world.set_latency(Duration::from_millis(40));
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;

    let same: Vec<_> = (0..20).map(|_| revoke("sales", &group(7))).collect();
    env.send(&same).await;
    events.take(20, WAIT).await;
    let stats = env.world.stats();
    assert_eq!(stats.max_concurrency[&format!("sales|{}", group(7))], 1);
    assert_eq!(stats.resets[&format!("sales|{}", group(7))], 20);

    assert_eq!(
        stats.max_total_concurrency, 1,
        "one group alone never overlaps"
    );

    env.world.reset_stats();
    let spread: Vec<_> = (100..120).map(|n| revoke("sales", &group(n))).collect();
    env.send(&spread).await;
    events.take(20, WAIT).await;
    let stats = env.world.stats();
    assert_eq!(stats.max_group_concurrency, 1);
    assert!(
        stats.max_total_concurrency > 1,
        "different groups overlap: {}",
        stats.max_total_concurrency
    );
    let done = command::Entity::find()
        .filter(command::Column::Outcome.eq("rotated"))
        .all(worker.store.connection())
        .await
        .unwrap();
    assert_eq!(done.len(), 40);
    worker.stop().await;
}

/// Two workers (separate connections, pools and in-process lanes) on one PostgreSQL
/// database and one queue: only the database lease keeps a group's commands apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_database_without_overlapping_a_group() {
    let env = TestEnv::new(Db::Postgres).await;
    env.world.set_latency(Duration::from_millis(5));
    let mut events = env.tap_events().await;
    let mut settings = env.settings.clone();
    settings.amqp.prefetch = 16;
    let a = env.start_worker_with(settings.clone()).await;
    let b = env.start_worker_with(settings).await;

    let specs: Vec<_> = (0..200)
        .map(|i| revoke("sales", &group(200 + i % 10)))
        .collect();
    let ids: HashSet<String> = env
        .send(&specs)
        .await
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    let got = events.take(200, Duration::from_secs(120)).await;

    let event_ids: HashSet<&str> = got
        .iter()
        .filter_map(|(_, e)| e["event_id"].as_str())
        .collect();
    let commands: HashSet<String> = got
        .iter()
        .filter_map(|(_, e)| e["command_id"].as_str().map(String::from))
        .collect();
    assert_eq!(event_ids.len(), 200);
    assert_eq!(commands, ids, "every command has exactly one event");
    let stats = env.world.stats();
    assert_eq!(
        stats.max_group_concurrency, 1,
        "no reset overlapped within a group"
    );
    assert_eq!(stats.resets.values().sum::<u64>(), 200);
    let rows = command::Entity::find()
        .all(a.store.connection())
        .await
        .unwrap();
    assert_eq!(rows.len(), 200);
    assert!(
        rows.iter()
            .all(|r| r.status == "done" && r.outcome.as_deref() == Some("rotated"))
    );
    a.stop().await;
    b.stop().await;
    assert!(events.drain_now().is_empty(), "no duplicate events");
}

/// The same with two real `invite-worker run` processes against the `simulate` binary
/// (a readable kind): every command has exactly one outcome and no reset overlapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_run_processes_share_one_database_and_queue() {
    use crate::support::{SimulatorProcess, WorkerProcess};
    const TOKEN: &str = "two-proc-token-5d1";
    let env = TestEnv::new(Db::Postgres).await;
    let sim = SimulatorProcess::spawn(TOKEN);
    sim.control("latency", serde_json::json!({"ms": 5})).await;
    let mut vars = env.process_env();
    vars.extend(
        [
            ("KIND", "waha".to_owned()),
            ("BASE_URL", format!("{}/waha", sim.base)),
            ("TOKEN", TOKEN.to_owned()),
            ("RATE_LIMIT_PER_SESSION", "1000/s".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INVITE_WORKER__BACKENDS__WAHA__{k}"), v)),
    );
    vars.push(("INVITE_WORKER__AMQP__PREFETCH".into(), "16".into()));
    let mut events = env.tap_events().await;
    let mut a = WorkerProcess::spawn(&vars, None, env.dir().join("a.log"));
    let mut b = WorkerProcess::spawn(&vars, None, env.dir().join("b.log"));

    let specs: Vec<_> = (0..200)
        .map(|i| invite_worker::domain::CommandSpec {
            backend: Some("waha".into()),
            ..revoke("sales", &group(300 + i % 10))
        })
        .collect();
    let ids: HashSet<String> = env
        .send(&specs)
        .await
        .into_iter()
        .map(|u| u.to_string())
        .collect();
    let got = events.take(200, Duration::from_secs(120)).await;
    let commands: HashSet<String> = got
        .iter()
        .filter_map(|(_, e)| e["command_id"].as_str().map(String::from))
        .collect();
    assert_eq!(commands, ids, "every command has one event");
    let stats = sim.stats().await;
    assert_eq!(
        stats["max_group_concurrency"], 1,
        "no two requests of one group overlapped"
    );
    let resets: u64 = stats["resets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(resets, 200);
    a.terminate();
    b.terminate();
    assert!(
        a.exit_within(Duration::from_secs(30)).await.success(),
        "{}",
        a.log_tail()
    );
    assert!(
        b.exit_within(Duration::from_secs(30)).await.success(),
        "{}",
        b.log_tail()
    );
    let store = env.store().await;
    let rows = command::Entity::find()
        .all(store.connection())
        .await
        .unwrap();
    store.close().await;
    assert_eq!(rows.len(), 200);
    assert!(
        rows.iter()
            .all(|r| r.status == "done" && r.outcome.as_deref() == Some("rotated"))
    );
    assert!(events.drain_now().is_empty(), "no duplicate events");
}
