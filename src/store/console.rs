//! The reads of the admin API and console that the worker itself never makes: a page of
//! links under filters, and how many commands finished lately, by outcome.

use chrono::{DateTime, Utc};
use entity::{command, link};
use sea_orm::{
    ColumnTrait, EntityTrait, FromQueryResult, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{Store, StoreError};

/// Which links to list: each set field must match exactly.
#[derive(Clone, Debug, Default)]
pub struct LinkFilter {
    pub backend: Option<String>,
    pub session_id: Option<String>,
    pub group_id: Option<String>,
}

#[derive(FromQueryResult)]
struct OutcomeCount {
    outcome: Option<String>,
    n: i64,
}

impl Store {
    /// The links matching `filter`, by backend, session and group, `limit` of them from
    /// `offset`; and how many match in all.
    pub async fn links_page(
        &self,
        filter: &LinkFilter,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<link::Model>, u64), StoreError> {
        let mut query = link::Entity::find();
        if let Some(b) = &filter.backend {
            query = query.filter(link::Column::Backend.eq(b));
        }
        if let Some(s) = &filter.session_id {
            query = query.filter(link::Column::SessionId.eq(s));
        }
        if let Some(g) = &filter.group_id {
            query = query.filter(link::Column::GroupId.eq(g));
        }
        let total = query.clone().count(&self.fast).await?;
        let rows = query
            .order_by_asc(link::Column::Backend)
            .order_by_asc(link::Column::SessionId)
            .order_by_asc(link::Column::GroupId)
            .offset(offset)
            .limit(limit)
            .all(&self.fast)
            .await?;
        Ok((rows, total))
    }

    /// How many commands finished at or after `since`, per outcome (`rotated`, `skipped`,
    /// `failed`): a range of the `commands.finished_at` index the pruner also walks.
    pub async fn outcomes_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let rows = command::Entity::find()
            .select_only()
            .column(command::Column::Outcome)
            .column_as(command::Column::CommandId.count(), "n")
            .filter(command::Column::FinishedAt.gte(since))
            .filter(command::Column::Outcome.is_not_null())
            .group_by(command::Column::Outcome)
            .into_model::<OutcomeCount>()
            .all(&self.fast)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.outcome?, u64::try_from(r.n).unwrap_or(0))))
            .collect())
    }
}
