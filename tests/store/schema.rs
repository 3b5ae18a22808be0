//! The schema and the statements' plans: migrations go down and up again, an older
//! version's rows are migrated, and a statement that can only scan is not JIT-compiled.

use chrono::Utc;
use entity::outbox;
use sea_orm::EntityTrait;

use crate::{
    fixtures::{command, store},
    on_both_databases,
    support::{Db, TestEnv},
};

on_both_databases!(
    migrations_go_down_and_up_again,
    dropping_the_pending_index_deletes_rows_an_older_version_marked_sent,
    a_statement_that_can_only_scan_is_not_jit_compiled,
    the_pool_has_no_idle_timeout_or_lifetime_so_no_reaper_task,
);

/// sqlx-core 0.9.0's reaper task (started only for an idle timeout or a maximum
/// lifetime) can spin a runtime thread at full CPU for good (sqlx issue #3645): the store
/// sets neither.
async fn the_pool_has_no_idle_timeout_or_lifetime_so_no_reaper_task(db: Db) {
    let env = TestEnv::new(db).await;
    let store = store(&env).await;
    let conn = store.connection();
    let (idle, lifetime) = match db {
        Db::Sqlite => {
            let o = conn.get_sqlite_connection_pool().options();
            (o.get_idle_timeout(), o.get_max_lifetime())
        }
        Db::Postgres => {
            let o = conn.get_postgres_connection_pool().options();
            (o.get_idle_timeout(), o.get_max_lifetime())
        }
    };
    assert_eq!((idle, lifetime), (None, None), "{db:?}");
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
