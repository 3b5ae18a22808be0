//! Who is asking: bearer tokens for the API (compared in constant time, never logged),
//! and the console's server-side sessions (an opaque id in an `HttpOnly`, `SameSite=Strict`
//! cookie; the token itself never reaches the browser after sign-in), each with the
//! anti-CSRF token its forms carry; and the refusal of cross-site posts.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    extract::FromRequestParts,
    http::{HeaderMap, Method, StatusCode, header, request::Parts},
    response::{Html, IntoResponse, Redirect, Response},
};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{AdminState, error};
use crate::config::{AdminToken, Role};

/// The console's session cookie.
pub(super) const COOKIE: &str = "invite_worker_session";
/// How long a console session lasts after sign-in.
pub(super) const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most; the oldest goes first.
const MAX_SESSIONS: usize = 10_000;

/// The holder of a valid token: its configured name and role.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub name: String,
    pub role: Role,
}

impl Caller {
    pub(crate) fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    /// Who a command or log line says made a change: `admin:<name>`.
    pub(crate) fn requested_by(&self) -> String {
        format!("admin:{}", self.name)
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// The configured tokens, kept as SHA-256 digests: each presented token is hashed and
/// compared with every one of them in constant time, so neither a token's content nor
/// its length shows in the timing.
pub(crate) struct Tokens(Vec<([u8; 32], Caller)>);

impl Tokens {
    pub(crate) fn new(tokens: &[AdminToken]) -> Self {
        Self(
            tokens
                .iter()
                .filter_map(|t| {
                    let secret = t.token.as_ref()?;
                    let caller = Caller {
                        name: t.name.clone(),
                        role: t.role,
                    };
                    Some((digest(secret.expose()), caller))
                })
                .collect(),
        )
    }

    pub(crate) fn check(&self, presented: &str) -> Option<Caller> {
        let presented = digest(presented);
        let mut found = None;
        for (d, caller) in &self.0 {
            if bool::from(d.ct_eq(&presented)) {
                found = Some(caller.clone());
            }
        }
        found
    }
}

/// A random 256-bit value as hex.
fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Session {
    caller: Caller,
    csrf: String,
    expires: Instant,
}

/// The console's sessions, in this process's memory (a restart signs everyone out),
/// keyed by the digest of their cookie's id.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

impl Sessions {
    /// A new session for `caller`: its cookie id.
    pub(crate) fn open(&self, caller: Caller) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        let session = Session {
            caller,
            csrf: random_hex(),
            expires: now + SESSION_TTL,
        };
        map.insert(digest(&id), session);
        id
    }

    fn get(&self, id: &str) -> Option<SignedIn> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get(&digest(id))?;
        (s.expires > Instant::now()).then(|| SignedIn {
            caller: s.caller.clone(),
            csrf: s.csrf.clone(),
        })
    }

    pub(crate) fn close(&self, id: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&digest(id));
    }
}

/// The API's caller, from `Authorization: Bearer <token>`; 401 without a valid one.
impl FromRequestParts<AdminState> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AdminState) -> Result<Self, Response> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented.and_then(|t| s.tokens.check(t.trim())) {
            Some(caller) => Ok(caller),
            None => {
                let mut r = error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
                Err(r)
            }
        }
    }
}

/// A console request's session: who signed in, and the anti-CSRF token of its forms.
/// Without a valid session cookie, a redirect to the sign-in page.
pub(crate) struct SignedIn {
    pub caller: Caller,
    pub csrf: String,
}

impl SignedIn {
    /// Whether `presented` is this session's anti-CSRF token (constant time).
    pub(crate) fn csrf_ok(&self, presented: &str) -> bool {
        bool::from(self.csrf.as_bytes().ct_eq(presented.as_bytes()))
    }
}

pub(super) fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl FromRequestParts<AdminState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &AdminState) -> Result<Self, Response> {
        let found = session_cookie(&parts.headers).and_then(|id| s.sessions.get(&id));
        match found {
            Some(who) => Ok(who),
            // A page asked for: sign in first. A form posted without a session (from
            // another site, whose requests carry no `SameSite=Strict` cookie): refused.
            None if parts.method == Method::GET || parts.method == Method::HEAD => {
                Err(Redirect::to("/console/signin").into_response())
            }
            None => Err((
                StatusCode::FORBIDDEN,
                Html("<!doctype html><title>Refused</title><p>Sign in first: nothing was changed.</p>"),
            )
                .into_response()),
        }
    }
}

/// Whether a form post comes from this site: a browser's `Sec-Fetch-Site` must be
/// `same-origin`, and an `Origin` header must name the host the request was sent to.
/// Clients that send neither (scripts, old browsers) rely on the anti-CSRF token and
/// the `SameSite=Strict` cookie alone.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: header::HeaderName| headers.get(name).map(|v| v.to_str().unwrap_or(""));
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
    {
        return false;
    }
    if let Some(origin) = text(header::ORIGIN) {
        let Some(host) = text(header::HOST) else {
            return false;
        };
        return origin == format!("http://{host}") || origin == format!("https://{host}");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn token(name: &str, role: Role, value: &str) -> AdminToken {
        AdminToken {
            name: name.into(),
            role,
            token: Some(Secret::new(value)),
            token_env: None,
        }
    }

    #[test]
    fn only_a_configured_token_names_its_holder() {
        let tokens = Tokens::new(&[
            token("oncall", Role::Operator, "operator-token-0123456789"),
            token("support", Role::Viewer, "viewer-token-0123456789"),
        ]);
        let who = tokens.check("viewer-token-0123456789").expect("known");
        assert_eq!((who.name.as_str(), who.role), ("support", Role::Viewer));
        assert!(tokens.check("viewer-token-012345678").is_none());
        assert!(tokens.check("").is_none());
    }

    #[test]
    fn a_cross_site_post_is_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().expect("header"));
            }
            h
        };
        assert!(same_origin(&headers(&[("host", "127.0.0.1:9465")])));
        assert!(same_origin(&headers(&[
            ("host", "127.0.0.1:9465"),
            ("origin", "http://127.0.0.1:9465"),
            ("sec-fetch-site", "same-origin"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9465"),
            ("origin", "http://evil.example"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9465"),
            ("sec-fetch-site", "cross-site"),
        ])));
        assert!(!same_origin(&headers(&[
            ("host", "127.0.0.1:9465"),
            ("origin", "null"),
        ])));
    }
}
