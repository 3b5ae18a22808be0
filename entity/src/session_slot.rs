//! A session's next free request slot, shared by every worker process on the database
//! (PostgreSQL): each request takes its slot from this row atomically, so that all
//! processes together stay within `rate_limit_per_session` and use all of it.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "session_slots")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub backend: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    /// The earliest start of the session's next request.
    pub next_slot: DateTimeUtc,
    /// The earliest start of the session's next rotation (rotations use a share of the
    /// rate only).
    pub next_rotation_slot: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
