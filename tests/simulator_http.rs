//! The simulator's HTTP server driven over the network with reqwest: every provider's
//! dialect for success, auth and refusals, injected faults and hangs, the control API and
//! graceful shutdown. Each test runs its own server on 127.0.0.1:0.

use std::time::Duration;

use futures::future::join_all;
use invite_worker::simulator::{SimWorld, server::serve};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

const TOKEN: &str = "sim-secret-token";
const LINK: &str = "https://chat.whatsapp.com/";

// ---------------------------------------------------------------------------------------
// Harness

struct Sim {
    base: String,
    client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Sim {
    async fn start(token: Option<&str>) -> Sim {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            SimWorld::new(true),
            token.map(String::from),
            async {
                let _ = stopped.await;
            },
        ));
        Sim {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            stop: Some(stop),
            server,
        }
    }

    /// A server with auto-create off, so that unknown sessions and groups are refused.
    async fn strict() -> Sim {
        let sim = Sim::start(Some(TOKEN)).await;
        sim.control(Method::POST, "auto_create", json!({ "enabled": false }))
            .await;
        sim
    }

    async fn control(&self, method: Method, path: &str, body: Value) -> reqwest::Response {
        let response = self
            .client
            .request(method, format!("{}/_control/{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("control request");
        assert!(
            response.status().is_success(),
            "control {path}: {}",
            response.status()
        );
        response
    }

    async fn session(&self, id: &str, connected: bool) {
        self.control(
            Method::POST,
            "sessions",
            json!({ "id": id, "connected": connected }),
        )
        .await;
    }

    async fn group(&self, session: &str, group: &str, admin: bool) {
        self.control(
            Method::POST,
            "groups",
            json!({ "session": session, "group": group, "admin": admin }),
        )
        .await;
    }

    async fn fault(&self, fault: Value) {
        self.control(Method::POST, "faults", fault).await;
    }

    async fn stats(&self) -> Value {
        self.client
            .get(format!("{}/_control/stats", self.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    async fn peek(&self, session: &str, group: &str) -> String {
        let url = format!(
            "{}/_control/groups/link?session={}&group={}",
            self.base,
            enc(session),
            enc(group)
        );
        let body: Value = self
            .client
            .get(url)
            .send()
            .await
            .expect("peek")
            .json()
            .await
            .expect("peek json");
        body["code"].as_str().expect("code").to_owned()
    }

    /// Sends one provider request and returns its status, Retry-After and JSON body.
    async fn send(&self, request: RequestBuilder) -> (StatusCode, Option<String>, Value) {
        let response = request.send().await.expect("provider request");
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = response.json().await.expect("json body");
        (status, retry_after, body)
    }

    /// For a provider that cannot read: registers the group and returns its first code.
    async fn code_of_fresh_group(&self, provider: Provider, group: &str) -> String {
        self.group(provider.session(), group, true).await;
        self.peek(provider.session(), group).await
    }

    /// Reads (or resets) through `provider` with the right token and returns the code.
    async fn code(&self, provider: Provider, op: Op, group: &str) -> String {
        let request = provider.request(self, op, provider.session(), group, Some(TOKEN));
        let (status, _, body) = self.send(request).await;
        assert_eq!(status, StatusCode::OK, "{provider:?} {op:?}: {body}");
        provider.code_in(op, &body)
    }
}

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn assert_is_code(code: &str) {
    assert_eq!(code.len(), 22, "{code:?}");
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()), "{code:?}");
}

fn code_from_link(link: &Value) -> String {
    link.as_str()
        .and_then(|l| l.strip_prefix(LINK))
        .unwrap_or_else(|| panic!("not an invite link: {link}"))
        .to_owned()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Read,
    Reset,
}

/// One provider dialect as an adapter would speak it (wasend's two endpoint families are
/// two entries).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Provider {
    Wasend,
    WasendCode,
    Wawp,
    Gateway,
    Meta,
    Waha,
    Evolution,
}

/// What a provider is asked to refuse.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    WrongToken,
    NotAdmin,
    UnknownSession,
    Disconnected,
    UnknownGroup,
    Throttled,
}

