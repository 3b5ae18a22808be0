//! `[retention]`: how long finished commands and history rows are kept before the
//! worker prunes them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Finished commands are kept this long after they finished: the idempotency window.
    /// A `command_id` published again after its row is gone runs again.
    #[serde(with = "humantime_serde")]
    pub commands: Duration,
    /// History rows are kept this long after they occurred.
    #[serde(with = "humantime_serde")]
    pub history: Duration,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            commands: 30 * DAY,
            history: 400 * DAY,
        }
    }
}

impl RetentionSettings {
    /// The rule serde cannot express, as (key, problem).
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        // A command can come back from the broker (redelivered, or replayed from the
        // dead-letter queue) well after it finished: a window shorter than a day would
        // run such a command twice.
        if self.commands < DAY {
            return Err(("retention.commands", "must be at least 1d"));
        }
        if self.history < DAY {
            return Err(("retention.history", "must be at least 1d"));
        }
        Ok(())
    }
}
