//! Retries (docs/contract.md §6.5): transient errors are retried with backoff and `Retry-After`,
//! long waits hold the command in the database (not in a consumer slot) until its due
//! time, permanent errors and exhausted budgets fail the command with an event and a
//! dead letter.

use std::time::Duration;

use entity::command;
use invite_worker::simulator::{FaultSpec, GroupSpec};
use sea_orm::EntityTrait;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    on_both_databases,
    support::{Db, TestEnv, group, revoke, wait_until},
};

const WAIT: Duration = Duration::from_secs(30);

fn fault(route: &str, count: u32, status: u16, retry_after: Option<u64>) -> FaultSpec {
    FaultSpec {
        route: route.into(),
        count,
        status,
        retry_after,
        hang: false,
    }
}

/// The dead letters, polled until `n` arrived (the relay publishes them after commit).
async fn dead_letters(env: &TestEnv, n: usize) -> Vec<(Vec<u8>, String)> {
    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} dead letters, got {dead:?}"
        );
        dead.extend(env.dead_letters().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dead
}

async fn row(worker: &crate::support::RunningWorker, id: Uuid) -> command::Model {
    command::Entity::find_by_id(id.to_string())
        .one(worker.store.connection())
        .await
        .unwrap()
        .expect("command row")
}

on_both_databases!(two_server_errors_then_success_rotate_with_three_attempts);

async fn two_server_errors_then_success_rotate_with_three_attempts(db: Db) {
    let env = TestEnv::new(db).await;
    env.world.add_fault(fault("*.reset", 2, 500, None));
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;
    let g = group(1);
    let id = env.send(&[revoke("sales", &g)]).await[0];

    let got = events.until_command(id, WAIT).await;
    let (props, ev) = got.last().unwrap();
    assert_eq!(props.routing_key, "invite_link.rotated", "{ev:#}");
    assert_eq!(ev["attempts"], 3);
    assert_eq!(ev["invite_code"], env.world.peek("sales", &g).unwrap().code);
    let stats = env.world.stats();
    assert_eq!(stats.routes["simulator.reset"], 3);
    assert_eq!(
        stats.resets[&format!("sales|{g}")],
        1,
        "two failed, one done"
    );
    let r = row(&worker, id).await;
    assert_eq!((r.outcome.as_deref(), r.attempts), (Some("rotated"), 3));
    worker.stop().await;
}

/// The time between a reset answered 429 with `Retry-After: secs` and its retry, which
/// rotates the link on the second attempt.
async fn retry_after_gap(secs: u64) -> Duration {
    let env = TestEnv::new(Db::Sqlite).await;
    env.world.add_fault(fault("*.reset", 1, 429, Some(secs)));
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;
    let id = env.send(&[revoke("sales", &group(2))]).await[0];

    let got = events.until_command(id, WAIT).await;
    assert_eq!(got.last().unwrap().1["attempts"], 2);
    let resets = env.world.request_times("simulator.reset");
    assert_eq!(resets.len(), 2);
    worker.stop().await;
    resets[1] - resets[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_before_the_next_attempt() {
    let gap = retry_after_gap(2).await;
    assert!(
        gap >= Duration::from_secs(2),
        "second attempt {gap:?} after a 429 with Retry-After: 2"
    );
}

/// A wait longer than `retry.max_inline_wait` ends at its due time: a 429 asking for 3 s
/// is retried 3 s later, not rounded up (the delay queues it replaced would have waited
/// 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_after_is_retried_at_its_due_time() {
    let gap = retry_after_gap(3).await;
    assert!(
        gap >= Duration::from_secs(3) && gap < Duration::from_secs(4),
        "second attempt {gap:?} after a 429 with Retry-After: 3"
    );
}

/// With one consumer slot, a command waiting 3 s for its retry must not block a command
/// sent after it: the waiting one waits in the database, not in the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_wait_frees_the_consumer_slot() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut settings = env.settings.clone();
    settings.amqp.prefetch = 1;
    env.world.add_fault(fault("*.reset", 1, 503, Some(3)));
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

    let slow = env.send(&[revoke("sales", &group(3))]).await[0];
    wait_until(WAIT, || async {
        env.world.request_times("simulator.reset").len() == 1
    })
    .await;
    let fast = env.send(&[revoke("sales", &group(4))]).await[0];

    let got = events.until_command(slow, WAIT).await;
    let order: Vec<&Value> = got.iter().map(|(_, e)| &e["command_id"]).collect();
    assert_eq!(
        order,
        [
            &Value::from(fast.to_string()),
            &Value::from(slow.to_string())
        ],
        "the later command finished while the first one waited"
    );
    assert_eq!(got[1].1["attempts"], 2);
    let resets = env.world.request_times("simulator.reset");
    assert_eq!(resets.len(), 3, "slow twice, fast once");
    assert!(resets[2] - resets[0] >= Duration::from_secs(3));
    let r = row(&worker, slow).await;
    assert_eq!((r.outcome.as_deref(), r.attempts), (Some("rotated"), 2));
    worker.stop().await;
}

