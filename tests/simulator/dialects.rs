//! Every provider's success shapes: resets and reads, request bodies, ids, no auth.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn every_provider_resets_to_a_new_code_and_reads_the_current_one() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let group = provider.group(1);
        let session = provider.session();
        let before = match provider.can_read() {
            true => sim.code(provider, Op::Read, &group).await,
            false => sim.code_of_fresh_group(provider, &group).await,
        };
        assert_eq!(before, sim.peek(session, &group).await, "{provider:?}");

        let after = sim.code(provider, Op::Reset, &group).await;
        assert_ne!(after, before, "{provider:?}");
        assert_eq!(after, sim.peek(session, &group).await, "{provider:?}");
        if provider.can_read() {
            assert_eq!(sim.code(provider, Op::Read, &group).await, after);
        }
    }
}

#[tokio::test]
async fn meta_cloud_requires_messaging_product_and_deletes_without_returning_a_link() {
    let sim = Sim::start(Some(TOKEN)).await;
    let url = format!("{}/meta_cloud/v23.0/grp_9/invite_link", sim.base);

    let (status, _, body) = sim.send(sim.client.post(&url).bearer_auth(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["type"], "OAuthException");

    let first = sim.code(Provider::Meta, Op::Reset, "grp_9").await;
    let (status, _, body) = sim.send(sim.client.delete(&url).bearer_auth(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "messaging_product": "whatsapp", "success": true })
    );
    assert_ne!(sim.peek("meta", "grp_9").await, first);
    assert_eq!(sim.stats().await["routes"]["meta_cloud.delete"], 1);
}

#[tokio::test]
async fn gateway_rejects_a_group_id_that_is_not_a_jid() {
    let sim = Sim::start(Some(TOKEN)).await;
    let request = Provider::Gateway.request(&sim, Op::Read, "sales", "not-a-jid", Some(TOKEN));
    let (status, _, body) = sim.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "validation_error");
}

#[tokio::test]
async fn without_a_token_no_provider_asks_for_credentials() {
    let sim = Sim::start(None).await;
    for provider in Provider::ALL {
        let group = provider.group(2);
        let request = provider.request(&sim, Op::Reset, provider.session(), &group, None);
        let (status, _, body) = sim.send(request).await;
        assert_eq!(status, StatusCode::OK, "{provider:?}: {body}");
        provider.code_in(Op::Reset, &body);
    }
}
