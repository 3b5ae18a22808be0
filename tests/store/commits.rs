//! The group commit: a batch of outcomes written in one transaction, each only if its
//! command was not done already, in order.

use chrono::Utc;
use entity::{group_lease, history, outbox};
use invite_worker::{
    domain::{BackendError, ErrorKind},
    store::{GroupKey, Outcome, STATUS_DONE},
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::{
    fixtures::{command, rotated, store},
    on_both_databases,
    support::{Db, TestEnv},
};

on_both_databases!(
    a_batch_commit_writes_fresh_outcomes_only_and_keeps_their_order,
    a_failed_outcome_keeps_its_error_and_a_rotated_one_in_the_same_batch_its_link,
);

async fn a_batch_commit_writes_fresh_outcomes_only_and_keeps_their_order(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let (a, b) = (command(1), command(2));
    store.begin_commands(&[a.clone(), b.clone()]).await.unwrap();
    let ttl = std::time::Duration::from_secs(30);
    let held = store
        .try_lease_many(&["la".to_string(), "lb".to_string()], "me", ttl)
        .await
        .unwrap();
    assert_eq!(held, [true, true]);
    let first = rotated(&a, "CodeA1", Some(("la", "me")));
    assert_eq!(store.commit_batch(&[&first]).await.unwrap(), [true]);
    store.try_lease("la", "me", ttl).await.unwrap();

    // `a` again (already done) and `b` in one batch: only b's rows are written.
    let again = rotated(&a, "CodeA2", Some(("la", "me")));
    let second = rotated(&b, "CodeB1", Some(("lb", "me")));
    assert_eq!(
        store.commit_batch(&[&again, &second]).await.unwrap(),
        [false, true]
    );

    let db = store.connection();
    let a_link = store.link_get(&GroupKey::of(&a)).await.unwrap().unwrap();
    assert_eq!(a_link.invite_code.as_deref(), Some("CodeA1"));
    assert_eq!(a_link.rotation_count, 1);
    let b_row = store
        .find_command(&b.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_row.status, STATUS_DONE);
    assert_eq!(b_row.new_code.as_deref(), Some("CodeB1"));
    assert_eq!(b_row.event_id, second.messages[0].message_id);

    let b_history: Vec<(String, Option<String>)> = history::Entity::find()
        .filter(history::Column::GroupId.eq(b.group.as_str()))
        .order_by_asc(history::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|h| (h.outcome, h.new_code))
        .collect();
    assert_eq!(
        b_history,
        [
            ("external_change".to_string(), Some("Outside".to_string())),
            ("rotated".to_string(), Some("CodeB1".to_string())),
        ]
    );
    let a_history = history::Entity::find()
        .filter(history::Column::GroupId.eq(a.group.as_str()))
        .all(db)
        .await
        .unwrap();
    assert_eq!(a_history.len(), 2, "the repeated outcome wrote no history");

    let rows = outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .all(db)
        .await
        .unwrap();
    let owners: Vec<Option<String>> = rows.iter().map(|r| r.correlation_id.clone()).collect();
    assert_eq!(owners, [Some(a.id.to_string()), Some(b.id.to_string())]);
    for row in &rows {
        assert_eq!(
            row.payload,
            [0xff, 0x00, b'{', 0x80, b'}'],
            "payload bytes intact"
        );
        assert_eq!(row.headers.as_deref(), Some(r#"{"h":"v"}"#));
    }

    let leases: Vec<String> = group_lease::Entity::find()
        .filter(group_lease::Column::LeaseUntil.gt(Utc::now()))
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.lane)
        .collect();
    assert_eq!(
        leases,
        ["la"],
        "b's lease is released, a's retaken lease is not"
    );
    store.close().await;
}

/// A failure (error kind, text with a NUL, HTTP status; no link, no new code) and a
/// rotation in one batch: each row gets its own values, NULLs included.
async fn a_failed_outcome_keeps_its_error_and_a_rotated_one_in_the_same_batch_its_link(db: Db) {
    let on_postgres = matches!(db, Db::Postgres);
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let (a, b) = (command(1), command(2));
    store.begin_commands(&[a.clone(), b.clone()]).await.unwrap();
    let mut failed = rotated(&a, "Unused", None);
    failed.attempts = 3;
    failed.external_change = None;
    failed.outcome = Outcome::Failed(BackendError {
        kind: ErrorKind::NotAdmin,
        message: "not\0admin".into(),
        http_status: Some(403),
        retry_after: None,
    });
    failed.messages[0].headers.clear();
    let ok = rotated(&b, "CodeB1", None);
    assert_eq!(
        store.commit_batch(&[&failed, &ok]).await.unwrap(),
        [true, true]
    );

    let a_row = store
        .find_command(&a.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a_row.status, STATUS_DONE);
    assert_eq!(a_row.outcome.as_deref(), Some("failed"));
    assert_eq!(a_row.attempts, 3);
    assert_eq!(a_row.new_code, None);
    assert_eq!(a_row.error_kind.as_deref(), Some("not_admin"));
    assert_eq!(a_row.http_status, Some(403));
    let message = a_row.error_message.expect("an error message");
    if on_postgres {
        assert_eq!(
            message, "not\u{FFFD}admin",
            "PostgreSQL text cannot hold NUL"
        );
    } else {
        assert!(message.starts_with("not"), "{message:?}");
    }
    assert!(
        store.link_get(&GroupKey::of(&a)).await.unwrap().is_none(),
        "a failure on an untracked group writes no link"
    );
    let b_row = store
        .find_command(&b.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b_row.outcome.as_deref(), Some("rotated"));
    assert_eq!((b_row.error_kind, b_row.http_status), (None, None));
    let b_link = store.link_get(&GroupKey::of(&b)).await.unwrap().unwrap();
    assert_eq!(b_link.invite_code.as_deref(), Some("CodeB1"));

    let db = store.connection();
    let a_history = history::Entity::find()
        .filter(history::Column::GroupId.eq(a.group.as_str()))
        .all(db)
        .await
        .unwrap();
    assert_eq!(a_history.len(), 1);
    assert_eq!(a_history[0].outcome, "failed");
    assert_eq!(a_history[0].error_kind.as_deref(), Some("not_admin"));
    assert_eq!(a_history[0].attempts, 3);
    let headers: Vec<Option<String>> = outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.headers)
        .collect();
    assert_eq!(headers, [None, Some(r#"{"h":"v"}"#.to_string())]);
    store.close().await;
}
