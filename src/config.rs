//! Configuration (docs/contract.md §3): built-in defaults, then a TOML file, then
//! `INVITE_WORKER__SECTION__KEY` environment overrides, into typed [`Settings`].
//! Every problem is reported with the key it concerns.

use std::{collections::BTreeMap, fmt, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use serde::{Deserialize, Serialize};

use crate::{
    backend::BackendKind,
    command::{BackendResolver, GroupIdStyle},
};

pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";
pub const ENV_PREFIX: &str = "INVITE_WORKER__";

/// A secret value: never printed, never serialised back out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::S(s) => Secret(s),
            Raw::I(i) => Secret(i.to_string()),
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub amqp: AmqpSettings,
    pub database: DatabaseSettings,
    pub rotation: RotationSettings,
    pub retry: RetrySettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub worker: WorkerSettings,
    pub default_backend: String,
    pub backends: BTreeMap<String, BackendSettings>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: Secret,
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// Prepended to every exchange and queue name; empty in production. Lets several
    /// isolated deployments (or parallel tests) share one vhost.
    pub name_prefix: String,
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    Quorum,
    Classic,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: Secret,
    pub max_connections: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RotationSettings {
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub lead: Duration,
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
    pub enabled: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub max_attempts: u32,
    /// Waits up to this long are slept in place; longer ones park the command in a
    /// delay queue so it does not hold a consumer slot.
    #[serde(with = "humantime_serde")]
    pub max_inline_wait: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `RUST_LOG`-style filter; the `RUST_LOG` variable wins when set.
    pub filter: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// How long in-flight commands may take to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Lifetime of a group lease (cross-process mutual exclusion); renewed while held.
    #[serde(with = "humantime_serde")]
    pub group_lease: Duration,
    /// Identifies this process in leases; defaults to host and pid.
    pub instance_id: String,
}

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

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefetch: 64,
            queue_type: QueueType::Quorum,
            name_prefix: String::new(),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://invite-worker.db?mode=rwc"),
            max_connections: 16,
        }
    }
}

impl Default for RotationSettings {
    fn default() -> Self {
        Self {
            link_ttl: Duration::from_secs(7 * 24 * 3600),
            lead: Duration::from_secs(24 * 3600),
            scan_interval: Duration::from_secs(60),
            enabled: true,
        }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(300),
            max_attempts: 8,
            max_inline_wait: Duration::from_secs(2),
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(30),
            group_lease: Duration::from_secs(30),
            instance_id: String::new(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            amqp: AmqpSettings::default(),
            database: DatabaseSettings::default(),
            rotation: RotationSettings::default(),
            retry: RetrySettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
            worker: WorkerSettings::default(),
            default_backend: DEFAULT_BACKEND.into(),
            backends: BTreeMap::new(),
        }
    }
}

