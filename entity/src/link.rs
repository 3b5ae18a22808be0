//! A tracked invite link: the latest known state of one group's link on one backend.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "links")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub backend: String,
    pub session_id: String,
    pub group_id: String,
    pub invite_code: Option<String>,
    pub issued_at: Option<DateTimeUtc>,
    pub expires_at: Option<DateTimeUtc>,
    /// `backend` or `policy`.
    pub expires_at_source: Option<String>,
    pub rotation_count: i32,
    pub last_command_id: Option<String>,
    pub last_rotated_at: Option<DateTimeUtc>,
    pub updated_at: DateTimeUtc,
    /// The `expires_at` a scheduled rotation was last published for.
    pub scheduled_for: Option<DateTimeUtc>,
    /// When that rotation was published.
    pub scheduled_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
