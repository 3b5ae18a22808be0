//! Shared plumbing for the HTTP provider adapters: one pooled client per backend, URLs
//! built from percent-encoded segments, and the mapping of transport failures and
//! provider refusals onto the contract's error kinds, with the token scrubbed everywhere.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{
    Method, RequestBuilder,
    header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use serde_json::Value;

use super::{BackendError, ErrorKind, InviteCode, Link};
use crate::config::{BackendSettings, Secret};

/// Everything except RFC 3986's unreserved characters (`A-Za-z0-9-._~`).
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Response bodies larger than this are refused rather than buffered.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Provider text kept in an error message.
const MAX_MESSAGE_CHARS: usize = 300;
const REDACTED: &str = "[redacted]";

/// Percent-encodes a path segment or a query key/value: `@` → `%40`, `/` → `%2F`,
/// `?` → `%3F`, `%` → `%25`, and so on for everything outside the unreserved set.
pub fn encode(raw: &str) -> String {
    utf8_percent_encode(raw, NOT_UNRESERVED).to_string()
}

/// `base` (without its trailing `/`) followed by each of `segments` percent-encoded, then
/// `query`. A segment that is empty, `.` or `..` is refused, because URL parsers resolve
/// those (even percent-encoded) as navigation instead of sending them.
pub fn endpoint(
    base: &str,
    segments: &[&str],
    query: &[(&str, &str)],
) -> Result<String, BackendError> {
    let mut url = base.trim_end_matches('/').to_owned();
    for segment in segments {
        if matches!(*segment, "" | "." | "..") {
            return Err(BackendError::new(
                ErrorKind::InvalidCommand,
                format!("{segment:?} cannot be used as a URL path segment"),
            ));
        }
        url.push('/');
        url.push_str(&encode(segment));
    }
    for (i, (key, value)) in query.iter().enumerate() {
        url.push(if i == 0 { '?' } else { '&' });
        url.push_str(&encode(key));
        url.push('=');
        url.push_str(&encode(value));
    }
    Ok(url)
}

/// `url` with the value of any `access_token` query parameter replaced, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((path, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some(("access_token", _)) => format!("access_token={REDACTED}"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

/// A `Retry-After` value, as delta seconds or an HTTP date (a past date means now).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Maps a transport failure: a timeout or a failed connection is `backend_unavailable`
/// (transient); a request that cannot even be built is `backend_protocol`. The URL is
/// dropped from the error so that a token in its query cannot leak.
pub fn transport_error(error: reqwest::Error) -> BackendError {
    let error = error.without_url();
    if error.is_timeout() {
        return BackendError::new(ErrorKind::BackendUnavailable, "timeout");
    }
    let mut cause: &dyn std::error::Error = &error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if error.is_builder() {
        return BackendError::protocol(format!("cannot build the request: {cause}"));
    }
    let what = if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    BackendError::new(ErrorKind::BackendUnavailable, format!("{what}: {cause}"))
}

/// The default classification of a refusal, from its HTTP status and its lower-cased
/// message text (see [`Reply::error_text`]):
/// 1. WhatsApp's own refusal words, passed through by WhatsApp-Web style gateways, win:
///    `rate-overlimit`, `not-authorized` (not an admin), `item-not-found` (no such group);
/// 2. then the status: 401, 403, 404 (session or group by the text), 429 and 5xx;
/// 3. any other status (400, other 4xx, a 2xx reporting failure) by what the text
///    describes, else `backend_protocol`.
pub fn classify(status: u16, text: &str) -> ErrorKind {
    if let Some(kind) = whatsapp_refusal(text) {
        return kind;
    }
    match status {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::NotAdmin,
        404 => not_found(text),
        // Request Timeout: the server gave up waiting; transient like a network timeout.
        408 => ErrorKind::BackendUnavailable,
        429 => ErrorKind::RateLimited,
        // A server error that says the session is disconnected (Wasend's 503) is
        // reported as such; both are transient.
        500..=599 => match described(text) {
            Some(ErrorKind::SessionDisconnected) => ErrorKind::SessionDisconnected,
            _ => ErrorKind::BackendUnavailable,
        },
        _ => described(text).unwrap_or(ErrorKind::BackendProtocol),
    }
}

