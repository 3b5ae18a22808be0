//! The batched statements shared by concurrent commands (one statement per batch on
//! PostgreSQL, multi-row statements on SQLite): every request gets its own answer.

use chrono::Utc;
use entity::{group_lease, history, outbox};
use invite_worker::{
    domain::{
        BackendError, Command, CommandId, CommandType, ErrorKind, GroupId, GroupIdStyle,
        InviteCode, Link, SessionId,
        events::{ExpirySource, OutboxMessage},
    },
    store::{
        Attempt, Begin, Completion, FirstAttempt, GroupKey, Outcome, STATUS_DONE, STATUS_EXECUTING,
        Store,
    },
};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use crate::{
    helpers::{Db, TestEnv, group, wait_until},
    on_both_databases,
};

on_both_databases!(
    batched_receipts_attempts_leases_and_reads_answer_each_request,
    a_batch_commit_writes_fresh_outcomes_only_and_keeps_their_order,
    a_failed_outcome_keeps_its_error_and_a_rotated_one_in_the_same_batch_its_link,
    begin_records_each_command_and_takes_only_free_leases,
    a_first_attempt_records_the_stored_code_and_returns_the_link,
    begin_records_the_first_attempt_of_new_leased_commands_on_postgres,
    outbox_rows_taken_by_one_relay_are_skipped_by_another_until_settled,
    a_lease_is_renewed_while_held_and_never_taken_again_after_release,
    migrations_go_down_and_up_again,
    dropping_the_pending_index_deletes_rows_an_older_version_marked_sent,
    heartbeats_count_the_live_processes_sharing_the_database,
    a_statement_that_can_only_scan_is_not_jit_compiled,
);

fn command(n: usize) -> Command {
    Command {
        id: CommandId(Uuid::new_v4()),
        kind: CommandType::RevokeInvite,
        session: SessionId::parse("sales").unwrap(),
        group: GroupId::parse(&group(n), GroupIdStyle::Jid).unwrap(),
        backend: "sim".into(),
        reason: Some("batch test".into()),
        requested_by: None,
    }
}

/// Completes a command on group 3 with code `Done3`: the group is tracked. Returns it.
async fn track_group_3(store: &Store) -> Command {
    let done = command(3);
    store.begin_command(&done).await.unwrap();
    store
        .complete(&rotated(&done, "Done3", None))
        .await
        .unwrap();
    done
}

async fn store(env: &TestEnv) -> Store {
    let store = env.store().await;
    store.migrate().await.expect("migrate");
    store
}

async fn batched_receipts_attempts_leases_and_reads_answer_each_request(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let (a, b, c) = (command(1), command(2), command(3));
    store.begin_command(&c).await.unwrap();
    assert!(
        store
            .mark_executing(&c.id.to_string(), Some("Old1"), 2)
            .await
            .unwrap()
    );

    // A duplicate in the batch and a row that already exists each get their row.
    let rows = store
        .begin_commands(&[a.clone(), b.clone(), a.clone(), c.clone()])
        .await
        .unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r.command_id.clone()).collect();
    let want: Vec<String> = [&a, &b, &a, &c].iter().map(|x| x.id.to_string()).collect();
    assert_eq!(ids, want);
    assert_eq!(rows[0].status, "received");
    assert_eq!(rows[3].status, STATUS_EXECUTING);
    assert_eq!(rows[3].attempts, 2);
    assert_eq!(rows[3].before_code.as_deref(), Some("Old1"));

    // Attempt markers: a done command is not marked.
    store.complete(&rotated(&b, "New2", None)).await.unwrap();
    let marked = store
        .mark_executing_many(&[attempt(&a, Some("Abc"), 1), attempt(&b, None, 1)])
        .await
        .unwrap();
    assert_eq!(marked, [true, false]);
    let a_row = store
        .find_command(&a.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            a_row.status.as_str(),
            a_row.attempts,
            a_row.before_code.as_deref()
        ),
        (STATUS_EXECUTING, 1, Some("Abc"))
    );

    // Leases: a lane held by another owner is refused, the others are taken.
    let ttl = std::time::Duration::from_secs(30);
    let lanes = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let mine = store
        .try_lease_many(&lanes(&["l1", "l2", "l1"]), "me", ttl)
        .await
        .unwrap();
    assert_eq!(mine, [true, true, true]);
    let theirs = store
        .try_lease_many(&lanes(&["l1", "l3"]), "other", ttl)
        .await
        .unwrap();
    assert_eq!(theirs, [false, true]);

    // Link reads: tracked and untracked groups in one batch.
    let links = store
        .link_get_many(&[GroupKey::of(&a), GroupKey::of(&b)])
        .await
        .unwrap();
    assert!(links[0].is_none(), "a has no outcome yet");
    let tracked = links[1].as_ref().expect("b's outcome is tracked");
    assert_eq!(tracked.invite_code.as_deref(), Some("New2"));
    store.close().await;
}

