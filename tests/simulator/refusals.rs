//! Refusals, each in the provider's own shape and status.

use crate::support::*;

#[tokio::test]
async fn every_provider_answers_a_wrong_token_with_401_in_its_own_shape() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let group = provider.group(3);
        provider
            .refused(
                &sim,
                Refusal::WrongToken,
                provider.session(),
                &group,
                "wrong",
            )
            .await;
        let missing = provider.request(&sim, Op::Reset, provider.session(), &group, None);
        let (status, _, body) = sim.send(missing).await;
        provider.assert_refused(Refusal::WrongToken, status, &body);
    }
    let routes = &sim.stats().await["routes"];
    assert!(
        routes.as_object().is_none_or(|r| r.is_empty()),
        "unauthorized requests never reach the world: {routes}"
    );
}

#[tokio::test]
async fn every_provider_refuses_a_non_admin_session_in_its_own_shape() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let group = provider.group(4);
        sim.group(provider.session(), &group, false).await;
        provider
            .refused(&sim, Refusal::NotAdmin, provider.session(), &group, TOKEN)
            .await;
    }
}

#[tokio::test]
async fn every_provider_reports_an_unknown_session_in_its_own_shape() {
    for provider in Provider::ALL {
        let sim = Sim::strict().await;
        // Meta paths carry no session: its groups live in the fixed session "meta",
        // which a strict world does not know yet.
        let session = match provider {
            Provider::Meta => "meta",
            _ => "ghost",
        };
        provider
            .refused(
                &sim,
                Refusal::UnknownSession,
                session,
                &provider.group(5),
                TOKEN,
            )
            .await;
    }
}

#[tokio::test]
async fn every_provider_reports_a_disconnected_session_in_its_own_shape() {
    for provider in Provider::ALL {
        let sim = Sim::strict().await;
        let group = provider.group(6);
        sim.session(provider.session(), false).await;
        sim.group(provider.session(), &group, true).await;
        provider
            .refused(
                &sim,
                Refusal::Disconnected,
                provider.session(),
                &group,
                TOKEN,
            )
            .await;
    }
}

#[tokio::test]
async fn every_provider_reports_an_unknown_group_in_its_own_shape() {
    let sim = Sim::strict().await;
    for provider in Provider::ALL {
        sim.session(provider.session(), true).await;
        provider
            .refused(
                &sim,
                Refusal::UnknownGroup,
                provider.session(),
                &provider.group(7),
                TOKEN,
            )
            .await;
    }
}
