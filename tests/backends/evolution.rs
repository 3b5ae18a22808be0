//! `evolution`: `apikey` header, the instance in the path and the JID in `groupJid`,
//! and refusals wrapped in `{"status", "error", "response": {"message": [...]}}`.

use invite_worker::domain::{BackendKind, ErrorKind};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockBuilder, ResponseTemplate,
    matchers::{header, method, path, query_param},
};

use crate::support::*;

const KIND: BackendKind = BackendKind::Evolution;

fn evolution(verb: &str, action: &str) -> MockBuilder {
    Mock::given(method(verb))
        .and(path(format!("/group/{action}/{SESSION}")))
        .and(query_param("groupJid", GROUP))
        .and(header("apikey", TOKEN))
}

/// Evolution's error body; `error` is the status's reason phrase.
fn wrapped(status: u16, messages: &[&str]) -> Value {
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    json!({"status": status, "error": reason, "response": {"message": messages}})
}

#[tokio::test]
async fn evolution_reads_the_invite_url_with_the_apikey_header() {
    let (server, backend) = serve(KIND).await;
    evolution("GET", "inviteCode")
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"inviteUrl": link(CODE), "inviteCode": CODE})),
        )
        .expect(1)
        .mount(&server)
        .await;
    assert_link(read(&backend).await, CODE);
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        requests[0].url.query(),
        Some("groupJid=120363041234567890%40g.us")
    );
}

#[tokio::test]
async fn evolution_revokes_with_a_post_and_reads_the_new_code() {
    for body in [
        json!({"revoked": true, "inviteCode": NEW_CODE}),
        json!({"revoked": true, "inviteUrl": link(NEW_CODE)}),
    ] {
        let (server, backend) = serve(KIND).await;
        evolution("POST", "revokeInviteCode")
            .respond_with(ResponseTemplate::new(200).set_body_json(body))
            .expect(1)
            .mount(&server)
            .await;
        assert_link(reset(&backend).await, NEW_CODE);
    }
}

#[tokio::test]
async fn evolution_treats_revoked_false_as_a_failure() {
    let e = json_refusal(KIND, 200, json!({"revoked": false})).await;
    assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(200));
}

#[tokio::test]
async fn evolution_maps_a_not_authorized_404_to_not_admin() {
    let e = json_refusal(KIND, 404, wrapped(404, &["Error: not-authorized"])).await;
    assert_error(&e, ErrorKind::NotAdmin, PERMANENT, Some(404));
}

#[tokio::test]
async fn evolution_maps_a_missing_instance_to_session_not_found() {
    let body = wrapped(404, &["The \"sales-team\" instance does not exist"]);
    let e = json_refusal(KIND, 404, body).await;
    assert_error(&e, ErrorKind::SessionNotFound, PERMANENT, Some(404));
}

/// Baileys' "Connection Closed" (the session lost its WhatsApp connection) arrives wrapped
/// in a 404 like every Evolution refusal: transient, not a missing group.
#[tokio::test]
async fn evolution_maps_a_closed_connection_404_to_session_disconnected() {
    let body = wrapped(404, &["Revoke error", "Error: Connection Closed"]);
    let e = json_refusal(KIND, 404, body).await;
    assert_error(&e, ErrorKind::SessionDisconnected, TRANSIENT, Some(404));
}

#[tokio::test]
async fn evolution_maps_other_404s_to_group_not_found() {
    let e = json_refusal(KIND, 404, wrapped(404, &["Group not found"])).await;
    assert_error(&e, ErrorKind::GroupNotFound, PERMANENT, Some(404));
}

#[tokio::test]
async fn evolution_maps_400s_by_their_message_else_to_backend_protocol() {
    for (message, kind) in [
        ("Error: not-authorized", ErrorKind::NotAdmin),
        (
            "The \"sales-team\" instance does not exist",
            ErrorKind::SessionNotFound,
        ),
        ("groupJid is required", ErrorKind::BackendProtocol),
    ] {
        let e = json_refusal(KIND, 400, wrapped(400, &[message])).await;
        assert_error(&e, kind, PERMANENT, Some(400));
    }
}

#[tokio::test]
async fn evolution_maps_auth_rate_and_server_statuses() {
    for (status, message, kind, transient) in [
        (401, "Unauthorized", ErrorKind::Unauthorized, PERMANENT),
        (403, "Forbidden", ErrorKind::NotAdmin, PERMANENT),
        (429, "Too Many Requests", ErrorKind::RateLimited, TRANSIENT),
        (
            500,
            "Internal Server Error",
            ErrorKind::BackendUnavailable,
            TRANSIENT,
        ),
        (
            500,
            "Error: rate-overlimit",
            ErrorKind::RateLimited,
            TRANSIENT,
        ),
        (500, "Error: not-authorized", ErrorKind::NotAdmin, PERMANENT),
    ] {
        let e = json_refusal(KIND, status, wrapped(status, &[message])).await;
        assert_error(&e, kind, transient, Some(status));
    }
}
