//! `wasend`: Bearer auth, both endpoint families, the reported expiry, and `success:
//! false` answers that arrive with a 200.

use chrono::{DateTime, Utc};
use invite_worker::{
    backend::SharedBackend,
    config::{Provider, WasendEndpoints},
    domain::{BackendKind, ErrorKind},
};
use serde_json::json;
use wiremock::{
    Mock, MockBuilder, MockServer, ResponseTemplate,
    matchers::{body_string, header, method, path},
};

use crate::support::*;

const KIND: BackendKind = BackendKind::Wasend;

fn wasend(verb: &str, tail: &str) -> MockBuilder {
    Mock::given(method(verb))
        .and(path(format!("/{SESSION}/groups/{GROUP_IN_PATH}/{tail}")))
        .and(header("Authorization", format!("Bearer {TOKEN}").as_str()))
}

async fn serve_invite_code_family() -> (MockServer, SharedBackend) {
    let server = MockServer::start().await;
    let mut settings = settings(KIND, &server.uri());
    if let Provider::Wasend { endpoints, .. } = &mut settings.provider {
        *endpoints = Some(WasendEndpoints::InviteCode);
    }
    let backend = build(&settings);
    (server, backend)
}

#[tokio::test]
async fn wasend_reads_the_link_with_bearer_auth_and_reports_its_expiry() {
    let (server, backend) = serve(KIND).await;
    wasend("GET", "invite-link")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true,
            "inviteLink": link(CODE),
            "expiresAt": "2026-11-29T10:00:00Z"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let link = assert_link(read(&backend).await, CODE);
    let expected: DateTime<Utc> = "2026-11-29T10:00:00Z".parse().unwrap();
    assert_eq!(link.expires_at, Some(expected));
}

#[tokio::test]
async fn wasend_revokes_with_an_empty_post_and_returns_the_new_link() {
    let (server, backend) = serve(KIND).await;
    wasend("POST", "invite-link/revoke")
        .and(body_string(""))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "success": true,
            "inviteLink": link(NEW_CODE),
            "expiresAt": "2026-11-29T10:00:00+02:00"
        })))
        .expect(1)
        .mount(&server)
        .await;
    let link = assert_link(reset(&backend).await, NEW_CODE);
    let expected: DateTime<Utc> = "2026-11-29T08:00:00Z".parse().unwrap();
    assert_eq!(link.expires_at, Some(expected));
}

#[tokio::test]
async fn wasend_tolerates_a_missing_or_unreadable_expiry() {
    for expires_at in [json!(null), json!("next week"), json!(1764410400)] {
        let (server, backend) = serve(KIND).await;
        wasend("POST", "invite-link/revoke")
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "success": true,
                "inviteLink": link(NEW_CODE),
                "expiresAt": expires_at
            })))
            .mount(&server)
            .await;
        assert_eq!(
            assert_link(reset(&backend).await, NEW_CODE).expires_at,
            None
        );
    }
}

#[tokio::test]
async fn wasend_invite_code_family_reads_a_bare_code() {
    let (server, backend) = serve_invite_code_family().await;
    wasend("GET", "invite-code")
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(CODE)))
        .expect(1)
        .mount(&server)
        .await;
    assert_link(read(&backend).await, CODE);
}

#[tokio::test]
async fn wasend_invite_code_family_revokes_and_accepts_each_tolerated_body() {
    for body in [
        json!({"success": true, "inviteCode": NEW_CODE}),
        json!({"success": true, "inviteLink": link(NEW_CODE)}),
        json!({"success": true, "code": NEW_CODE}),
        json!(NEW_CODE),
        json!(link(NEW_CODE)),
    ] {
        let (server, backend) = serve_invite_code_family().await;
        wasend("POST", "invite-code/revoke")
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
        assert_link(reset(&backend).await, NEW_CODE);
    }
}

#[tokio::test]
async fn wasend_treats_success_false_with_a_200_as_a_failure() {
    let body = json!({"success": false, "error": "You are not an admin of this group"});
    let e = json_refusal(KIND, 200, body).await;
    assert_error(&e, ErrorKind::NotAdmin, PERMANENT, Some(200));
    assert!(e.message.contains("not an admin"), "{e}");

    let e = json_refusal(
        KIND,
        200,
        json!({"success": false, "error": "Session is not connected"}),
    )
    .await;
    assert_error(&e, ErrorKind::SessionDisconnected, TRANSIENT, Some(200));

    let e = json_refusal(
        KIND,
        200,
        json!({"success": false, "error": "Something odd"}),
    )
    .await;
    assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(200));
}

#[tokio::test]
async fn wasend_maps_each_documented_status_to_its_kind() {
    for (status, error, kind, transient) in [
        (
            400,
            "Invalid parameters",
            ErrorKind::BackendProtocol,
            PERMANENT,
        ),
        (
            401,
            "Invalid or missing API key",
            ErrorKind::Unauthorized,
            PERMANENT,
        ),
        (
            403,
            "Not authorized to get invite link",
            ErrorKind::NotAdmin,
            PERMANENT,
        ),
        (
            404,
            "Session not found",
            ErrorKind::SessionNotFound,
            PERMANENT,
        ),
        (404, "Group not found", ErrorKind::GroupNotFound, PERMANENT),
        (
            429,
            "Rate limit exceeded",
            ErrorKind::RateLimited,
            TRANSIENT,
        ),
        (
            500,
            "Internal server error",
            ErrorKind::BackendUnavailable,
            TRANSIENT,
        ),
    ] {
        let e = json_refusal(KIND, status, json!({"success": false, "error": error})).await;
        assert_error(&e, kind, transient, Some(status));
        assert!(e.message.contains(error), "{e}");
    }
}
