//! What every HTTP kind shares: timeouts, refused connections, `Retry-After`, malformed
//! or foreign answers, tokens kept out of errors, and ids that cannot escape a URL.

use std::time::{Duration, Instant, SystemTime};

use invite_worker::domain::{BackendKind, ErrorKind, GroupId, GroupIdStyle, SessionId};
use serde_json::json;
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::any};

use crate::support::*;

/// A URL on which nothing listens.
pub(crate) fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test]
async fn every_kind_reports_a_timeout_as_transient_backend_unavailable() {
    for kind in HTTP_KINDS {
        let server = MockServer::start().await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(reset_body(kind, &link(CODE)))
                    .set_delay(Duration::from_secs(10)),
            )
            .mount(&server)
            .await;
        let mut settings = settings(kind, &server.uri());
        settings.timeout = Duration::from_millis(200);
        let started = Instant::now();
        let e = reset(&build(&settings)).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "{kind}");
        assert_error(&e, ErrorKind::BackendUnavailable, TRANSIENT, None);
        assert_eq!(e.message, "timeout", "{kind}");
    }
}

#[tokio::test]
async fn every_kind_reports_a_refused_connection_as_transient_backend_unavailable() {
    for kind in HTTP_KINDS {
        let e = reset(&build(&settings(kind, &closed_port_url())))
            .await
            .unwrap_err();
        assert_error(&e, ErrorKind::BackendUnavailable, TRANSIENT, None);
        assert!(e.message.starts_with("connection failed"), "{kind}: {e}");
    }
}

#[tokio::test]
async fn every_kind_honours_retry_after_in_seconds() {
    for kind in HTTP_KINDS {
        let e = refusal(
            kind,
            ResponseTemplate::new(429).insert_header("Retry-After", "7"),
        )
        .await;
        assert_error(&e, ErrorKind::RateLimited, TRANSIENT, Some(429));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)), "{kind}");
    }
}

#[tokio::test]
async fn every_kind_honours_retry_after_as_an_http_date() {
    for kind in HTTP_KINDS {
        let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let e = refusal(
            kind,
            ResponseTemplate::new(503).insert_header("Retry-After", at.as_str()),
        )
        .await;
        assert_error(&e, ErrorKind::BackendUnavailable, TRANSIENT, Some(503));
        let wait = e.retry_after.expect("retry_after is set");
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{kind}: {wait:?}"
        );
    }
}

#[tokio::test]
async fn every_kind_rejects_malformed_json_as_backend_protocol() {
    for kind in HTTP_KINDS {
        let response = ResponseTemplate::new(200).set_body_raw(r#"{"code": "#, "application/json");
        let e = refusal(kind, response).await;
        assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(200));
    }
}

#[tokio::test]
async fn every_kind_rejects_a_non_whatsapp_link_as_backend_protocol() {
    for kind in HTTP_KINDS {
        let e = json_refusal(kind, 200, reset_body(kind, EVIL_LINK)).await;
        assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(200));
    }
}

#[tokio::test]
async fn every_kind_rejects_an_answer_without_a_link_as_backend_protocol() {
    for kind in HTTP_KINDS {
        let e = json_refusal(kind, 200, json!({"messaging_product": "whatsapp"})).await;
        assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(200));
    }
}

#[tokio::test]
async fn every_kind_accepts_its_documented_reset_answer() {
    for kind in HTTP_KINDS {
        let (server, backend) = serve(kind).await;
        Mock::given(any())
            .respond_with(
                ResponseTemplate::new(200).set_body_json(reset_body(kind, &link(NEW_CODE))),
            )
            .mount(&server)
            .await;
        assert_link(reset(&backend).await, NEW_CODE);
    }
}

