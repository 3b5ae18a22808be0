//! Pauses set by operators (`invite-worker pause` / `resume`): a backend (session `*`)
//! or one of its sessions whose commands wait in the database until resumed. Every
//! worker process reads them every second.

use chrono::Utc;
use entity::pause;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, sea_query::OnConflict};

use super::{Store, StoreError};

/// The session of a pause that covers every session of its backend.
pub const ALL_SESSIONS: &str = "*";

impl Store {
    /// Pauses `backend` (every session when `session` is `None`); pausing again updates
    /// the reason and keeps the time it was first paused.
    pub async fn pause(
        &self,
        backend: &str,
        session: Option<&str>,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let row = pause::ActiveModel {
            backend: Set(backend.to_owned()),
            session_id: Set(session.unwrap_or(ALL_SESSIONS).to_owned()),
            reason: Set(reason.map(str::to_owned)),
            paused_at: Set(Utc::now()),
        };
        pause::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([pause::Column::Backend, pause::Column::SessionId])
                    .update_column(pause::Column::Reason)
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Resumes what [`Store::pause`] paused; false when it was not paused.
    pub async fn resume(&self, backend: &str, session: Option<&str>) -> Result<bool, StoreError> {
        let done = pause::Entity::delete_many()
            .filter(pause::Column::Backend.eq(backend))
            .filter(pause::Column::SessionId.eq(session.unwrap_or(ALL_SESSIONS)))
            .exec(&self.db)
            .await?;
        Ok(done.rows_affected > 0)
    }

    /// Every pause, by backend and session.
    pub async fn pauses(&self) -> Result<Vec<pause::Model>, StoreError> {
        Ok(pause::Entity::find()
            .order_by_asc(pause::Column::Backend)
            .order_by_asc(pause::Column::SessionId)
            .all(&self.fast)
            .await?)
    }
}