impl Provider {
    const ALL: [Provider; 7] = [
        Provider::Wasend,
        Provider::WasendCode,
        Provider::Wawp,
        Provider::Gateway,
        Provider::Meta,
        Provider::Waha,
        Provider::Evolution,
    ];

    fn api(self) -> &'static str {
        match self {
            Provider::Wasend | Provider::WasendCode => "wasend",
            Provider::Wawp => "wawp",
            Provider::Gateway => "gateway",
            Provider::Meta => "meta_cloud",
            Provider::Waha => "waha",
            Provider::Evolution => "evolution",
        }
    }

    fn session(self) -> &'static str {
        match self {
            Provider::Meta => "meta",
            _ => "sales",
        }
    }

    fn group(self, n: u32) -> String {
        match self {
            Provider::Meta => format!("grp_{n}"),
            _ => format!("1203630412345678{n}@g.us"),
        }
    }

    fn can_read(self) -> bool {
        self != Provider::Meta
    }

    /// The provider's own request for `op`, as its adapter would build it.
    fn request(
        self,
        sim: &Sim,
        op: Op,
        session: &str,
        group: &str,
        token: Option<&str>,
    ) -> RequestBuilder {
        let base = format!("{}/{}", sim.base, self.api());
        let (s, g) = (enc(session), enc(group));
        let c = &sim.client;
        let bearer = |r: RequestBuilder| match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        };
        let header = |r: RequestBuilder, name: &str| match token {
            Some(t) => r.header(name, t),
            None => r,
        };
        match (self, op) {
            (Provider::Wasend, Op::Read) => {
                bearer(c.get(format!("{base}/{s}/groups/{g}/invite-link")))
            }
            (Provider::Wasend, Op::Reset) => {
                bearer(c.post(format!("{base}/{s}/groups/{g}/invite-link/revoke")))
            }
            (Provider::WasendCode, Op::Read) => {
                bearer(c.get(format!("{base}/{s}/groups/{g}/invite-code")))
            }
            (Provider::WasendCode, Op::Reset) => {
                bearer(c.post(format!("{base}/{s}/groups/{g}/invite-code/revoke")))
            }
            (Provider::Wawp, _) => {
                let path = match op {
                    Op::Read => "invite-code",
                    Op::Reset => "invite-code/revoke",
                };
                let auth = token
                    .map(|t| format!("&access_token={}", enc(t)))
                    .unwrap_or_default();
                let url = format!("{base}/v2/groups/{g}/{path}?instance_id={s}{auth}");
                match op {
                    Op::Read => c.get(url),
                    Op::Reset => c.post(url),
                }
            }
            (Provider::Gateway, _) => {
                let url = format!("{base}/api/v1/sessions/{s}/groups/{g}/invite");
                bearer(match op {
                    Op::Read => c.get(url),
                    Op::Reset => c.delete(url),
                })
            }
            (Provider::Meta, Op::Reset) => bearer(
                c.post(format!("{base}/v23.0/{g}/invite_link"))
                    .json(&json!({ "messaging_product": "whatsapp" })),
            ),
            (Provider::Meta, Op::Read) => panic!("meta_cloud cannot read"),
            (Provider::Waha, Op::Read) => header(
                c.get(format!("{base}/api/{s}/groups/{g}/invite-code")),
                "X-Api-Key",
            ),
            (Provider::Waha, Op::Reset) => header(
                c.post(format!("{base}/api/{s}/groups/{g}/invite-code/revoke")),
                "X-Api-Key",
            ),
            (Provider::Evolution, Op::Read) => header(
                c.get(format!("{base}/group/inviteCode/{s}?groupJid={g}")),
                "apikey",
            ),
            (Provider::Evolution, Op::Reset) => header(
                c.post(format!("{base}/group/revokeInviteCode/{s}?groupJid={g}")),
                "apikey",
            ),
        }
    }

    /// Picks the code out of a success body, checking the body's shape on the way.
    fn code_in(self, op: Op, body: &Value) -> String {
        let code = match self {
            Provider::Wasend => {
                assert_eq!(body["success"], true);
                let expires = body["expiresAt"].as_str().expect("expiresAt");
                chrono::DateTime::parse_from_rfc3339(expires).expect("RFC 3339 expiresAt");
                code_from_link(&body["inviteLink"])
            }
            Provider::WasendCode => {
                assert_eq!(body["success"], true);
                body["inviteCode"].as_str().expect("inviteCode").to_owned()
            }
            Provider::Wawp => body["code"].as_str().expect("code").to_owned(),
            Provider::Gateway => code_from_link(&body["invite"]),
            Provider::Meta => {
                assert_eq!(body["messaging_product"], "whatsapp");
                code_from_link(&body["invite_link"])
            }
            Provider::Waha => code_from_link(body),
            Provider::Evolution => {
                let code = body["inviteCode"].as_str().expect("inviteCode").to_owned();
                match op {
                    Op::Read => assert_eq!(body["inviteUrl"], format!("{LINK}{code}")),
                    Op::Reset => assert_eq!(body["revoked"], true),
                }
                code
            }
        };
        assert_is_code(&code);
        code
    }

    /// Asserts that `status` and `body` are this provider's answer to `refusal`.
    fn assert_refused(self, refusal: Refusal, status: StatusCode, body: &Value) {
        use Refusal::*;
        let context = format!("{self:?} {refusal:?}: {status} {body}");
        let expected = match (self, refusal) {
            (Provider::Wasend | Provider::WasendCode, _) => {
                assert_eq!(body["success"], false, "{context}");
                let error = body["error"].as_str().expect("error string");
                match refusal {
                    WrongToken => 401,
                    NotAdmin => 403,
                    UnknownSession => {
                        assert_eq!(error, "Session not found", "{context}");
                        404
                    }
                    UnknownGroup => {
                        assert_eq!(error, "Group not found", "{context}");
                        404
                    }
                    Disconnected => {
                        assert_eq!(error, "session disconnected", "{context}");
                        503
                    }
                    Throttled => 429,
                }
            }
            (Provider::Wawp | Provider::Waha, WrongToken) => {
                assert_eq!(body["message"], "Unauthorized", "{context}");
                401
            }
            (Provider::Wawp | Provider::Waha, NotAdmin) => {
                assert_eq!(body["exception"]["message"], "not-authorized", "{context}");
                500
            }
            (Provider::Wawp | Provider::Waha, UnknownSession) => {
                assert_eq!(body["message"], "Session not found", "{context}");
                404
            }
            (Provider::Wawp | Provider::Waha, UnknownGroup) => {
                assert_eq!(body["message"], "Group not found", "{context}");
                404
            }
            (Provider::Wawp | Provider::Waha, Disconnected) => {
                assert_eq!(body["status"], "STOPPED", "{context}");
                assert_eq!(body["session"], self.session(), "{context}");
                422
            }
            (Provider::Wawp | Provider::Waha, Throttled) => {
                assert_eq!(body["exception"]["message"], "rate-overlimit", "{context}");
                429
            }
            (Provider::Gateway, _) => {
                let (status, code) = match refusal {
                    WrongToken => (401, "unauthorized"),
                    NotAdmin => (403, "forbidden"),
                    UnknownSession | UnknownGroup => (404, "not_found"),
                    Disconnected => (501, "not_implemented"),
                    Throttled => (429, "rate_limited"),
                };
                assert_eq!(body["error"]["code"], code, "{context}");
                assert!(body["error"]["message"].is_string(), "{context}");
                assert!(body["error"]["details"].is_object(), "{context}");
                status
            }
            (Provider::Meta, _) => {
                let error = &body["error"];
                assert_eq!(error["type"], "OAuthException", "{context}");
                assert!(error["message"].is_string(), "{context}");
                assert!(error["fbtrace_id"].is_string(), "{context}");
                let (status, code) = match refusal {
                    WrongToken => (401, 190),
                    NotAdmin => (403, 10),
                    UnknownSession | UnknownGroup => (404, 100),
                    Disconnected => (503, 2),
                    Throttled => (429, 130429),
                };
                assert_eq!(error["code"], code, "{context}");
                status
            }
            (Provider::Evolution, _) => {
                let messages = body["response"]["message"].to_string();
                let (status, needle) = match refusal {
                    WrongToken => (401, "Unauthorized"),
                    NotAdmin => (404, "Error: not-authorized"),
                    UnknownSession => (404, "instance does not exist"),
                    UnknownGroup => (404, "Error: item-not-found"),
                    Disconnected => (404, "Error: Connection Closed"),
                    Throttled => (429, "Too Many Requests"),
                };
                assert_eq!(body["status"], status, "{context}");
                assert!(messages.contains(needle), "{context}");
                status
            }
        };
        assert_eq!(status.as_u16(), expected, "{context}");
    }

    /// The operation used for refusal tests: a reset, which every provider offers.
    async fn refused(
        self,
        sim: &Sim,
        refusal: Refusal,
        session: &str,
        group: &str,
        token: &str,
    ) -> (StatusCode, Option<String>) {
        let request = self.request(sim, Op::Reset, session, group, Some(token));
        let (status, retry_after, body) = sim.send(request).await;
        self.assert_refused(refusal, status, &body);
        (status, retry_after)
    }
}

