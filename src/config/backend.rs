//! One `[backends.NAME]` block: what every kind has (rate limit, timeout, reads before
//! resets), and the keys only its kind takes (where and how to reach an HTTP provider,
//! wasend's endpoint family, meta_cloud's API version, the simulator's latency). A key
//! that the block's kind does not take stops start-up, naming it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;
use crate::domain::BackendKind;

/// One `[backends.NAME]` block.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "BackendFile", into = "BackendFile")]
pub struct BackendSettings {
    /// The kind, with the keys only it takes.
    pub provider: Provider,
    pub rate_limit_per_session: Option<String>,
    /// How long one request may take (for the simulator: how long a simulated hang
    /// lasts before it fails as a timeout).
    pub timeout: Duration,
    /// Read the current link before each first reset (kinds that can read), to record
    /// exactly the code replaced and notice changes made outside the worker. Off (the
    /// default): the stored code is recorded as the one being replaced, so a revoke of a
    /// tracked group costs one request and one rate-limit slot instead of two; reads
    /// still happen for untracked groups and after an interrupted attempt.
    pub read_before_reset: bool,
}

/// A backend's kind and the keys only that kind takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Provider {
    Wasend {
        http: HttpProvider,
        /// `None`: the `invite-link` family.
        endpoints: Option<WasendEndpoints>,
    },
    Wawp(HttpProvider),
    Gateway(HttpProvider),
    MetaCloud {
        http: HttpProvider,
        /// Like `v23.0`; `None`: the adapter's default.
        api_version: Option<String>,
    },
    Waha(HttpProvider),
    Evolution(HttpProvider),
    Simulator {
        /// Added to every request.
        latency: Option<Duration>,
    },
}

/// Where and how an HTTP provider is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProvider {
    /// Required but for meta_cloud, which defaults to the Graph API.
    pub base_url: Option<String>,
    /// The token, or after loading the one `token_env` names.
    pub token: Option<Secret>,
    /// The environment variable holding the token.
    pub token_env: Option<String>,
    pub connect_timeout: Duration,
}

/// wasend's endpoint family: the documented `invite-link` one, or the `invite-code` one
/// of its older SDK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WasendEndpoints {
    InviteLink,
    InviteCode,
}

impl WasendEndpoints {
    /// The last path segment before `/revoke`, and the value of `endpoints`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InviteLink => "invite-link",
            Self::InviteCode => "invite-code",
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl HttpProvider {
    /// The provider at `base_url` with `token`, connecting within the default time.
    pub fn new(base_url: Option<String>, token: Option<Secret>) -> Self {
        Self {
            base_url,
            token,
            token_env: None,
            connect_timeout: default_connect_timeout(),
        }
    }
}

impl Provider {
    /// The provider of the HTTP kind `kind` reached through `http`, its own keys unset;
    /// `None` for the simulator kind.
    pub fn http_kind(kind: BackendKind, http: HttpProvider) -> Option<Self> {
        Some(match kind {
            BackendKind::Wasend => Self::Wasend {
                http,
                endpoints: None,
            },
            BackendKind::Wawp => Self::Wawp(http),
            BackendKind::Gateway => Self::Gateway(http),
            BackendKind::MetaCloud => Self::MetaCloud {
                http,
                api_version: None,
            },
            BackendKind::Waha => Self::Waha(http),
            BackendKind::Evolution => Self::Evolution(http),
            BackendKind::Simulator => return None,
        })
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Wasend { .. } => BackendKind::Wasend,
            Self::Wawp(_) => BackendKind::Wawp,
            Self::Gateway(_) => BackendKind::Gateway,
            Self::MetaCloud { .. } => BackendKind::MetaCloud,
            Self::Waha(_) => BackendKind::Waha,
            Self::Evolution(_) => BackendKind::Evolution,
            Self::Simulator { .. } => BackendKind::Simulator,
        }
    }

