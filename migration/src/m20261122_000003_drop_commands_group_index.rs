//! The inbox is only ever looked up by command_id (a group's commands are in
//! `link_history`, which has its own group index): its group index cost an index insert
//! per command for no query.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Commands {
    Table,
    Backend,
    SessionId,
    GroupId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("commands_group_idx")
                .table(Commands::Table)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("commands_group_idx")
                .table(Commands::Table)
                .col(Commands::Backend)
                .col(Commands::SessionId)
                .col(Commands::GroupId)
                .to_owned(),
        )
        .await
    }
}