// ---------------------------------------------------------------------------------------
// Success shapes

#[tokio::test]
async fn every_provider_resets_to_a_new_code_and_reads_the_current_one() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let group = provider.group(1);
        let session = provider.session();
        let before = match provider.can_read() {
            true => sim.code(provider, Op::Read, &group).await,
            false => sim.code_of_fresh_group(provider, &group).await,
        };
        assert_eq!(before, sim.peek(session, &group).await, "{provider:?}");

        let after = sim.code(provider, Op::Reset, &group).await;
        assert_ne!(after, before, "{provider:?}");
        assert_eq!(after, sim.peek(session, &group).await, "{provider:?}");
        if provider.can_read() {
            assert_eq!(sim.code(provider, Op::Read, &group).await, after);
        }
    }
}

#[tokio::test]
async fn meta_cloud_requires_messaging_product_and_deletes_without_returning_a_link() {
    let sim = Sim::start(Some(TOKEN)).await;
    let url = format!("{}/meta_cloud/v23.0/grp_9/invite_link", sim.base);

    let (status, _, body) = sim.send(sim.client.post(&url).bearer_auth(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], 100);
    assert_eq!(body["error"]["type"], "OAuthException");

    let first = sim.code(Provider::Meta, Op::Reset, "grp_9").await;
    let (status, _, body) = sim.send(sim.client.delete(&url).bearer_auth(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({ "messaging_product": "whatsapp", "success": true })
    );
    assert_ne!(sim.peek("meta", "grp_9").await, first);
    assert_eq!(sim.stats().await["routes"]["meta_cloud.delete"], 1);
}

#[tokio::test]
async fn gateway_rejects_a_group_id_that_is_not_a_jid() {
    let sim = Sim::start(Some(TOKEN)).await;
    let request = Provider::Gateway.request(&sim, Op::Read, "sales", "not-a-jid", Some(TOKEN));
    let (status, _, body) = sim.send(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "validation_error");
}

#[tokio::test]
async fn without_a_token_no_provider_asks_for_credentials() {
    let sim = Sim::start(None).await;
    for provider in Provider::ALL {
        let group = provider.group(2);
        let request = provider.request(&sim, Op::Reset, provider.session(), &group, None);
        let (status, _, body) = sim.send(request).await;
        assert_eq!(status, StatusCode::OK, "{provider:?}: {body}");
        provider.code_in(Op::Reset, &body);
    }
}

// ---------------------------------------------------------------------------------------
// Refusals, each in the provider's own shape and status

#[tokio::test]
async fn every_provider_answers_a_wrong_token_with_401_in_its_own_shape() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let group = provider.group(3);
        provider
            .refused(
                &sim,
                Refusal::WrongToken,
                provider.session(),
                &group,
                "wrong",
            )
            .await;
        let missing = provider.request(&sim, Op::Reset, provider.session(), &group, None);
        let (status, _, body) = sim.send(missing).await;
        provider.assert_refused(Refusal::WrongToken, status, &body);
    }
    let routes = &sim.stats().await["routes"];
    assert!(
        routes.as_object().is_none_or(|r| r.is_empty()),
        "unauthorized requests never reach the world: {routes}"
    );
}

