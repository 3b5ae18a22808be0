//! Shared plumbing for the HTTP provider adapters: one pooled client per backend, the
//! token attached and scrubbed from everything it could leak into, and a provider's
//! answer read in full; URLs are built in `url.rs`, failures classified in `classify.rs`.

mod classify;
mod url;

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use reqwest::{
    Method, RequestBuilder,
    header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER},
};
use serde_json::Value;

use crate::{
    config::{HttpProvider, Secret},
    domain::{BackendError, ErrorKind, InviteCode, Link},
};
pub use classify::{
    classify, described, first_word, not_found, parse_retry_after, transport_error,
    whatsapp_refusal,
};
use url::REDACTED;
pub use url::{encode, endpoint, redact_url};

/// Response bodies larger than this are refused rather than buffered.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Provider text kept in an error message.
const MAX_MESSAGE_CHARS: usize = 300;

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

/// [`classify()`] as a refusal classifier for [`HttpApi::call`].
pub fn classify_reply(reply: &Reply, text: &str) -> ErrorKind {
    classify(reply.status, text)
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

/// Why a backend's HTTP client cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("base_url is missing")]
    NoBaseUrl,
    #[error("token is missing")]
    NoToken,
    #[error("token is not a valid header value")]
    TokenNotAHeaderValue,
    #[error("{0:?} is not a valid header name")]
    HeaderName(&'static str),
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
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
    /// `default_base` is used when the settings name no `base_url`; `timeout` bounds
    /// each request.
    pub fn new(
        settings: &HttpProvider,
        timeout: Duration,
        auth: Auth,
        default_base: Option<&str>,
    ) -> Result<Self, BuildError> {
        let base = settings
            .base_url
            .as_deref()
            .or(default_base)
            .ok_or(BuildError::NoBaseUrl)?;
        let token = settings
            .token
            .as_ref()
            .filter(|t| !t.expose().is_empty())
            .cloned()
            .ok_or(BuildError::NoToken)?;
        let header_value = |value: String| {
            let mut value =
                HeaderValue::try_from(value).map_err(|_| BuildError::TokenNotAHeaderValue)?;
            value.set_sensitive(true);
            Ok::<_, BuildError>(value)
        };
        let auth_header = match auth {
            Auth::Bearer => Some((
                AUTHORIZATION,
                header_value(format!("Bearer {}", token.expose()))?,
            )),
            Auth::Header(name) => Some((
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| BuildError::HeaderName(name))?,
                header_value(token.expose().to_owned())?,
            )),
            Auth::Query(_) => None,
        };
        let client = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(timeout)
            // A redirect would carry custom auth headers to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("invite-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError::Client)?;
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
mod tests;
