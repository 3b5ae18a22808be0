//! Test-only crash points. `hit(name)` aborts the process (no destructors, no flush,
//! like a SIGKILL) when the environment variable `INVITE_WORKER_FAILPOINT` equals
//! `name`, so tests can kill the real binary at an exact step of a command. The variable
//! is read once; otherwise a point costs one comparison.

use std::sync::OnceLock;

/// The environment variable naming the armed point.
pub const ENV: &str = "INVITE_WORKER_FAILPOINT";

/// After the `executing` row (code being replaced, attempt) is committed, before the
/// reset request is sent.
pub const BEFORE_RESET: &str = "before_reset";
/// After the provider answered a reset, before the outcome is committed.
pub const AFTER_RESET: &str = "after_reset";
/// After the outcome is committed, before the delivery is acknowledged.
pub const AFTER_COMMIT: &str = "after_commit";
/// In the outbox relay, after rows are claimed, before they are published.
pub const BEFORE_RELAY: &str = "before_relay";

static ARMED: OnceLock<Option<String>> = OnceLock::new();

/// Aborts the process if `name` is the armed point.
pub fn hit(name: &str) {
    let armed = ARMED.get_or_init(|| std::env::var(ENV).ok().filter(|v| !v.is_empty()));
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name} hit: aborting");
        std::process::abort();
    }
}
