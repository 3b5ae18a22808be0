//! Tracked links, the command inbox, per-group history, the event outbox and group leases.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum Links {
    Table,
    Id,
    Backend,
    SessionId,
    GroupId,
    InviteCode,
    IssuedAt,
    ExpiresAt,
    ExpiresAtSource,
    RotationCount,
    LastCommandId,
    LastRotatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Commands {
    Table,
    CommandId,
    CommandType,
    Backend,
    SessionId,
    GroupId,
    Reason,
    RequestedBy,
    Status,
    Outcome,
    Attempts,
    Cycle,
    BeforeCode,
    NewCode,
    ErrorKind,
    ErrorMessage,
    HttpStatus,
    EventId,
    ReceivedAt,
    UpdatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum LinkHistory {
    Table,
    Id,
    Backend,
    SessionId,
    GroupId,
    CommandId,
    CommandType,
    Trigger,
    Outcome,
    Attempts,
    OldCode,
    NewCode,
    ErrorKind,
    ErrorMessage,
    StartedAt,
    OccurredAt,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    Exchange,
    RoutingKey,
    MessageId,
    MessageType,
    CorrelationId,
    Headers,
    Payload,
    CreatedAt,
    ClaimedUntil,
    SentAt,
}

#[derive(DeriveIden)]
enum GroupLeases {
    Table,
    Lane,
    Owner,
    LeaseUntil,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Links::Table)
                .if_not_exists()
                .col(big_pk_auto(Links::Id))
                .col(string_len(Links::Backend, 64))
                .col(string_len(Links::SessionId, 128))
                .col(string_len(Links::GroupId, 256))
                .col(string_len_null(Links::InviteCode, 64))
                .col(timestamp_with_time_zone_null(Links::IssuedAt))
                .col(timestamp_with_time_zone_null(Links::ExpiresAt))
                .col(string_len_null(Links::ExpiresAtSource, 16))
                .col(integer(Links::RotationCount).default(0))
                .col(string_len_null(Links::LastCommandId, 36))
                .col(timestamp_with_time_zone_null(Links::LastRotatedAt))
                .col(timestamp_with_time_zone(Links::UpdatedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("links_group_uq")
                .table(Links::Table)
                .col(Links::Backend)
                .col(Links::SessionId)
                .col(Links::GroupId)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("links_expires_at_idx")
                .table(Links::Table)
                .col(Links::ExpiresAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Commands::Table)
                .if_not_exists()
                .col(string_len(Commands::CommandId, 36).primary_key())
                .col(string_len(Commands::CommandType, 32))
                .col(string_len(Commands::Backend, 64))
                .col(string_len(Commands::SessionId, 128))
                .col(string_len(Commands::GroupId, 256))
                .col(text_null(Commands::Reason))
                .col(text_null(Commands::RequestedBy))
                .col(string_len(Commands::Status, 16))
                .col(string_len_null(Commands::Outcome, 16))
                .col(integer(Commands::Attempts).default(0))
                .col(integer(Commands::Cycle).default(1))
                .col(string_len_null(Commands::BeforeCode, 64))
                .col(string_len_null(Commands::NewCode, 64))
                .col(string_len_null(Commands::ErrorKind, 32))
                .col(text_null(Commands::ErrorMessage))
                .col(integer_null(Commands::HttpStatus))
                .col(string_len_null(Commands::EventId, 36))
                .col(timestamp_with_time_zone(Commands::ReceivedAt))
                .col(timestamp_with_time_zone(Commands::UpdatedAt))
                .col(timestamp_with_time_zone_null(Commands::FinishedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("commands_group_idx")
                .table(Commands::Table)
                .col(Commands::Backend)
                .col(Commands::SessionId)
                .col(Commands::GroupId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(LinkHistory::Table)
                .if_not_exists()
                .col(big_pk_auto(LinkHistory::Id))
                .col(string_len(LinkHistory::Backend, 64))
                .col(string_len(LinkHistory::SessionId, 128))
                .col(string_len(LinkHistory::GroupId, 256))
                .col(string_len_null(LinkHistory::CommandId, 36))
                .col(string_len_null(LinkHistory::CommandType, 32))
                .col(string_len_null(LinkHistory::Trigger, 16))
                .col(string_len(LinkHistory::Outcome, 16))
                .col(integer(LinkHistory::Attempts).default(0))
                .col(string_len_null(LinkHistory::OldCode, 64))
                .col(string_len_null(LinkHistory::NewCode, 64))
                .col(string_len_null(LinkHistory::ErrorKind, 32))
                .col(text_null(LinkHistory::ErrorMessage))
                .col(timestamp_with_time_zone_null(LinkHistory::StartedAt))
                .col(timestamp_with_time_zone(LinkHistory::OccurredAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("link_history_group_idx")
                .table(LinkHistory::Table)
                .col(LinkHistory::Backend)
                .col(LinkHistory::SessionId)
                .col(LinkHistory::GroupId)
                .col(LinkHistory::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Outbox::Table)
                .if_not_exists()
                .col(big_pk_auto(Outbox::Id))
                .col(string_len(Outbox::Exchange, 255))
                .col(string_len(Outbox::RoutingKey, 255))
                .col(string_len_null(Outbox::MessageId, 64))
                .col(string_len_null(Outbox::MessageType, 64))
                .col(string_len_null(Outbox::CorrelationId, 64))
                .col(text_null(Outbox::Headers))
                .col(blob(Outbox::Payload))
                .col(timestamp_with_time_zone(Outbox::CreatedAt))
                .col(timestamp_with_time_zone_null(Outbox::ClaimedUntil))
                .col(timestamp_with_time_zone_null(Outbox::SentAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("outbox_pending_idx")
                .table(Outbox::Table)
                .col(Outbox::SentAt)
                .col(Outbox::Id)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(GroupLeases::Table)
                .if_not_exists()
                .col(string_len(GroupLeases::Lane, 512).primary_key())
                .col(string_len(GroupLeases::Owner, 128))
                .col(timestamp_with_time_zone(GroupLeases::LeaseUntil))
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            GroupLeases::Table.into_iden(),
            Outbox::Table.into_iden(),
            LinkHistory::Table.into_iden(),
            Commands::Table.into_iden(),
            Links::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
