//! Retention and the audit export, with an explicit clock: a pass deletes finished
//! commands and history rows past their windows, in batches, and nothing else; on
//! PostgreSQL one replica prunes at a time and rows another transaction holds are
//! skipped. `history export` prints every history row, oldest first, with its filters.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{command, history, link};
use invite_worker::{
    config::RetentionSettings,
    store::{Cutoffs, Store},
    worker::retention,
};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, EntityTrait, PaginatorTrait, Set, Statement,
    TransactionTrait,
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{
    fixtures::store,
    on_both_databases,
    support::{Db, TestEnv, free_port, group, wait_until},
};

on_both_databases!(
    a_pass_prunes_only_what_is_past_its_window,
    a_pass_prunes_a_backlog_in_batches,
    history_export_prints_every_row_oldest_first_with_its_filters,
);

/// The explicit "now" of these tests.
fn now() -> DateTime<Utc> {
    "2030-06-01T12:00:00Z".parse().unwrap()
}

fn days_ago(d: i64) -> DateTime<Utc> {
    now() - chrono::Duration::days(d)
}

fn command_row(id: &str, status: &str, finished: Option<DateTime<Utc>>) -> command::ActiveModel {
    let received = finished.unwrap_or(days_ago(100)) - chrono::Duration::seconds(1);
    command::ActiveModel {
        command_id: Set(id.to_owned()),
        command_type: Set("revoke_invite".into()),
        backend: Set("sim".into()),
        session_id: Set("sales".into()),
        group_id: Set(group(1)),
        reason: Set(None),
        requested_by: Set(None),
        status: Set(status.into()),
        outcome: Set(finished.map(|_| "rotated".into())),
        attempts: Set(1),
        cycle: Set(1),
        before_code: Set(None),
        new_code: Set(None),
        error_kind: Set(None),
        error_message: Set(None),
        http_status: Set(None),
        event_id: Set(None),
        received_at: Set(received),
        updated_at: Set(received),
        finished_at: Set(finished),
    }
}

fn history_row(session: &str, g: usize, outcome: &str, at: DateTime<Utc>) -> history::ActiveModel {
    history::ActiveModel {
        backend: Set("sim".into()),
        session_id: Set(session.into()),
        group_id: Set(group(g)),
        command_id: Set(None),
        command_type: Set(Some("revoke_invite".into())),
        trigger: Set(Some("revoke".into())),
        outcome: Set(outcome.into()),
        attempts: Set(1),
        old_code: Set(Some("OldCode1".into())),
        new_code: Set(Some("NewCode1".into())),
        error_kind: Set(None),
        error_message: Set(None),
        started_at: Set(Some(at)),
        occurred_at: Set(at),
        ..Default::default()
    }
}

async fn insert_history(db: &DatabaseConnection, rows: Vec<history::ActiveModel>) {
    for chunk in rows.chunks(500) {
        history::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(db)
            .await
            .expect("insert history");
    }
}

async fn command_ids(db: &DatabaseConnection) -> Vec<String> {
    let mut ids: Vec<String> = command::Entity::find()
        .all(db)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    ids.sort();
    ids
}

async fn pass(store: &Store) -> invite_worker::store::Pruned {
    retention::prune(
        store,
        &RetentionSettings::default(),
        now(),
        &CancellationToken::new(),
    )
    .await
    .expect("a pruning pass")
}

async fn a_pass_prunes_only_what_is_past_its_window(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let conn = store.connection();
    // The defaults: commands 30 days after they finished, history 400 days.
    command::Entity::insert_many([
        command_row("done-31-days-ago", "done", Some(days_ago(31))),
        command_row("done-29-days-ago", "done", Some(days_ago(29))),
        // Received 100 days ago and never finished, or reopened by a replay.
        command_row("received-long-ago", "received", None),
        command_row("executing-long-ago", "executing", None),
        command_row("replayed-after-finishing", "received", Some(days_ago(90))),
    ])
    .exec_without_returning(conn)
    .await
    .unwrap();
    insert_history(
        conn,
        vec![
            history_row("sales", 1, "rotated", days_ago(401)),
            history_row("sales", 1, "rotated", days_ago(399)),
        ],
    )
    .await;
    link::Entity::insert(link::ActiveModel {
        backend: Set("sim".into()),
        session_id: Set("sales".into()),
        group_id: Set(group(1)),
        invite_code: Set(Some("NewCode1".into())),
        issued_at: Set(Some(days_ago(500))),
        expires_at: Set(Some(days_ago(493))),
        expires_at_source: Set(Some("policy".into())),
        rotation_count: Set(1),
        last_command_id: Set(None),
        last_rotated_at: Set(Some(days_ago(500))),
        updated_at: Set(days_ago(500)),
        ..Default::default()
    })
    .exec_without_returning(conn)
    .await
    .unwrap();

    let pruned = pass(&store).await;
    assert_eq!((pruned.commands, pruned.history), (1, 1));
    assert_eq!(
        command_ids(conn).await,
        [
            "done-29-days-ago",
            "executing-long-ago",
            "received-long-ago",
            "replayed-after-finishing"
        ]
    );
    let left: Vec<DateTime<Utc>> = history::Entity::find()
        .all(conn)
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.occurred_at)
        .collect();
    assert_eq!(left, [days_ago(399)]);
    assert_eq!(link::Entity::find().count(conn).await.unwrap(), 1);
    // Nothing more is past its window.
    assert_eq!(pass(&store).await, Default::default());
}

