//! A pause: the commands of a backend (session `*`) or of one of its sessions wait until
//! an operator resumes it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "pauses")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub backend: String,
    /// A session id, or `*` for every session of the backend.
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    pub reason: Option<String>,
    pub paused_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
