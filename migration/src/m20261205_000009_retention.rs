//! Retention: the indexes the pruner walks, oldest first — finished commands by the time
//! they finished, history rows by the time they occurred (then id, for exports that page
//! through history in that order).

use sea_orm_migration::prelude::*;

#[derive(DeriveIden)]
enum Commands {
    Table,
    FinishedAt,
}

#[derive(DeriveIden)]
enum LinkHistory {
    Table,
    OccurredAt,
    Id,
}

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("commands_finished_at_idx")
                .table(Commands::Table)
                .col(Commands::FinishedAt)
                .if_not_exists()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("link_history_occurred_at_idx")
                .table(LinkHistory::Table)
                .col(LinkHistory::OccurredAt)
                .col(LinkHistory::Id)
                .if_not_exists()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("link_history_occurred_at_idx")
                .table(LinkHistory::Table)
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("commands_finished_at_idx")
                .table(Commands::Table)
                .to_owned(),
        )
        .await
    }
}