/// The always-present in-process simulator backend.
pub const DEFAULT_BACKEND: &str = "sim";

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Loads defaults ← `path` (or `config/default.toml` when present) ← environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(path, env)
    }

    /// As [`Settings::load`], with the environment given explicitly (for tests).
    pub fn load_from(path: Option<&Path>, env: Vec<(String, String)>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist",
                        p.display()
                    )));
                }
                if let Err(e) = std::fs::read(p) {
                    return Err(ConfigError(format!(
                        "config file {} cannot be read: {e}",
                        p.display()
                    )));
                }
                figment = figment.merge(Toml::file_exact(p));
            }
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                figment = figment.merge(Toml::file_exact(DEFAULT_CONFIG_PATH));
            }
            None => {}
        }
        // Environment keys are mapped by hand (rather than figment's Env provider) so that
        // tests can pass their own environment.
        let overrides = env.iter().filter(|(k, _)| k.starts_with(ENV_PREFIX));
        let mut env_figment = Figment::new();
        for (k, v) in overrides {
            let key = k[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            env_figment = env_figment.merge((key, parse_env_value(v)));
        }
        figment = figment.merge(env_figment);
        let mut settings: Settings = figment.extract().map_err(|e| ConfigError(describe(e)))?;
        settings
            .backends
            .entry(DEFAULT_BACKEND.to_owned())
            .or_insert_with(BackendSettings::simulator);
        settings.resolve_secrets(&env)?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_secrets(&mut self, env: &[(String, String)]) -> Result<(), ConfigError> {
        for (name, b) in &mut self.backends {
            if b.token.is_none()
                && let Some(var) = &b.token_env
            {
                match env.iter().find(|(k, _)| k == var) {
                    Some((_, v)) if !v.is_empty() => b.token = Some(Secret::new(v.clone())),
                    _ => {
                        return Err(ConfigError(format!(
                            "backends.{name}.token_env: environment variable {var} is not set"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks cross-field rules that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |key: &str, msg: &str| Err(ConfigError(format!("{key}: {msg}")));
        if self.amqp.prefetch == 0 {
            return err("amqp.prefetch", "must be at least 1");
        }
        if self.database.max_connections == 0 {
            return err("database.max_connections", "must be at least 1");
        }
        let db = self.database.url.expose();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return err(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            );
        }
        if !self.amqp.url.expose().starts_with("amqp://")
            && !self.amqp.url.expose().starts_with("amqps://")
        {
            return err("amqp.url", "must start with amqp:// or amqps://");
        }
        if self.retry.max_attempts == 0 {
            return err("retry.max_attempts", "must be at least 1");
        }
        if self.retry.initial_delay.is_zero() || self.retry.max_delay < self.retry.initial_delay {
            return err(
                "retry.max_delay",
                "must be at least retry.initial_delay, which must be > 0",
            );
        }
        if self.rotation.scan_interval.is_zero() {
            return err("rotation.scan_interval", "must be > 0");
        }
        if self.rotation.link_ttl.is_zero() {
            return err("rotation.link_ttl", "must be > 0");
        }
        if self.rotation.lead >= self.rotation.link_ttl {
            // Every link would be due as soon as it is rotated: rotated on every scan.
            return err("rotation.lead", "must be shorter than rotation.link_ttl");
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return err(
                "http.listen",
                "must be an IP address and port like \"127.0.0.1:9464\", or \"\" to disable",
            );
        }
        if self.worker.instance_id.chars().count() > 128 {
            return err("worker.instance_id", "must be at most 128 characters");
        }
        if self.amqp.name_prefix.chars().count() > 128 {
            return err("amqp.name_prefix", "must be at most 128 characters");
        }
        if !self.backends.contains_key(&self.default_backend) {
            return err(
                "default_backend",
                &format!("{:?} is not a configured backend", self.default_backend),
            );
        }
        for (name, b) in &self.backends {
            let key = |k: &str| format!("backends.{name}.{k}");
            if name.is_empty()
                || name.len() > crate::command::MAX_BACKEND_CHARS
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            {
                return err(
                    &format!("backends.{name}"),
                    &format!(
                        "backend names are 1..={} of A-Za-z0-9_-",
                        crate::command::MAX_BACKEND_CHARS
                    ),
                );
            }
            if b.kind.needs_token() && b.token.as_ref().is_none_or(|t| t.expose().is_empty()) {
                return err(&key("token"), "missing (set token or token_env)");
            }
            let needs_base = !matches!(b.kind, BackendKind::Simulator | BackendKind::MetaCloud);
            match &b.base_url {
                None if needs_base => return err(&key("base_url"), "missing"),
                Some(u) => match url::Url::parse(u) {
                    Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
                    _ => return err(&key("base_url"), "must be an http(s) URL"),
                },
                None => {}
            }
            if let Some(r) = &b.rate_limit_per_session
                && let Err(e) = RateLimit::parse(r)
            {
                return err(&key("rate_limit_per_session"), &e);
            }
            if b.timeout.is_zero() {
                return err(&key("timeout"), "must be > 0");
            }
            if let Some(e) = &b.endpoints
                && !(b.kind == BackendKind::Wasend
                    && matches!(e.as_str(), "invite-link" | "invite-code"))
            {
                return err(
                    &key("endpoints"),
                    "only for wasend: \"invite-link\" or \"invite-code\"",
                );
            }
            if let Some(v) = &b.api_version {
                let ok = b.kind == BackendKind::MetaCloud
                    && v.starts_with('v')
                    && v.len() <= 10
                    && v[1..].bytes().all(|c| c.is_ascii_digit() || c == b'.');
                if !ok {
                    return err(&key("api_version"), "only for meta_cloud, like \"v23.0\"");
                }
            }
        }
        Ok(())
    }

    /// The settings as TOML with secrets redacted (for `config check`): tokens are
    /// `[redacted]`, connection URLs show everything but their password.
    pub fn redacted_toml(&self) -> String {
        // `Secret` serialises as "[redacted]"; unset options are left out.
        let mut doc = match toml::Table::try_from(self) {
            Ok(doc) => doc,
            Err(e) => return format!("# cannot render the settings: {e}\n"),
        };
        for (section, url) in [("amqp", &self.amqp.url), ("database", &self.database.url)] {
            if let Some(t) = doc.get_mut(section).and_then(|v| v.as_table_mut()) {
                t.insert("url".into(), redact_url(url.expose()).into());
            }
        }
        toml::to_string_pretty(&doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// `scheme://user:[redacted]@host/path`: the password of a connection URL masked, and the
/// whole query when it may carry one.
fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) if q.to_ascii_lowercase().contains("pass") => (b, Some(REDACTED)),
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let authority = match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:{REDACTED}@{host}"),
                    None => format!("{userinfo}@{host}"),
                },
                None => authority.to_owned(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None => base.to_owned(),
    };
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

const REDACTED: &str = "[redacted]";

impl BackendResolver for Settings {
    fn default_backend(&self) -> &str {
        &self.default_backend
    }

    fn group_style(&self, backend: &str) -> Option<GroupIdStyle> {
        self.backends.get(backend).map(|b| b.kind.group_style())
    }
}

/// Environment values are typed like TOML scalars: numbers and booleans become such.
fn parse_env_value(v: &str) -> figment::value::Value {
    use figment::value::Value;
    if let Ok(b) = v.parse::<bool>() {
        return Value::from(b);
    }
    if let Ok(i) = v.parse::<i64>() {
        return Value::from(i);
    }
    Value::from(v.to_owned())
}

fn describe(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let key = err.path.join(".");
        let kind = err.kind.to_string();
        if key.is_empty() {
            out.push(kind)
        } else {
            out.push(format!("{key}: {kind}"))
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_from(Some(f.path()), env)
    }

    #[test]
    fn defaults_load_with_simulator_backend() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.default_backend, "sim");
        assert_eq!(s.amqp.prefetch, 64);
        assert_eq!(s.rotation.link_ttl, Duration::from_secs(7 * 86400));
        let sim = &s.backends["sim"];
        assert!(
            !sim.read_before_reset,
            "one request per revoke of a tracked group"
        );
        let s = load(
            "[backends.x]\nkind = \"waha\"\nbase_url = \"http://h\"\ntoken = \"t\"\n",
            &[],
        );
        assert!(!s.unwrap().backends["x"].read_before_reset);
    }

    #[test]
    fn durations_and_env_overrides_apply() {
        let s = load(
            "[rotation]\nlead = \"500ms\"\n[amqp]\nprefetch = 8\n",
            &[
                ("INVITE_WORKER__AMQP__PREFETCH", "16"),
                ("INVITE_WORKER__ROTATION__LINK_TTL", "2d"),
            ],
        )
        .unwrap();
        assert_eq!(s.rotation.lead, Duration::from_millis(500));
        assert_eq!(s.amqp.prefetch, 16);
        assert_eq!(s.rotation.link_ttl, Duration::from_secs(2 * 86400));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("[amqp]\nprefech = 8\n", &[]).unwrap_err().to_string();
        assert!(e.contains("prefech"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = load("[retry]\ninitial_delay = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("retry.initial_delay"), "{e}");
    }

    #[test]
    fn values_the_worker_could_not_use_are_named() {
        let long = "n".repeat(65);
        for (toml, key) in [
            ("[http]\nlisten = \"notanaddr\"\n", "http.listen"),
            ("[http]\nlisten = \"127.0.0.1:99999\"\n", "http.listen"),
            ("[rotation]\nlead = \"7d\"\n", "rotation.lead"),
            (
                "[rotation]\nlead = \"2d\"\nlink_ttl = \"1d\"\n",
                "rotation.lead",
            ),
            (
                &format!("[worker]\ninstance_id = \"{}\"\n", "i".repeat(129)),
                "worker.instance_id",
            ),
            (
                &format!("[amqp]\nname_prefix = \"{}\"\n", "p".repeat(129)),
                "amqp.name_prefix",
            ),
            (
                &format!("[backends.{long}]\nkind = \"simulator\"\n"),
                &format!("backends.{long}"),
            ),
        ] {
            let e = load(toml, &[]).unwrap_err().to_string();
            assert!(e.contains(key), "{toml}: {e}");
        }
        let ok = "[http]\nlisten = \"\"\n[rotation]\nlead = \"1d\"\nlink_ttl = \"2d\"\n";
        assert!(load(ok, &[]).is_ok());
        let name = "n".repeat(64);
        assert!(load(&format!("[backends.{name}]\nkind = \"simulator\"\n"), &[]).is_ok());
    }

    #[test]
    fn unknown_kind_is_named() {
        let e = load("[backends.x]\nkind = \"telegram\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("backends.x.kind"), "{e}");
    }

    #[test]
    fn missing_secret_is_named() {
        let e = load(
            "[backends.acme]\nkind = \"wasend\"\nbase_url = \"https://a.example\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("backends.acme.token"), "{e}");
        let e = load(
            "[backends.acme]\nkind = \"wasend\"\nbase_url = \"https://a.example\"\ntoken_env = \"NOPE_TOKEN\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("backends.acme.token_env") && e.contains("NOPE_TOKEN"),
            "{e}"
        );
    }

    #[test]
    fn token_from_env_var_and_override() {
        let s = load(
            "[backends.acme]\nkind = \"waha\"\nbase_url = \"http://h\"\ntoken_env = \"ACME_T\"\n",
            &[("ACME_T", "s3cret")],
        )
        .unwrap();
        assert_eq!(
            s.backends["acme"].token.as_ref().unwrap().expose(),
            "s3cret"
        );
        let s = load(
            "[backends.acme]\nkind = \"waha\"\nbase_url = \"http://h\"\n",
            &[("INVITE_WORKER__BACKENDS__ACME__TOKEN", "t0k")],
        )
        .unwrap();
        assert_eq!(s.backends["acme"].token.as_ref().unwrap().expose(), "t0k");
    }

    #[test]
    fn secrets_are_redacted_in_debug_and_dump() {
        let s = load(
            "[backends.acme]\nkind = \"waha\"\nbase_url = \"http://h\"\ntoken = \"hunter2\"\n",
            &[],
        )
        .unwrap();
        assert!(!format!("{s:?}").contains("hunter2"));
        let dump = s.redacted_toml();
        assert!(!dump.contains("hunter2"), "{dump}");
        assert!(dump.contains("token = \"[redacted]\""), "{dump}");
        // The dump is real TOML that reads back as settings.
        let back: Settings = toml::from_str(&dump).expect(&dump);
        assert_eq!(back.backends["acme"].kind, BackendKind::Waha);
        assert_eq!(back.rotation.lead, s.rotation.lead);
        assert_eq!(
            back.amqp.url.expose(),
            "amqp://guest:[redacted]@127.0.0.1:5672/%2f"
        );
    }

    #[test]
    fn connection_urls_lose_only_their_password() {
        for (url, shown) in [
            (
                "postgres://u:p4ss@db:5432/iw",
                "postgres://u:[redacted]@db:5432/iw",
            ),
            (
                "postgres://u@db/iw?sslmode=require",
                "postgres://u@db/iw?sslmode=require",
            ),
            (
                "postgres://db/iw?user=u&password=p4ss",
                "postgres://db/iw?[redacted]",
            ),
            ("amqps://u:p:4ss@mq/%2f", "amqps://u:[redacted]@mq/%2f"),
            (
                "sqlite://invite-worker.db?mode=rwc",
                "sqlite://invite-worker.db?mode=rwc",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }

    #[test]
    fn rate_limits_parse() {
        assert_eq!(RateLimit::parse("5/s").unwrap().count, 5);
        assert_eq!(
            RateLimit::parse("300/m").unwrap().period,
            Duration::from_secs(60)
        );
        assert!(RateLimit::parse("5/h").is_err());
        assert!(RateLimit::parse("0/s").is_err());
    }
}
