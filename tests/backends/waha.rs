//! `waha`: `X-Api-Key` auth, bare-string bodies, 422 and WhatsApp's 500 refusals.

use invite_worker::domain::{BackendKind, ErrorKind, SessionId};
use serde_json::json;
use wiremock::{
    Mock, MockBuilder, ResponseTemplate,
    matchers::{header, method, path},
};

use crate::support::*;

const KIND: BackendKind = BackendKind::Waha;

fn waha(verb: &str, tail: &str) -> MockBuilder {
    Mock::given(method(verb))
        .and(path(format!(
            "/api/{SESSION}/groups/{GROUP_IN_PATH}/invite-code{tail}"
        )))
        .and(header("X-Api-Key", TOKEN))
}

#[tokio::test]
async fn waha_reads_a_bare_code_with_the_api_key_header() {
    let (server, backend) = serve(KIND).await;
    waha("GET", "")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(CODE)))
        .expect(1)
        .mount(&server)
        .await;
    let link = assert_link(read(&backend).await, CODE);
    assert_eq!(link.expires_at, None);
}

#[tokio::test]
async fn waha_revokes_with_a_post_and_accepts_a_full_link() {
    let (server, backend) = serve(KIND).await;
    waha("POST", "/revoke")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(link(NEW_CODE))))
        .expect(1)
        .mount(&server)
        .await;
    assert_link(reset(&backend).await, NEW_CODE);
}

#[tokio::test]
async fn waha_tolerates_an_object_around_the_code() {
    for body in [
        json!({"code": NEW_CODE}),
        json!({"inviteCode": link(NEW_CODE)}),
    ] {
        let (server, backend) = serve(KIND).await;
        waha("POST", "/revoke")
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .mount(&server)
            .await;
        assert_link(reset(&backend).await, NEW_CODE);
    }
}

#[tokio::test]
async fn waha_percent_encodes_the_session_in_the_path() {
    let (server, backend) = serve(KIND).await;
    Mock::given(method("GET"))
        .and(path(format!(
            "/api/team%3A1%40host%2Bx/groups/{GROUP_IN_PATH}/invite-code"
        )))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(CODE)))
        .expect(1)
        .mount(&server)
        .await;
    let session = SessionId::parse("team:1@host+x").unwrap();
    assert_link(backend.current_link(&session, &group()).await, CODE);
}

#[tokio::test]
async fn waha_maps_422_to_a_transient_session_disconnected() {
    let body = json!({"error": "Session status is not as expected", "status": "STOPPED"});
    let e = json_refusal(KIND, 422, body).await;
    assert_error(&e, ErrorKind::SessionDisconnected, TRANSIENT, Some(422));
}

#[tokio::test]
async fn waha_maps_rate_overlimit_to_rate_limited() {
    let e = json_refusal(
        KIND,
        500,
        json!({"exception": {"message": "rate-overlimit"}}),
    )
    .await;
    assert_error(&e, ErrorKind::RateLimited, TRANSIENT, Some(500));
}

#[tokio::test]
async fn waha_maps_not_authorized_to_not_admin() {
    let e = json_refusal(
        KIND,
        500,
        json!({"exception": {"message": "not-authorized"}}),
    )
    .await;
    assert_error(&e, ErrorKind::NotAdmin, PERMANENT, Some(500));
}

#[tokio::test]
async fn waha_maps_item_not_found_to_group_not_found() {
    let e = json_refusal(
        KIND,
        500,
        json!({"exception": {"message": "item-not-found"}}),
    )
    .await;
    assert_error(&e, ErrorKind::GroupNotFound, PERMANENT, Some(500));
}

#[tokio::test]
async fn waha_maps_other_500s_to_backend_unavailable() {
    let e = json_refusal(KIND, 500, json!({"exception": {"message": "boom"}})).await;
    assert_error(&e, ErrorKind::BackendUnavailable, TRANSIENT, Some(500));
    assert!(e.message.contains("boom"), "{e}");
}

#[tokio::test]
async fn waha_maps_404_to_session_or_group_by_its_message() {
    let body = json!({"message": "Session \"sales-team\" does not exist", "statusCode": 404});
    let e = json_refusal(KIND, 404, body).await;
    assert_error(&e, ErrorKind::SessionNotFound, PERMANENT, Some(404));
    let e = json_refusal(KIND, 404, json!({"message": "Group not found"})).await;
    assert_error(&e, ErrorKind::GroupNotFound, PERMANENT, Some(404));
}

#[tokio::test]
async fn waha_maps_401_to_unauthorized() {
    let body = json!({"message": "Unauthorized", "statusCode": 401});
    let e = json_refusal(KIND, 401, body).await;
    assert_error(&e, ErrorKind::Unauthorized, PERMANENT, Some(401));
}
