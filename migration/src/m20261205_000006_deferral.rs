//! Deferral in the database and shared pacing: commands that must wait (their session at
//! its rate limit, a backoff, `Retry-After`, their group busy elsewhere) wait in
//! `deferred_commands` with their due time and priority instead of in broker delay
//! queues; `session_slots` holds each session's next free request slot, shared by every
//! worker process on the database.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveIden)]
enum DeferredCommands {
    Table,
    CommandId,
    Backend,
    SessionId,
    Lane,
    Priority,
    DueAt,
    ReceivedAt,
    ClaimedBy,
    Body,
    Origin,
}

#[derive(DeriveIden)]
enum SessionSlots {
    Table,
    Backend,
    SessionId,
    NextSlot,
    NextRotationSlot,
}

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(DeferredCommands::Table)
                .if_not_exists()
                .col(string_len(DeferredCommands::CommandId, 36).primary_key())
                .col(string_len(DeferredCommands::Backend, 64))
                .col(string_len(DeferredCommands::SessionId, 128))
                .col(string_len(DeferredCommands::Lane, 512))
                .col(small_integer(DeferredCommands::Priority))
                .col(timestamp_with_time_zone(DeferredCommands::DueAt))
                .col(timestamp_with_time_zone(DeferredCommands::ReceivedAt))
                .col(string_len_null(DeferredCommands::ClaimedBy, 128))
                .col(blob(DeferredCommands::Body))
                .col(text_null(DeferredCommands::Origin))
                .to_owned(),
        )
        .await?;
        // The releaser's two questions: which sessions have work due, and, per session,
        // which command goes next (revokes first, then by due time and arrival).
        m.create_index(
            Index::create()
                .name("deferred_commands_due_idx")
                .table(DeferredCommands::Table)
                .col(DeferredCommands::DueAt)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("deferred_commands_session_idx")
                .table(DeferredCommands::Table)
                .col(DeferredCommands::Backend)
                .col(DeferredCommands::SessionId)
                .col(DeferredCommands::Priority)
                .col(DeferredCommands::DueAt)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(SessionSlots::Table)
                .if_not_exists()
                .col(string_len(SessionSlots::Backend, 64))
                .col(string_len(SessionSlots::SessionId, 128))
                .col(timestamp_with_time_zone(SessionSlots::NextSlot))
                .col(timestamp_with_time_zone(SessionSlots::NextRotationSlot))
                .primary_key(
                    Index::create()
                        .col(SessionSlots::Backend)
                        .col(SessionSlots::SessionId),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(SessionSlots::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(DeferredCommands::Table).to_owned())
            .await
    }
}
