//! Database failures classified by kind, from sea-orm's and sqlx's error variants and the
//! databases' own codes (PostgreSQL SQLSTATE, SQLite result codes), never from message
//! text: the pipeline retries the transient kinds for as long as it takes.

use std::{error::Error as StdError, fmt};

use sea_orm::{
    ConnAcquireErr, DbErr, RuntimeErr,
    sqlx::{self, error::DatabaseError, postgres::PgDatabaseError, sqlite::SqliteError},
};

/// What a database failure means for the operation that met it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The database could not be reached or dropped the connection: I/O, TLS or protocol
    /// failures, a closed pool, PostgreSQL's class 08, an administrator's shutdown or a
    /// crash (57P01, 57P02, 57P03), too many connections (53300).
    ConnectionLost,
    /// No connection of the pool became free in time.
    PoolTimeout,
    /// What the statement needs is locked: SQLite's BUSY and LOCKED, PostgreSQL's
    /// lock_not_available (55P03).
    Busy,
    /// The transaction lost to a concurrent one: serialization failure (40001) or
    /// deadlock (40P01).
    Serialization,
    /// A constraint was violated: PostgreSQL's class 23, SQLite's CONSTRAINT.
    Constraint,
    /// Anything else: the statement itself is at fault, or the data.
    Other,
}

impl DbErrorKind {
    /// Whether the same statement can succeed later unchanged: the database was out of
    /// reach, busy, or lost a race.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Self::ConnectionLost | Self::PoolTimeout | Self::Busy | Self::Serialization
        )
    }

    /// The kind of a PostgreSQL SQLSTATE code.
    pub fn of_sqlstate(code: &str) -> Self {
        match code {
            "40001" | "40P01" => Self::Serialization,
            "55P03" => Self::Busy,
            "57P01" | "57P02" | "57P03" | "53300" => Self::ConnectionLost,
            _ if code.starts_with("08") => Self::ConnectionLost,
            _ if code.starts_with("23") => Self::Constraint,
            _ => Self::Other,
        }
    }

    /// The kind of a SQLite result code (primary or extended: the primary code is its
    /// low byte).
    pub fn of_sqlite_code(code: i32) -> Self {
        match code & 0xff {
            // SQLITE_BUSY, SQLITE_LOCKED.
            5 | 6 => Self::Busy,
            // SQLITE_CONSTRAINT (extended: 2067 unique, 1555 primary key, 787 foreign key…).
            19 => Self::Constraint,
            _ => Self::Other,
        }
    }

    /// The kind of a sea-orm error.
    pub fn of(e: &DbErr) -> Self {
        match e {
            DbErr::ConnectionAcquire(ConnAcquireErr::Timeout) => Self::PoolTimeout,
            DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed) => Self::ConnectionLost,
            // A connection failure whatever its cause, unless the cause says more.
            DbErr::Conn(e) => match Self::of_runtime(e) {
                Self::Other => Self::ConnectionLost,
                kind => kind,
            },
            DbErr::Exec(e) | DbErr::Query(e) => Self::of_runtime(e),
            _ => Self::Other,
        }
    }

    fn of_runtime(e: &RuntimeErr) -> Self {
        match e {
            RuntimeErr::SqlxError(e) => Self::of_sqlx(e),
            _ => Self::Other,
        }
    }

    /// The kind of an sqlx error.
    pub fn of_sqlx(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(e) => Self::of_database(e.as_ref()),
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::ConnectionLost,
            sqlx::Error::PoolTimedOut => Self::PoolTimeout,
            _ => Self::Other,
        }
    }

    fn of_database(e: &dyn DatabaseError) -> Self {
        let Some(code) = e.code() else {
            return Self::Other;
        };
        if e.try_downcast_ref::<PgDatabaseError>().is_some() {
            Self::of_sqlstate(&code)
        } else if e.try_downcast_ref::<SqliteError>().is_some() {
            code.parse().map_or(Self::Other, Self::of_sqlite_code)
        } else {
            Self::Other
        }
    }
}

/// A failed database operation and its kind. Shows as the database error it wraps.
#[derive(Debug)]
pub struct StoreError {
    kind: DbErrorKind,
    source: DbErr,
}

impl StoreError {
    pub fn kind(&self) -> DbErrorKind {
        self.kind
    }

    /// Whether trying again can succeed (see [`DbErrorKind::is_transient`]).
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// The database error as sea-orm reported it.
    pub fn db_err(&self) -> &DbErr {
        &self.source
    }
}

impl From<DbErr> for StoreError {
    fn from(source: DbErr) -> Self {
        Self {
            kind: DbErrorKind::of(&source),
            source,
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.source.fmt(f)
    }
}

/// Transparent: the causes are the database error's own.
impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.source()
    }
}

#[cfg(test)]
mod tests;
