//! The expiry scheduler and per-group history: automatic rotation before expiry (once
//! per expiry, also with two workers), claims with an explicit clock, untracked groups,
//! external changes.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use entity::link;
use invite_worker::{
    cli::{links, output},
    store::GroupKey,
    worker::scheduler,
};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait};

use crate::{
    on_both_databases,
    support::{Db, TestEnv, group, revoke, rotate},
};

const WAIT: Duration = Duration::from_secs(30);

on_both_databases!(
    claims_are_made_once_per_expiry_with_a_controlled_clock,
    untracked_group_is_tracked_and_rotated,
    external_reset_shows_in_the_history,
    by_default_a_tracked_group_costs_one_request,
);

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn tiny_rotation(env: &TestEnv) -> invite_worker::config::Settings {
    let mut s = env.settings.clone();
    s.rotation.enabled = true;
    s.rotation.link_ttl = Duration::from_secs(4);
    s.rotation.lead = Duration::from_secs(2);
    s.rotation.scan_interval = Duration::from_millis(500);
    s
}

async fn insert_link(
    store: &invite_worker::store::Store,
    group_id: &str,
    expires_at: DateTime<Utc>,
) -> i64 {
    let row = link::ActiveModel {
        backend: Set("sim".into()),
        session_id: Set("sales".into()),
        group_id: Set(group_id.into()),
        invite_code: Set(Some("AbCdEf".into())),
        issued_at: Set(Some(expires_at - chrono::Duration::days(7))),
        expires_at: Set(Some(expires_at)),
        expires_at_source: Set(Some("policy".into())),
        rotation_count: Set(1),
        updated_at: Set(expires_at),
        ..Default::default()
    };
    row.insert(store.connection()).await.unwrap().id
}

async fn claims_are_made_once_per_expiry_with_a_controlled_clock(db: Db) {
    let env = TestEnv::new(db).await;
    let worker = env.start_worker().await;
    let store = &worker.store;
    let soon = insert_link(store, &group(1), at("2026-11-23T09:00:00Z")).await;
    let far = insert_link(store, &group(2), at("2026-11-29T09:00:00Z")).await;
    let now = at("2026-11-22T10:00:00Z");
    let due = scheduler::due_cutoff(now, Duration::from_secs(24 * 3600));
    let republish = Duration::from_secs(600);

    let first = store.claim_due(now, due, republish, 100).await.unwrap();
    assert_eq!(
        first.iter().map(|l| l.id).collect::<Vec<_>>(),
        [soon],
        "only the link within the lead"
    );
    assert!(
        store
            .claim_due(now, due, republish, 100)
            .await
            .unwrap()
            .is_empty(),
        "claimed once"
    );

    let later = now + chrono::Duration::minutes(11);
    let again = store.claim_due(later, due, republish, 100).await.unwrap();
    assert_eq!(
        again.len(),
        1,
        "republished after the republish window (same command id)"
    );
    let id = |l: &link::Model| {
        scheduler::command_id(
            &l.backend,
            &l.session_id,
            &l.group_id,
            l.expires_at.unwrap(),
        )
    };
    assert_eq!(id(&first[0]), id(&again[0]));

    let mut row: link::ActiveModel = link::Entity::find_by_id(soon)
        .one(store.connection())
        .await
        .unwrap()
        .unwrap()
        .into();
    row.expires_at = Set(Some(at("2026-11-23T08:00:00Z")));
    row.update(store.connection()).await.unwrap();
    let renewed = store.claim_due(now, due, republish, 100).await.unwrap();
    assert_eq!(renewed.len(), 1, "a new expiry is claimed at once");
    assert_ne!(id(&renewed[0]), id(&first[0]));
    assert_eq!(store.count_links_due(due).await.unwrap(), 1);
    let _ = far;
    worker.stop().await;
}

async fn untracked_group_is_tracked_and_rotated(db: Db) {
    let env = TestEnv::new(db).await;
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;
    let g = group(3);
    env.world.upsert_group(invite_worker::simulator::GroupSpec {
        session: "sales".into(),
        group: g.clone(),
        admin: true,
        code: Some("ExistingCode1".into()),
    });
    let id = env.send(&[rotate("sales", &g)]).await[0];
    let ev = events.until_command(id, WAIT).await.pop().unwrap().1;
    assert_eq!(ev["event_type"], "invite_link.rotated");
    assert_eq!(ev["trigger"], "expiry");
    assert_eq!(
        ev["previous_invite_code"], "ExistingCode1",
        "read before rotating"
    );
    let key = GroupKey {
        backend: "sim".into(),
        session_id: "sales".into(),
        group_id: g.clone(),
    };
    let tracked = worker
        .store
        .link_get(&key)
        .await
        .unwrap()
        .expect("now tracked");
    assert_eq!(tracked.invite_code.as_deref(), ev["invite_code"].as_str());
    assert!(tracked.expires_at.is_some());
    worker.stop().await;
}

