//! `gateway`: Bearer auth, GET to read and DELETE to reset, `{"invite": …}` bodies and
//! `{"error": {"code", "message"}}` refusals.

use invite_worker::domain::{BackendKind, ErrorKind};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockBuilder, ResponseTemplate,
    matchers::{header, method, path},
};

use crate::support::*;

const KIND: BackendKind = BackendKind::Gateway;

fn gateway(verb: &str) -> MockBuilder {
    Mock::given(method(verb))
        .and(path(format!(
            "/api/v1/sessions/{SESSION}/groups/{GROUP_IN_PATH}/invite"
        )))
        .and(header("Authorization", format!("Bearer {TOKEN}").as_str()))
}

fn error(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "details": {}}})
}

#[tokio::test]
async fn gateway_reads_the_invite_with_bearer_auth_and_an_encoded_jid() {
    let (server, backend) = serve(KIND).await;
    gateway("GET")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"invite": link(CODE)})))
        .expect(1)
        .mount(&server)
        .await;
    assert_link(read(&backend).await, CODE);
}

#[tokio::test]
async fn gateway_resets_the_invite_with_delete() {
    let (server, backend) = serve(KIND).await;
    gateway("DELETE")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"invite": link(NEW_CODE)})))
        .expect(1)
        .mount(&server)
        .await;
    assert_link(reset(&backend).await, NEW_CODE);
}

#[tokio::test]
async fn gateway_maps_not_found_to_session_or_group_by_its_message() {
    let e = json_refusal(KIND, 404, error("not_found", "session not found")).await;
    assert_error(&e, ErrorKind::SessionNotFound, PERMANENT, Some(404));
    let e = json_refusal(KIND, 404, error("not_found", "group not found")).await;
    assert_error(&e, ErrorKind::GroupNotFound, PERMANENT, Some(404));
}

#[tokio::test]
async fn gateway_maps_forbidden_to_not_admin() {
    let e = json_refusal(KIND, 403, error("forbidden", "not a group admin")).await;
    assert_error(&e, ErrorKind::NotAdmin, PERMANENT, Some(403));
}

#[tokio::test]
async fn gateway_maps_not_implemented_to_a_transient_session_disconnected() {
    let e = json_refusal(
        KIND,
        501,
        error("not_implemented", "session is not connected"),
    )
    .await;
    assert_error(&e, ErrorKind::SessionDisconnected, TRANSIENT, Some(501));
}

#[tokio::test]
async fn gateway_maps_validation_error_to_backend_protocol() {
    let e = json_refusal(KIND, 400, error("validation_error", "gid must be a JID")).await;
    assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(400));
}

#[tokio::test]
async fn gateway_maps_401_to_unauthorized() {
    let e = json_refusal(KIND, 401, error("unauthorized", "invalid api key")).await;
    assert_error(&e, ErrorKind::Unauthorized, PERMANENT, Some(401));
}