    /// How an HTTP kind is reached; `None` for the simulator.
    pub fn http(&self) -> Option<&HttpProvider> {
        match self {
            Self::Wasend { http, .. }
            | Self::Wawp(http)
            | Self::Gateway(http)
            | Self::MetaCloud { http, .. }
            | Self::Waha(http)
            | Self::Evolution(http) => Some(http),
            Self::Simulator { .. } => None,
        }
    }

    pub fn http_mut(&mut self) -> Option<&mut HttpProvider> {
        match self {
            Self::Wasend { http, .. }
            | Self::Wawp(http)
            | Self::Gateway(http)
            | Self::MetaCloud { http, .. }
            | Self::Waha(http)
            | Self::Evolution(http) => Some(http),
            Self::Simulator { .. } => None,
        }
    }
}

impl BackendSettings {
    /// The in-process simulator, every key at its default.
    pub fn simulator() -> Self {
        Self::of(Provider::Simulator { latency: None })
    }

    /// A backend of `provider`, every common key at its default.
    pub fn of(provider: Provider) -> Self {
        Self {
            provider,
            rate_limit_per_session: None,
            timeout: default_timeout(),
            read_before_reset: false,
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.provider.kind()
    }

    /// How an HTTP kind is reached; `None` for the simulator.
    pub fn http(&self) -> Option<&HttpProvider> {
        self.provider.http()
    }

    pub fn http_mut(&mut self) -> Option<&mut HttpProvider> {
        self.provider.http_mut()
    }

    /// The resolved token (after validation it is present for every kind that needs one).
    pub fn secret(&self) -> Option<&Secret> {
        self.http().and_then(|h| h.token.as_ref())
    }

    /// The simulator's latency; `None` for other kinds.
    pub fn latency(&self) -> Option<Duration> {
        match self.provider {
            Provider::Simulator { latency } => latency,
            _ => None,
        }
    }

    /// The effective per-session rate limit.
    pub fn rate_limit(&self) -> RateLimit {
        self.rate_limit_per_session
            .as_deref()
            .and_then(|s| RateLimit::parse(s).ok())
            .unwrap_or(RateLimit::per_second(self.kind().default_rate_per_second()))
    }
}

/// Requests per session per period, from `"5/s"` or `"300/m"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    pub count: u32,
    pub period: Duration,
}

impl RateLimit {
    fn per_second(rate: f64) -> Self {
        Self {
            count: rate.max(1.0) as u32,
            period: Duration::from_secs(1),
        }
    }

    pub fn parse(s: &str) -> Result<Self, RateLimitError> {
        let (n, unit) = s.split_once('/').ok_or(RateLimitError::Form)?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| RateLimitError::Count(n.to_owned()))?;
        if count == 0 {
            return Err(RateLimitError::Zero);
        }
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            other => return Err(RateLimitError::Unit(other.to_owned())),
        };
        Ok(Self { count, period })
    }
}

/// Why a `rate_limit_per_session` cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    #[error("expected N/s or N/m, e.g. \"5/s\"")]
    Form,
    #[error("{0:?} is not a whole number")]
    Count(String),
    #[error("rate must be at least 1")]
    Zero,
    #[error("unit {0:?} must be s or m")]
    Unit(String),
}

/// A block as written in the configuration: every key any kind takes, each optional.
/// Read with each key checked against the kind ([`BackendSettings`]' `TryFrom`), and
/// written back as it was read (`config check`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendFile {
    kind: BackendKind,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    token: Option<Secret>,
    #[serde(default)]
    token_env: Option<String>,
    #[serde(default)]
    rate_limit_per_session: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    /// Unset (and left out of `config check`) for the simulator.
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    endpoints: Option<String>,
    #[serde(default, with = "humantime_serde")]
    latency: Option<Duration>,
    #[serde(default)]
    read_before_reset: bool,
}

/// A key of a `[backends.NAME]` block that its kind does not take, or with a value it
/// cannot use. Shown as `key: problem`; the loader names the block before it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct KeyError {
    pub key: &'static str,
    pub problem: &'static str,
}