#[tokio::test]
async fn every_provider_refuses_a_non_admin_session_in_its_own_shape() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let group = provider.group(4);
        sim.group(provider.session(), &group, false).await;
        provider
            .refused(&sim, Refusal::NotAdmin, provider.session(), &group, TOKEN)
            .await;
    }
}

#[tokio::test]
async fn every_provider_reports_an_unknown_session_in_its_own_shape() {
    for provider in Provider::ALL {
        let sim = Sim::strict().await;
        // Meta paths carry no session: its groups live in the fixed session "meta",
        // which a strict world does not know yet.
        let session = match provider {
            Provider::Meta => "meta",
            _ => "ghost",
        };
        provider
            .refused(
                &sim,
                Refusal::UnknownSession,
                session,
                &provider.group(5),
                TOKEN,
            )
            .await;
    }
}

#[tokio::test]
async fn every_provider_reports_a_disconnected_session_in_its_own_shape() {
    for provider in Provider::ALL {
        let sim = Sim::strict().await;
        let group = provider.group(6);
        sim.session(provider.session(), false).await;
        sim.group(provider.session(), &group, true).await;
        provider
            .refused(
                &sim,
                Refusal::Disconnected,
                provider.session(),
                &group,
                TOKEN,
            )
            .await;
    }
}

