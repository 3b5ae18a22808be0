//! The kinds of provider a backend can be (`kind` in a backend's configuration) and
//! what each kind can do: read a link, which group-id syntax it takes, its default rate.

use std::fmt;

use serde::Serialize;

use super::command::GroupIdStyle;

/// The kinds of backend the worker can talk to (`kind` in a backend's config).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Wasend,
    Wawp,
    Gateway,
    MetaCloud,
    Waha,
    Evolution,
    Simulator,
}

impl BackendKind {
    pub const ALL: [BackendKind; 7] = [
        Self::Wasend,
        Self::Wawp,
        Self::Gateway,
        Self::MetaCloud,
        Self::Waha,
        Self::Evolution,
        Self::Simulator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wasend => "wasend",
            Self::Wawp => "wawp",
            Self::Gateway => "gateway",
            Self::MetaCloud => "meta_cloud",
            Self::Waha => "waha",
            Self::Evolution => "evolution",
            Self::Simulator => "simulator",
        }
    }

    pub fn group_style(self) -> GroupIdStyle {
        match self {
            Self::MetaCloud => GroupIdStyle::Opaque,
            _ => GroupIdStyle::Jid,
        }
    }

    /// Whether the kind can read the current link without changing it.
    pub fn can_read(self) -> bool {
        !matches!(self, Self::MetaCloud)
    }

    /// Default `rate_limit_per_session` in requests per second.
    pub fn default_rate_per_second(self) -> f64 {
        match self {
            Self::Simulator => 1000.0,
            Self::MetaCloud => 10.0,
            _ => 5.0,
        }
    }

    pub fn needs_token(self) -> bool {
        !matches!(self, Self::Simulator)
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
