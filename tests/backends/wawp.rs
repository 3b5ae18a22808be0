//! `wawp`: `/v2` paths with `instance_id` and `access_token` in the query, WAHA's errors,
//! and a query token that must never reach an error.

use invite_worker::domain::{BackendKind, ErrorKind};
use serde_json::json;
use wiremock::{
    Mock, MockBuilder, ResponseTemplate,
    matchers::{method, path, query_param},
};

use crate::support::*;

const KIND: BackendKind = BackendKind::Wawp;

fn wawp(verb: &str, tail: &str) -> MockBuilder {
    Mock::given(method(verb))
        .and(path(format!(
            "/v2/groups/{GROUP_IN_PATH}/invite-code{tail}"
        )))
        .and(query_param("instance_id", SESSION))
        .and(query_param("access_token", TOKEN))
        .and(query_param("id", GROUP))
}

#[tokio::test]
async fn wawp_reads_the_code_with_query_auth() {
    let (server, backend) = serve(KIND).await;
    wawp("GET", "")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"code": CODE})))
        .expect(1)
        .mount(&server)
        .await;
    assert_link(read(&backend).await, CODE);
}

#[tokio::test]
async fn wawp_revokes_and_accepts_each_tolerated_body() {
    for body in [
        json!({"code": NEW_CODE}),
        json!({"inviteCode": NEW_CODE}),
        json!(NEW_CODE),
        json!(link(NEW_CODE)),
    ] {
        let (server, backend) = serve(KIND).await;
        wawp("POST", "/revoke")
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
        assert_link(reset(&backend).await, NEW_CODE);
    }
}

#[tokio::test]
async fn wawp_maps_errors_like_waha() {
    for (status, body, kind, transient) in [
        (
            422,
            json!({"error": "not working"}),
            ErrorKind::SessionDisconnected,
            TRANSIENT,
        ),
        (
            500,
            json!({"exception": {"message": "rate-overlimit"}}),
            ErrorKind::RateLimited,
            TRANSIENT,
        ),
        (
            500,
            json!({"exception": {"message": "not-authorized"}}),
            ErrorKind::NotAdmin,
            PERMANENT,
        ),
        (
            500,
            json!({"exception": {"message": "other"}}),
            ErrorKind::BackendUnavailable,
            TRANSIENT,
        ),
        (
            404,
            json!({"message": "Session not found"}),
            ErrorKind::SessionNotFound,
            PERMANENT,
        ),
        (
            401,
            json!({"message": "Unauthorized"}),
            ErrorKind::Unauthorized,
            PERMANENT,
        ),
    ] {
        let e = json_refusal(KIND, status, body).await;
        assert_error(&e, kind, transient, Some(status));
    }
}

#[tokio::test]
async fn wawp_keeps_the_query_token_out_of_errors_that_echo_the_url() {
    let (server, backend) = serve(KIND).await;
    let echo = format!(
        "Cannot POST /v2/groups/x/invite-code/revoke?access_token={TOKEN} \
         (access_token=tok-S3CR3T%2F9f%2B2c)"
    );
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"message": echo})))
        .mount(&server)
        .await;
    let e = reset(&backend).await.unwrap_err();
    assert_error(&e, ErrorKind::GroupNotFound, PERMANENT, Some(404));
    assert!(e.message.contains("[redacted]"), "{e}");
}

#[tokio::test]
async fn wawp_keeps_the_query_token_out_of_transport_errors() {
    let backend = build(&settings(KIND, &crate::common::closed_port_url()));
    let e = reset(&backend).await.unwrap_err();
    assert_error(&e, ErrorKind::BackendUnavailable, TRANSIENT, None);
    assert!(!e.message.contains("access_token"), "{e}");
}
