//! Persistence over the `entity` tables, one file per concern, each with its SQLite and
//! PostgreSQL statements side by side: commands and their receipt, group leases and
//! worker heartbeats, links with their history and schedule claims, the outbox, and the
//! outcome commit (each outcome in one transaction). Concurrent commands share batched
//! statements through [`Batches`]; failures are [`StoreError`]s classified by kind.

mod batch;
mod batches;
mod commands;
mod commit;
mod console;
mod deferred;
mod error;
mod leases;
mod links;
mod outbox;
mod pauses;
mod pg;
mod receipt;
mod retention;

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::link;
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, TransactionTrait,
};

pub use batch::Batcher;
pub use batches::Batches;
pub use commands::{Attempt, FirstAttempt};
pub use commit::{Completion, Outcome};
pub use console::LinkFilter;
pub use deferred::{Deferral, SlotRequest, origin_of};
pub use error::{DbErrorKind, StoreError};
pub use leases::RELEASED;
pub use links::HistoryFilter;
pub use outbox::OutboxBatch;
pub use pauses::ALL_SESSIONS;
pub use receipt::{Begin, Begun};
pub use retention::{Cutoffs, Pruned};

use crate::domain::Command;

pub const STATUS_RECEIVED: &str = "received";
pub const STATUS_EXECUTING: &str = "executing";
pub const STATUS_DONE: &str = "done";
/// History outcome recording an operator's replay from the dead-letter queue.
pub const OUTCOME_REPLAYED: &str = "replayed";

/// The identity of a group on a backend; also the lane key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub backend: String,
    pub session_id: String,
    pub group_id: String,
}

impl GroupKey {
    pub fn of(cmd: &Command) -> Self {
        Self {
            backend: cmd.backend.clone(),
            session_id: cmd.session.as_str().to_owned(),
            group_id: cmd.group.as_str().to_owned(),
        }
    }

    pub fn of_link(row: &link::Model) -> Self {
        Self {
            backend: row.backend.clone(),
            session_id: row.session_id.clone(),
            group_id: row.group_id.clone(),
        }
    }

    pub fn lane(&self) -> String {
        format!("{}|{}|{}", self.backend, self.session_id, self.group_id)
    }
}

#[derive(Clone)]
pub struct Store {
    /// Writes that must survive a database-server crash: the receipt, the leases
    /// taken (with the receipt or on their own), the attempt markers (the code being replaced,
    /// recorded before a reset is sent: guarantee 6.3) and the outcome commits (before the
    /// command is acknowledged). A receipt lost after its reset was sent would make the
    /// outcome commit find no row and the command count as completed elsewhere.
    db: DatabaseConnection,
    /// Bookkeeping that may be lost in a database-server crash without harm (lease
    /// renewals and releases, heartbeats, outbox and scheduler claims, reads):
    /// on PostgreSQL a pool with `synchronous_commit = off`, so these writes do not wait
    /// for a disk flush. Every later synchronous commit flushes them too. On SQLite the
    /// same pool.
    fast: DatabaseConnection,
    dialect: Dialect,
}

/// Which database the store runs on: each concern's statements come in one form per
/// dialect, chosen by one match per operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dialect {
    Sqlite,
    /// Serves several worker processes.
    Postgres,
}

impl Dialect {
    fn backend(self) -> DbBackend {
        match self {
            Self::Sqlite => DbBackend::Sqlite,
            Self::Postgres => DbBackend::Postgres,
        }
    }
}

/// Prepared statements kept per SQLite connection (sqlx's default is 100). The batched
/// statements have one placeholder per value, so each batch size is its own statement,
/// and a multi-row statement's compiled program is large: 100 of them per connection
/// took several MiB each.
const SQLITE_STATEMENT_CACHE: usize = 16;

fn now() -> DateTime<Utc> {
    Utc::now()
}

