//! The real binary with `[admin]` configured (tokens from the environment), logging at
//! debug: every change made through the API or the console is logged at info with the
//! token's name, and no token appears anywhere in the log.

use std::{process::Stdio, time::Duration};

use reqwest::{Client, StatusCode, redirect::Policy};
use serde_json::json;
use tokio::io::AsyncReadExt;
use uuid::Uuid;

use crate::support::{AMQP_URL, Console, FormPost, OPERATOR, VIEWER, free_port, group, wait_until};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_logged_with_who_made_it_and_no_token_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let prefix = format!(
        "console-audit-{}.",
        &Uuid::new_v4().simple().to_string()[..12]
    );
    let port = free_port();
    let config = format!(
        "[amqp]\nurl = \"{AMQP_URL}\"\nname_prefix = \"{prefix}\"\nqueue_type = \"classic\"\n\n\
         [database]\nurl = \"sqlite://{}/audit.db?mode=rwc\"\n\n[http]\nlisten = \"\"\n\n\
         [rotation]\nenabled = false\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n\
         [[admin.tokens]]\nname = \"oncall\"\nrole = \"operator\"\ntoken_env = \"AUDIT_OPERATOR\"\n\n\
         [[admin.tokens]]\nname = \"support\"\nrole = \"viewer\"\ntoken_env = \"AUDIT_VIEWER\"\n",
        dir.path().display()
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("the configuration");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_invite-worker"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env("RUST_LOG", "debug")
        .env("AUDIT_OPERATOR", OPERATOR)
        .env("AUDIT_VIEWER", VIEWER)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });

    let base = format!("http://127.0.0.1:{port}");
    let http = Client::builder()
        .redirect(Policy::none())
        .build()
        .expect("client");
    wait_until(Duration::from_secs(30), || async {
        let r = http.get(format!("{base}/console/signin")).send().await;
        r.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let api = |path: &str, token: &str, body: serde_json::Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let g = group(40);
    let r = api(
        "/api/send/revoke",
        OPERATOR,
        json!({"session_id": "s1", "group_id": g}),
    )
    .await;
    assert_eq!(r.expect("answers").status(), StatusCode::ACCEPTED);
    let pause = json!({"backend": "sim", "session_id": "s2", "reason": "audit"});
    assert_eq!(
        api("/api/pauses", VIEWER, pause.clone())
            .await
            .expect("answers")
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api("/api/pauses", "not-a-token-at-all-0", pause.clone())
            .await
            .expect("answers")
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api("/api/pauses", OPERATOR, pause)
            .await
            .expect("answers")
            .status(),
        StatusCode::OK
    );
    let resume = json!({"backend": "sim", "session_id": "s2"});
    assert_eq!(
        api("/api/pauses/resume", OPERATOR, resume)
            .await
            .expect("answers")
            .status(),
        StatusCode::OK
    );
    let signin = http
        .post(format!("{base}/console/signin"))
        .header("origin", &base)
        .form_of(&[("token", VIEWER)])
        .send()
        .await
        .expect("answers");
    assert_eq!(signin.status(), StatusCode::SEE_OTHER);
    let link = format!("{base}/api/links/sim/s1/{g}");
    wait_until(Duration::from_secs(20), || async {
        let r = http.get(&link).bearer_auth(VIEWER).send().await;
        let body: serde_json::Value = match r {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        body["link"]["rotation_count"] == json!(1)
    })
    .await;

    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the worker stops after SIGTERM")
        .expect("wait");
    let log = log.await.expect("the log");
    Console::cleanup(prefix, None).await;
    assert!(status.success(), "{log}");

    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no {what:?} line in:\n{log}"))
            .to_owned()
    };
    let published = line("admin change: command published");
    assert!(
        published.contains("INFO") && published.contains("oncall"),
        "{published}"
    );
    assert!(
        published.contains("revoke_invite") && published.contains(&g),
        "{published}"
    );
    for what in ["admin change: paused", "admin change: resumed"] {
        let l = line(what);
        assert!(l.contains("oncall") && l.contains("s2"), "{l}");
    }
    assert!(line("admin console: signed in").contains("support"));
    for token in [OPERATOR, VIEWER] {
        assert!(!log.contains(token), "a token is in the log");
    }
}
