//! The worker against every provider kind, each pointed at the `invite-worker simulate`
//! binary: a revoke through each adapter yields a correct `invite_link.rotated` event.

use std::time::Duration;

use crate::support::{Db, SimulatorProcess, TestEnv, revoke};
use invite_worker::{
    config::{BackendSettings, HttpProvider, Provider, Secret},
    domain::{BackendKind, CommandSpec},
};

const TOKEN: &str = "sim-token-5e3a9";

fn backend(kind: BackendKind, base: &str) -> BackendSettings {
    let http = HttpProvider::new(
        Some(format!("{base}/{}", kind.as_str())),
        Some(Secret::new(TOKEN)),
    );
    BackendSettings {
        timeout: Duration::from_secs(5),
        ..BackendSettings::of(Provider::http_kind(kind, http).expect("an HTTP kind"))
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
