//! Per-group history: every command outcome and every external change seen.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "link_history")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub backend: String,
    pub session_id: String,
    pub group_id: String,
    pub command_id: Option<String>,
    pub command_type: Option<String>,
    pub trigger: Option<String>,
    /// `rotated`, `skipped`, `failed`, `external_change` or `replayed`.
    pub outcome: String,
    pub attempts: i32,
    pub old_code: Option<String>,
    pub new_code: Option<String>,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub started_at: Option<DateTimeUtc>,
    pub occurred_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