impl KeyError {
    /// The keys this error can name.
    pub(super) const KEYS: [&'static str; 7] = [
        "base_url",
        "token",
        "token_env",
        "connect_timeout",
        "api_version",
        "endpoints",
        "latency",
    ];
}

fn misplaced(key: &'static str, problem: &'static str) -> Result<BackendSettings, KeyError> {
    Err(KeyError { key, problem })
}

impl TryFrom<BackendFile> for BackendSettings {
    type Error = KeyError;

    fn try_from(f: BackendFile) -> Result<Self, KeyError> {
        const ENDPOINTS: &str = "only for wasend: \"invite-link\" or \"invite-code\"";
        const API_VERSION: &str = "only for meta_cloud, like \"v23.0\"";
        let endpoints = match f.endpoints.as_deref() {
            _ if f.endpoints.is_some() && f.kind != BackendKind::Wasend => {
                return misplaced("endpoints", ENDPOINTS);
            }
            None => None,
            Some("invite-link") => Some(WasendEndpoints::InviteLink),
            Some("invite-code") => Some(WasendEndpoints::InviteCode),
            Some(_) => return misplaced("endpoints", ENDPOINTS),
        };
        if let Some(v) = &f.api_version {
            let ok = f.kind == BackendKind::MetaCloud
                && v.starts_with('v')
                && v.len() <= 10
                && v[1..].bytes().all(|c| c.is_ascii_digit() || c == b'.');
            if !ok {
                return misplaced("api_version", API_VERSION);
            }
        }
        if f.latency.is_some() && f.kind != BackendKind::Simulator {
            return misplaced("latency", "only for simulator");
        }
        let http = HttpProvider {
            base_url: f.base_url,
            token: f.token,
            token_env: f.token_env,
            connect_timeout: f.connect_timeout.unwrap_or_else(default_connect_timeout),
        };
        let provider = match f.kind {
            BackendKind::Wasend => Provider::Wasend { http, endpoints },
            BackendKind::MetaCloud => Provider::MetaCloud {
                http,
                api_version: f.api_version,
            },
            BackendKind::Simulator => {
                let http_keys = [
                    ("base_url", http.base_url.is_some()),
                    ("token", http.token.is_some()),
                    ("token_env", http.token_env.is_some()),
                    ("connect_timeout", f.connect_timeout.is_some()),
                ];
                if let Some((key, _)) = http_keys.into_iter().find(|(_, set)| *set) {
                    return misplaced(key, "only for the HTTP kinds");
                }
                Provider::Simulator { latency: f.latency }
            }
            kind => Provider::http_kind(kind, http).expect("an HTTP kind"),
        };
        Ok(Self {
            provider,
            rate_limit_per_session: f.rate_limit_per_session,
            timeout: f.timeout,
            read_before_reset: f.read_before_reset,
        })
    }
}

impl From<BackendSettings> for BackendFile {
    fn from(b: BackendSettings) -> Self {
        let kind = b.kind();
        let (http, api_version, endpoints, latency) = match b.provider {
            Provider::Wasend { http, endpoints } => (
                Some(http),
                None,
                endpoints.map(|e| e.as_str().to_owned()),
                None,
            ),
            Provider::MetaCloud { http, api_version } => (Some(http), api_version, None, None),
            Provider::Simulator { latency } => (None, None, None, latency),
            Provider::Wawp(http)
            | Provider::Gateway(http)
            | Provider::Waha(http)
            | Provider::Evolution(http) => (Some(http), None, None, None),
        };
        let connect_timeout = http.as_ref().map(|h| h.connect_timeout);
        let (base_url, token, token_env) = match http {
            Some(h) => (h.base_url, h.token, h.token_env),
            None => (None, None, None),
        };
        Self {
            kind,
            base_url,
            token,
            token_env,
            rate_limit_per_session: b.rate_limit_per_session,
            timeout: b.timeout,
            connect_timeout,
            api_version,
            endpoints,
            latency,
            read_before_reset: b.read_before_reset,
        }
    }
}
