//! The classification of database errors: constructed where the variant allows it, and
//! real SQLite errors (a unique violation, a busy database) otherwise.

use std::{sync::Arc, time::Duration};

use sea_orm::{ConnectOptions, ConnectionTrait, Database, TransactionTrait};

use super::*;

fn sqlx_err(e: sqlx::Error) -> RuntimeErr {
    RuntimeErr::SqlxError(Arc::new(e))
}

#[test]
fn pool_and_connection_failures_are_transient() {
    let reset = || sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
    for (e, kind) in [
        (
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
            DbErrorKind::PoolTimeout,
        ),
        (
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
            DbErrorKind::ConnectionLost,
        ),
        (
            DbErr::Conn(RuntimeErr::Internal("Disconnected".into())),
            DbErrorKind::ConnectionLost,
        ),
        (DbErr::Query(sqlx_err(reset())), DbErrorKind::ConnectionLost),
        (DbErr::Exec(sqlx_err(reset())), DbErrorKind::ConnectionLost),
        (
            DbErr::Query(sqlx_err(sqlx::Error::Protocol("unexpected".into()))),
            DbErrorKind::ConnectionLost,
        ),
        (
            DbErr::Query(sqlx_err(sqlx::Error::PoolTimedOut)),
            DbErrorKind::PoolTimeout,
        ),
        (
            DbErr::Conn(sqlx_err(sqlx::Error::PoolTimedOut)),
            DbErrorKind::PoolTimeout,
        ),
        (
            DbErr::Exec(sqlx_err(sqlx::Error::PoolClosed)),
            DbErrorKind::ConnectionLost,
        ),
        (
            DbErr::Exec(sqlx_err(sqlx::Error::WorkerCrashed)),
            DbErrorKind::ConnectionLost,
        ),
    ] {
        let error = StoreError::from(e);
        assert_eq!(error.kind(), kind, "{error}");
        assert!(error.is_transient(), "{error}");
    }
}

#[test]
fn other_failures_count_toward_the_poison_limit() {
    for e in [
        DbErr::Custom("commit queue stopped".into()),
        DbErr::RecordNotFound("command x".into()),
        DbErr::Json("expected a list".into()),
        DbErr::Query(RuntimeErr::Internal("connection pool busy: locked".into())),
        DbErr::Query(sqlx_err(sqlx::Error::RowNotFound)),
        DbErr::Exec(sqlx_err(sqlx::Error::ColumnNotFound("lane".into()))),
    ] {
        let error = StoreError::from(e);
        assert_eq!(error.kind(), DbErrorKind::Other, "{error}");
        assert!(!error.is_transient(), "{error}");
    }
}

#[test]
fn sqlstates_are_classified_by_code_and_class() {
    for (code, kind) in [
        ("08006", DbErrorKind::ConnectionLost),
        ("08001", DbErrorKind::ConnectionLost),
        ("57P01", DbErrorKind::ConnectionLost),
        ("57P02", DbErrorKind::ConnectionLost),
        ("57P03", DbErrorKind::ConnectionLost),
        ("53300", DbErrorKind::ConnectionLost),
        ("40001", DbErrorKind::Serialization),
        ("40P01", DbErrorKind::Serialization),
        ("55P03", DbErrorKind::Busy),
        ("23505", DbErrorKind::Constraint),
        ("23503", DbErrorKind::Constraint),
        ("23502", DbErrorKind::Constraint),
        ("42P01", DbErrorKind::Other),
        ("22P02", DbErrorKind::Other),
        ("57014", DbErrorKind::Other),
    ] {
        assert_eq!(DbErrorKind::of_sqlstate(code), kind, "{code}");
    }
}

#[test]
fn sqlite_codes_are_classified_by_their_primary_code() {
    for (code, kind) in [
        (5, DbErrorKind::Busy),
        (261, DbErrorKind::Busy),
        (517, DbErrorKind::Busy),
        (6, DbErrorKind::Busy),
        (262, DbErrorKind::Busy),
        (19, DbErrorKind::Constraint),
        (2067, DbErrorKind::Constraint),
        (1555, DbErrorKind::Constraint),
        (787, DbErrorKind::Constraint),
        (1, DbErrorKind::Other),
        (11, DbErrorKind::Other),
    ] {
        assert_eq!(DbErrorKind::of_sqlite_code(code), kind, "{code}");
    }
}

/// A SQLite file database with at most `connections` connections that give up on a
/// lock at once.
async fn sqlite(dir: &tempfile::TempDir, connections: u32) -> sea_orm::DatabaseConnection {
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let mut opts = ConnectOptions::new(url);
    opts.max_connections(connections).sqlx_logging(false);
    opts.map_sqlx_sqlite_opts(|o| o.busy_timeout(Duration::ZERO));
    let db = Database::connect(opts).await.expect("open SQLite");
    db.execute_unprepared("CREATE TABLE t (k TEXT UNIQUE)")
        .await
        .expect("create table");
    db
}

#[tokio::test]
async fn a_sqlite_unique_violation_is_a_constraint_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(&dir, 1).await;
    db.execute_unprepared("INSERT INTO t VALUES ('a')")
        .await
        .expect("first insert");
    let e = db
        .execute_unprepared("INSERT INTO t VALUES ('a')")
        .await
        .expect_err("a duplicate");
    let error = StoreError::from(e);
    assert_eq!(error.kind(), DbErrorKind::Constraint, "{error}");
    assert!(!error.is_transient());
}

#[tokio::test]
async fn a_sqlite_database_locked_by_another_writer_is_busy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sqlite(&dir, 2).await;
    let writer = db.begin().await.expect("begin");
    writer
        .execute_unprepared("INSERT INTO t VALUES ('a')")
        .await
        .expect("write under the transaction");
    let e = db
        .execute_unprepared("INSERT INTO t VALUES ('b')")
        .await
        .expect_err("the database is locked by the other writer");
    let error = StoreError::from(e);
    assert_eq!(error.kind(), DbErrorKind::Busy, "{error}");
    assert!(error.is_transient());
    writer.rollback().await.expect("rollback");
}
