//! What the worker tests share: an isolated environment per test ([`env`]), taps on the
//! broker ([`events`]), the binary as a child process ([`process`]), a TCP proxy to cut a
//! service ([`proxy`]), and the commands they send.

mod env;
mod events;
mod process;
pub(crate) mod proxy;
mod teardown;

use std::time::Duration;

use invite_worker::domain::{CommandSpec, CommandType};

pub(crate) use env::{AMQP_URL, Db, PG_ADMIN_URL, RunningWorker, TestEnv};
pub(crate) use events::EventTap;
pub(crate) use process::{SimulatorProcess, WorkerProcess, free_port};

pub(crate) fn revoke(session: &str, group: &str) -> CommandSpec {
    CommandSpec {
        kind: CommandType::RevokeInvite,
        session: session.into(),
        group: group.into(),
        backend: None,
        reason: Some("test".into()),
        requested_by: Some("tests".into()),
        command_id: None,
    }
}

pub(crate) fn rotate(session: &str, group: &str) -> CommandSpec {
    CommandSpec {
        kind: CommandType::RotateExpiringLink,
        ..revoke(session, group)
    }
}

pub(crate) fn group(n: usize) -> String {
    format!("1203630412345{n:05}@g.us")
}

/// Polls `cond` until it holds, failing the test after `within`.
pub(crate) async fn wait_until<F, Fut>(within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
