//! `[amqp]`: the broker's URL or the URLs of a cluster's nodes (each a secret), the queue
//! type and the commands queue's delivery limit, prefetch, names and confirm timeout.

use std::{fmt, time::Duration};

use serde::{Deserialize, Serialize};

use super::secret::{Secret, redact_url};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpSettings {
    pub url: AmqpUrls,
    pub prefetch: u16,
    pub queue_type: QueueType,
    /// Deliveries of one command the quorum commands queue allows before it moves the
    /// command to the dead-letter queue (`x-delivery-limit`); 0: no limit.
    pub delivery_limit: u32,
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

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: AmqpUrls::one("amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefetch: 64,
            queue_type: QueueType::Quorum,
            delivery_limit: 20,
            name_prefix: String::new(),
            confirm_timeout: Duration::from_secs(10),
        }
    }
}

/// One broker URL, or the URLs of a cluster's nodes, tried in turn. Each is a secret
/// (it may carry a password). Written as a string or an array of strings; a string
/// holding several URLs separated by commas (an environment override) is split.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AmqpUrls(Vec<Secret>);

impl AmqpUrls {
    pub fn one(url: impl Into<String>) -> Self {
        Self(vec![Secret::new(url)])
    }

    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self(urls.into_iter().map(Secret::new).collect())
    }

    /// The URLs, in the configured order.
    pub fn expose(&self) -> Vec<&str> {
        self.0.iter().map(Secret::expose).collect()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URLs joined with commas, as an environment override takes them (this
    /// exposes the passwords: for child processes, never for output).
    pub fn to_env(&self) -> String {
        self.expose().join(",")
    }

    /// As `config check` prints it: one URL as a string, several as an array, each
    /// without its password.
    pub(super) fn redacted(&self) -> toml::Value {
        let shown: Vec<toml::Value> = self
            .0
            .iter()
            .map(|u| redact_url(u.expose()).into())
            .collect();
        match <[toml::Value; 1]>::try_from(shown) {
            Ok([one]) => one,
            Err(many) => toml::Value::Array(many),
        }
    }
}

/// Splits at each comma that starts another URL (`,amqp://` or `,amqps://`), so that a
/// comma inside a URL (in a password, say) stays.
fn split_urls(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, _) in text.match_indices(',') {
        let next = text[i + 1..].trim_start();
        if next.starts_with("amqp://") || next.starts_with("amqps://") {
            out.push(text[start..i].trim().to_owned());
            start = i + 1;
        }
    }
    out.push(text[start..].trim().to_owned());
    out
}

impl fmt::Debug for AmqpUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl Serialize for AmqpUrls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for AmqpUrls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(text) => Self::new(split_urls(&text)),
            Raw::Many(urls) => Self::new(urls),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_splits_only_where_another_url_starts() {
        assert_eq!(
            split_urls("amqp://a:1/%2f, amqps://b:2/%2f,amqp://u:p,w@c:3/%2f"),
            ["amqp://a:1/%2f", "amqps://b:2/%2f", "amqp://u:p,w@c:3/%2f"]
        );
        assert_eq!(split_urls("amqp://one/%2f"), ["amqp://one/%2f"]);
    }

    #[test]
    fn one_url_prints_as_a_string_and_several_as_an_array() {
        let one = AmqpUrls::one("amqp://u:secret@h:5672/%2f");
        assert_eq!(
            one.redacted(),
            toml::Value::from("amqp://u:[redacted]@h:5672/%2f")
        );
        let two = AmqpUrls::new(["amqp://u:secret@a/%2f", "amqp://b/%2f"]);
        let shown = two.redacted().to_string();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.starts_with('['), "{shown}");
        assert!(!format!("{two:?}").contains("secret"));
    }
}
