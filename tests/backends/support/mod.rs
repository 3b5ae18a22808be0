//! Fixtures shared by the backend tests: settings pointing at a mock server, validated
//! ids, and assertions that classify an error and check it carries no token.

use std::time::Duration;

use invite_worker::{
    backend::{self, SharedBackend},
    config::{BackendSettings, HttpProvider, Provider, Secret},
    domain::{
        BackendError, BackendKind, ErrorKind, GroupId, GroupIdStyle, LINK_PREFIX, Link, SessionId,
    },
    simulator::SimWorld,
};
use serde_json::{Value, json};
use wiremock::{Mock, MockServer, ResponseTemplate, matchers::any};

/// Contains characters that percent-encode, so an encoded leak would be caught too.
pub(crate) const TOKEN: &str = "tok-S3CR3T/9f+2c";
/// A fragment of the token that must never show up anywhere.
const TOKEN_MARK: &str = "S3CR3T";
pub(crate) const CODE: &str = "AbCdEfGhIjKlMnOpQrStUv";
pub(crate) const NEW_CODE: &str = "ZyXwVuTsRqPoNmLkJiHgFe";
pub(crate) const SESSION: &str = "sales-team";
pub(crate) const GROUP: &str = "120363041234567890@g.us";
pub(crate) const GROUP_IN_PATH: &str = "120363041234567890%40g.us";
pub(crate) const META_GROUP: &str = "Grp_123-abc";
pub(crate) const EVIL_LINK: &str = "https://evil.example/abc";

pub(crate) const TRANSIENT: bool = true;
pub(crate) const PERMANENT: bool = false;

/// The six HTTP kinds.
pub(crate) const HTTP_KINDS: [BackendKind; 6] = [
    BackendKind::Wasend,
    BackendKind::Wawp,
    BackendKind::Gateway,
    BackendKind::MetaCloud,
    BackendKind::Waha,
    BackendKind::Evolution,
];

pub(crate) fn link(code: &str) -> String {
    format!("{LINK_PREFIX}{code}")
}

pub(crate) fn settings(kind: BackendKind, base_url: &str) -> BackendSettings {
    let http = HttpProvider {
        connect_timeout: Duration::from_secs(2),
        ..HttpProvider::new(Some(base_url.to_owned()), Some(Secret::new(TOKEN)))
    };
    let provider = Provider::http_kind(kind, http).expect("an HTTP kind");
    BackendSettings {
        timeout: Duration::from_secs(5),
        ..BackendSettings::of(provider)
    }
}

/// The settings' HTTP part (every kind of these tests has one).
pub(crate) fn http(settings: &mut BackendSettings) -> &mut HttpProvider {
    settings.http_mut().expect("an HTTP kind")
}

pub(crate) fn build(settings: &BackendSettings) -> SharedBackend {
    backend::build("test", settings, &SimWorld::new(false)).expect("backend builds")
}

/// A mock server and a backend of `kind` pointed at it.
pub(crate) async fn serve(kind: BackendKind) -> (MockServer, SharedBackend) {
    let server = MockServer::start().await;
    let backend = build(&settings(kind, &server.uri()));
    (server, backend)
}

pub(crate) fn session() -> SessionId {
    SessionId::parse(SESSION).unwrap()
}

/// The group id used for `kind`: a JID, or an opaque id for meta_cloud.
pub(crate) fn group_for(kind: BackendKind) -> GroupId {
    match kind.group_style() {
        GroupIdStyle::Jid => GroupId::parse(GROUP, GroupIdStyle::Jid).unwrap(),
        GroupIdStyle::Opaque => GroupId::parse(META_GROUP, GroupIdStyle::Opaque).unwrap(),
    }
}

pub(crate) fn group() -> GroupId {
    group_for(BackendKind::Waha)
}

/// A successful reset answer of `kind` carrying `link`.
pub(crate) fn reset_body(kind: BackendKind, link: &str) -> Value {
    match kind {
        BackendKind::Wasend => json!({"success": true, "inviteLink": link}),
        BackendKind::Wawp => json!({"code": link}),
        BackendKind::Gateway => json!({"invite": link}),
        BackendKind::MetaCloud => json!({"messaging_product": "whatsapp", "invite_link": link}),
        BackendKind::Waha => json!(link),
        BackendKind::Evolution => json!({"revoked": true, "inviteCode": link}),
        BackendKind::Simulator => unreachable!("not an HTTP kind"),
    }
}

/// The result of `backend.reset_link` for the default session and the kind's group.
pub(crate) async fn reset(backend: &SharedBackend) -> Result<Link, BackendError> {
    backend
        .reset_link(&session(), &group_for(backend.kind()))
        .await
}

pub(crate) async fn read(backend: &SharedBackend) -> Result<Link, BackendError> {
    backend
        .current_link(&session(), &group_for(backend.kind()))
        .await
}

/// The error a reset of `kind` ends in when every request is answered with `response`.
pub(crate) async fn refusal(kind: BackendKind, response: ResponseTemplate) -> BackendError {
    let (server, backend) = serve(kind).await;
    Mock::given(any())
        .respond_with(response)
        .mount(&server)
        .await;
    reset(&backend)
        .await
        .expect_err("the reset should have failed")
}

/// [`refusal`] for a JSON body with `status`.
pub(crate) async fn json_refusal(kind: BackendKind, status: u16, body: Value) -> BackendError {
    refusal(kind, ResponseTemplate::new(status).set_body_json(body)).await
}

pub(crate) fn assert_link(result: Result<Link, BackendError>, code: &str) -> Link {
    let link = result.unwrap_or_else(|e| panic!("expected a link, got {e:?}"));
    assert_eq!(link.code.as_str(), code);
    link
}

/// Checks the kind, the retry class and the HTTP status of `error`, and that it
/// carries no token.
pub(crate) fn assert_error(
    error: &BackendError,
    kind: ErrorKind,
    transient: bool,
    status: Option<u16>,
) {
    assert_eq!(error.kind, kind, "{error:?}");
    assert_eq!(error.is_transient(), transient, "{error:?}");
    assert_eq!(error.http_status, status, "{error:?}");
    assert_no_token(error);
}

pub(crate) fn assert_no_token(error: &BackendError) {
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(TOKEN_MARK), "token leaked: {text}");
    }
}
