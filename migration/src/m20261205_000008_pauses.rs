//! Pauses: a backend, or one session of it, whose commands wait (in the database,
//! spending no attempt) until an operator resumes it. Every worker process obeys them.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveIden)]
enum Pauses {
    Table,
    Backend,
    SessionId,
    Reason,
    PausedAt,
}

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Pauses::Table)
                .if_not_exists()
                .col(string_len(Pauses::Backend, 64))
                // `*` pauses the whole backend.
                .col(string_len(Pauses::SessionId, 128))
                .col(text_null(Pauses::Reason))
                .col(timestamp_with_time_zone(Pauses::PausedAt))
                .primary_key(Index::create().col(Pauses::Backend).col(Pauses::SessionId))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(Pauses::Table).to_owned())
            .await
    }
}
