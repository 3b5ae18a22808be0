//! The worker against every provider kind, each pointed at the `invite-worker simulate`
//! binary: a revoke through each adapter yields a correct `invite_link.rotated` event.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    time::Duration,
};

use invite_worker::{
    backend::BackendKind,
    config::{BackendSettings, Secret},
    send::CommandSpec,
};
use serde_json::Value;

use crate::helpers::{Db, TestEnv, revoke};

const TOKEN: &str = "sim-token-5e3a9";

/// A running `invite-worker simulate` child process, killed on drop.
pub struct SimulatorProcess {
    child: Child,
    pub base: String,
}

impl SimulatorProcess {
    pub fn spawn(token: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_invite-worker"))
            .args(["simulate", "--listen", "127.0.0.1:0", "--token", token])
            .env("INVITE_WORKER__LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn simulate");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listen line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening on ADDR")
            .to_owned();
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }

    pub async fn link(&self, session: &str, group: &str) -> Value {
        reqwest::Client::new()
            .get(format!(
                "{}/_control/groups/link?session={}&group={}",
                self.base,
                percent_encoding::utf8_percent_encode(session, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(group, percent_encoding::NON_ALPHANUMERIC)
            ))
            .send()
            .await
            .expect("control request")
            .json()
            .await
            .expect("control json")
    }
}

impl Drop for SimulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn backend(kind: BackendKind, base: &str) -> BackendSettings {
    BackendSettings {
        base_url: Some(format!("{base}/{}", kind.as_str())),
        token: Some(Secret::new(TOKEN)),
        timeout: Duration::from_secs(5),
        ..BackendSettings::simulator()
    }
    .with_kind(kind)
}

trait WithKind {
    fn with_kind(self, kind: BackendKind) -> Self;
}

impl WithKind for BackendSettings {
    fn with_kind(mut self, kind: BackendKind) -> Self {
        self.kind = kind;
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_provider_kind_rotates_through_the_simulator() {
    let sim = SimulatorProcess::spawn(TOKEN);
    let env = TestEnv::new(Db::Sqlite).await;
    let mut settings = env.settings.clone();
    let kinds = [
        BackendKind::Wasend,
        BackendKind::Wawp,
        BackendKind::Gateway,
        BackendKind::MetaCloud,
        BackendKind::Waha,
        BackendKind::Evolution,
    ];
    for kind in kinds {
        settings
            .backends
            .insert(kind.as_str().into(), backend(kind, &sim.base));
    }
    settings.validate().expect("valid settings");
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

    for kind in kinds {
        let (session, group, world_session) = match kind {
            BackendKind::MetaCloud => ("106540352242922", "meta_group_1", "meta"),
            _ => ("sales", "120363041234567890@g.us", "sales"),
        };
        let spec = CommandSpec {
            backend: Some(kind.as_str().into()),
            ..revoke(session, group)
        };
        let id = env.send(&[spec]).await[0];
        let seen = events.until_command(id, Duration::from_secs(30)).await;
        let (_, ev) = seen.last().expect("event");
        assert_eq!(ev["event_type"], "invite_link.rotated", "{kind}: {ev:#}");
        assert_eq!(ev["backend"], kind.as_str());
        let current = sim.link(world_session, group).await;
        assert_eq!(
            ev["invite_code"], current["code"],
            "{kind}: event carries the simulator's current code"
        );
        let expected_source = if kind == BackendKind::Wasend {
            "backend"
        } else {
            "policy"
        };
        assert_eq!(ev["expires_at_source"], expected_source, "{kind}");
        if kind.can_read() {
            assert!(
                ev["previous_invite_code"].is_string(),
                "{kind}: read before reset"
            );
        } else {
            assert!(ev["previous_invite_code"].is_null(), "{kind}: cannot read");
        }
    }
    worker.stop().await;
}
