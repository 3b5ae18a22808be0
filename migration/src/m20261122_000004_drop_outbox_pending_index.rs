//! Published outbox rows are deleted (not marked sent), so every row is pending and the
//! relay claims in primary-key order: the `(sent_at, id)` index only cost an index
//! insert per event and, on a busy queue, a scan over the entries of deleted rows
//! (measured on PostgreSQL: half of the group commit's time and ~20 ms per claim).
//! Rows marked sent by an earlier version are deleted on the way.

use sea_orm_migration::prelude::*;

#[derive(DeriveIden)]
enum Outbox {
    Table,
    Id,
    SentAt,
}

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.exec_stmt(
            Query::delete()
                .from_table(Outbox::Table)
                .and_where(Expr::col(Outbox::SentAt).is_not_null())
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name("outbox_pending_idx")
                .table(Outbox::Table)
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name("outbox_pending_idx")
                .table(Outbox::Table)
                .col(Outbox::SentAt)
                .col(Outbox::Id)
                .to_owned(),
        )
        .await
    }
}