fn attempt(cmd: &Command, before: Option<&str>, attempts: i32) -> Attempt {
    Attempt {
        command_id: cmd.id.to_string(),
        before_code: before.map(str::to_owned),
        attempts,
    }
}

/// A rotated outcome for `cmd` that also records an external change, with an event
/// payload that is not UTF-8.
fn rotated(cmd: &Command, code: &str, lease: Option<(&str, &str)>) -> Completion {
    Completion {
        cmd: cmd.clone(),
        attempts: 1,
        outcome: Outcome::Rotated {
            link: Link {
                code: InviteCode::parse(code).unwrap(),
                expires_at: None,
            },
            previous_code: Some("Prev".into()),
            expires_at: Utc::now(),
            source: ExpirySource::Policy,
        },
        external_change: Some((Some("Stored".into()), "Outside".into())),
        messages: vec![OutboxMessage {
            exchange: "x".into(),
            routing_key: "invite_link.rotated".into(),
            message_id: Some(Uuid::new_v4().to_string()),
            message_type: Some("invite_link.rotated".into()),
            correlation_id: Some(cmd.id.to_string()),
            headers: vec![("h".into(), "v".into())],
            payload: vec![0xff, 0x00, b'{', 0x80, b'}'],
        }],
        started_at: Utc::now(),
        link: None,
        release_lease: lease.map(|(l, o)| (l.to_owned(), o.to_owned())),
    }
}

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

async fn begin_records_each_command_and_takes_only_free_leases(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let ttl = std::time::Duration::from_secs(30);
    let (a, b, c) = (command(1), command(2), command(3));
    store.begin_command(&c).await.unwrap();
    store.complete(&rotated(&c, "Done3", None)).await.unwrap();
    assert_eq!(
        store
            .try_lease_many(&["lb".to_string()], "other", ttl)
            .await
            .unwrap(),
        [true]
    );
    let begin = |cmd: &Command, lane: &str| Begin {
        cmd: cmd.clone(),
        lane: lane.to_owned(),
        first_attempt: false,
    };
    let got = store
        .begin_many(
            &[begin(&a, "la"), begin(&b, "lb"), begin(&c, "lc")],
            "me",
            ttl,
        )
        .await
        .unwrap();
    assert!(got.iter().all(|b| !b.first_attempt && b.link.is_none()));
    let summary: Vec<(String, &str, bool)> = got
        .iter()
        .map(|b| (b.row.command_id.clone(), b.row.status.as_str(), b.leased))
        .collect();
    assert_eq!(
        summary,
        [
            (a.id.to_string(), "received", true),
            (b.id.to_string(), "received", false),
            (c.id.to_string(), STATUS_DONE, true),
        ],
        "lb is held by another owner"
    );
    // Again: the rows exist now, and this owner renews its own leases.
    let again = store
        .begin_many(&[begin(&a, "la"), begin(&b, "lb")], "me", ttl)
        .await
        .unwrap();
    assert_eq!(
        again.iter().map(|b| b.leased).collect::<Vec<_>>(),
        [true, false]
    );
    store.close().await;
}

async fn migrations_go_down_and_up_again(db: Db) {
    use migration::{Migrator, MigratorTrait};
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let conn = store.connection();
    let applied = Migrator::get_applied_migrations(conn).await.unwrap().len();
    assert_eq!(applied, Migrator::migrations().len());
    Migrator::down(conn, None)
        .await
        .expect("every migration goes down");
    assert!(
        Migrator::get_applied_migrations(conn)
            .await
            .unwrap()
            .is_empty()
    );
    store.migrate().await.expect("and up again");
    store
        .begin_command(&command(1))
        .await
        .expect("the tables work");
    store.close().await;
}

