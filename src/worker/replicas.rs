//! Sharing `rate_limit_per_session` between worker processes (PostgreSQL). Every process
//! records a heartbeat in `worker_heartbeats`; a process that counts N live processes
//! paces each session at 1/N of the limit, so that N processes together stay within it
//! whichever of them the broker hands a session's commands to (it spreads a backlog
//! evenly over its consumers).
//!
//! The count changes safely in both directions:
//! - a process sends nothing before its second heartbeat: one that registered at the
//!   same moment may be missing from the count of the first;
//! - a process that starts while others run sends nothing for [`Share::hold`] more: by
//!   then every other process has seen it (they count every [`HEARTBEAT`]) and has paced
//!   at the smaller share for a whole rate period;
//! - a smaller count (a process stopped, or its heartbeat expired) is applied only after
//!   it has held for [`Share::hold`]: the requests the gone process made within its last
//!   rate period are out of every window by then;
//! - a process that cannot record its heartbeat for [`SUSPEND_AFTER`] (others will soon
//!   count it gone) sends nothing until it can, and then starts over as a new process.
//!
//! SQLite serves one process: its share stays 1 and no heartbeat is kept.

use std::time::Duration;

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{ops::metrics as m, store::Store};

/// How often a process records its heartbeat and counts the others.
pub(super) const HEARTBEAT: Duration = Duration::from_secs(1);
/// A process whose heartbeat is older than this is not counted.
pub(super) const LIVE_FOR: Duration = Duration::from_secs(5);
/// A process that could not record its heartbeat for this long holds its requests.
pub(super) const SUSPEND_AFTER: Duration = Duration::from_millis(2500);

/// The share of the limit this process takes: the number of processes sharing it, or 0
/// while its requests are held. A pure state machine over an explicit clock.
#[derive(Debug)]
pub(super) struct Share {
    hold: Duration,
    current: u32,
    /// Requests are held until then (a process that just joined others).
    gate: Option<Instant>,
    /// A smaller count seen since then, not applied yet.
    lower: Option<(u32, Instant)>,
    last_beat: Option<Instant>,
    /// Registered by the last heartbeat; the count decides at the next one.
    registered: bool,
}

impl Share {
    /// `longest_period`: the longest `rate_limit_per_session` period of any backend.
    pub(super) fn new(longest_period: Duration) -> Self {
        Self {
            hold: 3 * HEARTBEAT + longest_period,
            current: 0,
            gate: None,
            lower: None,
            last_beat: None,
            registered: false,
        }
    }

    /// How long a joining process holds its requests, and a smaller count waits.
    pub(super) fn hold(&self) -> Duration {
        self.hold
    }

    /// A heartbeat was recorded at `now` and `count` processes (this one included) are
    /// live. Returns the share to apply.
    pub(super) fn counted(&mut self, count: u32, now: Instant) -> u32 {
        let count = count.max(1);
        let rejoined = self
            .last_beat
            .is_none_or(|t| now.duration_since(t) >= SUSPEND_AFTER);
        self.last_beat = Some(now);
        if rejoined {
            // New, or back after a gap others may have counted as gone: a process that
            // registered at the same moment may be missing from this count.
            self.registered = true;
            self.lower = None;
            self.gate = None;
            self.current = 0;
        } else if std::mem::take(&mut self.registered) {
            // Alone, take the whole limit; with others, wait until they all pace for
            // this one too.
            self.gate = (count > 1).then(|| now + self.hold);
            self.current = count;
        } else if count >= self.current {
            self.lower = None;
            self.current = count;
        } else {
            let since = match self.lower {
                Some((_, since)) => since,
                None => now,
            };
            if now.duration_since(since) >= self.hold {
                self.lower = None;
                self.current = count;
            } else {
                self.lower = Some((count, since));
            }
        }
        self.share(now)
    }

    /// No heartbeat could be recorded at `now`. Returns the share to apply.
    pub(super) fn missed(&mut self, now: Instant) -> u32 {
        if self
            .last_beat
            .is_none_or(|t| now.duration_since(t) >= SUSPEND_AFTER)
        {
            self.current = 0;
        }
        self.share(now)
    }

    fn share(&mut self, now: Instant) -> u32 {
        if self.gate.is_some_and(|g| now < g) {
            return 0;
        }
        self.gate = None;
        self.current
    }
}

