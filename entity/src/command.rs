//! The command inbox: one row per command_id, moving `received → executing → done`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "commands")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub command_id: String,
    pub command_type: String,
    pub backend: String,
    pub session_id: String,
    pub group_id: String,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    /// `received`, `executing` or `done`.
    pub status: String,
    /// `rotated`, `skipped` or `failed` once done.
    pub outcome: Option<String>,
    /// Reset tries in the current cycle.
    pub attempts: i32,
    /// 1, plus one per operator replay from the dead-letter queue.
    pub cycle: i32,
    /// The code being replaced, recorded before the first reset call.
    pub before_code: Option<String>,
    pub new_code: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub http_status: Option<i32>,
    pub event_id: Option<String>,
    pub received_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
