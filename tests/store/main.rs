//! The store against both databases: the batched statements shared by concurrent
//! commands (one statement per batch on PostgreSQL, multi-row statements on SQLite), the
//! leases, the outbox, the schema, and the classification of database errors.

mod commits;
mod deferred;
mod errors;
mod fixtures;
mod leases;
mod outbox;
mod receipts;
mod retention;
mod schema;

// The worker tests' environments: a database of its own per test. The store tests use
// only part of what they share.
#[allow(dead_code, unused_imports)]
#[path = "../worker/support/mod.rs"]
mod support;
