//! The JSON API: every route refuses a missing or wrong token (401) and a viewer's change
//! (403) and then changes nothing; inputs are checked (400 naming the input); viewers
//! see fingerprints where operators see full links; sends carry `admin:<name>`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{Console, Db, OPERATOR, VIEWER, group, wait_until};

/// Every route, with a body its mutation would accept.
fn routes() -> Vec<(Method, String, Option<Value>, bool)> {
    let g = group(1);
    let send = json!({"session_id": "s1", "group_id": g});
    vec![
        (Method::GET, "/api/summary".into(), None, false),
        (Method::GET, "/api/links".into(), None, false),
        (Method::GET, format!("/api/links/sim/s1/{g}"), None, false),
        (Method::GET, "/api/dead-letters".into(), None, false),
        (Method::GET, "/api/pauses".into(), None, false),
        (
            Method::POST,
            "/api/dead-letters/replay".into(),
            Some(json!({"all": true})),
            true,
        ),
        (
            Method::POST,
            "/api/pauses".into(),
            Some(json!({"backend": "sim"})),
            true,
        ),
        (
            Method::POST,
            "/api/pauses/resume".into(),
            Some(json!({"backend": "sim"})),
            true,
        ),
        (
            Method::POST,
            "/api/send/revoke".into(),
            Some(send.clone()),
            true,
        ),
        (Method::POST, "/api/send/rotate".into(), Some(send), true),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_a_missing_or_wrong_token_and_a_viewers_change() {
    let c = Console::start(Db::Sqlite).await;
    for (method, path, body, mutation) in routes() {
        for token in [None, Some("not-a-token-of-this-console"), Some("")] {
            let (status, reply) = c.api(method.clone(), &path, token, body.clone()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}"
            );
            assert!(reply["error"].is_string(), "{reply}");
        }
        let (status, reply) = c
            .api(method.clone(), &path, Some(VIEWER), body.clone())
            .await;
        let expected = if mutation {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::OK
        };
        assert_eq!(status, expected, "{method} {path} as a viewer: {reply}");
    }
    // None of the refused changes happened: nothing paused, no command published.
    assert!(c.store.pauses().await.expect("pauses").is_empty());
    let (_, summary) = c
        .api(Method::GET, "/api/summary", Some(OPERATOR), None)
        .await;
    assert_eq!(summary["backlog"], json!(0), "{summary}");
    let (_, links) = c.api(Method::GET, "/api/links", Some(OPERATOR), None).await;
    assert_eq!(links["total"], json!(0), "{links}");
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_a_400_naming_them() {
    let c = Console::start(Db::Sqlite).await;
    let g = group(2);
    let get = [
        ("/api/links?backend=nowhere", "backend"),
        ("/api/links?session=bad%20session", "session"),
        ("/api/links?group=not-a-group%27%3B--", "group"),
        ("/api/links?per_page=0", "per_page"),
        ("/api/links?per_page=100000", "per_page"),
        ("/api/links?page=abc", "page"),
        ("/api/links/nowhere/s1/120363041234567890@g.us", "backend"),
        ("/api/links/sim/s1/120363041234567890", "group"),
    ];
    for (path, field) in get {
        let (status, body) = c.api(Method::GET, path, Some(VIEWER), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{path}: {message}");
    }
    let post = [
        (
            "/api/send/revoke",
            json!({"session_id": "s1", "group_id": "x"}),
            "group",
        ),
        (
            "/api/send/revoke",
            json!({"session_id": "s 1", "group_id": g}),
            "session",
        ),
        (
            "/api/send/revoke",
            json!({"session_id": "s1", "group_id": g, "backend": "nowhere"}),
            "backend",
        ),
        (
            "/api/send/revoke",
            json!({"session_id": "s1", "group_id": g, "reason": "x".repeat(501)}),
            "reason",
        ),
        (
            "/api/send/revoke",
            json!({"session_id": "s1", "group_id": g, "extra": 1}),
            "body",
        ),
        ("/api/send/rotate", json!({"group_id": g}), "body"),
        ("/api/pauses", json!({"backend": "nowhere"}), "backend"),
        (
            "/api/pauses",
            json!({"backend": "sim", "session_id": "a/b"}),
            "session",
        ),
        ("/api/dead-letters/replay", json!({}), "give either"),
        (
            "/api/dead-letters/replay",
            json!({"command_ids": ["not-a-uuid"]}),
            "body",
        ),
    ];
    for (path, body, field) in post {
        let (status, reply) = c
            .api(Method::POST, path, Some(OPERATOR), Some(body.clone()))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {reply}");
        let message = reply["error"].as_str().unwrap_or_default();
        assert!(message.starts_with(field), "{path} {body}: {message}");
    }
    assert!(c.store.pauses().await.expect("pauses").is_empty());
    c.stop().await;
}

async fn viewers_see_fingerprints_and_operators_full_links(db: Db) {
    let c = Console::start(db).await;
    let g = group(3);
    let id = c.revoke("s1", &g).await;
    c.wait_done(&id).await;
    let row = c
        .store
        .find_command(&id)
        .await
        .expect("read")
        .expect("recorded");
    assert_eq!(row.requested_by.as_deref(), Some("admin:oncall"));

    let path = format!("/api/links?backend=sim&session=s1&group={g}&per_page=10");
    let (status, page) = c.api(Method::GET, &path, Some(OPERATOR), None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(
        (page["total"].clone(), page["page"].clone()),
        (json!(1), json!(1))
    );
    let link = &page["links"][0];
    let code = link["invite_code"]
        .as_str()
        .expect("an operator sees the code")
        .to_owned();
    assert_eq!(
        link["invite_link"],
        json!(format!("https://chat.whatsapp.com/{code}"))
    );
    let fingerprint = format!("{}…", &code[..4]);
    assert_eq!(link["invite_code_fingerprint"], json!(fingerprint));

    let (_, page) = c.api(Method::GET, &path, Some(VIEWER), None).await;
    let link = &page["links"][0];
    assert_eq!(link["invite_code"], Value::Null);
    assert_eq!(link["invite_link"], Value::Null);
    assert_eq!(link["invite_code_fingerprint"], json!(fingerprint));

    let detail = format!("/api/links/sim/s1/{g}");
    let (_, shown) = c.api(Method::GET, &detail, Some(VIEWER), None).await;
    assert!(
        !shown.to_string().contains(&code),
        "a viewer sees the code: {shown}"
    );
    let entry = shown["history"]
        .as_array()
        .and_then(|h| h.last())
        .expect("history");
    assert_eq!(entry["outcome"], json!("rotated"));
    assert_eq!(entry["new_code"], Value::Null);
    assert_eq!(entry["new_code_fingerprint"], json!(fingerprint));
    let (_, shown) = c.api(Method::GET, &detail, Some(OPERATOR), None).await;
    assert_eq!(shown["link"]["invite_code"], json!(code));

    // Paging: a second page of one link per page is empty, the count stays.
    let (_, second) = c
        .api(
            Method::GET,
            "/api/links?per_page=1&page=2",
            Some(VIEWER),
            None,
        )
        .await;
    assert_eq!(second["links"], json!([]));
    assert_eq!(second["total"], json!(1));
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_fingerprints_and_operators_full_links_sqlite() {
    viewers_see_fingerprints_and_operators_full_links(Db::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_see_fingerprints_and_operators_full_links_postgres() {
    viewers_see_fingerprints_and_operators_full_links(Db::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_pause_resume_and_replay_and_dead_letters_are_listed_without_loss() {
    let c = Console::start(Db::Sqlite).await;
    let body = json!({"backend": "sim", "session_id": "s9", "reason": "maintenance"});
    let (status, reply) = c
        .api(Method::POST, "/api/pauses", Some(OPERATOR), Some(body))
        .await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    let (_, pauses) = c.api(Method::GET, "/api/pauses", Some(VIEWER), None).await;
    assert_eq!(pauses[0]["session_id"], json!("s9"));
    assert_eq!(pauses[0]["reason"], json!("maintenance"));
    let (_, summary) = c.api(Method::GET, "/api/summary", Some(VIEWER), None).await;
    assert_eq!(
        summary["paused"].as_array().map(Vec::len),
        Some(1),
        "{summary}"
    );
    let resume = json!({"backend": "sim", "session_id": "s9"});
    let (status, _) = c
        .api(
            Method::POST,
            "/api/pauses/resume",
            Some(OPERATOR),
            Some(resume.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, reply) = c
        .api(
            Method::POST,
            "/api/pauses/resume",
            Some(OPERATOR),
            Some(resume),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{reply}");

    // A command for a backend that is not configured is dead-lettered.
    let id = uuid::Uuid::new_v4().to_string();
    let command = json!({"command_id": id, "type": "revoke_invite", "session_id": "s1",
        "group_id": group(4), "backend": "gone"});
    c.publish_raw(command.to_string().as_bytes()).await;
    wait_until(Duration::from_secs(20), || async {
        let (_, s) = c.api(Method::GET, "/api/summary", Some(VIEWER), None).await;
        s["dead_letters"] == json!(1)
    })
    .await;
    for _ in 0..2 {
        let (status, letters) = c
            .api(Method::GET, "/api/dead-letters", Some(VIEWER), None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(letters.as_array().map(Vec::len), Some(1), "{letters}");
        assert_eq!(letters[0]["command_id"], json!(id));
    }
    // Replayed while the backend is still unknown: it stays, and says why.
    let replay = json!({"command_ids": [id]});
    let (status, report) = c
        .api(
            Method::POST,
            "/api/dead-letters/replay",
            Some(OPERATOR),
            Some(replay),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["replayed"], json!([]));
    assert_eq!(report["kept"][0]["command_id"], json!(id), "{report}");
    let (_, letters) = c
        .api(Method::GET, "/api/dead-letters", Some(VIEWER), None)
        .await;
    assert_eq!(letters.as_array().map(Vec::len), Some(1));
    c.stop().await;
}
