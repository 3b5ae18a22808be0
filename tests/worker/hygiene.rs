//! The suite leaves nothing behind: a test environment removes its queues, exchanges and
//! PostgreSQL database when it is dropped.

use lapin::{
    options::{ExchangeDeclareOptions, QueueDeclareOptions},
    types::FieldTable,
};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};

use crate::support::{Db, PG_ADMIN_URL, TestEnv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_test_environment_leaves_no_queue_exchange_or_database() {
    let env = TestEnv::new(Db::Postgres).await;
    env.start_worker().await.stop().await;
    let (queues, exchanges) = (env.topology.queues(), env.topology.exchanges());
    let database = env.pg_database().expect("a database").to_owned();
    let (conn, ch) = env.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    ch.queue_declare(queues[0].as_str().into(), passive, FieldTable::default())
        .await
        .expect("the worker declared its queues");
    drop(env);

    for q in &queues {
        let ch = conn.create_channel().await.unwrap();
        let gone = ch
            .queue_declare(q.as_str().into(), passive, FieldTable::default())
            .await;
        assert!(gone.is_err(), "queue {q} is left behind");
    }
    for x in &exchanges {
        let ch = conn.create_channel().await.unwrap();
        let options = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let gone = ch
            .exchange_declare(
                x.as_str().into(),
                lapin::ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await;
        assert!(gone.is_err(), "exchange {x} is left behind");
    }
    let _ = conn.close(200, "OK".into()).await;
    let admin = Database::connect(PG_ADMIN_URL).await.unwrap();
    let left = admin
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM pg_database WHERE datname = $1",
            [database.clone().into()],
        ))
        .await
        .unwrap()
        .expect("a count");
    let n: i64 = left.try_get("", "n").unwrap();
    assert_eq!(n, 0, "database {database} is left behind");
    let _ = admin.close().await;
}
