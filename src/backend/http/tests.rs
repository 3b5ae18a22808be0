//! Reading a provider's answer: invite codes in bodies, error texts, refusals.

use serde_json::json;

use super::*;

#[test]
fn invite_code_reads_bare_strings_and_candidate_fields() {
    let code = "AbCdEfGhIjKlMnOpQrStUv";
    let link = format!("https://chat.whatsapp.com/{code}");
    for body in [
        json!(code),
        json!(link),
        json!({"inviteCode": code}),
        json!({"other": 1, "code": link}),
    ] {
        assert_eq!(
            invite_code(&body, &["inviteLink", "inviteCode", "code"])
                .unwrap()
                .as_str(),
            code,
            "{body}"
        );
    }
}

#[test]
fn invite_code_undoes_metas_double_encoding() {
    let body: Value =
        serde_json::from_str(r#"{"invite_link": "\"https:\\/\\/chat.whatsapp.com\\/AbC123\""}"#)
            .unwrap();
    assert_eq!(
        invite_code(&body, &["invite_link"]).unwrap().as_str(),
        "AbC123"
    );
}

#[test]
fn invite_code_refuses_missing_fields_other_links_and_other_shapes() {
    for body in [
        json!({"link": "AbC"}),
        json!({"code": 12}),
        json!({"code": "https://evil.example/abc"}),
        json!([1]),
        json!(null),
    ] {
        assert_eq!(
            invite_code(&body, &["code"]).unwrap_err().kind,
            ErrorKind::BackendProtocol,
            "{body}"
        );
    }
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        headers: HeaderMap::new(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn error_text_gathers_the_usual_fields() {
    for (body, text) in [
        (
            r#"{"success":false,"error":"Group not found"}"#,
            "Group not found",
        ),
        (
            r#"{"error":{"code":"not_found","message":"session not found"}}"#,
            "not_found; session not found",
        ),
        (
            r#"{"error":{"message":"Invalid OAuth access token.","code":190}}"#,
            "Invalid OAuth access token.",
        ),
        (
            r#"{"exception":{"message":"rate-overlimit"}}"#,
            "rate-overlimit",
        ),
        (
            r#"{"status":404,"error":"Not Found","response":{"message":["a", ["b"]]}}"#,
            "Not Found; a; b",
        ),
        ("<html>bad gateway</html>", "<html>bad gateway</html>"),
        ("{}", ""),
    ] {
        assert_eq!(reply(500, body).error_text(), text, "{body}");
    }
}

#[test]
fn a_2xx_saying_it_failed_is_a_refusal() {
    assert!(reply(200, r#"{"success":false,"error":"x"}"#).is_refusal());
    assert!(reply(200, r#"{"revoked":"false"}"#).is_refusal());
    assert!(!reply(200, r#"{"success":true,"inviteLink":"x"}"#).is_refusal());
    assert!(!reply(200, r#""AbC""#).is_refusal());
    assert!(reply(404, "").is_refusal());
}

#[test]
fn refusals_keep_retry_after_only_when_transient() {
    let mut r = reply(503, "");
    r.headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
    let e = r.refusal(classify_reply);
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(e.http_status, Some(503));
    r.status = 400;
    assert_eq!(r.refusal(classify_reply).retry_after, None);
}
