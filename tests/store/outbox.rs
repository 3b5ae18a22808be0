//! The outbox: rows one relay took are skipped by another until settled.

use chrono::Utc;
use entity::outbox;

use crate::{
    fixtures::store,
    on_both_databases,
    support::{Db, TestEnv},
};

on_both_databases!(outbox_rows_taken_by_one_relay_are_skipped_by_another_until_settled);

/// Two relays never take the same outbox rows; settling deletes the rows published and
/// releases the others.
async fn outbox_rows_taken_by_one_relay_are_skipped_by_another_until_settled(db: Db) {
    use sea_orm::{ActiveModelTrait, Set};
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let claim = std::time::Duration::from_secs(30);
    let mut ids = Vec::new();
    for n in 0..3 {
        let row = outbox::ActiveModel {
            exchange: Set("x".into()),
            routing_key: Set("k".into()),
            message_id: Set(Some(format!("m{n}"))),
            payload: Set(b"{}".to_vec()),
            created_at: Set(Utc::now()),
            ..Default::default()
        }
        .insert(store.connection())
        .await
        .expect("insert");
        ids.push(row.id);
    }
    let first = store.take_outbox(2, claim).await.unwrap();
    let second = store.take_outbox(10, claim).await.unwrap();
    let taken =
        |b: &invite_worker::store::OutboxBatch| b.rows.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(taken(&first), ids[..2]);
    assert_eq!(
        taken(&second),
        ids[2..],
        "the first batch's rows are skipped"
    );
    store.settle_outbox(first, &[ids[0]]).await.unwrap();
    store.settle_outbox(second, &[]).await.unwrap();
    let again = store.take_outbox(10, claim).await.unwrap();
    assert_eq!(
        taken(&again),
        ids[1..],
        "published rows are gone, the rest released"
    );
    store.settle_outbox(again, &[]).await.unwrap();
    store.close().await;
}