/// [`classify`] as a refusal classifier for [`HttpApi::call`].
pub fn classify_reply(reply: &Reply, text: &str) -> ErrorKind {
    classify(reply.status, text)
}

/// A "not found" refusal: the session's when the text names a session or instance,
/// else the group's.
pub fn not_found(text: &str) -> ErrorKind {
    // A page echoing wawp's request URL names its `instance_id` parameter: not a word
    // about the session.
    let text = text.replace("instance_id", "");
    if text.contains("session") || text.contains("instance") {
        ErrorKind::SessionNotFound
    } else {
        ErrorKind::GroupNotFound
    }
}

fn whatsapp_refusal(text: &str) -> Option<ErrorKind> {
    [
        ("rate-overlimit", ErrorKind::RateLimited),
        ("not-authorized", ErrorKind::NotAdmin),
        ("item-not-found", ErrorKind::GroupNotFound),
        // Baileys' error when the session's WhatsApp connection is gone (Evolution wraps
        // it in a 404): transient, unlike the 404's usual meaning.
        ("connection closed", ErrorKind::SessionDisconnected),
        // Baileys' timeout (Evolution wraps it in a 404 too): transient.
        ("timed out", ErrorKind::BackendUnavailable),
    ]
    .into_iter()
    .find_map(|(word, kind)| text.contains(word).then_some(kind))
}

fn described(text: &str) -> Option<ErrorKind> {
    let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
    if has(&["not found", "not exist"]) {
        Some(not_found(text))
    } else if has(&["admin", "not authorized"]) {
        Some(ErrorKind::NotAdmin)
    } else if has(&["not connected", "disconnected", "not working"]) {
        Some(ErrorKind::SessionDisconnected)
    } else if has(&["rate limit", "too many"]) {
        Some(ErrorKind::RateLimited)
    } else if has(&["unauthorized", "api key", "apikey"]) {
        Some(ErrorKind::Unauthorized)
    } else {
        None
    }
}

/// The invite code in a response body: the body itself when it is a bare JSON string,
/// else the first of `fields` present as a string. A code or a full link is accepted;
/// anything else is `backend_protocol`.
pub fn invite_code(body: &Value, fields: &[&str]) -> Result<InviteCode, BackendError> {
    let raw = match body {
        Value::String(s) => s.as_str(),
        Value::Object(map) => fields
            .iter()
            .find_map(|f| map.get(*f).and_then(Value::as_str))
            .ok_or_else(|| {
                BackendError::protocol(format!(
                    "response has no invite link (expected {})",
                    fields.join(" or ")
                ))
            })?,
        _ => {
            return Err(BackendError::protocol(
                "response is neither a JSON string nor an object",
            ));
        }
    };
    InviteCode::parse(&unquote(raw))
}

/// Undoes the double encoding shown in Meta's docs, where the decoded value is itself a
/// JSON string literal (`"https:\/\/chat.whatsapp.com\/…"`, quotes included).
fn unquote(raw: &str) -> Cow<'_, str> {
    let trimmed = raw.trim();
    if trimmed.len() >= 2 && trimmed.starts_with('"') && trimmed.ends_with('"') {
        let inner = serde_json::from_str::<String>(trimmed)
            .unwrap_or_else(|_| trimmed[1..trimmed.len() - 1].replace("\\/", "/"));
        return Cow::Owned(inner);
    }
    Cow::Borrowed(raw)
}