on_both_databases!(permanent_refusals_fail_after_one_request_without_retry);

async fn permanent_refusals_fail_after_one_request_without_retry(db: Db) {
    let env = TestEnv::new(db).await;
    let mut settings = env.settings.clone();
    settings.amqp.prefetch = 1;
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

    // Not an admin of the group: the first request (the read) is refused.
    env.world.upsert_group(GroupSpec {
        session: "sales".into(),
        group: group(5),
        admin: false,
        code: None,
    });
    let not_admin = env.send(&[revoke("sales", &group(5))]).await[0];
    let got = events.until_command(not_admin, WAIT).await;
    let (props, ev) = got.last().unwrap();
    assert_eq!(props.routing_key, "invite_link.rotation_failed");
    assert_eq!(ev["error"]["kind"], "not_admin");
    let stats = env.world.stats();
    assert_eq!(stats.routes.values().sum::<u64>(), 1, "{:?}", stats.routes);

    // A 403 on the reset itself: exactly one reset request, no retry.
    env.world.reset_stats();
    env.world.add_fault(fault("*.reset", 5, 403, None));
    let forbidden = env.send(&[revoke("sales", &group(6))]).await[0];
    let got = events.until_command(forbidden, WAIT).await;
    let (_, ev) = got.last().unwrap();
    assert_eq!(ev["event_type"], "invite_link.rotation_failed");
    assert_eq!(ev["error"]["kind"], "not_admin");
    assert_eq!(ev["error"]["http_status"], 403);
    assert_eq!(ev["attempts"], 1);
    assert_eq!(env.world.stats().routes.get("simulator.reset"), Some(&1));
    env.world.clear_faults();

    let dead = dead_letters(&env, 2).await;
    assert!(
        dead.iter().all(|(_, h)| h.starts_with("not_admin: ")),
        "{dead:?}"
    );
    for id in [not_admin, forbidden] {
        let r = row(&worker, id).await;
        assert_eq!(r.outcome.as_deref(), Some("failed"));
        assert_eq!(r.error_kind.as_deref(), Some("not_admin"));
    }
    worker.stop().await;
}

on_both_databases!(exhausted_retries_fail_as_backend_unavailable_with_a_dead_letter);

async fn exhausted_retries_fail_as_backend_unavailable_with_a_dead_letter(db: Db) {
    let env = TestEnv::new(db).await;
    let mut settings = env.settings.clone();
    settings.retry.max_attempts = 3;
    env.world.add_fault(fault("*.reset", 100, 500, None));
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;
    let id = env.send(&[revoke("sales", &group(7))]).await[0];

    let got = events.until_command(id, WAIT).await;
    let (props, ev) = got.last().unwrap();
    assert_eq!(props.routing_key, "invite_link.rotation_failed");
    assert_eq!(ev["error"]["kind"], "backend_unavailable");
    assert_eq!(ev["error"]["http_status"], 500);
    assert_eq!(ev["attempts"], 3);
    assert_eq!(env.world.stats().routes["simulator.reset"], 3);

    let dead = dead_letters(&env, 1).await;
    let body: Value = serde_json::from_slice(&dead[0].0).unwrap();
    assert_eq!(body["command_id"], id.to_string(), "the original command");
    assert!(dead[0].1.starts_with("backend_unavailable: "), "{dead:?}");
    let r = row(&worker, id).await;
    assert_eq!((r.outcome.as_deref(), r.attempts), (Some("failed"), 3));
    worker.stop().await;
}

/// Every retry here waits 3 s (Retry-After), so each waits in the database and runs
/// again from there: the budget still ends after exactly `max_attempts` resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_count_survives_waiting_in_the_database() {
    let env = TestEnv::new(Db::Postgres).await;
    let mut settings = env.settings.clone();
    settings.retry.max_attempts = 3;
    env.world.add_fault(fault("*.reset", 100, 503, Some(3)));
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;
    let id = env.send(&[revoke("sales", &group(8))]).await[0];

    let got = events.until_command(id, Duration::from_secs(60)).await;
    let (_, ev) = got.last().unwrap();
    assert_eq!(ev["event_type"], "invite_link.rotation_failed");
    assert_eq!(ev["error"]["kind"], "backend_unavailable");
    assert_eq!(ev["attempts"], 3);
    let resets = env.world.request_times("simulator.reset");
    assert_eq!(resets.len(), 3);
    for pair in resets.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(3));
    }
    assert_eq!(dead_letters(&env, 1).await.len(), 1);
    worker.stop().await;
}

