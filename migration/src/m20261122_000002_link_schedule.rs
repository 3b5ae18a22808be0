//! Scheduler bookkeeping on tracked links: which expiry a rotation was last published
//! for, and when, so replicas neither step on each other nor republish every scan.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Links {
    Table,
    ScheduledFor,
    ScheduledAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        m.alter_table(
            Table::alter()
                .table(Links::Table)
                .add_column(timestamp_with_time_zone_null(Links::ScheduledFor))
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Links::Table)
                .add_column(timestamp_with_time_zone_null(Links::ScheduledAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Links::Table)
                .drop_column(Links::ScheduledAt)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Links::Table)
                .drop_column(Links::ScheduledFor)
                .to_owned(),
        )
        .await
    }
}
