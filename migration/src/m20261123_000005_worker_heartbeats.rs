//! Heartbeats of the worker processes sharing a database, so that they can share each
//! backend's `rate_limit_per_session` (each paces a session at 1/N of it).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveIden)]
enum WorkerHeartbeats {
    Table,
    InstanceId,
    SeenAt,
}

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(WorkerHeartbeats::Table)
                .if_not_exists()
                .col(string_len(WorkerHeartbeats::InstanceId, 255).primary_key())
                .col(timestamp_with_time_zone(WorkerHeartbeats::SeenAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(WorkerHeartbeats::Table).to_owned())
            .await
    }
}
