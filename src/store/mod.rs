//! Persistence over the `entity` tables: the command inbox, tracked links, history,
//! the outbox and group leases. Each outcome commits in one transaction.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use entity::{command, group_lease, history, link, outbox};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};

pub mod batch;
mod pg;

pub use batch::Batcher;

use crate::domain::{
    BackendError, Command, CommandType, Link,
    events::{ExpirySource, OutboxMessage},
};

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

/// How a command ended.
#[derive(Clone, Debug)]
pub enum Outcome {
    Rotated {
        link: Link,
        previous_code: Option<String>,
        expires_at: DateTime<Utc>,
        source: ExpirySource,
    },
    Skipped,
    Failed(BackendError),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Rotated { .. } => "rotated",
            Self::Skipped => "skipped",
            Self::Failed(_) => "failed",
        }
    }
}

/// Everything one command's final transaction writes.
pub struct Completion {
    pub cmd: Command,
    pub attempts: i32,
    pub outcome: Outcome,
    /// A code read from the backend that differed from the stored one: (stored, read).
    pub external_change: Option<(Option<String>, String)>,
    pub messages: Vec<OutboxMessage>,
    pub started_at: DateTime<Utc>,
    /// The link row as read under the group lease (nobody else writes it meanwhile).
    pub link: Option<link::Model>,
    /// A group lease (lane, owner) to release in the same transaction.
    pub release_lease: Option<(String, String)>,
}

