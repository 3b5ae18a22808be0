//! The world on its own: route patterns, resets and counted faults, and the refusals
//! it gives without auto-creation.

use super::*;

#[test]
fn route_patterns_match() {
    assert!(route_matches("*", "waha.reset"));
    assert!(route_matches("waha", "waha.reset"));
    assert!(route_matches("*.reset", "waha.reset"));
    assert!(route_matches("waha.reset", "waha.reset"));
    assert!(!route_matches("waha.read", "waha.reset"));
    assert!(!route_matches("wawp", "waha.reset"));
}

#[tokio::test]
async fn reset_changes_code_and_faults_count_down() {
    let w = SimWorld::new(true);
    let a = w
        .call("simulator.read", "s", "1@g.us", Op::Read)
        .await
        .unwrap();
    let b = w
        .call("simulator.reset", "s", "1@g.us", Op::Reset)
        .await
        .unwrap();
    assert_ne!(a.code, b.code);
    w.add_fault(FaultSpec {
        route: "*.reset".into(),
        count: 2,
        status: 503,
        retry_after: Some(2),
        hang: false,
    });
    for _ in 0..2 {
        let e = w
            .call("simulator.reset", "s", "1@g.us", Op::Reset)
            .await
            .unwrap_err();
        assert_eq!(
            e,
            SimError::Fault {
                status: 503,
                retry_after: Some(2)
            }
        );
    }
    assert!(
        w.call("simulator.reset", "s", "1@g.us", Op::Reset)
            .await
            .is_ok()
    );
    let stats = w.stats();
    assert_eq!(stats.routes["simulator.reset"], 4);
    assert_eq!(stats.resets["s|1@g.us"], 2);
}

#[tokio::test]
async fn known_refusals_without_auto_create() {
    let w = SimWorld::new(false);
    assert_eq!(
        w.call("x.read", "s", "g", Op::Read).await,
        Err(SimError::SessionNotFound)
    );
    w.upsert_session(SessionSpec {
        id: "s".into(),
        connected: false,
    });
    assert_eq!(
        w.call("x.read", "s", "g", Op::Read).await,
        Err(SimError::SessionDisconnected)
    );
    w.upsert_session(SessionSpec {
        id: "s".into(),
        connected: true,
    });
    assert_eq!(
        w.call("x.read", "s", "g", Op::Read).await,
        Err(SimError::GroupNotFound)
    );
    w.upsert_group(GroupSpec {
        session: "s".into(),
        group: "g".into(),
        admin: false,
        code: None,
    });
    assert_eq!(
        w.call("x.read", "s", "g", Op::Read).await,
        Err(SimError::NotAdmin)
    );
}