async fn a_pass_prunes_a_backlog_in_batches(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let conn = store.connection();
    let old = 2 * retention::BATCH as usize + 345;
    let rows = (0..old)
        .map(|i| {
            history_row(
                "sales",
                i % 7,
                "rotated",
                days_ago(401) + chrono::Duration::seconds(i as i64),
            )
        })
        .chain((0..10).map(|i| history_row("sales", i, "rotated", days_ago(10))))
        .collect();
    insert_history(conn, rows).await;
    let pruned = pass(&store).await;
    assert_eq!(pruned.history, old as u64);
    assert_eq!(history::Entity::find().count(conn).await.unwrap(), 10);
}

/// While another replica's pass holds the pruning lock, a batch prunes nothing; a row
/// another transaction has locked (a worker committing an outcome) is skipped, not
/// waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replicas_take_turns_and_skip_locked_rows() {
    let env = TestEnv::new(Db::Postgres).await;
    let store = store(&env).await;
    let conn = store.connection();
    command::Entity::insert_many([
        command_row("old-1", "done", Some(days_ago(40))),
        command_row("old-2", "done", Some(days_ago(40))),
    ])
    .exec_without_returning(conn)
    .await
    .unwrap();
    let cutoffs = Cutoffs {
        commands: days_ago(30),
        history: days_ago(400),
    };
    let pg = |sql: &str| Statement::from_string(sea_orm::DbBackend::Postgres, sql.to_owned());

    let other = env.store().await;
    let replica = other.connection().begin().await.unwrap();
    replica
        .execute_raw(pg("SELECT pg_advisory_xact_lock(7261534020)"))
        .await
        .unwrap();
    let batch = store.prune_batch(cutoffs, 100).await.unwrap();
    assert_eq!(batch, None, "another replica holds the pruning lock");
    replica.rollback().await.unwrap();

    let writer = other.connection().begin().await.unwrap();
    writer
        .execute_raw(pg(
            "SELECT * FROM commands WHERE command_id = 'old-1' FOR UPDATE",
        ))
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), store.prune_batch(cutoffs, 100))
        .await
        .expect("pruning does not wait for a locked row")
        .unwrap()
        .expect("the lock is free");
    assert_eq!(batch.commands, 1);
    writer.rollback().await.unwrap();
    assert_eq!(command_ids(conn).await, ["old-1"]);
    other.close().await;
}

async fn history_export_prints_every_row_oldest_first_with_its_filters(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    // 2,500 rows (more than a page) over two sessions, inserted newest first so that
    // id order and time order disagree.
    let rows = (0..2_500i64)
        .rev()
        .map(|i| {
            let session = if i % 2 == 0 { "sales" } else { "support" };
            history_row(
                session,
                (i % 5) as usize,
                "rotated",
                days_ago(50) + chrono::Duration::minutes(i),
            )
        })
        .collect();
    insert_history(store.connection(), rows).await;

    let export = |args: &'static [&'static str]| {
        let env = &env;
        async move {
            let mut argv = vec!["history", "export"];
            argv.extend_from_slice(args);
            let (code, out, err) = env.cli(&argv).await;
            assert_eq!(code, 0, "history export {args:?}: {err}");
            out.lines()
                .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
                .collect::<Vec<Value>>()
        }
    };
    let all = export(&[]).await;
    assert_eq!(all.len(), 2_500);
    let times: Vec<&str> = all
        .iter()
        .map(|r| r["occurred_at"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first");
    let first = &all[0];
    for field in [
        "backend",
        "session_id",
        "group_id",
        "command_id",
        "command_type",
        "trigger",
        "outcome",
        "attempts",
        "old_code",
        "new_code",
        "error_kind",
        "error_message",
        "started_at",
        "occurred_at",
    ] {
        assert!(first.get(field).is_some(), "field {field} in {first}");
    }
    assert_eq!(first["session_id"], "sales");
    assert_eq!(first["group_id"], group(0));

    // --since inclusive, --until exclusive: minutes 100..=199, of which the support
    // session's are the odd ones.
    let window = export(&[
        "--since",
        "2030-04-12T13:40:00Z",
        "--until",
        "2030-04-12T15:20:00Z",
        "--backend",
        "sim",
        "--session",
        "support",
    ])
    .await;
    assert_eq!(window.len(), 50);
    assert!(window.iter().all(|r| r["session_id"] == "support"));
    assert_eq!(window[0]["occurred_at"], "2030-04-12T13:41:00Z");

    for (args, problem) in [
        (
            &["history", "export", "--since", "last week"][..],
            "--since",
        ),
        (&["history", "export", "--backend", "nope"][..], "--backend"),
        (
            &[
                "history",
                "export",
                "--since",
                "2030-01-02",
                "--until",
                "2030-01-01",
            ][..],
            "--until",
        ),
    ] {
        let (code, out, err) = env.cli(args).await;
        assert_eq!(code, 2, "{args:?} is refused as usage: {err}");
        assert!(err.contains(problem), "{args:?}: {err}");
        assert!(out.is_empty());
    }
}

/// A running worker prunes by itself a few seconds after it starts, and counts it in
/// `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_prunes_by_itself_and_counts_it() {
    let env = TestEnv::new(Db::Sqlite).await;
    let store = store(&env).await;
    let long_ago = Utc::now() - chrono::Duration::days(31);
    command::Entity::insert(command_row("finished-long-ago", "done", Some(long_ago)))
        .exec_without_returning(store.connection())
        .await
        .unwrap();
    let mut settings = env.settings.clone();
    let addr = format!("127.0.0.1:{}", free_port());
    settings.http.listen = addr.clone();
    let worker = env.start_worker_with(settings).await;
    wait_until(Duration::from_secs(30), || async {
        command_ids(store.connection()).await.is_empty()
    })
    .await;
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let pruned: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("invite_worker_pruned_rows_total{table=\"commands\"} "))
        .expect("the pruned rows counter")
        .parse()
        .unwrap();
    assert!(pruned >= 1.0, "{pruned}");
    worker.stop().await;
}
