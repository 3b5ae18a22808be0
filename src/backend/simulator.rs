//! The `simulator` backend kind: the simulator's world called in-process, no HTTP.

use async_trait::async_trait;

use super::Backend;
use crate::{
    domain::{BackendError, BackendKind, ErrorKind, GroupId, InviteCode, Link, SessionId},
    simulator::{Op, SimError, SimWorld, world::route},
};

pub(super) struct SimulatorBackend {
    world: SimWorld,
    timeout: std::time::Duration,
}

impl SimulatorBackend {
    /// `timeout` is how long a simulated hang lasts before it fails as a timeout.
    pub(super) fn new(world: SimWorld, timeout: std::time::Duration) -> Self {
        Self { world, timeout }
    }

    async fn call(
        &self,
        session: &SessionId,
        group: &GroupId,
        op: Op,
    ) -> Result<Link, BackendError> {
        let r = route("simulator", op);
        match self
            .world
            .call(&r, session.as_str(), group.as_str(), op)
            .await
        {
            Ok(link) => Ok(Link {
                code: InviteCode::parse(&link.code)?,
                expires_at: None,
            }),
            Err(SimError::Hang) => {
                tokio::time::sleep(self.timeout).await;
                Err(map_error(SimError::Hang))
            }
            Err(e) => Err(map_error(e)),
        }
    }
}

/// How the in-process kind reports the world's refusals (HTTP statuses as a real
/// provider would classify them).
pub(super) fn map_error(e: SimError) -> BackendError {
    match e {
        SimError::Fault {
            status,
            retry_after,
        } => {
            let kind = match status {
                401 => ErrorKind::Unauthorized,
                403 => ErrorKind::NotAdmin,
                404 => ErrorKind::GroupNotFound,
                429 => ErrorKind::RateLimited,
                400..=499 => ErrorKind::BackendProtocol,
                _ => ErrorKind::BackendUnavailable,
            };
            BackendError::new(kind, format!("simulated HTTP {status}"))
                .with_status(status)
                .with_retry_after(retry_after.map(std::time::Duration::from_secs))
        }
        SimError::Hang => BackendError::new(ErrorKind::BackendUnavailable, "simulated timeout"),
        SimError::SessionNotFound => {
            BackendError::new(ErrorKind::SessionNotFound, "session not found")
        }
        SimError::SessionDisconnected => {
            BackendError::new(ErrorKind::SessionDisconnected, "session is not connected")
        }
        SimError::GroupNotFound => BackendError::new(ErrorKind::GroupNotFound, "group not found"),
        SimError::NotAdmin => {
            BackendError::new(ErrorKind::NotAdmin, "session is not a group admin")
        }
    }
}

#[async_trait]
impl Backend for SimulatorBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Simulator
    }

    async fn current_link(
        &self,
        session: &SessionId,
        group: &GroupId,
    ) -> Result<Link, BackendError> {
        self.call(session, group, Op::Read).await
    }

    async fn reset_link(&self, session: &SessionId, group: &GroupId) -> Result<Link, BackendError> {
        self.call(session, group, Op::Reset).await
    }
}