async fn dropping_the_pending_index_deletes_rows_an_older_version_marked_sent(db: Db) {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ActiveModelTrait, Set};
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let conn = store.connection();
    // Down to before migration 4 (the fourth of the list).
    let after_third = Migrator::migrations().len() as u32 - 3;
    Migrator::down(conn, Some(after_third))
        .await
        .expect("down to the third");
    for (id, sent) in [("sent", Some(Utc::now())), ("pending", None)] {
        outbox::ActiveModel {
            exchange: Set("x".into()),
            routing_key: Set("k".into()),
            message_id: Set(Some(id.into())),
            payload: Set(b"{}".to_vec()),
            created_at: Set(Utc::now()),
            sent_at: Set(sent),
            ..Default::default()
        }
        .insert(conn)
        .await
        .expect("insert");
    }
    store.migrate().await.expect("up again");
    let left: Vec<_> = outbox::Entity::find()
        .all(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    assert_eq!(left, [Some("pending".to_owned())]);
    store.close().await;
}

async fn a_first_attempt_records_the_stored_code_and_returns_the_link(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let done = track_group_3(&store).await;
    let (tracked, untracked) = (command(3), command(1));
    store.begin_command(&tracked).await.unwrap();
    store.begin_command(&untracked).await.unwrap();
    let first = |cmd: &Command| FirstAttempt {
        command_id: cmd.id.to_string(),
        key: GroupKey::of(cmd),
        attempts: 1,
    };
    let got = store
        .first_attempt_many(&[first(&tracked), first(&untracked), first(&done)])
        .await
        .unwrap();
    let summary: Vec<(bool, Option<String>)> = got
        .iter()
        .map(|(marked, link)| (*marked, link.as_ref().and_then(|l| l.invite_code.clone())))
        .collect();
    assert_eq!(
        summary,
        [(true, Some("Done3".into())), (true, None), (false, None)]
    );
    assert_eq!(got[0].1.as_ref().unwrap().group_id, group(3));
    for (cmd, before) in [(&tracked, Some("Done3")), (&untracked, None)] {
        let row = store
            .find_command(&cmd.id.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                row.status.as_str(),
                row.before_code.as_deref(),
                row.attempts
            ),
            (STATUS_EXECUTING, before, 1)
        );
    }
    let row = store
        .find_command(&done.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.status, STATUS_DONE, "a done command is left alone");
    store.close().await;
}

/// With `first_attempt`, a new command whose lease is taken is inserted `executing` with
/// attempt 1 and the stored code as `before_code` (PostgreSQL); an existing row or a
/// busy lane is left as is. SQLite records no first attempt at receipt.
async fn begin_records_the_first_attempt_of_new_leased_commands_on_postgres(db: Db) {
    let postgres = matches!(db, Db::Postgres);
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let ttl = std::time::Duration::from_secs(30);
    track_group_3(&store).await;
    let (tracked, untracked, busy, existing) = (command(3), command(1), command(2), command(4));
    store.begin_command(&existing).await.unwrap();
    store
        .try_lease_many(&["l2".to_string()], "other", ttl)
        .await
        .unwrap();
    let begin = |cmd: &Command, lane: &str| Begin {
        cmd: cmd.clone(),
        lane: lane.to_owned(),
        first_attempt: true,
    };
    let got = store
        .begin_many(
            &[
                begin(&tracked, "l3"),
                begin(&untracked, "l1"),
                begin(&busy, "l2"),
                begin(&existing, "l4"),
            ],
            "me",
            ttl,
        )
        .await
        .unwrap();
    let summary: Vec<(bool, bool, Option<String>)> = got
        .iter()
        .map(|b| {
            let code = b.link.as_ref().and_then(|l| l.invite_code.clone());
            (b.leased, b.first_attempt, code)
        })
        .collect();
    let expected = [
        (true, postgres, postgres.then(|| "Done3".to_owned())),
        (true, postgres, None),
        (false, false, None),
        (true, false, None),
    ];
    assert_eq!(summary, expected);
    if postgres {
        assert_eq!(got[0].link.as_ref().unwrap().group_id, group(3));
    }
    let executing = (STATUS_EXECUTING, 1);
    let received = ("received", 0);
    for (cmd, state, before) in [
        (
            &tracked,
            if postgres { executing } else { received },
            postgres.then_some("Done3"),
        ),
        (
            &untracked,
            if postgres { executing } else { received },
            None,
        ),
        (&busy, received, None),
        (&existing, received, None),
    ] {
        let row = store
            .find_command(&cmd.id.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                (row.status.as_str(), row.attempts),
                row.before_code.as_deref()
            ),
            (state, before),
            "{}",
            row.group_id
        );
    }
    store.close().await;
}

