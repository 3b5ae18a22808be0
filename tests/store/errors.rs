//! Database failures classified by kind against the real PostgreSQL: a violated
//! constraint counts toward the poison limit, a lost serialization race is retried.

use invite_worker::store::{DbErrorKind, StoreError};
use sea_orm::{ConnectionTrait, IsolationLevel, TransactionTrait};

use crate::support::{Db, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_unique_violation_is_a_constraint_error() {
    let env = TestEnv::new(Db::Postgres).await;
    let store = env.store().await;
    let db = store.connection();
    db.execute_unprepared("CREATE TABLE t (k text PRIMARY KEY)")
        .await
        .expect("create table");
    db.execute_unprepared("INSERT INTO t VALUES ('a')")
        .await
        .expect("first insert");
    let e = db
        .execute_unprepared("INSERT INTO t VALUES ('a')")
        .await
        .expect_err("a duplicate key");
    let error = StoreError::from(e);
    assert_eq!(error.kind(), DbErrorKind::Constraint, "{error}");
    assert!(!error.is_transient());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_serialization_failure_is_transient() {
    let env = TestEnv::new(Db::Postgres).await;
    let store = env.store().await;
    let db = store.connection();
    db.execute_unprepared("CREATE TABLE t (k text PRIMARY KEY, v int NOT NULL)")
        .await
        .expect("create table");
    db.execute_unprepared("INSERT INTO t VALUES ('a', 0)")
        .await
        .expect("insert");
    let txn = db
        .begin_with_config(Some(IsolationLevel::RepeatableRead), None)
        .await
        .expect("begin");
    // The transaction's snapshot is taken by its first statement.
    txn.execute_unprepared("SELECT v FROM t")
        .await
        .expect("read");
    db.execute_unprepared("UPDATE t SET v = v + 1 WHERE k = 'a'")
        .await
        .expect("a concurrent update");
    let e = txn
        .execute_unprepared("UPDATE t SET v = v + 1 WHERE k = 'a'")
        .await
        .expect_err("could not serialize access");
    let error = StoreError::from(e);
    assert_eq!(error.kind(), DbErrorKind::Serialization, "{error}");
    assert!(error.is_transient());
    txn.rollback().await.expect("rollback");
    store.close().await;
}
