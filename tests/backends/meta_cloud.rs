//! `meta_cloud`: reset only, by POST with a JSON body under a versioned path; Graph API
//! error codes decide the kind.

use invite_worker::{
    config::Provider,
    domain::{BackendKind, ErrorKind},
};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockBuilder, ResponseTemplate,
    matchers::{any, body_json, header, method, path},
};

use crate::support::*;

const KIND: BackendKind = BackendKind::MetaCloud;

fn meta(version: &str) -> MockBuilder {
    Mock::given(method("POST"))
        .and(path(format!("/{version}/{META_GROUP}/invite_link")))
        .and(header("Authorization", format!("Bearer {TOKEN}").as_str()))
        .and(header("Content-Type", "application/json"))
        .and(body_json(json!({"messaging_product": "whatsapp"})))
}

fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> Value {
    json!({"error": {
        "message": message,
        "type": "OAuthException",
        "code": code,
        "error_subcode": subcode,
        "fbtrace_id": "AbC123"
    }})
}

#[tokio::test]
async fn meta_cloud_resets_with_the_documented_post_and_default_version() {
    let (server, backend) = serve(KIND).await;
    meta("v23.0")
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"messaging_product": "whatsapp", "invite_link": link(NEW_CODE)}),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let link = assert_link(reset(&backend).await, NEW_CODE);
    assert_eq!(link.expires_at, None);
}

#[tokio::test]
async fn meta_cloud_uses_the_configured_api_version() {
    let server = wiremock::MockServer::start().await;
    let mut settings = settings(KIND, &format!("{}/", server.uri()));
    if let Provider::MetaCloud { api_version, .. } = &mut settings.provider {
        *api_version = Some("v21.0".into());
    }
    meta("v21.0")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"invite_link": link(CODE)})))
        .expect(1)
        .mount(&server)
        .await;
    assert_link(reset(&build(&settings)).await, CODE);
}

#[tokio::test]
async fn meta_cloud_tolerates_the_docs_double_quoted_link() {
    let (server, backend) = serve(KIND).await;
    let body = format!(
        r#"{{"messaging_product": "\"whatsapp\"", "invite_link": "\"https:\\/\\/chat.whatsapp.com\\/{NEW_CODE}\""}}"#
    );
    meta("v23.0")
        .respond_with(ResponseTemplate::new(200).set_body_raw(body, "application/json"))
        .mount(&server)
        .await;
    assert_link(reset(&backend).await, NEW_CODE);
}

#[tokio::test]
async fn meta_cloud_needs_no_base_url() {
    let mut settings = settings(KIND, "unused");
    http(&mut settings).base_url = None;
    assert_eq!(build(&settings).kind(), KIND);
}

#[tokio::test]
async fn meta_cloud_cannot_read_and_says_so_without_a_request() {
    let (server, backend) = serve(KIND).await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    assert!(!backend.can_read());
    let e = read(&backend).await.unwrap_err();
    assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, None);
    assert!(e.message.contains("cannot read"), "{e}");
}

#[tokio::test]
async fn meta_cloud_maps_throttling_codes_to_rate_limited() {
    for (status, code) in [(400, 4), (429, 80007), (400, 130429)] {
        let e = json_refusal(KIND, status, graph_error(code, None, "throttled")).await;
        assert_error(&e, ErrorKind::RateLimited, TRANSIENT, Some(status));
    }
}

#[tokio::test]
async fn meta_cloud_maps_code_190_to_unauthorized() {
    let e = json_refusal(
        KIND,
        401,
        graph_error(190, Some(463), "Error validating access token"),
    )
    .await;
    assert_error(&e, ErrorKind::Unauthorized, PERMANENT, Some(401));
}

#[tokio::test]
async fn meta_cloud_maps_permission_codes_to_not_admin() {
    for code in [10, 200, 299] {
        let e = json_refusal(KIND, 403, graph_error(code, None, "Permission denied")).await;
        assert_error(&e, ErrorKind::NotAdmin, PERMANENT, Some(403));
    }
}

#[tokio::test]
async fn meta_cloud_maps_an_unknown_group_to_group_not_found() {
    let e = json_refusal(KIND, 404, graph_error(100, None, "Unknown path")).await;
    assert_error(&e, ErrorKind::GroupNotFound, PERMANENT, Some(404));
    let message = "Unsupported post request. Object with ID 'Grp_123-abc' does not exist";
    let e = json_refusal(KIND, 400, graph_error(100, Some(33), message)).await;
    assert_error(&e, ErrorKind::GroupNotFound, PERMANENT, Some(400));
}

#[tokio::test]
async fn meta_cloud_maps_other_graph_errors_by_status() {
    let e = json_refusal(KIND, 400, graph_error(100, None, "Invalid parameter")).await;
    assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(400));
    let e = json_refusal(
        KIND,
        503,
        graph_error(2, None, "Service temporarily unavailable"),
    )
    .await;
    assert_error(&e, ErrorKind::BackendUnavailable, TRANSIENT, Some(503));
}