/// The first attempt recorded at receipt reads the link after taking the lease: when the
/// previous holder's commit (new code, lease released) lands while the statement waits
/// for the lease, the code recorded as the one replaced is the new one, not the one in
/// the statement's snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempt_at_receipt_sees_a_commit_that_released_the_lease_meanwhile() {
    use sea_orm::{ConnectionTrait, TransactionTrait};
    let env = TestEnv::new(Db::Postgres).await;
    let store = store(&env).await;
    let ttl = std::time::Duration::from_secs(30);
    track_group_3(&store).await;
    store
        .try_lease_many(&["l3".to_string()], "other", ttl)
        .await
        .unwrap();
    // The other holder's commit, held open: the link changes and the lease is released.
    let other = env.store().await;
    let txn = other.connection().begin().await.unwrap();
    txn.execute_unprepared(
        "UPDATE group_leases SET lease_until = '1970-01-01T00:00:00Z' WHERE lane = 'l3'",
    )
    .await
    .unwrap();
    txn.execute_unprepared(&format!(
        "UPDATE links SET invite_code = 'Newer' WHERE group_id = '{}'",
        group(3)
    ))
    .await
    .unwrap();
    let cmd = command(3);
    let begun = {
        let (store, cmd) = (store.clone(), cmd.clone());
        tokio::spawn(async move {
            let begin = Begin {
                cmd,
                lane: "l3".into(),
                first_attempt: true,
            };
            store.begin_many(&[begin], "me", ttl).await.unwrap()
        })
    };
    let watcher = env.store().await;
    wait_until(std::time::Duration::from_secs(10), || async {
        let waiting = watcher
            .connection()
            .query_one_raw(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT count(*) AS n FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            ))
            .await
            .unwrap()
            .unwrap();
        waiting.try_get::<i64>("", "n").unwrap() == 1
    })
    .await;
    txn.commit().await.unwrap();
    let got = begun.await.unwrap().remove(0);
    assert!(got.leased && got.first_attempt);
    assert_eq!(
        got.link.and_then(|l| l.invite_code).as_deref(),
        Some("Newer")
    );
    let row = store
        .find_command(&cmd.id.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.before_code.as_deref(), Some("Newer"));
    for s in [other, watcher, store] {
        s.close().await;
    }
}

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

/// The worker's PostgreSQL sessions plan for key lookups (sequential scans disabled),
/// which gives a statement that can only scan a huge cost: without `jit = off` PostgreSQL
/// would JIT-compile it on every run (the heartbeat's count took 40-200 ms so).
async fn a_statement_that_can_only_scan_is_not_jit_compiled(db: Db) {
    use sea_orm::ConnectionTrait;
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    if db == Db::Sqlite {
        // Nothing to compile; the count still answers.
        assert_eq!(
            store
                .heartbeat("a", std::time::Duration::from_secs(5))
                .await
                .unwrap(),
            1
        );
        store.close().await;
        return;
    }
    let plan = store
        .connection()
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "EXPLAIN (FORMAT JSON) SELECT count(*) FROM worker_heartbeats \
             WHERE seen_at >= now() - interval '5 seconds'",
        ))
        .await
        .unwrap()
        .expect("a plan");
    let plan: serde_json::Value = plan.try_get_by_index(0).unwrap();
    let root = &plan[0]["Plan"];
    assert!(
        root["Total Cost"].as_f64().unwrap() > 1e9,
        "sequential scans are disabled: {plan}"
    );
    assert!(plan[0].get("JIT").is_none(), "JIT-compiled: {plan}");
    store.close().await;
}
