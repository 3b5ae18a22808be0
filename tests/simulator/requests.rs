//! The request log (`GET /_control/requests`, [`SimWorld::requests`]), the busiest window
//! of a session, and jittered latency (`POST /_control/latency` with `max_ms`). Exact
//! instants come from the world on a paused clock; over HTTP, order and content.

use std::time::Duration;

use invite_worker::simulator::{Op as WorldOp, SimWorld};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::support::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fields(r: &Value) -> (&str, &str, &str, &str) {
    let text = |k: &str| r[k].as_str().unwrap_or_else(|| panic!("{k} in {r}"));
    (text("route"), text("op"), text("session"), text("group"))
}

#[tokio::test]
async fn the_log_lists_every_request_oldest_first_with_route_op_session_and_group() {
    let sim = Sim::start(Some(TOKEN)).await;
    let group = Provider::Waha.group(20);
    sim.code(Provider::Waha, Op::Read, &group).await;
    sim.code(Provider::Waha, Op::Reset, &group).await;
    sim.code(Provider::Meta, Op::Reset, "grp_20").await;
    // Refused by an injected fault, it still reached the provider: it is logged.
    sim.fault(json!({ "route": "gateway.reset", "status": 429 }))
        .await;
    let request = Provider::Gateway.request(&sim, Op::Reset, "sales", &group, Some(TOKEN));
    assert_eq!(sim.send(request).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Refused for its token, it never reached the world: not logged.
    let request = Provider::Waha.request(&sim, Op::Reset, "sales", &group, Some("wrong"));
    assert_eq!(sim.send(request).await.0, StatusCode::UNAUTHORIZED);

    let log = sim.requests(None).await;
    let seen: Vec<_> = log.iter().map(fields).collect();
    assert_eq!(
        seen,
        [
            ("waha.read", "read", "sales", group.as_str()),
            ("waha.reset", "reset", "sales", group.as_str()),
            ("meta_cloud.reset", "reset", "meta", "grp_20"),
            ("gateway.reset", "reset", "sales", group.as_str()),
        ]
    );
    let at: Vec<f64> = log
        .iter()
        .map(|r| r["at_ms"].as_f64().expect("at_ms"))
        .collect();
    assert!(
        at[0] >= 0.0 && at.windows(2).all(|w| w[0] <= w[1]),
        "{at:?}"
    );
}

#[tokio::test]
async fn the_session_filter_keeps_one_sessions_requests_and_a_stats_reset_clears_the_log() {
    let sim = Sim::start(Some(TOKEN)).await;
    sim.code(Provider::Waha, Op::Reset, &Provider::Waha.group(21))
        .await;
    sim.code(Provider::Meta, Op::Reset, "grp_21").await;
    sim.code(
        Provider::Evolution,
        Op::Read,
        &Provider::Evolution.group(22),
    )
    .await;

    let sales: Vec<_> = sim.requests(Some("sales")).await;
    let routes: Vec<_> = sales.iter().map(|r| fields(r).0).collect();
    assert_eq!(routes, ["waha.reset", "evolution.read"]);
    let meta = sim.requests(Some("meta")).await;
    assert_eq!(meta.len(), 1);
    assert_eq!(
        fields(&meta[0]),
        ("meta_cloud.reset", "reset", "meta", "grp_21")
    );
    assert!(sim.requests(Some("nobody")).await.is_empty());

    sim.control(Method::POST, "stats/reset", json!({})).await;
    assert!(sim.requests(None).await.is_empty());
    sim.code(Provider::Waha, Op::Read, &Provider::Waha.group(21))
        .await;
    assert_eq!(
        sim.requests(None).await.len(),
        1,
        "logging goes on after a reset"
    );
}

/// Requests of session `s` at 0, 100, 999, 1000, 1500, 1999 and 2998 ms, with one of
/// session `t` among them: the busiest windows are counted exactly.
#[tokio::test(start_paused = true)]
async fn the_busiest_window_counts_a_constructed_sequence_exactly() {
    let world = SimWorld::new(true);
    let mut last = ms(0);
    for at in [0, 100, 999, 1000, 1500, 1999, 2998] {
        tokio::time::advance(ms(at) - last).await;
        last = ms(at);
        world
            .call("waha.reset", "s", "1@g.us", WorldOp::Reset)
            .await
            .expect("reset");
        if at == 1000 {
            world
                .call("waha.read", "t", "2@g.us", WorldOp::Read)
                .await
                .expect("read");
        }
    }

    let at: Vec<Duration> = world
        .requests()
        .iter()
        .filter(|r| r.session == "s")
        .map(|r| r.at)
        .collect();
    assert_eq!(at, [0, 100, 999, 1000, 1500, 1999, 2998].map(ms));
    // [0, 1 s) holds 0, 100, 999 and [1000, 2000) holds 1000, 1500, 1999: three, and no
    // window of 1 s holds four; one of 1.001 s does ([999, 2000)).
    assert_eq!(world.busiest_window("s", ms(1000)), 3);
    assert_eq!(world.busiest_window("s", ms(1001)), 4);
    assert_eq!(world.busiest_window("s", ms(500)), 2);
    assert_eq!(world.busiest_window("s", ms(1)), 1);
    assert_eq!(
        world.busiest_window("s", ms(2998)),
        6,
        "the last one falls just out"
    );
    assert_eq!(world.busiest_window("s", ms(2999)), 7);
    assert_eq!(world.busiest_window("t", Duration::from_secs(60)), 1);
    assert_eq!(world.busiest_window("nobody", ms(1000)), 0);
    // Simultaneous arrivals all fall in one window.
    for _ in 0..5 {
        world
            .call("waha.reset", "u", "3@g.us", WorldOp::Reset)
            .await
            .expect("reset");
    }
    assert_eq!(world.busiest_window("u", ms(1)), 5);

    world.reset_stats();
    assert!(world.requests().is_empty());
    assert_eq!(world.busiest_window("s", ms(1000)), 0);
}

/// Each request waits a latency drawn from `[20, 50]` ms, measured on the paused clock
/// from its recorded arrival to its answer; a fixed latency stays exact.
#[tokio::test(start_paused = true)]
async fn a_jittered_latency_stays_within_its_bounds() {
    // The clock stands still, so the world starts at `origin`.
    let origin = Instant::now();
    let world = SimWorld::new(true);
    world.set_latency_between(ms(20), ms(50));
    let mut waits = Vec::new();
    for i in 0..200 {
        let group = format!("{i}@g.us");
        world
            .call("waha.reset", "s", &group, WorldOp::Reset)
            .await
            .expect("reset");
        let answered = Instant::now();
        let arrived = origin + world.requests().last().expect("logged").at;
        waits.push(answered - arrived);
    }
    assert!(
        waits.iter().all(|w| (ms(20)..=ms(50)).contains(w)),
        "{waits:?}"
    );
    let (least, most) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
    assert!(
        *least < ms(26) && *most > ms(44),
        "spread {least:?}..{most:?}"
    );

    world.set_latency(ms(30));
    let before = Instant::now();
    world
        .call("waha.read", "s", "1@g.us", WorldOp::Read)
        .await
        .expect("read");
    assert_eq!(before.elapsed(), ms(30));
}

/// Over HTTP: `{"ms", "max_ms"}` sets a range (every reply takes at least `ms`, and the
/// replies spread), the old `{"ms"}` a fixed latency, and an inverted range is refused.
#[tokio::test]
async fn the_control_api_sets_a_latency_range_or_a_fixed_latency() {
    let sim = Sim::start(Some(TOKEN)).await;
    let inverted = sim
        .client
        .post(format!("{}/_control/latency", sim.base))
        .json(&json!({ "ms": 50, "max_ms": 20 }))
        .send()
        .await
        .expect("latency");
    assert_eq!(inverted.status(), StatusCode::BAD_REQUEST);

    sim.control(Method::POST, "latency", json!({ "ms": 20, "max_ms": 50 }))
        .await;
    let group = Provider::Waha.group(23);
    let mut replies = Vec::new();
    for _ in 0..30 {
        let sent = std::time::Instant::now();
        sim.code(Provider::Waha, Op::Read, &group).await;
        replies.push(sent.elapsed());
    }
    assert!(replies.iter().all(|r| *r >= ms(20)), "{replies:?}");
    let (least, most) = (replies.iter().min().unwrap(), replies.iter().max().unwrap());
    // 30 draws from [20, 50] ms all within 5 ms of each other: odds below 1e-20.
    assert!(*most - *least > ms(5), "no spread: {replies:?}");

    sim.control(Method::POST, "latency", json!({ "ms": 60 }))
        .await;
    let sent = std::time::Instant::now();
    sim.code(Provider::Waha, Op::Read, &group).await;
    assert!(sent.elapsed() >= ms(60));
}