/// How the token is attached to each request.
#[derive(Clone, Copy, Debug)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer,
    /// The token as the value of this header.
    Header(&'static str),
    /// The token as the value of this query parameter.
    Query(&'static str),
}

/// A provider's answer, read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON; a body that is not JSON is `backend_protocol`.
    pub fn json(&self) -> Result<Value, BackendError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| BackendError::protocol(format!("response is not valid JSON: {e}")))
    }

    /// The body as JSON, or, when it is not JSON, its text as a JSON string if that text
    /// is an invite code or link: some servers send a bare string result as plain text
    /// (WAHA's handlers return a string, which NestJS sends unquoted).
    pub fn json_or_code(&self) -> Result<Value, BackendError> {
        self.json().or_else(|e| {
            let text = std::str::from_utf8(&self.body).map(str::trim).unwrap_or("");
            if InviteCode::parse(text).is_ok() {
                Ok(Value::String(text.to_owned()))
            } else {
                Err(e)
            }
        })
    }

    /// The invite link in the body (see [`invite_code`] and [`Reply::json_or_code`]),
    /// with no reported expiry.
    pub fn link(&self, fields: &[&str]) -> Result<Link, BackendError> {
        Ok(Link {
            code: invite_code(&self.json_or_code()?, fields)?,
            expires_at: None,
        })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        let value = self.headers.get(RETRY_AFTER)?.to_str().ok()?;
        parse_retry_after(value, SystemTime::now())
    }

    /// The provider's own words about a failure, gathered from the usual error fields
    /// (`error`, `error.code`, `error.message`, `message`, `exception.message`,
    /// `response.message`), or the raw body when it is not JSON.
    pub fn error_text(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        match serde_json::from_slice::<Value>(&self.body) {
            Ok(body) => {
                for pointer in [
                    "/error",
                    "/error/code",
                    "/error/message",
                    "/message",
                    "/exception/message",
                    "/response/message",
                ] {
                    if let Some(value) = body.pointer(pointer) {
                        collect_strings(value, &mut parts);
                    }
                }
            }
            Err(_) => {
                let raw = String::from_utf8_lossy(&self.body);
                if !raw.trim().is_empty() {
                    parts.push(raw.trim().to_owned());
                }
            }
        }
        parts.dedup();
        parts.join("; ").chars().take(MAX_MESSAGE_CHARS).collect()
    }

    /// A reply from its parts; header names or values that are not valid HTTP are left
    /// out (for tests and fuzzing).
    pub fn from_parts(status: u16, headers: &[(&str, &[u8])], body: Vec<u8>) -> Self {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                map.append(n, v);
            }
        }
        Self {
            status,
            headers: map,
            body,
        }
    }

    /// Interprets this answer: a refusal (non-2xx, or a 2xx saying it failed) is
    /// classified by `refusal_kind` from the reply and its lower-cased error text;
    /// anything else goes to `on_success`. Every error carries the HTTP status.
    pub fn interpret(
        &self,
        refusal_kind: fn(&Reply, &str) -> ErrorKind,
        on_success: impl FnOnce(&Reply) -> Result<Link, BackendError>,
    ) -> Result<Link, BackendError> {
        if self.is_refusal() {
            Err(self.refusal(refusal_kind))
        } else {
            on_success(self).map_err(|e| e.with_status(self.status))
        }
    }

    /// Whether this answer is a failure: a non-2xx status, or a 2xx JSON object saying
    /// `"success": false` (wasend) or `"revoked": false` (evolution).
    fn is_refusal(&self) -> bool {
        if !(200..300).contains(&self.status) {
            return true;
        }
        let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&self.body) else {
            return false;
        };
        ["success", "revoked"]
            .iter()
            .any(|key| match body.get(*key) {
                Some(Value::Bool(b)) => !b,
                Some(Value::String(s)) => s.eq_ignore_ascii_case("false"),
                _ => false,
            })
    }

    fn refusal(&self, refusal_kind: fn(&Reply, &str) -> ErrorKind) -> BackendError {
        let text = self.error_text();
        let kind = refusal_kind(self, &text.to_lowercase());
        let message = if text.is_empty() {
            format!("HTTP {}", self.status)
        } else {
            format!("HTTP {}: {text}", self.status)
        };
        let retry_after = kind.is_transient().then(|| self.retry_after()).flatten();
        BackendError::new(kind, message)
            .with_status(self.status)
            .with_retry_after(retry_after)
    }
}

fn collect_strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if !s.trim().is_empty() => out.push(s.trim().to_owned()),
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        _ => {}
    }
}