#[tokio::test]
async fn every_provider_reports_an_unknown_group_in_its_own_shape() {
    let sim = Sim::strict().await;
    for provider in Provider::ALL {
        sim.session(provider.session(), true).await;
        provider
            .refused(
                &sim,
                Refusal::UnknownGroup,
                provider.session(),
                &provider.group(7),
                TOKEN,
            )
            .await;
    }
}

// ---------------------------------------------------------------------------------------
// Injected faults and hangs

#[tokio::test]
async fn an_injected_fault_answers_its_status_and_retry_after_in_each_dialect() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL {
        let route = format!("{}.reset", provider.api());
        sim.fault(json!({ "route": route, "status": 429, "retry_after": 7 }))
            .await;
        let group = provider.group(8);
        let (_, retry_after) = provider
            .refused(&sim, Refusal::Throttled, provider.session(), &group, TOKEN)
            .await;
        assert_eq!(retry_after.as_deref(), Some("7"), "{provider:?}");
        // The fault was for one request only.
        sim.code(provider, Op::Reset, &group).await;
    }
}

#[tokio::test]
async fn a_fault_without_retry_after_sends_no_header_and_clearing_faults_stops_them() {
    let sim = Sim::start(Some(TOKEN)).await;
    sim.fault(json!({ "route": "waha", "status": 503, "count": 5 }))
        .await;
    let group = Provider::Waha.group(9);
    let request = Provider::Waha.request(&sim, Op::Read, "sales", &group, Some(TOKEN));
    let (status, retry_after, body) = sim.send(request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after, None);
    assert_eq!(body["statusCode"], 503);

    sim.control(Method::DELETE, "faults", json!({})).await;
    sim.code(Provider::Waha, Op::Read, &group).await;
}

