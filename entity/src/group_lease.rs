//! Leases that keep commands of one group from running in two processes at once.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "group_leases")]
pub struct Model {
    /// `backend|session|group`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub lane: String,
    pub owner: String,
    pub lease_until: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