/// One backend's HTTP client (pooled), base URL and credentials.
pub struct HttpApi {
    client: reqwest::Client,
    base: String,
    token: Secret,
    auth: Auth,
    auth_header: Option<(HeaderName, HeaderValue)>,
}

impl HttpApi {
    /// `default_base` is used when the settings name no `base_url`.
    pub fn new(
        settings: &BackendSettings,
        auth: Auth,
        default_base: Option<&str>,
    ) -> Result<Self, String> {
        let base = settings
            .base_url
            .as_deref()
            .or(default_base)
            .ok_or("base_url is missing")?;
        let token = settings
            .secret()
            .filter(|t| !t.expose().is_empty())
            .cloned()
            .ok_or("token is missing")?;
        let header_value = |value: String| {
            let mut value =
                HeaderValue::try_from(value).map_err(|_| "token is not a valid header value")?;
            value.set_sensitive(true);
            Ok::<_, String>(value)
        };
        let auth_header = match auth {
            Auth::Bearer => Some((
                AUTHORIZATION,
                header_value(format!("Bearer {}", token.expose()))?,
            )),
            Auth::Header(name) => Some((
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("{name:?} is not a valid header name"))?,
                header_value(token.expose().to_owned())?,
            )),
            Auth::Query(_) => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            // A redirect would carry custom auth headers to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("invite-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
            token,
            auth,
            auth_header,
        })
    }

    /// A request to `segments` under the base URL with `query`, the token attached.
    pub fn request(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<RequestBuilder, BackendError> {
        let url = match self.auth {
            Auth::Query(name) => endpoint(
                &self.base,
                segments,
                &[query, &[(name, self.token.expose())]].concat(),
            )?,
            _ => endpoint(&self.base, segments, query)?,
        };
        let request = self.client.request(method, url);
        Ok(match &self.auth_header {
            Some((name, value)) => request.header(name.clone(), value.clone()),
            None => request,
        })
    }

    /// Sends `request` and reads the answer in full (status, headers, body).
    pub async fn execute(&self, request: RequestBuilder) -> Result<Reply, BackendError> {
        self.send(request).await.map_err(|e| self.scrub(e))
    }

    /// Sends `request` and reads the answer with `read` (an adapter's `read_reply`, see
    /// [`Reply::interpret`]). Errors never carry the token.
    pub async fn call(
        &self,
        request: RequestBuilder,
        read: fn(&Reply) -> Result<Link, BackendError>,
    ) -> Result<Link, BackendError> {
        let mut reply = self.execute(request).await?;
        // The body is scrubbed before it is read: an error text is cut to a length, and
        // a token echoed across the cut would otherwise keep its first part.
        reply.body = self.scrub_bytes(reply.body);
        read(&reply).map_err(|e| self.scrub(e))
    }

    /// `body` with the token (as is and percent-encoded) replaced by [`REDACTED`].
    fn scrub_bytes(&self, body: Vec<u8>) -> Vec<u8> {
        let token = self.token.expose();
        let encoded = encode(token);
        let holds = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        if token.is_empty() || !(holds(token.as_bytes()) || holds(encoded.as_bytes())) {
            return body;
        }
        String::from_utf8_lossy(&body)
            .replace(token, REDACTED)
            .replace(&encoded, REDACTED)
            .into_bytes()
    }

    async fn send(&self, request: RequestBuilder) -> Result<Reply, BackendError> {
        let request = request.build().map_err(transport_error)?;
        tracing::debug!(
            method = %request.method(),
            url = %redact_url(request.url().as_str()),
            "backend request"
        );
        let mut response = self
            .client
            .execute(request)
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(e).with_status(status))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(BackendError::protocol(format!(
                    "response body exceeds {MAX_BODY_BYTES} bytes"
                ))
                .with_status(status));
            }
            body.extend_from_slice(&chunk);
        }
        tracing::debug!(status, bytes = body.len(), "backend response");
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    /// Removes the token (as is and percent-encoded) from an error's message.
    fn scrub(&self, mut error: BackendError) -> BackendError {
        let token = self.token.expose();
        if !token.is_empty() {
            error.message = error.message.replace(token, REDACTED);
            error.message = error.message.replace(&encode(token), REDACTED);
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn encode_escapes_everything_outside_unreserved() {
        assert_eq!(encode("120363@g.us"), "120363%40g.us");
        assert_eq!(encode("a/b?c%d"), "a%2Fb%3Fc%25d");
        assert_eq!(encode("../../etc"), "..%2F..%2Fetc");
        assert_eq!(encode("a b&c=d#e+f:g"), "a%20b%26c%3Dd%23e%2Bf%3Ag");
        assert_eq!(encode("Az09-._~"), "Az09-._~");
    }

    #[test]
    fn endpoint_appends_encoded_segments_and_query_to_the_trimmed_base() {
        let url = endpoint(
            "http://h:1/base/",
            &["api", "s@1", "groups", "1@g.us"],
            &[("groupJid", "1@g.us"), ("x", "a&b=c")],
        )
        .unwrap();
        assert_eq!(
            url,
            "http://h:1/base/api/s%401/groups/1%40g.us?groupJid=1%40g.us&x=a%26b%3Dc"
        );
    }

    #[test]
    fn endpoint_refuses_dot_and_empty_segments() {
        for bad in ["..", ".", ""] {
            let e = endpoint("http://h", &["api", bad, "groups"], &[]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidCommand, "{bad:?}");
        }
        assert!(endpoint("http://h", &["..."], &[]).is_ok());
    }

    #[test]
    fn encoded_segments_cannot_escape_their_place_in_the_path() {
        let url = endpoint("http://h/base", &["a/../../b?x=%2e"], &[]).unwrap();
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(parsed.path(), "/base/a%2F..%2F..%2Fb%3Fx%3D%252e");
        assert_eq!(parsed.query(), None);
    }

    #[test]
    fn redact_url_hides_only_the_access_token() {
        assert_eq!(
            redact_url("http://h/v2/x?instance_id=s1&access_token=t0k%40&id=1"),
            "http://h/v2/x?instance_id=s1&access_token=[redacted]&id=1"
        );
        assert_eq!(redact_url("http://h/v2/x"), "http://h/v2/x");
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&earlier, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

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
        let body: Value = serde_json::from_str(
            r#"{"invite_link": "\"https:\\/\\/chat.whatsapp.com\\/AbC123\""}"#,
        )
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

    #[test]
    fn classify_prefers_whatsapp_words_then_status_then_text() {
        use ErrorKind::*;
        for (status, text, kind) in [
            (500, "rate-overlimit", RateLimited),
            (404, "error: not-authorized", NotAdmin),
            (500, "item-not-found", GroupNotFound),
            (401, "unauthorized", Unauthorized),
            (403, "", NotAdmin),
            (404, "session not found", SessionNotFound),
            (404, "the \"x\" instance does not exist", SessionNotFound),
            (404, "group not found", GroupNotFound),
            (
                404,
                "[\"revoke error\", \"error: connection closed\"]",
                SessionDisconnected,
            ),
            (429, "", RateLimited),
            (503, "", BackendUnavailable),
            (503, "session disconnected", SessionDisconnected),
            (
                404,
                "[\"revoke error\", \"error: timed out\"]",
                BackendUnavailable,
            ),
            (408, "", BackendUnavailable),
            (
                404,
                "cannot post /v2/groups/1%40g.us/invite-code?instance_id=x&access_token=[redacted]",
                GroupNotFound,
            ),
            (200, "not authorized to get invite link", NotAdmin),
            (502, "bad gateway", BackendUnavailable),
            (400, "invalid parameters", BackendProtocol),
            (400, "instance does not exist", SessionNotFound),
            (409, "", BackendProtocol),
            (200, "you are not an admin of this group", NotAdmin),
            (200, "session is not connected", SessionDisconnected),
            (200, "something odd", BackendProtocol),
            (302, "", BackendProtocol),
        ] {
            assert_eq!(classify(status, text), kind, "{status} {text}");
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
}
