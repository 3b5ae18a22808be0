//! The receipt (a command's row with its group's lease, and on PostgreSQL its first
//! attempt) and the attempt markers, batched: every request gets its own answer.

use invite_worker::{
    domain::Command,
    store::{Begin, FirstAttempt, GroupKey, STATUS_DONE, STATUS_EXECUTING},
};

use crate::{
    fixtures::{attempt, command, rotated, store, track_group_3},
    on_both_databases,
    support::{Db, TestEnv, group, wait_until},
};

on_both_databases!(
    batched_receipts_attempts_leases_and_reads_answer_each_request,
    begin_records_each_command_and_takes_only_free_leases,
    a_first_attempt_records_the_stored_code_and_returns_the_link,
    begin_records_the_first_attempt_of_new_leased_commands_on_postgres,
);

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
