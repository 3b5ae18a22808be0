//! Database migrations of invite-worker, identical on SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_tables;
mod m20261122_000002_link_schedule;
mod m20261122_000003_drop_commands_group_index;
mod m20261122_000004_drop_outbox_pending_index;
mod m20261123_000005_worker_heartbeats;
mod m20261205_000006_deferral;
mod m20261205_000008_pauses;
mod m20261205_000009_retention;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_tables::Migration),
            Box::new(m20261122_000002_link_schedule::Migration),
            Box::new(m20261122_000003_drop_commands_group_index::Migration),
            Box::new(m20261122_000004_drop_outbox_pending_index::Migration),
            Box::new(m20261123_000005_worker_heartbeats::Migration),
            Box::new(m20261205_000006_deferral::Migration),
            Box::new(m20261205_000008_pauses::Migration),
            Box::new(m20261205_000009_retention::Migration),
        ]
    }
}