#[tokio::test]
async fn an_injected_hang_times_out_a_client_with_a_300ms_timeout() {
    let sim = Sim::start(Some(TOKEN)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let hangs = Provider::ALL.map(|provider| {
        let sim = &sim;
        let impatient = impatient.clone();
        async move {
            if provider == Provider::WasendCode {
                // wasend's two families share one route; Wasend's own case covers it.
                return;
            }
            let group = provider.group(10);
            sim.fault(json!({ "route": format!("{}.reset", provider.api()), "hang": true }))
                .await;
            let request = provider
                .request(sim, Op::Reset, provider.session(), &group, Some(TOKEN))
                .build()
                .expect("request");
            let error = impatient
                .execute(request)
                .await
                .expect_err("a hung request is never answered");
            assert!(error.is_timeout(), "{provider:?}: {error}");
        }
    });
    join_all(hangs).await;
}

#[tokio::test]
async fn shutdown_ends_even_with_a_hung_request_in_flight() {
    let mut sim = Sim::start(Some(TOKEN)).await;
    sim.fault(json!({ "route": "gateway.read", "hang": true }))
        .await;
    let hung = Provider::Gateway.request(
        &sim,
        Op::Read,
        "sales",
        &Provider::Gateway.group(11),
        Some(TOKEN),
    );
    let hung = tokio::spawn(hung.send());
    tokio::time::sleep(Duration::from_millis(100)).await;

    sim.stop
        .take()
        .expect("running")
        .send(())
        .expect("server alive");
    let served = tokio::time::timeout(Duration::from_secs(5), &mut sim.server)
        .await
        .expect("server stops within 5s")
        .expect("server task");
    assert!(served.is_ok());
    let answer = hung
        .await
        .expect("client task")
        .expect("answered at shutdown");
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
}

// ---------------------------------------------------------------------------------------
// Control API

#[tokio::test]
async fn stats_count_requests_per_route_until_reset() {
    let sim = Sim::start(Some(TOKEN)).await;
    let group = Provider::Waha.group(12);
    sim.code(Provider::Waha, Op::Read, &group).await;
    sim.code(Provider::Waha, Op::Read, &group).await;
    sim.code(Provider::Waha, Op::Reset, &group).await;
    sim.code(Provider::Meta, Op::Reset, "grp_12").await;
    sim.code(Provider::WasendCode, Op::Read, &group).await;

    let stats = sim.stats().await;
    assert_eq!(stats["routes"]["waha.read"], 2);
    assert_eq!(stats["routes"]["waha.reset"], 1);
    assert_eq!(stats["routes"]["meta_cloud.reset"], 1);
    assert_eq!(stats["routes"]["wasend.read"], 1);
    assert_eq!(stats["resets"][format!("sales|{group}")], 1);
    assert_eq!(stats["resets"]["meta|grp_12"], 1);
    assert!(stats["max_requests_per_second"]["sales"].as_u64() >= Some(4));

    sim.control(Method::POST, "stats/reset", json!({})).await;
    let stats = sim.stats().await;
    assert_eq!(stats["routes"], json!({}));
    assert_eq!(stats["resets"][format!("sales|{group}")], 0);
}

#[tokio::test]
async fn max_concurrency_is_recorded_per_group_under_latency() {
    let sim = Sim::start(Some(TOKEN)).await;
    sim.control(Method::POST, "latency", json!({ "ms": 300 }))
        .await;
    let (busy, quiet) = (Provider::Gateway.group(13), Provider::Gateway.group(14));
    let mut calls: Vec<_> = (0..4)
        .map(|_| sim.code(Provider::Gateway, Op::Read, &busy))
        .collect();
    calls.push(sim.code(Provider::Gateway, Op::Read, &quiet));
    join_all(calls).await;

    let stats = sim.stats().await;
    assert_eq!(stats["max_concurrency"][format!("sales|{busy}")], 4);
    assert_eq!(stats["max_concurrency"][format!("sales|{quiet}")], 1);
    assert_eq!(stats["max_group_concurrency"], 4);
}

#[tokio::test]
async fn an_external_reset_is_visible_in_the_next_read_of_every_provider() {
    let sim = Sim::start(Some(TOKEN)).await;
    for provider in Provider::ALL.into_iter().filter(|p| p.can_read()) {
        let group = provider.group(15);
        let before = sim.code(provider, Op::Read, &group).await;
        let changed: Value = sim
            .control(
                Method::POST,
                "groups/external_reset",
                json!({ "session": provider.session(), "group": group }),
            )
            .await
            .json()
            .await
            .expect("external reset json");
        let code = changed["code"].as_str().expect("code");
        assert_ne!(code, before, "{provider:?}");
        assert_eq!(sim.code(provider, Op::Read, &group).await, code);
    }
}

#[tokio::test]
async fn a_registered_group_keeps_the_code_it_was_given() {
    let sim = Sim::strict().await;
    sim.control(
        Method::POST,
        "groups",
        json!({ "session": "sales", "group": "1@g.us", "code": "AbCdEfGhIjKlMnOpQrStUv" }),
    )
    .await;
    assert_eq!(
        sim.code(Provider::Waha, Op::Read, "1@g.us").await,
        "AbCdEfGhIjKlMnOpQrStUv"
    );
    let missing = sim
        .client
        .get(format!(
            "{}/_control/groups/link?session=sales&group=2%40g.us",
            sim.base
        ))
        .send()
        .await
        .expect("peek");
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}
