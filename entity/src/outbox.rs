//! The outbox: messages committed with an outcome and published by the relay.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    /// AMQP exchange ("" for the default exchange).
    pub exchange: String,
    pub routing_key: String,
    /// AMQP `message_id` (the event_id for events).
    pub message_id: Option<String>,
    /// AMQP `type`.
    pub message_type: Option<String>,
    pub correlation_id: Option<String>,
    /// JSON object of string headers, e.g. `x-invite-error`.
    pub headers: Option<String>,
    pub payload: Vec<u8>,
    pub created_at: DateTimeUtc,
    pub claimed_until: Option<DateTimeUtc>,
    /// Unused since rows are deleted once published (migration 4 removed rows an
    /// earlier version had marked sent); kept so that older databases need no rewrite.
    pub sent_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