/// Keeps this process's heartbeat and publishes its share until `stop`; then removes the
/// heartbeat, so that the others take over its part of the limit.
pub(super) async fn run(
    store: Store,
    instance: String,
    mut share: Share,
    tx: watch::Sender<u32>,
    stop: CancellationToken,
) {
    let mut recorded = false;
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        // A heartbeat that hangs counts as missed, so that a process whose count may be
        // stale holds its requests in time (see `SUSPEND_AFTER`).
        let counted =
            match tokio::time::timeout(HEARTBEAT, store.heartbeat(&instance, LIVE_FOR)).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {HEARTBEAT:?}")),
            };
        recorded = counted.is_ok();
        let next = match counted {
            Ok(count) => share.counted(count, Instant::now()),
            Err(e) => {
                warn!(error = %e, "cannot record the heartbeat that shares rate limits");
                share.missed(Instant::now())
            }
        };
        m::rate_limit_share(next);
        let before = *tx.borrow();
        if next != before {
            if next == 0 {
                info!(hold = ?share.hold(), "holding backend requests until every worker shares the rate limits");
            } else {
                info!(
                    share = next,
                    "rate limits shared by {next} worker process(es)"
                );
            }
            tx.send_replace(next);
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

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    /// Heartbeats every second from `t`, with these counts; the shares applied.
    fn beats(s: &mut Share, t: Instant, counts: &[u32]) -> Vec<u32> {
        (0u32..)
            .zip(counts)
            .map(|(i, &n)| s.counted(n, t + i * SEC))
            .collect()
    }

    #[test]
    fn alone_takes_the_whole_limit_from_the_second_heartbeat() {
        let mut s = Share::new(SEC);
        assert_eq!(beats(&mut s, Instant::now(), &[1, 1, 1]), [0, 1, 1]);
    }

    #[test]
    fn joining_others_holds_requests_for_the_hold_then_takes_its_part() {
        let mut s = Share::new(SEC);
        assert_eq!(s.hold(), 4 * SEC);
        let got = beats(&mut s, Instant::now(), &[3, 3, 3, 3, 3, 3]);
        assert_eq!(got, [0, 0, 0, 0, 0, 3]);
    }

    #[test]
    fn processes_starting_together_count_each_other_before_sending() {
        // Each one's first count misses the other (registered in the same moment).
        let mut s = Share::new(SEC);
        let got = beats(&mut s, Instant::now(), &[1, 2, 2, 2, 2, 2]);
        assert_eq!(got, [0, 0, 0, 0, 0, 2]);
    }

    #[test]
    fn a_larger_count_applies_at_once_and_a_smaller_one_after_the_hold() {
        let mut s = Share::new(SEC);
        let got = beats(&mut s, Instant::now(), &[1, 1, 2, 1, 1, 1, 1, 1]);
        assert_eq!(got, [0, 1, 2, 2, 2, 2, 2, 1]);
    }

    #[test]
    fn a_count_that_drops_and_comes_back_starts_the_hold_again() {
        let mut s = Share::new(SEC);
        let got = beats(&mut s, Instant::now(), &[1, 1, 2, 1, 2, 1, 1, 1, 1, 1]);
        assert_eq!(got, [0, 1, 2, 2, 2, 2, 2, 2, 2, 1]);
    }

    #[test]
    fn missed_heartbeats_hold_requests_and_a_comeback_waits_like_a_new_process() {
        let t = Instant::now();
        let mut s = Share::new(SEC);
        assert_eq!(beats(&mut s, t, &[1, 1, 2]), [0, 1, 2]);
        assert_eq!(s.missed(t + 3 * SEC), 2);
        assert_eq!(s.missed(t + 4 * SEC), 2);
        assert_eq!(s.missed(t + 5 * SEC), 0);
        let got = beats(&mut s, t + 6 * SEC, &[2, 2, 2, 2, 2, 2]);
        assert_eq!(got, [0, 0, 0, 0, 0, 2]);
        // Alone after a gap: nobody else to wait for.
        assert_eq!(s.missed(t + 15 * SEC), 0);
        assert_eq!(beats(&mut s, t + 16 * SEC, &[1, 1]), [0, 1]);
    }

    #[test]
    fn a_minute_limit_makes_the_hold_a_minute_long() {
        let s = Share::new(Duration::from_secs(60));
        assert_eq!(s.hold(), Duration::from_secs(63));
    }
}