impl Completion {
    fn new_code(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Rotated { link, .. } => Some(link.code.as_str().to_owned()),
            _ => None,
        }
    }

    fn error(&self) -> Option<&BackendError> {
        match &self.outcome {
            Outcome::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// The id of the event this outcome publishes (dead-letter copies have none).
    fn event_id(&self) -> Option<String> {
        self.messages
            .iter()
            .find(|m| !m.exchange.is_empty())
            .and_then(|m| m.message_id.clone())
    }
}

#[derive(Clone)]
pub struct Store {
    /// Writes that must survive a database-server crash: the inbox receipt, the leases
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
}

/// The `lease_until` of a released group lease. A released lease keeps its row (one per
/// group, like `links`): taking it again updates the row in place instead of inserting
/// and deleting one per command, which cost an index entry and a dead row each time.
pub const RELEASED: DateTime<Utc> = DateTime::UNIX_EPOCH;

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
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbErr> {
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
        .sqlx_logging(false);
        if is_sqlite {
            opts.map_sqlx_sqlite_opts(|o| o.statement_cache_capacity(SQLITE_STATEMENT_CACHE));
            let db = Database::connect(opts).await?;
            db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
            return Ok(Self {
                fast: db.clone(),
                db,
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
        Ok(Self { db, fast })
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    fn is_postgres(&self) -> bool {
        self.backend() == DbBackend::Postgres
    }

    /// Applies pending migrations. On PostgreSQL under a transaction-scoped advisory lock,
    /// so that replicas starting together on a fresh database do not race.
    pub async fn migrate(&self) -> Result<(), DbErr> {
        if self.backend() != DbBackend::Postgres {
            return Migrator::up(&self.db, None).await;
        }
        let txn = self.db.begin().await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(7261534019)")
            .await?;
        Migrator::up(&txn, None).await?;
        txn.commit().await
    }

    pub async fn ping(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    pub async fn close(self) {
        let _ = self.fast.close().await;
        let _ = self.db.close().await;
    }

    // ---- inbox ----

    /// Records each command as received unless its row exists (two statements whatever
    /// the number of commands); returns the rows in the order of `cmds`.
    pub async fn inbox_begin_many(&self, cmds: &[Command]) -> Result<Vec<command::Model>, DbErr> {
        let t = now();
        let found = if self.is_postgres() {
            // The combined statement with no lease to take.
            let rows: Vec<pg::BeginRow> = cmds
                .iter()
                .map(|c| pg::BeginRow {
                    row: received_row(c, t),
                    lane: String::new(),
                    first_attempt: false,
                })
                .collect();
            let (found, _) = pg::begin(&self.db, &rows, &[], "", t, t).await?;
            found.into_iter().map(|b| b.row).collect()
        } else {
            let ids: Vec<String> = cmds.iter().map(|c| c.id.to_string()).collect();
            command::Entity::insert_many(cmds.iter().map(|c| received_row(c, t)))
                .on_conflict_do_nothing()
                .exec_without_returning(&self.fast)
                .await?;
            command::Entity::find()
                .filter(command::Column::CommandId.is_in(ids))
                .all(&self.fast)
                .await?
        };
        self.in_order(cmds, found).await
    }

    /// For each request, [`Store::inbox_begin_many`] and [`Store::try_lease_many`]: the
    /// command's row and whether its lane's lease was taken for `owner`. On PostgreSQL
    /// this is one statement, which also records the first attempt of each request that
    /// asks for it when its row is new and its lease taken (see [`Begun`]); SQLite never
    /// does (the caller records it with [`Store::first_attempt_many`]).
    pub async fn begin_many(
        &self,
        batch: &[Begin],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<Begun>, DbErr> {
        let cmds: Vec<Command> = batch.iter().map(|b| b.cmd.clone()).collect();
        let lanes: Vec<String> = batch.iter().map(|b| b.lane.clone()).collect();
        if !self.is_postgres() {
            let rows = self.inbox_begin_many(&cmds).await?;
            let leased = self.try_lease_many(&lanes, owner, ttl).await?;
            return Ok(rows
                .into_iter()
                .zip(leased)
                .map(|(row, leased)| Begun {
                    row,
                    leased,
                    first_attempt: false,
                    link: None,
                })
                .collect());
        }
        let (t, until) = lease_window(ttl);
        let rows: Vec<pg::BeginRow> = batch
            .iter()
            .map(|b| pg::BeginRow {
                row: received_row(&b.cmd, t),
                lane: b.lane.clone(),
                first_attempt: b.first_attempt,
            })
            .collect();
        let unique = unique_lanes(&lanes);
        let (found, taken) = pg::begin(&self.db, &rows, &unique, owner, until, t).await?;
        let taken: std::collections::HashSet<String> = taken.into_iter().collect();
        let mut firsts = std::collections::HashMap::new();
        let found = found
            .into_iter()
            .map(|b| {
                if b.first_attempt {
                    firsts.insert(b.row.command_id.clone(), b.link);
                }
                b.row
            })
            .collect();
        let rows = self.in_order(&cmds, found).await?;
        Ok(rows
            .into_iter()
            .zip(&lanes)
            .map(|(row, lane)| {
                let first = firsts.remove(&row.command_id);
                Begun {
                    leased: taken.contains(lane),
                    first_attempt: first.is_some(),
                    link: first.flatten(),
                    row,
                }
            })
            .collect())
    }

    /// `found` rows in the order of `cmds`, reading any that are missing (inserted by a
    /// concurrent transaction after the statement's snapshot) again.
    async fn in_order(
        &self,
        cmds: &[Command],
        found: Vec<command::Model>,
    ) -> Result<Vec<command::Model>, DbErr> {
        let rows: std::collections::HashMap<String, command::Model> = found
            .into_iter()
            .map(|row| (row.command_id.clone(), row))
            .collect();
        let mut out = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let id = cmd.id.to_string();
            let row = match rows.get(&id) {
                Some(row) => row.clone(),
                None => self
                    .inbox_get(&id)
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound(format!("command {id}")))?,
            };
            out.push(row);
        }
        Ok(out)
    }

    /// Records the command as received unless its row exists; returns the row.
    pub async fn inbox_begin(&self, cmd: &Command) -> Result<command::Model, DbErr> {
        let mut rows = self.inbox_begin_many(std::slice::from_ref(cmd)).await?;
        Ok(rows.remove(0))
    }

    pub async fn inbox_get(&self, command_id: &str) -> Result<Option<command::Model>, DbErr> {
        command::Entity::find_by_id(command_id.to_owned())
            .one(&self.fast)
            .await
    }

    /// Persists, before a reset call, the code being replaced and the attempt number.
    /// False when the command is already done (finished by another process meanwhile).
    pub async fn mark_executing(
        &self,
        command_id: &str,
        before_code: Option<&str>,
        attempts: i32,
    ) -> Result<bool, DbErr> {
        let attempt = Attempt {
            command_id: command_id.to_owned(),
            before_code: before_code.map(str::to_owned),
            attempts,
        };
        Ok(self.mark_executing_many(&[attempt]).await?[0])
    }

    /// [`Store::mark_executing`] for several commands in one statement; answers in order.
    pub async fn mark_executing_many(&self, batch: &[Attempt]) -> Result<Vec<bool>, DbErr> {
        let ids: Vec<String> = batch.iter().map(|a| a.command_id.clone()).collect();
        let marked: std::collections::HashSet<String> = if self.is_postgres() {
            pg::mark_executing(&self.db, batch, now())
                .await?
                .into_iter()
                .collect()
        } else {
            let id = |a: &Attempt| a.command_id.clone();
            command::Entity::update_many()
                .col_expr(command::Column::Status, Expr::value(STATUS_EXECUTING))
                .col_expr(
                    command::Column::BeforeCode,
                    case_on_id(batch, id, command::Column::BeforeCode, |a| {
                        a.before_code.clone()
                    }),
                )
                .col_expr(
                    command::Column::Attempts,
                    case_on_id(batch, id, command::Column::Attempts, |a| a.attempts),
                )
                .col_expr(command::Column::UpdatedAt, Expr::value(now()))
                .filter(command::Column::CommandId.is_in(ids.iter().cloned()))
                .filter(command::Column::Status.ne(STATUS_DONE))
                .exec_with_returning(&self.fast)
                .await?
                .into_iter()
                .map(|row| row.command_id)
                .collect()
        };
        Ok(ids.iter().map(|id| marked.contains(id)).collect())
    }

    /// A first attempt that replaces the stored code: reads the group's link and marks
    /// the command executing with the link's code as `before_code` (NULL when the group
    /// is untracked), in one statement on PostgreSQL. The caller holds the group's lease
    /// (taken by an earlier statement), so the link read sees every commit of earlier
    /// holders. Answers, in order, whether each was marked (false: done meanwhile) and
    /// the link read.
    pub async fn first_attempt_many(
        &self,
        batch: &[FirstAttempt],
    ) -> Result<Vec<(bool, Option<link::Model>)>, DbErr> {
        if self.is_postgres() {
            let marked = pg::first_attempts(&self.db, batch, now()).await?;
            let mut found: std::collections::HashMap<String, Option<link::Model>> =
                marked.into_iter().collect();
            return Ok(batch
                .iter()
                .map(|a| match found.remove(&a.command_id) {
                    Some(link) => (true, link),
                    None => (false, None),
                })
                .collect());
        }
        // SQLite: one process holds every lease, so the read and the update need not be
        // one statement.
        let keys: Vec<GroupKey> = batch.iter().map(|a| a.key.clone()).collect();
        let links = self.link_get_many(&keys).await?;
        let attempts: Vec<Attempt> = batch
            .iter()
            .zip(&links)
            .map(|(a, link)| Attempt {
                command_id: a.command_id.clone(),
                before_code: link.as_ref().and_then(|l| l.invite_code.clone()),
                attempts: a.attempts,
            })
            .collect();
        let marked = self.mark_executing_many(&attempts).await?;
        Ok(marked
            .into_iter()
            .zip(links)
            .map(|(marked, link)| (marked, link.filter(|_| marked)))
            .collect())
    }

    /// Keeps the last transient error of a parked command, for when it comes back.
    pub async fn record_transient_error(
        &self,
        command_id: &str,
        e: &BackendError,
    ) -> Result<(), DbErr> {
        command::Entity::update_many()
            .col_expr(command::Column::ErrorKind, Expr::value(e.kind.as_str()))
            .col_expr(
                command::Column::ErrorMessage,
                Expr::value(e.message.clone()),
            )
            .col_expr(
                command::Column::HttpStatus,
                Expr::value(e.http_status.map(i32::from)),
            )
            .col_expr(command::Column::UpdatedAt, Expr::value(now()))
            .filter(command::Column::CommandId.eq(command_id))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Reopens a failed command (a new attempt cycle) and adds a `replayed` history row
    /// for its group, in one transaction. False when the command is not recorded as failed.
    pub async fn replay_failed(&self, command_id: &str) -> Result<bool, DbErr> {
        let txn = self.db.begin().await?;
        if !reopen_failed_on(&txn, command_id).await? {
            txn.rollback().await?;
            return Ok(false);
        }
        let Some(row) = command::Entity::find_by_id(command_id.to_owned())
            .one(&txn)
            .await?
        else {
            txn.rollback().await?;
            return Ok(false);
        };
        let trigger = CommandType::parse(&row.command_type).map(|k| k.trigger());
        let entry = history::ActiveModel {
            backend: Set(row.backend),
            session_id: Set(row.session_id),
            group_id: Set(row.group_id),
            command_id: Set(Some(row.command_id)),
            command_type: Set(Some(row.command_type)),
            trigger: Set(trigger.map(str::to_owned)),
            outcome: Set(OUTCOME_REPLAYED.to_owned()),
            attempts: Set(0),
            old_code: Set(None),
            new_code: Set(None),
            error_kind: Set(None),
            error_message: Set(None),
            started_at: Set(None),
            occurred_at: Set(now()),
            ..Default::default()
        };
        history::Entity::insert(entry)
            .exec_without_returning(&txn)
            .await?;
        txn.commit().await?;
        Ok(true)
    }

    pub async fn link_get(&self, key: &GroupKey) -> Result<Option<link::Model>, DbErr> {
        Ok(self
            .link_get_many(std::slice::from_ref(key))
            .await?
            .remove(0))
    }

    /// The tracked links of several groups in one query; answers in the order of `keys`.
    pub async fn link_get_many(
        &self,
        keys: &[GroupKey],
    ) -> Result<Vec<Option<link::Model>>, DbErr> {
        let rows = if self.is_postgres() {
            pg::links(&self.fast, keys).await?
        } else {
            let mut any = sea_orm::Condition::any();
            for key in keys {
                any = any.add(
                    sea_orm::Condition::all()
                        .add(link::Column::Backend.eq(&key.backend))
                        .add(link::Column::SessionId.eq(&key.session_id))
                        .add(link::Column::GroupId.eq(&key.group_id)),
                );
            }
            link::Entity::find().filter(any).all(&self.fast).await?
        };
        let found: std::collections::HashMap<GroupKey, link::Model> = rows
            .into_iter()
            .map(|row| (GroupKey::of_link(&row), row))
            .collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    /// Commits a command's outcome, link state, history and outbox rows atomically.
    /// Returns false, writing nothing, when the command was already done.
    pub async fn complete(&self, c: &Completion) -> Result<bool, DbErr> {
        Ok(self.commit_batch(&[c]).await?[0])
    }

    /// One transaction with a fixed number of statements whatever the batch size: mark
    /// the commands done (skipping any already done, so a retry after a lost commit
    /// answer writes nothing twice), then multi-row writes of links, history, outbox and
    /// lease releases. Returns, per completion, whether it was written.
    pub async fn commit_batch(&self, batch: &[&Completion]) -> Result<Vec<bool>, DbErr> {
        let t = now();
        if self.is_postgres() {
            let written: std::collections::HashSet<String> =
                pg::commit(&self.db, batch, t).await?.into_iter().collect();
            return Ok(batch
                .iter()
                .map(|c| written.contains(&c.cmd.id.to_string()))
                .collect());
        }
        let txn = self.db.begin().await?;
        // The first statement writes, so SQLite takes its write lock up front.
        let fresh_ids = mark_done(&txn, batch, t).await?;
        let mut deferred = Deferred::default();
        let fresh: Vec<bool> = batch
            .iter()
            .map(|c| fresh_ids.contains(&c.cmd.id.to_string()))
            .collect();
        for (c, is_fresh) in batch.iter().zip(&fresh) {
            if *is_fresh {
                stage_completion(c, &mut deferred, t);
            }
        }
        deferred.flush(&txn).await?;
        txn.commit().await?;
        Ok(fresh)
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

/// The id of a completion's command, the key of its inbox row.
fn completion_id(c: &&Completion) -> String {
    c.cmd.id.to_string()
}

/// Now, and when a lease taken now for `ttl` ends.
fn lease_window(ttl: Duration) -> (DateTime<Utc>, DateTime<Utc>) {
    let t = now();
    (
        t,
        t + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(30)),
    )
}

/// Each lane once: an upsert may not touch a row twice in one statement.
fn unique_lanes(lanes: &[String]) -> Vec<&String> {
    let mut unique: Vec<&String> = lanes.iter().collect();
    unique.sort();
    unique.dedup();
    unique
}

/// Outbox rows taken for publication by [`Store::take_outbox`], held until
/// [`Store::settle_outbox`] (or released if dropped).
pub struct OutboxBatch {
    pub rows: Vec<outbox::Model>,
    /// PostgreSQL: the transaction holding the rows' locks.
    txn: Option<sea_orm::DatabaseTransaction>,
}

/// A command about to run under its group lane: record it and take the lane's lease.
#[derive(Clone, Debug)]
pub struct Begin {
    pub cmd: Command,
    pub lane: String,
    /// Record the command's first attempt in the same statement if its row is new and
    /// the lease is taken (PostgreSQL). Only for a first attempt that records the stored
    /// code as the one replaced, with its rate-limit slot already reserved.
    pub first_attempt: bool,
}

/// [`Store::begin_many`]'s answer for one command.
#[derive(Clone, Debug)]
pub struct Begun {
    pub row: command::Model,
    /// The lane's lease was taken (or renewed) for the owner.
    pub leased: bool,
    /// The row was inserted with its first attempt recorded: `executing`, attempt 1, the
    /// group's stored code as `before_code` (NULL when untracked), read under the lease.
    pub first_attempt: bool,
    /// The group's link as read for the first attempt (None when untracked or not
    /// `first_attempt`).
    pub link: Option<link::Model>,
}

/// One command's attempt marker, written before its reset call.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub command_id: String,
    pub before_code: Option<String>,
    pub attempts: i32,
}

/// A command's first attempt with the stored code as the one replaced
/// ([`Store::first_attempt_many`]).
#[derive(Clone, Debug)]
pub struct FirstAttempt {
    pub command_id: String,
    pub key: GroupKey,
    pub attempts: i32,
}

/// A new inbox row in state `received`.
fn received_row(cmd: &Command, t: DateTime<Utc>) -> command::ActiveModel {
    command::ActiveModel {
        command_id: Set(cmd.id.to_string()),
        command_type: Set(cmd.kind.as_str().to_owned()),
        backend: Set(cmd.backend.clone()),
        session_id: Set(cmd.session.as_str().to_owned()),
        group_id: Set(cmd.group.as_str().to_owned()),
        reason: Set(cmd.reason.clone()),
        requested_by: Set(cmd.requested_by.clone()),
        status: Set(STATUS_RECEIVED.to_owned()),
        outcome: Set(None),
        attempts: Set(0),
        cycle: Set(1),
        before_code: Set(None),
        new_code: Set(None),
        error_kind: Set(None),
        error_message: Set(None),
        http_status: Set(None),
        event_id: Set(None),
        received_at: Set(t),
        updated_at: Set(t),
        finished_at: Set(None),
    }
}

/// `CASE WHEN command_id = <id of item> THEN <value of item> … ELSE column END`: one
/// value per row in a multi-row update.
fn case_on_id<T, V: Into<sea_orm::Value>>(
    items: &[T],
    id: impl Fn(&T) -> String,
    column: command::Column,
    value: impl Fn(&T) -> V,
) -> Expr {
    let mut case = sea_orm::sea_query::CaseStatement::new();
    for item in items {
        case = case.case(
            Expr::col(command::Column::CommandId).eq(id(item)),
            Expr::val(value(item)),
        );
    }
    case.finally(Expr::col(column)).into()
}

/// Marks the batch's commands done with their outcomes in one statement; returns the ids
/// that were not done already.
async fn mark_done<C: ConnectionTrait>(
    txn: &C,
    batch: &[&Completion],
    t: DateTime<Utc>,
) -> Result<std::collections::HashSet<String>, DbErr> {
    let ids: Vec<String> = batch.iter().map(|c| c.cmd.id.to_string()).collect();
    let done = command::Entity::update_many()
        .col_expr(command::Column::Status, Expr::value(STATUS_DONE))
        .col_expr(
            command::Column::Outcome,
            case_on_id(batch, completion_id, command::Column::Outcome, |c| {
                Some(c.outcome.as_str().to_owned())
            }),
        )
        .col_expr(
            command::Column::Attempts,
            case_on_id(batch, completion_id, command::Column::Attempts, |c| {
                c.attempts
            }),
        )
        .col_expr(
            command::Column::NewCode,
            case_on_id(batch, completion_id, command::Column::NewCode, |c| {
                c.new_code()
            }),
        )
        .col_expr(
            command::Column::ErrorKind,
            case_on_id(batch, completion_id, command::Column::ErrorKind, |c| {
                c.error().map(|e| e.kind.as_str().to_owned())
            }),
        )
        .col_expr(
            command::Column::ErrorMessage,
            case_on_id(batch, completion_id, command::Column::ErrorMessage, |c| {
                c.error().map(|e| e.message.clone())
            }),
        )
        .col_expr(
            command::Column::HttpStatus,
            case_on_id(batch, completion_id, command::Column::HttpStatus, |c| {
                c.error().and_then(|e| e.http_status).map(i32::from)
            }),
        )
        .col_expr(
            command::Column::EventId,
            case_on_id(batch, completion_id, command::Column::EventId, |c| {
                c.event_id()
            }),
        )
        .col_expr(command::Column::UpdatedAt, Expr::value(t))
        .col_expr(command::Column::FinishedAt, Expr::value(Some(t)))
        .filter(command::Column::CommandId.is_in(ids))
        .filter(command::Column::Status.ne(STATUS_DONE))
        .exec_with_returning(txn)
        .await?;
    Ok(done.into_iter().map(|row| row.command_id).collect())
}

/// Queues the rows one fresh outcome writes: history, link state, outbox, lease release.
fn stage_completion(c: &Completion, deferred: &mut Deferred, t: DateTime<Utc>) {
    let cmd = &c.cmd;
    let tag = cmd.id.to_string();
    let key = GroupKey::of(cmd);
    let (new_code, err) = match &c.outcome {
        Outcome::Rotated { link, .. } => (Some(link.code.as_str().to_owned()), None),
        Outcome::Failed(e) => (None, Some(e)),
        Outcome::Skipped => (None, None),
    };
    let stored_code = c.link.as_ref().and_then(|l| l.invite_code.clone());
    if let Some((old, new)) = &c.external_change {
        deferred.history.push((
            tag.clone(),
            history_row(
                &key,
                None,
                "external_change",
                0,
                old.clone(),
                Some(new.clone()),
                None,
                t,
            ),
        ));
    }
    let old_code = match &c.outcome {
        Outcome::Rotated { previous_code, .. } => previous_code.clone(),
        _ => c
            .external_change
            .as_ref()
            .map(|(_, new)| new.clone())
            .or(stored_code),
    };
    let hist = HistoryCmd {
        cmd,
        started_at: c.started_at,
    };
    deferred.history.push((
        tag.clone(),
        history_row(
            &key,
            Some(&hist),
            c.outcome.as_str(),
            c.attempts,
            old_code,
            new_code,
            err,
            t,
        ),
    ));

    // The link row as read under the group lease, with this outcome applied. Nobody else
    // writes it meanwhile, so the whole row is written back (scheduler columns excepted).
    let mut row = c.link.clone().unwrap_or_else(|| link::Model {
        id: 0,
        backend: key.backend.clone(),
        session_id: key.session_id.clone(),
        group_id: key.group_id.clone(),
        invite_code: None,
        issued_at: None,
        expires_at: None,
        expires_at_source: None,
        rotation_count: 0,
        last_command_id: None,
        last_rotated_at: None,
        updated_at: t,
        scheduled_for: None,
        scheduled_at: None,
    });
    let mut touched = false;
    if let Some((_, new)) = &c.external_change {
        row.invite_code = Some(new.clone());
        touched = true;
    }
    if let Outcome::Rotated {
        link,
        expires_at,
        source,
        ..
    } = &c.outcome
    {
        row.invite_code = Some(link.code.as_str().to_owned());
        row.issued_at = Some(t);
        row.expires_at = Some(*expires_at);
        row.expires_at_source = Some(source.as_str().to_owned());
        row.rotation_count += 1;
        row.last_command_id = Some(cmd.id.to_string());
        row.last_rotated_at = Some(t);
        touched = true;
    }
    if touched {
        row.updated_at = t;
        deferred.links.push((
            tag.clone(),
            link::ActiveModel {
                backend: Set(row.backend),
                session_id: Set(row.session_id),
                group_id: Set(row.group_id),
                invite_code: Set(row.invite_code),
                issued_at: Set(row.issued_at),
                expires_at: Set(row.expires_at),
                expires_at_source: Set(row.expires_at_source),
                rotation_count: Set(row.rotation_count),
                last_command_id: Set(row.last_command_id),
                last_rotated_at: Set(row.last_rotated_at),
                updated_at: Set(row.updated_at),
                ..Default::default()
            },
        ));
    }
    deferred.outbox.extend(
        outbox_rows(&c.messages, t)
            .into_iter()
            .map(|r| (tag.clone(), r)),
    );
    if let Some(lease) = &c.release_lease {
        deferred.leases.push((tag, lease.clone()));
    }
}

impl Store {
    /// Commits outbox rows (and, when attributable, an inbox row) for a message that
    /// could not become a command. Returns false when its command_id was already seen.
    pub async fn record_rejection(
        &self,
        inbox: Option<command::ActiveModel>,
        messages: &[OutboxMessage],
    ) -> Result<bool, DbErr> {
        let t = now();
        let txn = self.db.begin().await?;
        if let Some(row) = inbox {
            let n = command::Entity::insert(row)
                .on_conflict_do_nothing()
                .exec_without_returning(&txn)
                .await?;
            if !matches!(n, sea_orm::TryInsertResult::Inserted(k) if k > 0) {
                txn.rollback().await?;
                return Ok(false);
            }
        }
        Deferred {
            outbox: outbox_rows(messages, t)
                .into_iter()
                .map(|r| (String::new(), r))
                .collect(),
            ..Default::default()
        }
        .flush(&txn)
        .await?;
        txn.commit().await?;
        Ok(true)
    }

    // ---- leases ----

    /// Takes or renews the lease on `lane` for `owner` in one statement; false when
    /// another owner holds an unexpired lease.
    pub async fn try_lease(&self, lane: &str, owner: &str, ttl: Duration) -> Result<bool, DbErr> {
        Ok(self.try_lease_many(&[lane.to_owned()], owner, ttl).await?[0])
    }

    /// [`Store::try_lease`] for several lanes in one statement; answers in order.
    pub async fn try_lease_many(
        &self,
        lanes: &[String],
        owner: &str,
        ttl: Duration,
    ) -> Result<Vec<bool>, DbErr> {
        let (t, until) = lease_window(ttl);
        let unique = unique_lanes(lanes);
        let taken: std::collections::HashSet<String> = if self.is_postgres() {
            pg::try_leases(&self.db, &unique, owner, until, t)
                .await?
                .into_iter()
                .collect()
        } else {
            let rows = vec!["(?, ?, ?)"; unique.len()].join(", ");
            let sql = format!(
                "INSERT INTO group_leases (lane, owner, lease_until) VALUES {rows} \
                 ON CONFLICT (lane) DO UPDATE SET owner = excluded.owner, \
                 lease_until = excluded.lease_until \
                 WHERE group_leases.owner = excluded.owner OR group_leases.lease_until < ? \
                 RETURNING lane"
            );
            let mut values: Vec<sea_orm::Value> = Vec::with_capacity(unique.len() * 3 + 1);
            for lane in &unique {
                values.extend([(*lane).clone().into(), owner.into(), until.into()]);
            }
            values.push(t.into());
            self.fast
                .query_all_raw(Statement::from_sql_and_values(
                    DbBackend::Sqlite,
                    sql,
                    values,
                ))
                .await?
                .iter()
                .map(|row| row.try_get::<String>("", "lane"))
                .collect::<Result<_, _>>()?
        };
        Ok(lanes.iter().map(|l| taken.contains(l)).collect())
    }

    /// Extends `owner`'s lease on `lane` by `ttl` from now, unless it was released or
    /// another owner took it; true when extended. An expired lease nobody took is
    /// extended too (it is still this owner's row).
    pub async fn renew_lease(&self, lane: &str, owner: &str, ttl: Duration) -> Result<bool, DbErr> {
        let (_, until) = lease_window(ttl);
        let done = group_lease::Entity::update_many()
            .col_expr(group_lease::Column::LeaseUntil, Expr::value(until))
            .filter(group_lease::Column::Lane.eq(lane))
            .filter(group_lease::Column::Owner.eq(owner))
            .filter(group_lease::Column::LeaseUntil.ne(RELEASED))
            .exec(&self.fast)
            .await?;
        Ok(done.rows_affected == 1)
    }

    /// Releases `owner`'s lease on `lane` (see [`RELEASED`]).
    pub async fn release_lease(&self, lane: &str, owner: &str) -> Result<(), DbErr> {
        group_lease::Entity::update_many()
            .col_expr(group_lease::Column::LeaseUntil, Expr::value(RELEASED))
            .filter(group_lease::Column::Lane.eq(lane))
            .filter(group_lease::Column::Owner.eq(owner))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    // ---- worker heartbeats ----

    /// Records `instance`'s heartbeat (at the database's time, so hosts' clocks do not
    /// matter) and counts the processes whose heartbeat is younger than `live_for`, this
    /// one included; forgets heartbeats older than an hour. SQLite serves one process:
    /// nothing is recorded and the count is 1.
    pub async fn heartbeat(&self, instance: &str, live_for: Duration) -> Result<u32, DbErr> {
        if !self.is_postgres() {
            return Ok(1);
        }
        pg::heartbeat(&self.fast, instance, live_for).await
    }

    /// Removes `instance`'s heartbeat (a stopping process).
    pub async fn leave(&self, instance: &str) -> Result<(), DbErr> {
        if !self.is_postgres() {
            return Ok(());
        }
        pg::leave(&self.fast, instance).await
    }

    // ---- outbox ----

    /// Takes up to `limit` outbox rows for publication, oldest first, skipping rows
    /// another relay holds. On PostgreSQL the rows are locked by a transaction kept open
    /// until [`Store::settle_outbox`]: nothing is written to take them, and a relay that
    /// dies releases them at once. On SQLite they are claimed for `claim_for` (one
    /// process; a write transaction would block every commit meanwhile).
    pub async fn take_outbox(&self, limit: u64, claim_for: Duration) -> Result<OutboxBatch, DbErr> {
        if !self.is_postgres() {
            let rows = self.claim_outbox(limit, claim_for).await?;
            return Ok(OutboxBatch { rows, txn: None });
        }
        let txn = self.fast.begin().await?;
        // Rows an older version claimed are left until their claim ends.
        let sql = "SELECT * FROM outbox WHERE claimed_until IS NULL OR claimed_until < $1 \
                   ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED";
        let stmt = Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [now().into(), (limit as i64).into()],
        );
        let rows = outbox::Entity::find().from_raw_sql(stmt).all(&txn).await?;
        Ok(OutboxBatch {
            rows,
            txn: Some(txn),
        })
    }

    /// Deletes the rows of `batch` that were published (`sent`) and releases the others.
    pub async fn settle_outbox(&self, batch: OutboxBatch, sent: &[i64]) -> Result<(), DbErr> {
        let Some(txn) = batch.txn else {
            let unsent: Vec<i64> = batch
                .rows
                .iter()
                .map(|r| r.id)
                .filter(|id| !sent.contains(id))
                .collect();
            self.remove_sent(sent).await?;
            return self.unclaim(&unsent).await;
        };
        if !sent.is_empty() {
            // One statement text for any number of ids (an IN list with a placeholder
            // per id made each batch length a statement of its own to parse and plan).
            let ids = serde_json::to_string(sent).map_err(|e| DbErr::Json(e.to_string()))?;
            let sql = "DELETE FROM outbox WHERE id = ANY (ARRAY( \
                       SELECT jsonb_array_elements_text($1::jsonb)::bigint))";
            let deleted = txn
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    sql,
                    [ids.into()],
                ))
                .await;
            if let Err(e) = deleted {
                // Released now (not when the connection is next used): the rows are
                // published again later.
                let _ = txn.rollback().await;
                return Err(e);
            }
        }
        txn.commit().await
    }

    /// Claims up to `limit` unsent rows for `claim_for` (PostgreSQL replicas skip rows
    /// another relay holds) and returns them in id order.
    pub async fn claim_outbox(
        &self,
        limit: u64,
        claim_for: Duration,
    ) -> Result<Vec<outbox::Model>, DbErr> {
        let t = now();
        let until =
            t + chrono::Duration::from_std(claim_for).unwrap_or(chrono::Duration::seconds(30));
        let backend = self.fast.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "UPDATE outbox SET claimed_until = $1 WHERE id IN (SELECT id FROM outbox \
                 WHERE claimed_until IS NULL OR claimed_until < $2 \
                 ORDER BY id LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING *"
            }
            _ => {
                "UPDATE outbox SET claimed_until = ? WHERE id IN (SELECT id FROM outbox \
                 WHERE claimed_until IS NULL OR claimed_until < ? \
                 ORDER BY id LIMIT ?) RETURNING *"
            }
        };
        let stmt = Statement::from_sql_and_values(
            backend,
            sql,
            [until.into(), t.into(), (limit as i64).into()],
        );
        let mut rows = outbox::Entity::find()
            .from_raw_sql(stmt)
            .all(&self.fast)
            .await?;
        rows.sort_by_key(|r| r.id);
        Ok(rows)
    }

    /// Deletes rows the broker confirmed: the outbox holds only what is still to be
    /// published (the command's row keeps its event_id, the history its outcome).
    pub async fn remove_sent(&self, ids: &[i64]) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        outbox::Entity::delete_many()
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Makes claimed rows immediately claimable again (after a failed publish).
    pub async fn unclaim(&self, ids: &[i64]) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        outbox::Entity::update_many()
            .col_expr(
                outbox::Column::ClaimedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(outbox::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    /// Unsent outbox rows and the creation time of the oldest.
    pub async fn outbox_pending(&self) -> Result<(u64, Option<DateTime<Utc>>), DbErr> {
        let pending = outbox::Entity::find();
        let count = pending.clone().count(&self.db).await?;
        let oldest = pending
            .order_by_asc(outbox::Column::Id)
            .one(&self.db)
            .await?
            .map(|r| r.created_at);
        Ok((count, oldest))
    }

    // ---- queries for the CLI and the scheduler ----

    pub async fn links(&self) -> Result<Vec<link::Model>, DbErr> {
        link::Entity::find()
            .order_by_asc(link::Column::Backend)
            .order_by_asc(link::Column::SessionId)
            .order_by_asc(link::Column::GroupId)
            .all(&self.db)
            .await
    }

    pub async fn history(&self, key: &GroupKey) -> Result<Vec<history::Model>, DbErr> {
        history::Entity::find()
            .filter(history::Column::Backend.eq(&key.backend))
            .filter(history::Column::SessionId.eq(&key.session_id))
            .filter(history::Column::GroupId.eq(&key.group_id))
            .order_by_asc(history::Column::Id)
            .all(&self.db)
            .await
    }

    /// Claims up to `limit` links whose expiry is at or before `due` and for which no
    /// rotation was published yet (or the last publication is older than `republish`).
    /// On PostgreSQL concurrent scanners skip each other's rows.
    pub async fn claim_due(
        &self,
        now: DateTime<Utc>,
        due: DateTime<Utc>,
        republish: Duration,
        limit: u64,
    ) -> Result<Vec<link::Model>, DbErr> {
        let stale =
            now - chrono::Duration::from_std(republish).unwrap_or(chrono::Duration::minutes(10));
        let backend = self.fast.get_database_backend();
        let sql = match backend {
            DbBackend::Postgres => {
                "UPDATE links SET scheduled_for = expires_at, scheduled_at = $1 WHERE id IN \
                 (SELECT id FROM links WHERE expires_at <= $2 AND (scheduled_for IS NULL \
                 OR scheduled_for <> expires_at OR scheduled_at < $3) ORDER BY expires_at \
                 LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING *"
            }
            _ => {
                "UPDATE links SET scheduled_for = expires_at, scheduled_at = ? WHERE id IN \
                 (SELECT id FROM links WHERE expires_at <= ? AND (scheduled_for IS NULL \
                 OR scheduled_for <> expires_at OR scheduled_at < ?) ORDER BY expires_at \
                 LIMIT ?) RETURNING *"
            }
        };
        let values = [now.into(), due.into(), stale.into(), (limit as i64).into()];
        let stmt = Statement::from_sql_and_values(backend, sql, values);
        link::Entity::find()
            .from_raw_sql(stmt)
            .all(&self.fast)
            .await
    }

    /// Forgets a claim so the next scan publishes again (after a failed publish).
    pub async fn unschedule(&self, ids: &[i64]) -> Result<(), DbErr> {
        if ids.is_empty() {
            return Ok(());
        }
        link::Entity::update_many()
            .col_expr(
                link::Column::ScheduledAt,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                link::Column::ScheduledFor,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(link::Column::Id.is_in(ids.iter().copied()))
            .exec(&self.fast)
            .await?;
        Ok(())
    }

    pub async fn count_links_due(&self, due: DateTime<Utc>) -> Result<u64, DbErr> {
        link::Entity::find()
            .filter(link::Column::ExpiresAt.lte(due))
            .count(&self.db)
            .await
    }
}

async fn reopen_failed_on<C: ConnectionTrait>(db: &C, command_id: &str) -> Result<bool, DbErr> {
    let res = command::Entity::update_many()
        .col_expr(command::Column::Status, Expr::value(STATUS_RECEIVED))
        .col_expr(
            command::Column::Outcome,
            Expr::value(Option::<String>::None),
        )
        .col_expr(command::Column::Attempts, Expr::value(0))
        .col_expr(
            command::Column::Cycle,
            Expr::col(command::Column::Cycle).add(1),
        )
        .col_expr(
            command::Column::EventId,
            Expr::value(Option::<String>::None),
        )
        .col_expr(command::Column::UpdatedAt, Expr::value(now()))
        .filter(command::Column::CommandId.eq(command_id))
        .filter(command::Column::Outcome.eq("failed"))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}

struct HistoryCmd<'a> {
    cmd: &'a Command,
    started_at: DateTime<Utc>,
}

#[allow(clippy::too_many_arguments)]
fn history_row(
    key: &GroupKey,
    cmd: Option<&HistoryCmd<'_>>,
    outcome: &str,
    attempts: i32,
    old_code: Option<String>,
    new_code: Option<String>,
    err: Option<&BackendError>,
    at: DateTime<Utc>,
) -> history::ActiveModel {
    history::ActiveModel {
        backend: Set(key.backend.clone()),
        session_id: Set(key.session_id.clone()),
        group_id: Set(key.group_id.clone()),
        command_id: Set(cmd.map(|c| c.cmd.id.to_string())),
        command_type: Set(cmd.map(|c| c.cmd.kind.as_str().to_owned())),
        trigger: Set(cmd.map(|c| c.cmd.kind.trigger().to_owned())),
        outcome: Set(outcome.to_owned()),
        attempts: Set(attempts),
        old_code: Set(old_code),
        new_code: Set(new_code),
        error_kind: Set(err.map(|e| e.kind.as_str().to_owned())),
        error_message: Set(err.map(|e| e.message.clone())),
        started_at: Set(cmd.map(|c| c.started_at)),
        occurred_at: Set(at),
        ..Default::default()
    }
}

fn outbox_rows(messages: &[OutboxMessage], at: DateTime<Utc>) -> Vec<outbox::ActiveModel> {
    messages
        .iter()
        .map(|m| outbox::ActiveModel {
            exchange: Set(m.exchange.clone()),
            routing_key: Set(m.routing_key.clone()),
            message_id: Set(m.message_id.clone()),
            message_type: Set(m.message_type.clone()),
            correlation_id: Set(m.correlation_id.clone()),
            headers: Set((!m.headers.is_empty()).then(|| {
                let map: std::collections::BTreeMap<_, _> = m.headers.iter().cloned().collect();
                serde_json::to_string(&map).unwrap_or_default()
            })),
            payload: Set(m.payload.clone()),
            created_at: Set(at),
            claimed_until: Set(None),
            sent_at: Set(None),
            ..Default::default()
        })
        .collect()
}

/// Rows that a batch of outcomes writes with one multi-row statement per table.
#[derive(Default)]
struct Deferred {
    /// Each row with the id of the command whose outcome writes it.
    /// Link rows to upsert by (backend, session, group).
    links: Vec<(String, link::ActiveModel)>,
    history: Vec<(String, history::ActiveModel)>,
    outbox: Vec<(String, outbox::ActiveModel)>,
    /// Leases to release: (lane, owner).
    leases: Vec<(String, (String, String))>,
}

impl Deferred {
    async fn flush<C: ConnectionTrait>(self, db: &C) -> Result<(), DbErr> {
        if !self.links.is_empty() {
            use link::Column as L;
            let upsert =
                sea_orm::sea_query::OnConflict::columns([L::Backend, L::SessionId, L::GroupId])
                    .update_columns([
                        L::InviteCode,
                        L::IssuedAt,
                        L::ExpiresAt,
                        L::ExpiresAtSource,
                        L::RotationCount,
                        L::LastCommandId,
                        L::LastRotatedAt,
                        L::UpdatedAt,
                    ])
                    .to_owned();
            link::Entity::insert_many(self.links.into_iter().map(|(_, r)| r))
                .on_conflict(upsert)
                .exec_without_returning(db)
                .await?;
        }
        if !self.history.is_empty() {
            history::Entity::insert_many(self.history.into_iter().map(|(_, r)| r))
                .exec_without_returning(db)
                .await?;
        }
        if !self.outbox.is_empty() {
            outbox::Entity::insert_many(self.outbox.into_iter().map(|(_, r)| r))
                .exec_without_returning(db)
                .await?;
        }
        let mut by_owner: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (_, (lane, owner)) in self.leases {
            by_owner.entry(owner).or_default().push(lane);
        }
        for (owner, lanes) in by_owner {
            group_lease::Entity::update_many()
                .col_expr(group_lease::Column::LeaseUntil, Expr::value(RELEASED))
                .filter(group_lease::Column::Owner.eq(owner))
                .filter(group_lease::Column::Lane.is_in(lanes))
                .exec(db)
                .await?;
        }
        Ok(())
    }
}

/// The statements concurrent commands share (see [`Batcher`]): the inbox receipt with the
/// group lease, lease retries, the link read, the attempt marker and the outcome commit. A batch never
/// holds two requests of one group (the in-process lane admits one command per group
/// and the group lease is held until the outcome commits), so concurrent batches touch
/// disjoint rows.
#[derive(Clone)]
pub struct Batches {
    /// Inbox receipt and lease (and on PostgreSQL a first attempt) in one statement.
    pub begin: Batcher<Begin, Begun>,
    pub leases: Batcher<String, bool>,
    pub links: Batcher<GroupKey, Option<link::Model>>,
    pub attempts: Batcher<Attempt, bool>,
    /// Link read and attempt marker in one statement (see [`Store::first_attempt_many`]).
    pub first_attempts: Batcher<FirstAttempt, (bool, Option<link::Model>)>,
    /// Group commit: outcomes submitted while one batch commits are committed together
    /// in the next transaction, so concurrent commands share one wait for the disk.
    pub commits: Batcher<Arc<Completion>, bool>,
}

const MAX_BATCH: usize = 128;

impl Batches {
    /// Starts the batching tasks; leases are taken for `owner` with `ttl`.
    pub fn start(store: &Store, owner: &str, ttl: Duration) -> Self {
        let begin = {
            let (store, owner) = (store.clone(), Arc::<str>::from(owner));
            Batcher::start("begin", 1, MAX_BATCH, move |batch: Arc<[Begin]>| {
                let (store, owner) = (store.clone(), owner.clone());
                async move { store.begin_many(&batch, &owner, ttl).await }
            })
        };
        let leases = {
            let (store, owner) = (store.clone(), Arc::<str>::from(owner));
            Batcher::start("lease", 1, MAX_BATCH, move |lanes: Arc<[String]>| {
                let (store, owner) = (store.clone(), owner.clone());
                async move { store.try_lease_many(&lanes, &owner, ttl).await }
            })
        };
        let links = {
            let store = store.clone();
            Batcher::start("link_get", 1, MAX_BATCH, move |keys: Arc<[GroupKey]>| {
                let store = store.clone();
                async move { store.link_get_many(&keys).await }
            })
        };
        let attempts = {
            let store = store.clone();
            Batcher::start("mark_executing", 1, MAX_BATCH, move |a: Arc<[Attempt]>| {
                let store = store.clone();
                async move { store.mark_executing_many(&a).await }
            })
        };
        let first_attempts = {
            let store = store.clone();
            Batcher::start(
                "first_attempt",
                1,
                MAX_BATCH,
                move |a: Arc<[FirstAttempt]>| {
                    let store = store.clone();
                    async move { store.first_attempt_many(&a).await }
                },
            )
        };
        let commits = {
            let store = store.clone();
            Batcher::start("commit", 2, MAX_BATCH, move |c: Arc<[Arc<Completion>]>| {
                let store = store.clone();
                async move {
                    let all: Vec<&Completion> = c.iter().map(|c| c.as_ref()).collect();
                    store.commit_batch(&all).await
                }
            })
        };
        Self {
            begin,
            leases,
            links,
            attempts,
            first_attempts,
            commits,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::loopback_without_sslmode as local;

    #[test]
    fn tls_is_skipped_only_for_loopback_urls_that_do_not_choose() {
        assert!(local("postgres://u@127.0.0.1:5432/db"));
        assert!(local("postgres://u@localhost/db?application_name=x"));
        assert!(local("postgres://u@[::1]/db"));
        assert!(!local("postgres://u@127.0.0.1/db?sslmode=require"));
        assert!(!local("postgres://u@db.internal/db"));
        assert!(!local("postgres://u@10.0.0.5/db"));
        assert!(!local("not a url"));
    }
}