on_both_databases!(a_dead_letter_keeps_the_commands_headers_and_routing_key);

/// A dead-lettered command keeps what it arrived with: its text headers (an upstream's
/// trace id) and, as `x-original-routing-key`, the routing key it was published with,
/// also when it failed after waiting in the database.
async fn a_dead_letter_keeps_the_commands_headers_and_routing_key(db: Db) {
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let env = TestEnv::new(db).await;
    let worker = env.start_worker().await;
    // Parked (Retry-After above the inline wait), then refused for good.
    env.world.add_fault(fault("*.reset", 1, 429, Some(3)));
    env.world.add_fault(fault("*.reset", 1, 403, None));
    let (parked, invalid) = (Uuid::new_v4(), Uuid::new_v4());
    let body = |id: Uuid, group: &str| {
        serde_json::to_vec(&serde_json::json!({
            "command_id": id.to_string(), "type": "revoke_invite",
            "session_id": "sales", "group_id": group,
        }))
        .unwrap()
    };
    let mut headers = FieldTable::default();
    headers.insert(
        "x-trace-id".into(),
        AMQPValue::LongString(LongString::from(b"trace-1".to_vec())),
    );
    env.publish_raw_with(
        &body(parked, &group(60)),
        "command.revoke_invite",
        headers.clone(),
    )
    .await;
    env.publish_raw_with(&body(invalid, "not-a-jid"), "command.custom.key", headers)
        .await;

    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "two dead letters: {dead:?}"
        );
        dead.extend(env.dead_letters_with_headers().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let of = |id: Uuid| {
        dead.iter()
            .find(|(b, _)| String::from_utf8_lossy(b).contains(&id.to_string()))
            .map(|(_, h)| h.clone())
            .unwrap_or_else(|| panic!("a dead letter for {id}: {dead:?}"))
    };
    let failed = of(parked);
    assert_eq!(failed["x-trace-id"], "trace-1");
    assert_eq!(failed["x-original-routing-key"], "command.revoke_invite");
    assert!(
        failed["x-invite-error"].starts_with("not_admin"),
        "{failed:?}"
    );
    let rejected = of(invalid);
    assert_eq!(rejected["x-trace-id"], "trace-1");
    assert_eq!(rejected["x-original-routing-key"], "command.custom.key");
    assert!(
        rejected["x-invite-error"].starts_with("invalid_command"),
        "{rejected:?}"
    );
    worker.stop().await;
}

on_both_databases!(a_replayed_dead_letter_is_republished_with_the_commands_headers);

/// `dead-letters replay` republishes a command with what it arrived with (not the
/// failure reason): when it fails again, the new dead letter still carries them.
async fn a_replayed_dead_letter_is_republished_with_the_commands_headers(db: Db) {
    use invite_worker::{
        cli::dead_letters::{self, Selection},
        store::Store,
    };
    use lapin::types::{AMQPValue, FieldTable, LongString};
    let env = TestEnv::new(db).await;
    let worker = env.start_worker().await;
    env.world.add_fault(fault("*.reset", 2, 403, None));
    let id = Uuid::new_v4();
    let body = serde_json::to_vec(&serde_json::json!({
        "command_id": id.to_string(), "type": "revoke_invite",
        "session_id": "sales", "group_id": group(61),
    }))
    .unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        "x-trace-id".into(),
        AMQPValue::LongString(LongString::from(b"trace-2".to_vec())),
    );
    env.publish_raw_with(&body, "command.custom.key", headers)
        .await;
    wait_until(WAIT, || async {
        dead_letters::list(&env.settings).await.expect("list").len() == 1
    })
    .await;
    let store = Store::connect(env.settings.database.url.expose(), 1)
        .await
        .expect("store");
    let report = dead_letters::replay(&env.settings, &store, &Selection::Ids(vec![id]))
        .await
        .expect("replay");
    assert_eq!(report.replayed, [id.to_string()]);
    store.close().await;

    let mut dead = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replayed command fails again"
        );
        dead.extend(env.dead_letters_with_headers().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let headers = &dead[0].1;
    assert_eq!(headers["x-trace-id"], "trace-2");
    assert_eq!(headers["x-original-routing-key"], "command.custom.key");
    assert_eq!(headers.keys().filter(|k| *k == "x-invite-error").count(), 1);
    assert!(
        headers["x-invite-error"].starts_with("not_admin"),
        "{headers:?}"
    );
    worker.stop().await;
}
