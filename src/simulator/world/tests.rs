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

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn the_busiest_window_is_half_open_and_may_start_at_any_arrival() {
    let arrivals = [
        ms(0),
        ms(100),
        ms(999),
        ms(1000),
        ms(1500),
        ms(1999),
        ms(2998),
    ];
    // [0, 1000) holds 0, 100, 999; [999, 1999) holds 999, 1000, 1500; [1000, 2000)
    // holds 1000, 1500, 1999; nothing holds four.
    assert_eq!(busiest_window(&arrivals, ms(1000)), 3);
    // [999, 2000) holds four: 999, 1000, 1500, 1999.
    assert_eq!(busiest_window(&arrivals, ms(1001)), 4);
    assert_eq!(busiest_window(&arrivals, ms(1)), 1);
    assert_eq!(busiest_window(&arrivals, Duration::ZERO), 0);
    assert_eq!(busiest_window(&arrivals, Duration::MAX), arrivals.len());
    assert_eq!(busiest_window(&[], ms(1000)), 0);
    // Order does not matter; simultaneous arrivals all count.
    assert_eq!(busiest_window(&[ms(5), ms(0), ms(5), ms(5)], ms(1)), 3);
}

#[test]
fn a_latency_range_stays_within_its_bounds_and_a_fixed_one_is_exact() {
    let range = Latency {
        min: ms(20),
        max: ms(50),
    };
    let samples: Vec<Duration> = (0..2000).map(|_| range.sample()).collect();
    assert!(samples.iter().all(|d| (ms(20)..=ms(50)).contains(d)));
    // Spread over the range, not stuck at an end.
    assert!(samples.iter().any(|d| *d < ms(25)) && samples.iter().any(|d| *d > ms(45)));
    let fixed = Latency {
        min: ms(30),
        max: ms(30),
    };
    assert_eq!(fixed.sample(), ms(30));
}

#[tokio::test(start_paused = true)]
async fn the_log_records_each_arrival_with_its_op_session_and_group() {
    let w = SimWorld::new(true);
    w.call("waha.read", "s", "1@g.us", Op::Read).await.unwrap();
    tokio::time::advance(ms(250)).await;
    w.call("waha.reset", "t", "2@g.us", Op::Reset)
        .await
        .unwrap();
    w.add_fault(FaultSpec {
        route: "*".into(),
        count: 1,
        status: 429,
        retry_after: None,
        hang: false,
    });
    tokio::time::advance(ms(250)).await;
    // Refused requests are logged too: they reached the provider.
    assert!(
        w.call("waha.reset", "s", "1@g.us", Op::Reset)
            .await
            .is_err()
    );
    let log = w.requests();
    let seen: Vec<_> = log
        .iter()
        .map(|r| {
            (
                r.route.as_str(),
                r.op,
                r.session.as_str(),
                r.group.as_str(),
                r.at,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("waha.read", Op::Read, "s", "1@g.us", ms(0)),
            ("waha.reset", Op::Reset, "t", "2@g.us", ms(250)),
            ("waha.reset", Op::Reset, "s", "1@g.us", ms(500)),
        ]
    );
    assert_eq!(w.busiest_window("s", ms(500)), 1);
    assert_eq!(w.busiest_window("s", ms(501)), 2);
    assert_eq!(w.busiest_window("nobody", ms(501)), 0);
    w.reset_stats();
    assert!(w.requests().is_empty());
}
