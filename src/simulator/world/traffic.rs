//! What the simulator's world records of its traffic and adds to it: the log of requests
//! as they arrived, the busiest window of a session's arrivals, and the latency added to
//! each request.

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant as ClockInstant;

use super::Op;

/// One request as it reached the world: before faults and latency, as the counters see
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// What it hit, e.g. `waha.reset`.
    pub route: String,
    pub op: Op,
    pub session: String,
    pub group: String,
    /// Its arrival, measured from the world's creation on tokio's clock (so a paused
    /// clock in a test gives exact instants).
    pub at: Duration,
}

/// A request in the log; [`RequestRecord`] once its instant is made relative.
pub(super) struct Logged {
    pub(super) route: String,
    pub(super) op: Op,
    pub(super) session: String,
    pub(super) group: String,
    pub(super) at: ClockInstant,
}

/// The latency added to each request: uniform in `[min, max]` (`min` when equal).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Latency {
    pub(super) min: Duration,
    pub(super) max: Duration,
}

impl Latency {
    pub(super) fn sample(self) -> Duration {
        if self.max <= self.min {
            return self.min;
        }
        let spread = u64::try_from((self.max - self.min).as_nanos()).unwrap_or(u64::MAX);
        self.min + Duration::from_nanos(rand::rng().random_range(0..=spread))
    }
}

/// The most of `arrivals` (in any order) that lie within one half-open window
/// `[t, t + period)`, over every `t`. A busiest window can always start at an arrival, so
/// only those are tried.
pub fn busiest_window(arrivals: &[Duration], period: Duration) -> usize {
    let mut at = arrivals.to_vec();
    at.sort_unstable();
    let mut most = 0;
    let mut end = 0;
    for (start, &t) in at.iter().enumerate() {
        end = end.max(start);
        let until = t.checked_add(period);
        while end < at.len() && until.is_none_or(|u| at[end] < u) {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}
