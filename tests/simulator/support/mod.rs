//! The harness of the simulator tests: a server of its own on 127.0.0.1:0 per test, a
//! client for its control API, and each provider dialect as an adapter would speak it.

mod dialect;

use invite_worker::simulator::{SimWorld, server::serve};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub(crate) const TOKEN: &str = "sim-secret-token";
pub(crate) const LINK: &str = "https://chat.whatsapp.com/";

pub(crate) use dialect::{Op, Provider, Refusal};

pub(crate) struct Sim {
    pub(crate) base: String,
    pub(crate) client: reqwest::Client,
    pub(crate) stop: Option<oneshot::Sender<()>>,
    pub(crate) server: JoinHandle<std::io::Result<()>>,
}

impl Sim {
    pub(crate) async fn start(token: Option<&str>) -> Sim {
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
    pub(crate) async fn strict() -> Sim {
        let sim = Sim::start(Some(TOKEN)).await;
        sim.control(Method::POST, "auto_create", json!({ "enabled": false }))
            .await;
        sim
    }

    pub(crate) async fn control(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> reqwest::Response {
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

    pub(crate) async fn session(&self, id: &str, connected: bool) {
        self.control(
            Method::POST,
            "sessions",
            json!({ "id": id, "connected": connected }),
        )
        .await;
    }

    pub(crate) async fn group(&self, session: &str, group: &str, admin: bool) {
        self.control(
            Method::POST,
            "groups",
            json!({ "session": session, "group": group, "admin": admin }),
        )
        .await;
    }

    pub(crate) async fn fault(&self, fault: Value) {
        self.control(Method::POST, "faults", fault).await;
    }

    pub(crate) async fn stats(&self) -> Value {
        self.client
            .get(format!("{}/_control/stats", self.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("stats json")
    }

    /// The request log (`GET /_control/requests`), of one session when given.
    pub(crate) async fn requests(&self, session: Option<&str>) -> Vec<Value> {
        let filter = session.map_or(String::new(), |s| format!("?session={}", enc(s)));
        let body: Value = self
            .client
            .get(format!("{}/_control/requests{filter}", self.base))
            .send()
            .await
            .expect("requests")
            .json()
            .await
            .expect("requests json");
        body["requests"].as_array().expect("requests array").clone()
    }

    pub(crate) async fn peek(&self, session: &str, group: &str) -> String {
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
    pub(crate) async fn send(
        &self,
        request: RequestBuilder,
    ) -> (StatusCode, Option<String>, Value) {
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
    pub(crate) async fn code_of_fresh_group(&self, provider: Provider, group: &str) -> String {
        self.group(provider.session(), group, true).await;
        self.peek(provider.session(), group).await
    }

    /// Reads (or resets) through `provider` with the right token and returns the code.
    pub(crate) async fn code(&self, provider: Provider, op: Op, group: &str) -> String {
        let request = provider.request(self, op, provider.session(), group, Some(TOKEN));
        let (status, _, body) = self.send(request).await;
        assert_eq!(status, StatusCode::OK, "{provider:?} {op:?}: {body}");
        provider.code_in(op, &body)
    }
}

pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

pub(crate) fn assert_is_code(code: &str) {
    assert_eq!(code.len(), 22, "{code:?}");
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()), "{code:?}");
}

pub(crate) fn code_from_link(link: &Value) -> String {
    link.as_str()
        .and_then(|l| l.strip_prefix(LINK))
        .unwrap_or_else(|| panic!("not an invite link: {link}"))
        .to_owned()
}
