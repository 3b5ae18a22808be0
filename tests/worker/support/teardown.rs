//! Removing what a test created on the shared services: its broker names (every queue
//! and exchange of its topology) and its PostgreSQL database. Shared by the test
//! binaries that set up environments of their own (`#[path]` from tests/console and
//! tests/deploy).

use std::time::Duration;

use invite_worker::broker::Topology;
use lapin::{
    Connection, ConnectionProperties,
    options::{ExchangeDeleteOptions, QueueDeleteOptions},
};
use sea_orm::{ConnectionTrait, Database};

pub(crate) const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub(crate) const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Deletes `topology`'s queues and exchanges and drops `pg_db`; failures are reported,
/// not raised (a test's result does not depend on its cleanup).
pub(crate) async fn remove(topology: &Topology, pg_db: Option<&str>) {
    if let Ok(conn) = Connection::connect(AMQP_URL, ConnectionProperties::default()).await {
        if let Ok(ch) = conn.create_channel().await {
            for q in topology.queues() {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            for e in topology.exchanges() {
                let _ = ch
                    .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "OK".into()).await;
    }
    if let Some(name) = pg_db
        && let Ok(admin) = Database::connect(PG_ADMIN_URL).await
    {
        // A pool the test left open reconnects when FORCE ends its session, and a
        // connection arriving meanwhile makes the drop fail: try again.
        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
        for attempt in 1..=10 {
            match admin.execute_unprepared(&sql).await {
                Ok(_) => break,
                Err(e) if attempt == 10 => eprintln!("test cleanup: {name}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        let _ = admin.close().await;
    }
}