impl Store {
    /// Connects (creating a SQLite file if needed) without migrating.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let mut opts = ConnectOptions::new(url.to_owned());
        let is_sqlite = url.starts_with("sqlite:");
        opts.max_connections(if is_sqlite {
            std::cmp::min(max_connections, 4)
        } else {
            max_connections
        })
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        // Short, so that an unreachable database fails an operation quickly and the
        // caller's own backoff (not a pool queue) decides when to try again.
        .acquire_timeout(Duration::from_secs(5))
        // sqlx pings a connection on every checkout by default: one more round trip
        // per statement. Only connections idle long enough to have been dropped by the
        // server or a proxy are pinged; a broken hot connection fails its statement,
        // which the caller retries.
        .test_before_acquire_if_idle_for(Duration::from_secs(30))
        // No idle timeout and no maximum lifetime, so that sqlx starts no reaper task:
        // sqlx-core 0.9.0's reaper can read an idle count that wrapped below zero and
        // then spin a runtime thread at full CPU for good, which also hangs shutdown
        // (sqlx issue #3645). The pool keeps its connections; a dead one is caught by
        // the ping above or fails its statement, which the caller retries.
        .idle_timeout(None::<Duration>)
        .max_lifetime(None::<Duration>)
        .sqlx_logging(false);
        if is_sqlite {
            opts.map_sqlx_sqlite_opts(|o| o.statement_cache_capacity(SQLITE_STATEMENT_CACHE));
            let db = Database::connect(opts).await?;
            db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
            return Ok(Self {
                fast: db.clone(),
                db,
                dialect: Dialect::Sqlite,
            });
        }
        // The hot statements take their rows as a JSON parameter, which PostgreSQL
        // estimates at 100 rows whatever the batch, and they are prepared once per
        // connection, so a generic plan made while a table was small (a sequential scan
        // joined by hash) would stay in use as the table grows. Every statement here
        // looks rows up by key, so index scans in nested loops are always right.
        // A statement that can only scan (the heartbeat's count over a few rows) then
        // carries the planner's huge "disabled" cost, which on its own would make
        // PostgreSQL JIT-compile it on every run (40-200 ms of CPU for a 0.05 ms
        // statement, measured): JIT is off, as none of these short statements gain
        // from it.
        let planner = [
            ("enable_hashjoin", "off"),
            ("enable_mergejoin", "off"),
            ("enable_seqscan", "off"),
            ("jit", "off"),
        ];
        // TLS to a server on this host protects nothing and costs about half the
        // throughput (both ends encrypt every statement): off for loopback addresses
        // unless the URL asks for an `sslmode`.
        let local = loopback_without_sslmode(url);
        // `map_sqlx_postgres_opts` keeps one function: each pool gets all of its options
        // from one.
        // The durable pool keeps the server's `synchronous_commit` (which may be stronger
        // than `on`, e.g. with synchronous replicas).
        let pool = move |async_commit: bool| {
            move |o: sea_orm::sqlx::postgres::PgConnectOptions| {
                let o = o.options(planner);
                let o = if async_commit {
                    o.options([("synchronous_commit", "off")])
                } else {
                    o
                };
                if local {
                    o.ssl_mode(sea_orm::sqlx::postgres::PgSslMode::Disable)
                } else {
                    o
                }
            }
        };
        let mut durable = opts.clone();
        durable.map_sqlx_postgres_opts(pool(false));
        let db = Database::connect(durable).await?;
        opts.map_sqlx_postgres_opts(pool(true));
        let fast = Database::connect(opts).await?;
        Ok(Self {
            db,
            fast,
            dialect: Dialect::Postgres,
        })
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Whether several worker processes can share this database (PostgreSQL): they then
    /// share rate limits through it. SQLite serves one process.
    pub fn serves_replicas(&self) -> bool {
        self.dialect == Dialect::Postgres
    }

    /// Applies pending migrations. On PostgreSQL under a transaction-scoped advisory lock,
    /// so that replicas starting together on a fresh database do not race.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.dialect == Dialect::Sqlite {
            return Ok(Migrator::up(&self.db, None).await?);
        }
        let txn = self.db.begin().await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(7261534019)")
            .await?;
        Migrator::up(&txn, None).await?;
        Ok(txn.commit().await?)
    }

    pub async fn ping(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    pub async fn close(self) {
        let _ = self.fast.close().await;
        let _ = self.db.close().await;
    }
}

/// True for a PostgreSQL URL whose host is a loopback address and that sets no
/// `sslmode`.
fn loopback_without_sslmode(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let loopback = match parsed.host() {
        // `postgres:` is not a special scheme: an IPv4 host arrives as a domain.
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost")
                || d.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    loopback && !parsed.query_pairs().any(|(k, _)| k == "sslmode")
}

#[cfg(test)]
mod tests;
