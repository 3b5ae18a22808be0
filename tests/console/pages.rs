//! The console without a browser: what commands, operators and providers wrote is
//! escaped on every page, and a form posted from another site (no or a wrong anti-CSRF
//! token, a foreign origin, no session) is refused with 403 and changes nothing.

use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, StatusCode};
use sea_orm::{ActiveModelTrait, ActiveValue::Set};
use serde_json::json;

use crate::support::{Console, Db, FormPost, OPERATOR, VIEWER, group, wait_until};

const SCRIPT: &str = "<script>alert(\"owned\")</script>";
const ESCAPED: &str = "&#60;script&#62;alert(&#34;owned&#34;)&#60;/script&#62;";

/// The anti-CSRF token in a page's forms.
fn csrf(html: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = html.find(marker).expect("a form with an anti-CSRF token") + marker.len();
    html[start..].chars().take_while(|c| *c != '"').collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasons_requesters_and_provider_errors_render_inert() {
    let c = Console::start(Db::Sqlite).await;
    let g = group(10);
    // A pause reason, a dead-lettered command's reason and requester, a provider's error.
    let pause = json!({"backend": "sim", "session_id": "s1", "reason": SCRIPT});
    let (status, _) = c
        .api(Method::POST, "/api/pauses", Some(OPERATOR), Some(pause))
        .await;
    assert_eq!(status, StatusCode::OK);
    let command = json!({"command_id": uuid::Uuid::new_v4(), "type": "revoke_invite",
        "session_id": "s1", "group_id": g, "backend": "gone", "reason": SCRIPT,
        "requested_by": SCRIPT});
    c.publish_raw(command.to_string().as_bytes()).await;
    wait_until(Duration::from_secs(20), || async {
        let (_, s) = c.api(Method::GET, "/api/summary", Some(VIEWER), None).await;
        s["dead_letters"] == json!(1)
    })
    .await;
    entity::history::ActiveModel {
        backend: Set("sim".into()),
        session_id: Set("s1".into()),
        group_id: Set(g.clone()),
        command_id: Set(Some(uuid::Uuid::new_v4().to_string())),
        command_type: Set(Some("revoke_invite".into())),
        trigger: Set(Some("revoke".into())),
        outcome: Set("failed".into()),
        attempts: Set(1),
        error_kind: Set(Some("not_admin".into())),
        error_message: Set(Some(format!("HTTP 403: {SCRIPT}"))),
        occurred_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(c.store.connection())
    .await
    .expect("a history row");

    for token in [OPERATOR, VIEWER] {
        let cookie = c.sign_in(token).await;
        for path in [
            "/console".to_owned(),
            "/console/pauses".to_owned(),
            "/console/dead-letters".to_owned(),
            format!("/console/links/sim/s1/{g}"),
        ] {
            let (status, html) = c.page(&path, &cookie).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(
                html.contains(ESCAPED),
                "{path}: the text is not shown escaped:\n{html}"
            );
            assert!(
                !html.contains("<script"),
                "{path}: a raw <script> in:\n{html}"
            );
        }
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_are_refused_and_change_nothing() {
    let c = Console::start(Db::Sqlite).await;
    let cookie = c.sign_in(OPERATOR).await;
    let (_, html) = c.page("/console/pauses", &cookie).await;
    let token = csrf(&html);
    let post =
        |csrf: Option<&str>, origin: Option<&str>, site: Option<&str>, cookie: Option<&str>| {
            let mut form = vec![("backend", "sim"), ("session", "s1"), ("reason", "x")];
            if let Some(t) = csrf {
                form.push(("csrf", t));
            }
            let mut req = c.http.post(c.url("/console/pauses")).form_of(&form);
            for (name, value) in [
                ("origin", origin),
                ("sec-fetch-site", site),
                ("cookie", cookie),
            ] {
                if let Some(v) = value {
                    req = req.header(name, v);
                }
            }
            req.send()
        };
    let own = c.base.as_str();
    let refused = [
        ("no token", post(None, Some(own), None, Some(&cookie)).await),
        (
            "a wrong token",
            post(Some("0123abcd"), Some(own), None, Some(&cookie)).await,
        ),
        (
            "a foreign origin",
            post(
                Some(&token),
                Some("http://evil.example"),
                None,
                Some(&cookie),
            )
            .await,
        ),
        (
            "a cross-site fetch",
            post(Some(&token), None, Some("cross-site"), Some(&cookie)).await,
        ),
        (
            "no session",
            post(Some(&token), Some(own), None, None).await,
        ),
    ];
    for (what, r) in refused {
        let r = r.expect("the console answers");
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
    }
    assert!(
        c.store.pauses().await.expect("pauses").is_empty(),
        "a refused post paused"
    );
    // A sign-in posted from another site is refused too.
    let r = c
        .http
        .post(c.url("/console/signin"))
        .header("origin", "http://evil.example")
        .form_of(&[("token", OPERATOR)])
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.headers().get("set-cookie").is_none());

    // The console's own form, as a browser sends it, is accepted.
    let r = post(Some(&token), Some(own), Some("same-origin"), Some(&cookie))
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(c.store.pauses().await.expect("pauses").len(), 1);

    // A viewer's session posts nothing either, and sees no forms for changes.
    let viewer = c.sign_in(VIEWER).await;
    let (_, html) = c.page("/console/pauses", &viewer).await;
    assert!(
        !html.contains("action=\"/console/pauses\""),
        "a viewer gets the pause form"
    );
    let viewer_token = csrf(&html);
    let r = c
        .http
        .post(c.url("/console/pauses/resume"))
        .header("cookie", &viewer)
        .header("origin", own)
        .form_of(&[
            ("csrf", viewer_token.as_str()),
            ("backend", "sim"),
            ("session", "s1"),
        ])
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(c.store.pauses().await.expect("pauses").len(), 1);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_need_a_session_and_sign_out_ends_it() {
    let c = Console::start(Db::Sqlite).await;
    let (status, _) = c
        .page("/console/links", "invite_worker_session=forged")
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let r = c
        .http
        .post(c.url("/console/signin"))
        .header("origin", &c.base)
        .form_of(&[("token", "not-a-token-of-this-console")])
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let cookie = c.sign_in(VIEWER).await;
    let (status, html) = c.page("/console/links", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains(VIEWER), "the token is on the page");
    let r = c
        .http
        .post(c.url("/console/signout"))
        .header("cookie", &cookie)
        .header("origin", &c.base)
        .form_of(&[("csrf", csrf(&html).as_str())])
        .send()
        .await
        .expect("answers");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let (status, _) = c.page("/console/links", &cookie).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "the session outlived sign-out"
    );
    c.stop().await;
}
