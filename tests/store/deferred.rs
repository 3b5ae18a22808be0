//! Deferred commands and shared request slots: a claim takes a session's revokes first,
//! then by due time and arrival, passes over leased groups and what another process is
//! claiming, and settled rows go; on PostgreSQL every process takes a session's slots from
//! one row, spaced by the interval, and a rotation also by its own.

use std::time::Duration;

use chrono::{DateTime, Utc};
use invite_worker::store::{Deferral, SlotRequest, Store};

use crate::{
    fixtures::store,
    on_both_databases,
    support::{Db, TestEnv, group},
};

on_both_databases!(
    a_claim_takes_revokes_first_then_by_due_time_and_arrival,
    a_claim_passes_over_leased_groups_and_what_is_not_due,
    a_claimed_command_is_not_claimed_again_until_its_claim_expires,
);

fn deferral(n: usize, priority: i16, due_at: DateTime<Utc>, arrived: DateTime<Utc>) -> Deferral {
    Deferral {
        command_id: format!("00000000-0000-4000-8000-{n:012}"),
        backend: "sim".into(),
        session_id: "sales".into(),
        lane: format!("sim|sales|{}", group(n)),
        priority,
        due_at,
        received_at: arrived,
        body: format!("{{\"n\":{n}}}").into_bytes(),
        origin: vec![(
            "x-original-routing-key".into(),
            "command.revoke_invite".into(),
        )],
        release_lease: false,
    }
}

async fn claim(store: &Store, owner: &str, now: DateTime<Utc>) -> Option<String> {
    let until = now + chrono::Duration::seconds(30);
    store
        .claim_deferred("sim", "sales", owner, now, until)
        .await
        .unwrap()
        .map(|row| row.command_id)
}

fn id(n: usize) -> Option<String> {
    Some(format!("00000000-0000-4000-8000-{n:012}"))
}

async fn a_claim_takes_revokes_first_then_by_due_time_and_arrival(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let t = Utc::now() - chrono::Duration::seconds(60);
    let s = chrono::Duration::seconds;
    store
        .defer_many(
            &[
                deferral(1, 1, t, t),               // a rotation, due first
                deferral(2, 0, t + s(2), t + s(2)), // revokes: by due time...
                deferral(3, 0, t + s(1), t + s(3)),
                deferral(4, 0, t + s(1), t + s(1)), // ... then by arrival
            ],
            "me",
        )
        .await
        .unwrap();
    let now = Utc::now();
    let mut order = Vec::new();
    while let Some(c) = claim(&store, "me", now).await {
        order.push(Some(c));
    }
    assert_eq!(order, [id(4), id(3), id(2), id(1)]);
    let row = store
        .find_deferred(&id(4).unwrap())
        .await
        .unwrap()
        .expect("kept");
    assert_eq!(row.claimed_by.as_deref(), Some("me"));
    assert_eq!(
        invite_worker::store::origin_of(&row)[0].1,
        "command.revoke_invite"
    );
    store.forget_deferred(&[id(4).unwrap()]).await.unwrap();
    assert!(
        store
            .find_deferred(&id(4).unwrap())
            .await
            .unwrap()
            .is_none()
    );
    store.close().await;
}

async fn a_claim_passes_over_leased_groups_and_what_is_not_due(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let now = Utc::now();
    let s = chrono::Duration::seconds;
    store
        .defer_many(
            &[
                deferral(1, 0, now - s(3), now - s(3)),
                deferral(2, 0, now - s(2), now - s(2)),
                deferral(3, 0, now + s(60), now - s(1)),
            ],
            "me",
        )
        .await
        .unwrap();
    let lanes = [format!("sim|sales|{}", group(1))];
    assert_eq!(
        store
            .try_lease_many(&lanes, "other", Duration::from_secs(30))
            .await
            .unwrap(),
        [true]
    );
    assert_eq!(claim(&store, "me", now).await, id(2));
    assert_eq!(
        claim(&store, "me", now).await,
        None,
        "1 is leased, 3 not due"
    );
    assert_eq!(store.due_sessions(now, 10).await.unwrap().len(), 1);
    assert!(
        store.next_due(now).await.unwrap().is_some(),
        "3 is due later"
    );
    store.close().await;
}

async fn a_claimed_command_is_not_claimed_again_until_its_claim_expires(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let now = Utc::now();
    store
        .defer_many(&[deferral(1, 0, now, now)], "me")
        .await
        .unwrap();
    assert_eq!(claim(&store, "a", now).await, id(1));
    assert_eq!(claim(&store, "b", now).await, None);
    assert_eq!(
        claim(&store, "b", now + chrono::Duration::seconds(31)).await,
        id(1)
    );
    // Handed back: due at once for anyone.
    store.unclaim_deferred(&id(1).unwrap(), "b").await.unwrap();
    assert_eq!(claim(&store, "c", Utc::now()).await, id(1));
    store.close().await;
}

/// Two processes taking one session's slots from its row: each slot is one interval after
/// the one before, whichever process takes it, and a rotation also waits for its own grid.
#[tokio::test]
async fn processes_take_a_sessions_slots_from_one_row_one_interval_apart() {
    let env = TestEnv::new(Db::Postgres).await;
    let (a, b) = (store(&env).await, store(&env).await);
    let request = |rotation: bool, lookahead: Duration| SlotRequest {
        interval: Duration::from_millis(100),
        rotation_interval: Duration::from_millis(200),
        slack: Duration::from_millis(25),
        rotation,
        lookahead,
        behind_due: false,
    };
    let far = Duration::from_secs(60);
    let mut waits = Vec::new();
    for store in [&a, &b, &a, &b] {
        waits.push(
            store
                .take_slot("sim", "sales", &request(false, far))
                .await
                .unwrap()
                .expect("taken"),
        );
    }
    // Each slot starts about one interval after the previous one (the statements take a
    // little time themselves, so each wait is a little shorter than the grid's).
    for (i, w) in waits.iter().enumerate() {
        let grid = Duration::from_millis(100 * i as u64);
        assert!(
            *w <= grid && grid - *w < Duration::from_millis(50),
            "{i}: {waits:?}"
        );
    }
    // Nothing is taken when the next slot is further than the lookahead.
    let busy = a
        .take_slot("sim", "sales", &request(false, Duration::ZERO))
        .await
        .unwrap();
    assert!(busy.is_err(), "{busy:?}");
    // A rotation takes the next session slot, and moves the rotations' grid on by its
    // own interval: the next rotation waits at least two session intervals more.
    let first = a
        .take_slot("sim", "sales", &request(true, far))
        .await
        .unwrap()
        .unwrap();
    let second = b
        .take_slot("sim", "sales", &request(true, far))
        .await
        .unwrap()
        .unwrap();
    assert!(
        second >= first + Duration::from_millis(150),
        "{first:?} then {second:?}"
    );
    a.close().await;
    b.close().await;
}
