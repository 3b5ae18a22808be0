//! Injected faults and hangs, and a shutdown with a hung request in flight.

use std::time::Duration;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn an_injected_fault_answers_its_status_and_retry_after_in_each_dialect() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let route = format!("{}.reset", provider.api());
        sim.fault(json!({ "route": route, "status": 429, "retry_after": 7 }))
            .await;
        let group = provider.group(8);
        let (_, retry_after) = provider
            .refused(&sim, Refusal::Throttled, provider.session(), &group, TOKEN)
            .await;
        assert_eq!(retry_after.as_deref(), Some("7"), "{provider:?}");
        // The fault was for one request only.
        sim.code(provider, Op::Reset, &group).await;
    }
}

#[tokio::test]
async fn a_fault_without_retry_after_sends_no_header_and_clearing_faults_stops_them() {
    let sim = Sim::start(Some(TOKEN)).await;
    sim.fault(json!({ "route": "waha", "status": 503, "count": 5 }))
        .await;
    let group = Provider::Waha.group(9);
    let request = Provider::Waha.request(&sim, Op::Read, "sales", &group, Some(TOKEN));
    let (status, retry_after, body) = sim.send(request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after, None);
    assert_eq!(body["statusCode"], 503);

    sim.control(Method::DELETE, "faults", json!({})).await;
    sim.code(Provider::Waha, Op::Read, &group).await;
}

#[tokio::test]
async fn an_injected_hang_times_out_a_client_with_a_300ms_timeout() {
    let sim = Sim::start(Some(TOKEN)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let hangs = Provider::ALL.map(|provider| {
        let sim = &sim;
        let impatient = impatient.clone();
        async move {
            if provider == Provider::WasendCode {
                // wasend's two families share one route; Wasend's own case covers it.
                return;
            }
            let group = provider.group(10);
            sim.fault(json!({ "route": format!("{}.reset", provider.api()), "hang": true }))
                .await;
            let request = provider
                .request(sim, Op::Reset, provider.session(), &group, Some(TOKEN))
                .build()
                .expect("request");
            let error = impatient
                .execute(request)
                .await
                .expect_err("a hung request is never answered");
            assert!(error.is_timeout(), "{provider:?}: {error}");
        }
    });
    join_all(hangs).await;
}

#[tokio::test]
async fn shutdown_ends_even_with_a_hung_request_in_flight() {
    let mut sim = Sim::start(Some(TOKEN)).await;
    sim.fault(json!({ "route": "gateway.read", "hang": true }))
        .await;
    let hung = Provider::Gateway.request(
        &sim,
        Op::Read,
        "sales",
        &Provider::Gateway.group(11),
        Some(TOKEN),
    );
    let hung = tokio::spawn(hung.send());
    tokio::time::sleep(Duration::from_millis(100)).await;

    sim.stop
        .take()
        .expect("running")
        .send(())
        .expect("server alive");
    let served = tokio::time::timeout(Duration::from_secs(5), &mut sim.server)
        .await
        .expect("server stops within 5s")
        .expect("server task");
    assert!(served.is_ok());
    let answer = hung
        .await
        .expect("client task")
        .expect("answered at shutdown");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
}
