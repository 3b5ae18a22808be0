//! Heartbeats of the worker processes sharing a database: which replicas are alive
//! (`/metrics` counts them).

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