#[tokio::test]
async fn no_error_message_contains_the_token_even_when_the_provider_echoes_it() {
    let echo = format!("bad credentials {TOKEN} / tok-S3CR3T%2F9f%2B2c");
    let body = json!({
        "success": false,
        "error": {"code": "unauthorized", "message": echo},
        "message": echo,
        "exception": {"message": echo},
        "response": {"message": [echo]}
    });
    for kind in HTTP_KINDS {
        for status in [200, 401, 500] {
            let e = json_refusal(kind, status, body.clone()).await;
            assert_no_token(&e);
            assert!(e.message.contains("[redacted]"), "{kind} {status}: {e}");
        }
        let plain = ResponseTemplate::new(502).set_body_string(echo.clone());
        assert_no_token(&refusal(kind, plain).await);
    }
}

/// Error texts are cut to a length; a token echoed across the cut (a 404 page showing
/// the request URL with wawp's `access_token`, say) must not keep its first part.
#[tokio::test]
async fn a_token_echoed_where_the_error_text_is_cut_does_not_leak_in_part() {
    for kind in HTTP_KINDS {
        for pad in (282..=296).step_by(2) {
            for token in [TOKEN.to_owned(), "tok-S3CR3T%2F9f%2B2c".to_owned()] {
                let page = format!("{}{token} and the rest of the page", "x".repeat(pad));
                let plain = ResponseTemplate::new(404).set_body_string(page);
                assert_no_token(&refusal(kind, plain).await);
            }
        }
    }
}

/// A bare string result sent as plain text rather than a JSON string (WAHA's handlers
/// return a string, which NestJS sends unquoted) is read like the JSON string.
#[tokio::test]
async fn a_plain_text_code_or_link_is_read_like_a_json_string() {
    for kind in [BackendKind::Waha, BackendKind::Wawp, BackendKind::Wasend] {
        for body in [NEW_CODE.to_owned(), format!("{}\n", link(NEW_CODE))] {
            let (server, backend) = serve(kind).await;
            Mock::given(any())
                .respond_with(ResponseTemplate::new(200).set_body_string(body.clone()))
                .mount(&server)
                .await;
            assert_link(reset(&backend).await, NEW_CODE);
        }
        let e = refusal(
            kind,
            ResponseTemplate::new(200).set_body_string("<html>ok</html>"),
        )
        .await;
        assert_error(&e, ErrorKind::BackendProtocol, PERMANENT, Some(200));
    }
}

#[tokio::test]
async fn backends_without_a_token_are_refused_at_build_naming_the_backend() {
    for kind in HTTP_KINDS {
        let mut settings = settings(kind, "http://127.0.0.1:1");
        http(&mut settings).token = None;
        let world = invite_worker::simulator::SimWorld::new(false);
        let error = invite_worker::backend::build("acme", &settings, &world)
            .err()
            .expect("a backend without token is refused")
            .to_string();
        assert!(
            error.contains("backends.acme") && error.contains("token"),
            "{error}"
        );
    }
}

#[test]
fn session_and_group_ids_cannot_carry_slashes_queries_or_percent_signs() {
    for bad in ["a/b", "a?b", "a%2Fb", "a%b", "a#b", "a b", "../x"] {
        assert!(SessionId::parse(bad).is_err(), "session {bad:?}");
    }
    for bad in [
        "..",
        "../1@g.us",
        "1/2@g.us",
        "1?x@g.us",
        "1%40@g.us",
        "1@g.us/..",
        "1@g.us?x",
    ] {
        assert!(
            GroupId::parse(bad, GroupIdStyle::Jid).is_err(),
            "jid {bad:?}"
        );
    }
    for bad in ["..", "a/b", "a?b", "a%b", "a.b", "a@b"] {
        assert!(
            GroupId::parse(bad, GroupIdStyle::Opaque).is_err(),
            "opaque {bad:?}"
        );
    }
}

/// The session ids "." and ".." would be resolved as path navigation by URL parsers; they
/// are refused when a command is parsed, so no adapter ever receives one (and `endpoint`
/// refuses such segments as well, see its unit tests). Other dots are ordinary.
#[test]
fn dot_and_dot_dot_sessions_are_refused_before_any_adapter_sees_them() {
    for raw in [".", ".."] {
        assert!(SessionId::parse(raw).is_err(), "{raw:?}");
    }
    for raw in ["...", ".a."] {
        assert!(SessionId::parse(raw).is_ok(), "{raw:?}");
    }
}
