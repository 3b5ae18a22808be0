//! Group leases (renewed while held, never taken again once released) and the worker
//! heartbeats that count the processes sharing a database.

use chrono::Utc;
use entity::group_lease;
use invite_worker::store::Store;
use sea_orm::EntityTrait;

use crate::{
    fixtures::store,
    on_both_databases,
    support::{Db, TestEnv},
};

on_both_databases!(
    a_lease_is_renewed_while_held_and_never_taken_again_after_release,
    heartbeats_count_the_live_processes_sharing_the_database,
);

async fn lease_until(store: &Store, lane: &str) -> chrono::DateTime<Utc> {
    group_lease::Entity::find_by_id(lane.to_owned())
        .one(store.connection())
        .await
        .unwrap()
        .expect("lease row")
        .lease_until
}

/// A lease is extended while the work under it runs; once released, a renewal does not
/// take it again, and a lease another owner took is not extended.
async fn a_lease_is_renewed_while_held_and_never_taken_again_after_release(db: Db) {
    use invite_worker::{store::RELEASED, worker::lanes::Lease};
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let ttl = std::time::Duration::from_millis(300);
    let lanes = ["l".to_string()];
    assert_eq!(
        store.try_lease_many(&lanes, "me", ttl).await.unwrap(),
        [true]
    );
    let taken = lease_until(&store, "l").await;
    let lease = Lease::held(&store, "l", "me", ttl);
    // Renewals every 100 ms while this runs: the last ones end well after the first lease.
    lease
        .hold_while(tokio::time::sleep(std::time::Duration::from_secs(1)))
        .await;
    let renewed = lease_until(&store, "l").await;
    assert!(
        renewed > taken + chrono::Duration::milliseconds(300),
        "renewed until {renewed}, first taken until {taken}"
    );
    lease.release().await;
    assert!(!store.renew_lease("l", "me", ttl).await.unwrap());
    assert_eq!(lease_until(&store, "l").await, RELEASED);
    assert_eq!(
        store.try_lease_many(&lanes, "other", ttl).await.unwrap(),
        [true]
    );
    assert!(!store.renew_lease("l", "me", ttl).await.unwrap());
    store.close().await;
}

/// The rate-limit share's count: live heartbeats on PostgreSQL (a stale one and a left one
/// are not counted); always 1 on SQLite, which serves one process.
async fn heartbeats_count_the_live_processes_sharing_the_database(db: Db) {
    use sea_orm::ConnectionTrait;
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let live = std::time::Duration::from_secs(5);
    assert_eq!(store.heartbeat("a", live).await.unwrap(), 1);
    let two = store.heartbeat("b", live).await.unwrap();
    if db == Db::Sqlite {
        assert_eq!(two, 1);
        store.close().await;
        return;
    }
    assert_eq!(two, 2);
    assert_eq!(store.heartbeat("a", live).await.unwrap(), 2);
    store
        .connection()
        .execute_unprepared(
            "INSERT INTO worker_heartbeats (instance_id, seen_at) \
             VALUES ('stale', now() - interval '6 seconds')",
        )
        .await
        .unwrap();
    assert_eq!(store.heartbeat("a", live).await.unwrap(), 2);
    store.leave("b").await.unwrap();
    assert_eq!(store.heartbeat("a", live).await.unwrap(), 1);
    store.close().await;
}
