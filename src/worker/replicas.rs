//! The heartbeats of the worker processes sharing a PostgreSQL database: each records one
//! every [`HEARTBEAT`] and counts the live ones (`invite_worker_live_replicas`), so that
//! operators can see which replicas run. Rate limits do not depend on the count: every
//! process takes its requests' slots from one shared row per session (`worker::pacing`).
//! SQLite serves one process: no heartbeat is kept.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::{ops::metrics as m, store::Store};

/// How often a process records its heartbeat and counts the others.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A process whose heartbeat is older than this is not counted.
pub(super) const LIVE_FOR: Duration = Duration::from_secs(5);

/// Keeps this process's heartbeat until `stop`, then removes it.
pub(super) async fn run(store: Store, instance: String, stop: CancellationToken) {
    let mut recorded = false;
    let mut failing = false;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        match tokio::time::timeout(HEARTBEAT, store.heartbeat(&instance, LIVE_FOR)).await {
            Ok(Ok(count)) => {
                (recorded, failing) = (true, false);
                m::live_replicas(count);
            }
            Ok(Err(e)) if !failing => {
                failing = true;
                warn!(error = %e, "cannot record this worker's heartbeat");
            }
            Err(_) if !failing => {
                failing = true;
                warn!("recording this worker's heartbeat takes too long");
            }
            _ => {}
        }
    }
    // Briefly, and not when the database is out of reach (a shutdown during an outage
    // must not wait for it): a heartbeat left behind expires after `LIVE_FOR`.
    if recorded {
        match tokio::time::timeout(HEARTBEAT, store.leave(&instance)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "could not remove this worker's heartbeat"),
            Err(_) => warn!("removing this worker's heartbeat takes too long"),
        }
    }
}
