//! `[breaker]`: when to stop calling a backend (or one of its sessions) that keeps
//! failing for everyone, and for how long.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive transient failures (5xx, timeouts, connection errors; for a session
    /// also `session_disconnected`) that open the circuit; 0 never opens it.
    pub failures: u32,
    /// The first cool-down; each failed probe doubles it, up to `max_cooldown`.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

impl BreakerSettings {
    /// The rule serde cannot express, as (key, problem).
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.cooldown.is_zero() {
            return Err(("breaker.cooldown", "must be > 0"));
        }
        if self.max_cooldown < self.cooldown {
            return Err(("breaker.max_cooldown", "must be at least breaker.cooldown"));
        }
        Ok(())
    }
}
