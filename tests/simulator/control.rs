//! The control API: statistics, concurrency, external resets, registered groups.

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn stats_count_requests_per_route_until_reset() {
    let sim = Sim::start(Some(TOKEN)).await;
    let group = Provider::Waha.group(12);
    sim.code(Provider::Waha, Op::Read, &group).await;
    sim.code(Provider::Waha, Op::Read, &group).await;
    sim.code(Provider::Waha, Op::Reset, &group).await;
    sim.code(Provider::Meta, Op::Reset, "grp_12").await;
    sim.code(Provider::WasendCode, Op::Read, &group).await;

    let stats = sim.stats().await;
    assert_eq!(stats["routes"]["waha.read"], 2);
    assert_eq!(stats["routes"]["waha.reset"], 1);
    assert_eq!(stats["routes"]["meta_cloud.reset"], 1);
    assert_eq!(stats["routes"]["wasend.read"], 1);
    assert_eq!(stats["resets"][format!("sales|{group}")], 1);
    assert_eq!(stats["resets"]["meta|grp_12"], 1);
    assert!(stats["max_requests_per_second"]["sales"].as_u64() >= Some(4));

    sim.control(Method::POST, "stats/reset", json!({})).await;
    let stats = sim.stats().await;
    assert_eq!(stats["routes"], json!({}));
    assert_eq!(stats["resets"][format!("sales|{group}")], 0);
}

#[tokio::test]
async fn max_concurrency_is_recorded_per_group_under_latency() {
    let sim = Sim::start(Some(TOKEN)).await;
    sim.control(Method::POST, "latency", json!({ "ms": 300 }))
        .await;
    let (busy, quiet) = (Provider::Gateway.group(13), Provider::Gateway.group(14));
    let mut calls: Vec<_> = (0..4)
        .map(|_| sim.code(Provider::Gateway, Op::Read, &busy))
        .collect();
    calls.push(sim.code(Provider::Gateway, Op::Read, &quiet));
    join_all(calls).await;

    let stats = sim.stats().await;
    assert_eq!(stats["max_concurrency"][format!("sales|{busy}")], 4);
    assert_eq!(stats["max_concurrency"][format!("sales|{quiet}")], 1);
    assert_eq!(stats["max_group_concurrency"], 4);
}

#[tokio::test]
async fn an_external_reset_is_visible_in_the_next_read_of_every_provider() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL.into_iter().filter(|p| p.can_read()) {
        let group = provider.group(15);
        let before = sim.code(provider, Op::Read, &group).await;
        let changed: Value = sim
            .control(
                Method::POST,
                "groups/external_reset",
                json!({ "session": provider.session(), "group": group }),
            )
            .await
            .json()
            .await
            .expect("external reset json");
        let code = changed["code"].as_str().expect("code");
        assert_ne!(code, before, "{provider:?}");
        assert_eq!(sim.code(provider, Op::Read, &group).await, code);
    }
}

#[tokio::test]
async fn a_registered_group_keeps_the_code_it_was_given() {
    let sim = Sim::strict().await;
    sim.control(
        Method::POST,
        "groups",
        json!({ "session": "sales", "group": "1@g.us", "code": "AbCdEfGhIjKlMnOpQrStUv" }),
    )
    .await;
    assert_eq!(
        sim.code(Provider::Waha, Op::Read, "1@g.us").await,
        "AbCdEfGhIjKlMnOpQrStUv"
    );
    let missing = sim
        .client
        .get(format!(
            "{}/_control/groups/link?session=sales&group=2%40g.us",
            sim.base
        ))
        .send()
        .await
        .expect("peek");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
