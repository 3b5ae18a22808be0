//! Configuration (docs/contract.md §3): built-in defaults, then a TOML file, then
//! `INVITE_WORKER__SECTION__KEY` environment overrides, into typed [`Settings`].
//! Every problem is reported with the key it concerns.

use std::{collections::BTreeMap, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use serde::{Deserialize, Serialize};

use crate::domain::{BackendKind, BackendResolver, GroupIdStyle, command::MAX_BACKEND_CHARS};

mod admin;
mod amqp;
mod backend;
mod breaker;
mod retention;
mod secret;
mod telemetry;

pub use admin::{AdminSettings, AdminToken, MIN_TOKEN_CHARS, Role};
pub use amqp::{AmqpSettings, AmqpUrls, QueueType};

pub use backend::{
    BackendSettings, HttpProvider, KeyError, Provider, RateLimit, RateLimitError, WasendEndpoints,
};
pub use breaker::BreakerSettings;
pub use retention::RetentionSettings;
pub use secret::Secret;
use secret::redact_url;
pub use telemetry::TelemetrySettings;

pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";
pub const ENV_PREFIX: &str = "INVITE_WORKER__";

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
    pub breaker: BreakerSettings,
    pub retention: RetentionSettings,
    pub telemetry: TelemetrySettings,
    pub admin: AdminSettings,
    pub default_backend: String,
    pub backends: BTreeMap<String, BackendSettings>,
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
    /// The part of each session's rate limit rotations may use, in (0, 1]: the rest is
    /// kept for revokes.
    #[serde(deserialize_with = "number_or_text")]
    pub rate_share: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    pub max_attempts: u32,
    /// Retry waits up to this long are slept in place; after longer ones the command
    /// waits in the database, holding no consumer slot.
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
            rate_share: 0.5,
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
            breaker: BreakerSettings::default(),
            retention: RetentionSettings::default(),
            telemetry: TelemetrySettings::default(),
            admin: AdminSettings::default(),
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
        self.admin.resolve(env).map_err(ConfigError)?;
        for (name, b) in &mut self.backends {
            let Some(http) = b.http_mut() else {
                continue;
            };
            if http.token.is_none()
                && let Some(var) = &http.token_env
            {
                match env.iter().find(|(k, _)| k == var) {
                    Some((_, v)) if !v.is_empty() => http.token = Some(Secret::new(v.clone())),
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
        if self.amqp.url.is_empty() {
            return err("amqp.url", "must name at least one broker URL");
        }
        let several = self.amqp.url.len() > 1;
        for (i, url) in self.amqp.url.expose().into_iter().enumerate() {
            if !url.starts_with("amqp://") && !url.starts_with("amqps://") {
                let key = if several {
                    format!("amqp.url[{i}]")
                } else {
                    "amqp.url".to_owned()
                };
                return err(&key, "must start with amqp:// or amqps://");
            }
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
        if !(0.01..=1.0).contains(&self.rotation.rate_share) {
            return err("rotation.rate_share", "must be between 0.01 and 1");
        }
        if let Err((key, problem)) = self.breaker.check() {
            return err(key, problem);
        }
        if let Err((key, problem)) = self.retention.check() {
            return err(key, problem);
        }
        if let Err((key, problem)) = self.telemetry.check() {
            return err(key, problem);
        }
        if let Err((key, problem)) = self.admin.check() {
            return err(&key, &problem);
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
                || name.len() > MAX_BACKEND_CHARS
                || !name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
            {
                return err(
                    &format!("backends.{name}"),
                    &format!("backend names are 1..={} of A-Za-z0-9_-", MAX_BACKEND_CHARS),
                );
            }
            let kind = b.kind();
            if kind.needs_token() && b.secret().is_none_or(|t| t.expose().is_empty()) {
                return err(&key("token"), "missing (set token or token_env)");
            }
            let needs_base = !matches!(kind, BackendKind::Simulator | BackendKind::MetaCloud);
            match b.http().and_then(|h| h.base_url.as_ref()) {
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
                return err(&key("rate_limit_per_session"), &e.to_string());
            }
            if b.timeout.is_zero() {
                return err(&key("timeout"), "must be > 0");
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
        if let Some(t) = doc.get_mut("amqp").and_then(|v| v.as_table_mut()) {
            t.insert("url".into(), self.amqp.url.redacted());
        }
        if let Some(t) = doc.get_mut("database").and_then(|v| v.as_table_mut()) {
            t.insert("url".into(), redact_url(self.database.url.expose()).into());
        }
        toml::to_string_pretty(&doc).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

impl BackendResolver for Settings {
    fn default_backend(&self) -> &str {
        &self.default_backend
    }

    fn group_style(&self, backend: &str) -> Option<GroupIdStyle> {
        self.backends.get(backend).map(|b| b.kind().group_style())
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

/// A number written as one, or as text (environment overrides arrive as text).
fn number_or_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(f64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("{s:?} is not a number"))),
    }
}

fn describe(e: figment::Error) -> String {
    let mut out = Vec::new();
    for err in e {
        let mut key = err.path.join(".");
        let mut kind = err.kind.to_string();
        // A key the kind of a `[backends.NAME]` block does not take ([`KeyError`]) is
        // named like the keys `validate` names: `backends.NAME.KEY`.
        if let figment::error::Kind::Message(message) = &err.kind
            && err.path.first().is_some_and(|p| p == "backends")
            && let Some((name, problem)) = message.split_once(": ")
            && KeyError::KEYS.contains(&name)
        {
            key = format!("{key}.{name}");
            kind = problem.to_owned();
        }
        if key.is_empty() {
            out.push(kind)
        } else {
            out.push(format!("{key}: {kind}"))
        }
    }
    out.join("; ")
}

#[cfg(test)]
mod tests;
