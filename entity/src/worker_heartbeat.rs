//! Heartbeats of the worker processes sharing a database, so that they can share each
//! backend's `rate_limit_per_session` (each paces a session at 1/N of it).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "worker_heartbeats")]
pub struct Model {
    /// `worker.instance_id`, or host, pid and a random part.
    #[sea_orm(primary_key, auto_increment = false)]
    pub instance_id: String,
    /// The database's time of the last heartbeat.
    pub seen_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
