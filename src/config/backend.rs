//! One `[backends.NAME]` block: which provider kind, where and how to reach it, and its
//! per-session rate limit.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;
use crate::domain::BackendKind;

/// One `[backends.NAME]` block.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    pub kind: BackendKind,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub token: Option<Secret>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub rate_limit_per_session: Option<String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// meta_cloud only.
    #[serde(default)]
    pub api_version: Option<String>,
    /// wasend only: `invite-link` (default) or `invite-code` endpoint family.
    #[serde(default)]
    pub endpoints: Option<String>,
    /// simulator only: added latency per request.
    #[serde(default, with = "humantime_serde")]
    pub latency: Option<Duration>,
    /// Read the current link before each first reset (kinds that can read), to record
    /// exactly the code replaced and notice changes made outside the worker. Off (the
    /// default): the stored code is recorded as the one being replaced, so a revoke of a
    /// tracked group costs one request and one rate-limit slot instead of two; reads
    /// still happen for untracked groups and after an interrupted attempt.
    #[serde(default)]
    pub read_before_reset: bool,
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

impl BackendSettings {
    pub fn simulator() -> Self {
        Self {
            kind: BackendKind::Simulator,
            base_url: None,
            token: None,
            token_env: None,
            rate_limit_per_session: None,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            api_version: None,
            endpoints: None,
            latency: None,
            read_before_reset: false,
        }
    }

    /// The resolved token (after validation it is present for every kind that needs one).
    pub fn secret(&self) -> Option<&Secret> {
        self.token.as_ref()
    }

    /// The effective per-session rate limit.
    pub fn rate_limit(&self) -> RateLimit {
        self.rate_limit_per_session
            .as_deref()
            .and_then(|s| RateLimit::parse(s).ok())
            .unwrap_or(RateLimit::per_second(self.kind.default_rate_per_second()))
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

    pub fn parse(s: &str) -> Result<Self, String> {
        let (n, unit) = s
            .split_once('/')
            .ok_or("expected N/s or N/m, e.g. \"5/s\"")?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a whole number"))?;
        if count == 0 {
            return Err("rate must be at least 1".into());
        }
        let period = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            other => return Err(format!("unit {other:?} must be s or m")),
        };
        Ok(Self { count, period })
    }
}
