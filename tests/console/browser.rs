//! The console in headless Chromium (`/usr/bin/chromium`, or `CHROMIUM`), over the
//! DevTools protocol: an operator signs in, revokes a group's link through the
//! confirmation page and sees its new fingerprint and history row; a viewer sees no
//! revoke button and no full link. A screenshot of each page goes to
//! `target/console-screenshots/` (the copies in `docs/console/` come from there).

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use chromiumoxide::{
    Page,
    browser::{Browser, BrowserConfig},
    page::ScreenshotParams,
};
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use crate::support::{Console, Db, OPERATOR, VIEWER, group, wait_until};

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    assert!(
        path.exists(),
        "Chromium is needed for the console's browser test and was not found at {}: install \
         it (`apt-get install chromium`, as .ci/services-up does) or set CHROMIUM to its path",
        path.display()
    );
    path
}

fn screenshots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).expect("the screenshot directory");
    dir
}

async fn shoot(page: &Page, name: &str) {
    let params = ScreenshotParams::builder().full_page(true).build();
    page.save_screenshot(params, screenshots().join(format!("{name}.png")))
        .await
        .expect("a screenshot");
}

/// The page's HTML once `cond` holds for it (the page reloaded in between), or a failure.
async fn html_when(page: &Page, within: Duration, cond: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let html = page.content().await.unwrap_or_default();
        if cond(&html) {
            return html;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed it:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = page.reload().await;
    }
}

/// Waits until the page shows `text` (no reload: after a click's navigation).
async fn shows(page: &Page, text: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let html = page.content().await.unwrap_or_default();
        if html.contains(text) {
            return html;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {text:?} in:\n{html}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sign_in(page: &Page, base: &str, token: &str) {
    page.goto(format!("{base}/console/signin"))
        .await
        .expect("the sign-in page");
    page.find_element("#token")
        .await
        .expect("a token field")
        .click()
        .await
        .expect("focus")
        .type_str(token)
        .await
        .expect("typing");
    page.find_element("button[type=submit]")
        .await
        .expect("a sign-in button")
        .click()
        .await
        .expect("click");
    shows(page, "Signed in as").await;
}

fn fingerprint(html: &str) -> String {
    let marker = "id=\"fingerprint\">";
    let start = html.find(marker).expect("a fingerprint") + marker.len();
    html[start..].chars().take_while(|c| *c != '<').collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_revokes_in_the_browser_and_a_viewer_sees_no_full_link() {
    let executable = chromium();
    let c = Console::start(Db::Sqlite).await;
    // Something on every page: a tracked link, a pause, a dead letter.
    let g = group(20);
    let first = c.revoke("sales-team", &g).await;
    c.wait_done(&first).await;
    for n in 21..24 {
        let id = c.revoke("sales-team", &group(n)).await;
        c.wait_done(&id).await;
    }
    let pause =
        json!({"backend": "sim", "session_id": "support-desk", "reason": "provider maintenance"});
    c.api(Method::POST, "/api/pauses", Some(OPERATOR), Some(pause))
        .await;
    let lost = json!({"command_id": uuid::Uuid::new_v4(), "type": "revoke_invite",
        "session_id": "sales-team", "group_id": group(30), "backend": "acme",
        "reason": "link leaked on a forum", "requested_by": "support-portal"});
    c.publish_raw(lost.to_string().as_bytes()).await;
    wait_until(Duration::from_secs(20), || async {
        let (_, s) = c
            .api(Method::GET, "/api/summary", Some(OPERATOR), None)
            .await;
        s["dead_letters"] == json!(1)
    })
    .await;

    let config = BrowserConfig::builder()
        .chrome_executable(executable)
        .no_sandbox()
        .window_size(1280, 900)
        .user_data_dir(c.dir().join("chromium"))
        .build()
        .expect("a browser configuration");
    let (mut browser, mut handler) = Browser::launch(config).await.expect("Chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page("about:blank").await.expect("a page");
    let base = c.base.clone();

    sign_in(&page, &base, OPERATOR).await;
    shows(&page, "<h1>Overview</h1>").await;
    shoot(&page, "overview").await;
    page.goto(format!(
        "{base}/console/links?backend=sim&session=sales-team"
    ))
    .await
    .expect("links");
    shows(&page, "4 link(s)").await;
    shoot(&page, "links").await;
    page.goto(format!("{base}/console/links/sim/sales-team/{g}"))
        .await
        .expect("a link");
    let html = shows(&page, "id=\"fingerprint\"").await;
    let before = fingerprint(&html);
    assert!(
        html.contains("https://chat.whatsapp.com/"),
        "an operator sees the full link"
    );
    page.find_element("a.danger")
        .await
        .expect("a revoke button")
        .click()
        .await
        .expect("click");
    shows(&page, "Revoke the link of").await;
    shoot(&page, "revoke-confirm").await;
    page.find_element("#reason")
        .await
        .expect("a reason field")
        .click()
        .await
        .expect("focus")
        .type_str("leaked in a screenshot")
        .await
        .expect("typing");
    page.find_element("button.danger")
        .await
        .expect("confirm")
        .click()
        .await
        .expect("click");
    shows(&page, "Revoke published as command").await;
    let html = html_when(&page, Duration::from_secs(20), |h| {
        h.contains("id=\"fingerprint\"")
            && fingerprint(h) != before
            && h.matches("<td>rotated</td>").count() >= 2
    })
    .await;
    let after = fingerprint(&html);
    assert_ne!(after, before);
    assert!(
        html.contains(&format!("<code>{after}</code>")),
        "the history shows the new fingerprint"
    );
    shoot(&page, "link-history").await;
    page.goto(format!("{base}/console/dead-letters"))
        .await
        .expect("dead letters");
    shows(&page, "unknown_backend").await;
    shoot(&page, "dead-letters").await;
    page.goto(format!("{base}/console/pauses"))
        .await
        .expect("pauses");
    shows(&page, "provider maintenance").await;
    shoot(&page, "pauses").await;
    let (_, link) = c
        .api(
            Method::GET,
            &format!("/api/links/sim/sales-team/{g}"),
            Some(OPERATOR),
            None,
        )
        .await;
    let code = link["link"]["invite_code"]
        .as_str()
        .expect("the code")
        .to_owned();

    // The viewer: signed out first, through the header's button.
    page.find_element("header button")
        .await
        .expect("sign out")
        .click()
        .await
        .expect("click");
    shows(&page, "<h1>Sign in</h1>").await;
    sign_in(&page, &base, VIEWER).await;
    page.goto(format!("{base}/console/links/sim/sales-team/{g}"))
        .await
        .expect("a link");
    let html = shows(&page, "id=\"fingerprint\"").await;
    assert_eq!(fingerprint(&html), after);
    assert!(
        page.find_element("a.danger").await.is_err(),
        "a viewer has a revoke button"
    );
    assert!(
        !html.contains(&code) && !html.contains("chat.whatsapp.com"),
        "a viewer sees the link"
    );
    page.goto(format!("{base}/console/links"))
        .await
        .expect("links");
    let html = shows(&page, "link(s)").await;
    assert!(
        !html.contains("chat.whatsapp.com"),
        "a viewer sees full links"
    );
    page.goto(format!(
        "{base}/console/revoke?backend=sim&session=sales-team&group={g}"
    ))
    .await
    .expect("confirm");
    shows(&page, "a viewer token cannot make changes").await;

    browser.close().await.expect("Chromium closes");
    let _ = browser.wait().await;
    events.abort();
    c.stop().await;
}