async fn external_reset_shows_in_the_history(db: Db) {
    let env = TestEnv::new(db).await;
    let mut events = env.tap_events().await;
    let mut settings = env.settings.clone();
    settings
        .backends
        .get_mut("sim")
        .expect("sim backend")
        .read_before_reset = true;
    let worker = env.start_worker_with(settings).await;
    let g = group(4);
    let first = env.send(&[revoke("sales", &g)]).await[0];
    let first_code =
        events.until_command(first, WAIT).await.pop().unwrap().1["invite_code"].clone();
    let outside = env.world.external_reset("sales", &g).expect("group exists");
    let second = env.send(&[revoke("sales", &g)]).await[0];
    let ev = events.until_command(second, WAIT).await.pop().unwrap().1;
    assert_eq!(
        ev["previous_invite_code"],
        outside.as_str(),
        "the replaced code is the external one"
    );

    let key = GroupKey {
        backend: "sim".into(),
        session_id: "sales".into(),
        group_id: g,
    };
    let detail = links::show(&worker.store, &key).await.unwrap();
    let outcomes: Vec<&str> = detail.history.iter().map(|h| h.outcome.as_str()).collect();
    assert_eq!(outcomes, ["rotated", "external_change", "rotated"]);
    let change = &detail.history[1];
    assert_eq!(change.old_code.as_deref(), first_code.as_str());
    assert_eq!(change.new_code.as_deref(), Some(outside.as_str()));
    let json = serde_json::to_value(&detail).unwrap();
    assert_eq!(json["history"][1]["outcome"], "external_change");
    assert_eq!(json["link"]["invite_code"], ev["invite_code"]);
    let text = output::link_detail(&detail);
    assert!(text.contains("external_change"));
    assert!(
        !text.contains(outside.as_str()),
        "text output shortens codes"
    );
    worker.stop().await;
}

/// With a 4 s link lifetime, a 2 s lead and a 500 ms scan, two workers on one PostgreSQL
/// database keep rotating a link before each expiry, exactly once per expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_are_rotated_before_expiry_once_per_expiry_by_two_workers() {
    let env = TestEnv::new(Db::Postgres).await;
    let settings = tiny_rotation(&env);
    let mut events = env.tap_events().await;
    let a = env.start_worker_with(settings.clone()).await;
    let b = env.start_worker_with(settings).await;
    let g = group(5);
    let first = env.send(&[revoke("sales", &g)]).await[0];
    let mut chain = events.until_command(first, WAIT).await;
    chain.extend(events.take(3, WAIT).await);
    a.stop().await;
    b.stop().await;
    chain.extend(events.drain_now());

    let rotations: Vec<_> = chain.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(rotations[0]["trigger"], "revoke");
    let mut seen_ids = HashSet::new();
    for pair in rotations.windows(2) {
        let (prev, next) = (&pair[0], &pair[1]);
        assert_eq!(next["trigger"], "expiry");
        assert_eq!(
            next["previous_invite_code"], prev["invite_code"],
            "each rotation replaces the last link"
        );
        let occurred = at(next["occurred_at"].as_str().unwrap());
        assert!(
            occurred <= at(prev["expires_at"].as_str().unwrap()),
            "rotated before expiry: {next:#}"
        );
        assert!(
            seen_ids.insert(next["command_id"].as_str().unwrap().to_owned()),
            "one rotation per expiry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_rotation_schedules_nothing() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut settings = tiny_rotation(&env);
    settings.rotation.enabled = false;
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings.clone()).await;
    let g = group(6);
    let first = env.send(&[revoke("sales", &g)]).await[0];
    let ev = events.until_command(first, WAIT).await.pop().unwrap().1;
    // The link is due 2 s after issue; give an enabled scheduler ten scan intervals past that.
    let due_at = at(ev["expires_at"].as_str().unwrap()) - chrono::Duration::seconds(2);
    let window =
        (due_at - Utc::now()).to_std().unwrap_or_default() + settings.rotation.scan_interval * 10;
    tokio::time::sleep(window).await;
    assert!(events.drain_now().is_empty(), "no rotation was scheduled");
    let key = GroupKey {
        backend: "sim".into(),
        session_id: "sales".into(),
        group_id: g,
    };
    let row = worker.store.link_get(&key).await.unwrap().unwrap();
    assert_eq!(row.scheduled_at, None, "no scan claimed the link");
    assert_eq!(row.rotation_count, 1);
    worker.stop().await;
}

async fn by_default_a_tracked_group_costs_one_request(db: Db) {
    let env = TestEnv::new(db).await;
    let mut events = env.tap_events().await;
    assert!(!env.settings.backends["sim"].read_before_reset);
    let worker = env.start_worker().await;
    let g = group(5);
    let requests = |op: &str| {
        env.world
            .stats()
            .routes
            .get(&format!("simulator.{op}"))
            .copied()
            .unwrap_or(0)
    };

    let first = env.send(&[revoke("sales", &g)]).await[0];
    let first_code =
        events.until_command(first, WAIT).await.pop().unwrap().1["invite_code"].clone();
    assert_eq!(
        (requests("read"), requests("reset")),
        (1, 1),
        "an untracked group is still read first"
    );

    env.world.reset_stats();
    let second = env.send(&[revoke("sales", &g)]).await[0];
    let ev = events.until_command(second, WAIT).await.pop().unwrap().1;
    assert_eq!(ev["previous_invite_code"], first_code, "the stored code");
    assert_ne!(ev["invite_code"], first_code);
    assert_eq!((requests("read"), requests("reset")), (0, 1));
    worker.stop().await;
}
