//! A command waiting in the database until it is due: its session at its rate limit, a
//! backoff or `Retry-After`, or its group busy elsewhere. Its delivery was acknowledged
//! once this row was committed; the releaser of any worker process claims it when due.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "deferred_commands")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub command_id: String,
    pub backend: String,
    pub session_id: String,
    /// `backend|session|group`: a claim passes over a command whose group is leased.
    pub lane: String,
    /// 0 for `revoke_invite`, 1 for `rotate_expiring_link`: revokes go first.
    pub priority: i16,
    /// When it may run; pushed forward while a process has it claimed.
    pub due_at: DateTimeUtc,
    /// When it was first deferred, for first come, first served among equals.
    pub received_at: DateTimeUtc,
    /// The process that claimed it last (`worker.instance_id`), if any.
    pub claimed_by: Option<String>,
    /// The command's body as delivered.
    pub body: Vec<u8>,
    /// The delivery's origin headers (JSON pairs), kept for a dead-letter copy.
    pub origin: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
