//! Per-session request slots (`rate_limit_per_session`). Every request to a provider takes
//! a slot of its session first. Slots lie on a grid `period / count` apart plus a small
//! margin, so that no window of one period holds more than `count` requests; rotations
//! also lie on a coarser grid of their own, so that they use at most
//! `rotation.rate_share` of the rate and leave the rest to revokes.
//!
//! One process (SQLite) keeps the grid in memory ([`LocalSlots`]); processes sharing a
//! PostgreSQL database take their slots from one `session_slots` row per session, with
//! the same arithmetic (`store::deferred`), so that together they use the whole rate and
//! never more, whichever of them receives a session's commands.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use chrono::Utc;
use tokio::time::Instant;

use crate::{
    config::RateLimit,
    domain::CommandType,
    store::{SlotRequest, Store, StoreError},
    worker::holds::Probe,
};

/// Extra spacing on top of `period / count`: half of it lets a slot taken a little late
/// keep the grid ([`Grid::slack`]), the other half absorbs the jitter between taking a
/// slot and the provider receiving the request.
const MARGIN_PERCENT: u32 = 5;
/// Sessions kept in memory before idle ones are forgotten.
const PRUNE_ABOVE: usize = 4096;

/// What a request is for: revokes may use the whole rate, rotations only their share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Revoke,
    Rotation,
}

impl Class {
    pub(crate) fn of(kind: CommandType) -> Self {
        match kind {
            CommandType::RevokeInvite => Self::Revoke,
            CommandType::RotateExpiringLink => Self::Rotation,
        }
    }

    /// The order in which deferred commands of one session are claimed: revokes first.
    pub(crate) fn priority(self) -> i16 {
        match self {
            Self::Revoke => 0,
            Self::Rotation => 1,
        }
    }
}

/// A session's slot arithmetic, from its backend's rate limit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Grid {
    /// Between two slots of the session.
    pub(crate) interval: Duration,
    /// Between two slots taken by rotations.
    pub(crate) rotation_interval: Duration,
    /// A slot taken up to this late keeps the grid; later, the grid restarts at now.
    pub(crate) slack: Duration,
}

impl Grid {
    /// `rotation_share`: the part of the rate rotations may use, in (0, 1].
    pub(crate) fn new(rate: RateLimit, rotation_share: f64) -> Self {
        let base = rate.period / rate.count.max(1);
        let interval = (base + base * MARGIN_PERCENT / 100).max(Duration::from_micros(1));
        Self {
            interval,
            rotation_interval: interval.div_f64(rotation_share.clamp(0.01, 1.0)),
            slack: rate.period * MARGIN_PERCENT / 200,
        }
    }

    /// Where a slot taken at `now` starts, given the next free one `next`: on the grid
    /// when `next` is at most [`Grid::slack`] behind `now`, else at `now`.
    fn start(&self, next: Option<Instant>, now: Instant) -> Instant {
        match next {
            Some(next) if next + self.slack >= now => next,
            _ => now,
        }
    }
}

/// The answer to a slot request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Taken: send after this long (zero: now). The slot is spent whether or not the
    /// request is sent.
    Taken(Duration),
    /// Not taken: the session's next slot is further away than the request may wait,
    /// or commands of the session wait for it already; ask again after this long.
    Busy(Duration),
}

#[derive(Default)]
struct Session {
    next: Option<Instant>,
    next_rotation: Option<Instant>,
}

/// The slots of one process's sessions, in memory.
#[derive(Default)]
pub(crate) struct LocalSlots {
    sessions: Mutex<HashMap<String, Session>>,
}

impl LocalSlots {
    /// Takes the next slot of `session` for a request of `class`, unless it starts more
    /// than `lookahead` from now.
    pub(crate) fn take(
        &self,
        session: &str,
        grid: &Grid,
        class: Class,
        lookahead: Duration,
    ) -> Slot {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.len() > PRUNE_ABOVE {
            sessions.retain(|_, s| s.next.is_some_and(|t| t + grid.slack >= now));
        }
        let s = sessions.entry(session.to_owned()).or_default();
        let mut start = grid.start(s.next, now);
        if class == Class::Rotation {
            start = start.max(grid.start(s.next_rotation, now));
        }
        let wait = start.saturating_duration_since(now);
        if wait > lookahead {
            return Slot::Busy(wait - lookahead);
        }
        s.next = Some(start + grid.interval);
        if class == Class::Rotation {
            s.next_rotation = Some(start + grid.rotation_interval);
        }
        Slot::Taken(wait)
    }
}

/// A slot taken: the instant its request may leave, and the half-open circuit's probe
/// that request is, if it is one.
#[derive(Debug)]
#[must_use]
pub(crate) struct Ticket {
    at: Instant,
    probe: Option<Probe>,
}

impl Ticket {
    pub(crate) fn after(wait: Duration) -> Self {
        Self {
            at: Instant::now() + wait,
            probe: None,
        }
    }

    /// The same slot, its request the probe `probe` (if any; a probe it held before is
    /// kept).
    pub(crate) fn probing(mut self, probe: Option<Probe>) -> Self {
        if probe.is_some() {
            self.probe = probe;
        }
        self
    }

    /// Whether the request is a probe this run took already: it goes without passing
    /// the circuit again, which would find its own probe out and hold it back.
    pub(crate) fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// Takes the probe off a ticket that will not be used, for the one replacing it.
    pub(crate) fn take_probe(&mut self) -> Option<Probe> {
        self.probe.take()
    }

    /// Whether the slot is over: a request sent more than `slack` after its slot could
    /// crowd a later one, so it takes a new slot instead.
    pub(crate) fn is_stale(&self, slack: Duration) -> bool {
        Instant::now() > self.at + slack
    }

    /// Sleeps until the slot; true when it had to wait. The request then goes: a probe
    /// stays out until its answer is recorded.
    pub(crate) async fn wait(mut self) -> bool {
        let waited = if self.at <= Instant::now() {
            false
        } else {
            tokio::time::sleep_until(self.at).await;
            true
        };
        if let Some(probe) = self.probe.take() {
            probe.sent();
        }
        waited
    }
}

/// The slots of one backend's sessions: in memory for one process (SQLite), in the
/// database for processes sharing it (PostgreSQL).
pub(crate) struct Pacer {
    backend: String,
    grid: Grid,
    local: Option<LocalSlots>,
    store: Store,
}

impl Pacer {
    pub(crate) fn new(backend: &str, rate: RateLimit, rotation_share: f64, store: &Store) -> Self {
        Self {
            backend: backend.to_owned(),
            grid: Grid::new(rate, rotation_share),
            local: (!store.serves_replicas()).then(LocalSlots::default),
            store: store.clone(),
        }
    }

    pub(crate) fn grid(&self) -> &Grid {
        &self.grid
    }

    /// Takes `session`'s next slot for a request of `class`, unless it starts more than
    /// `lookahead` from now or, with `behind_due`, commands of the session deferred until
    /// now wait for slots already (they go first).
    pub(crate) async fn take(
        &self,
        session: &str,
        class: Class,
        lookahead: Duration,
        behind_due: bool,
    ) -> Result<Slot, StoreError> {
        match &self.local {
            Some(local) => {
                if behind_due
                    && self
                        .store
                        .has_due_deferred(&self.backend, session, Utc::now())
                        .await?
                {
                    return Ok(Slot::Busy(Duration::ZERO));
                }
                Ok(local.take(session, &self.grid, class, lookahead))
            }
            None => {
                let request = SlotRequest {
                    interval: self.grid.interval,
                    rotation_interval: self.grid.rotation_interval,
                    slack: self.grid.slack,
                    rotation: class == Class::Rotation,
                    lookahead,
                    behind_due,
                };
                Ok(
                    match self
                        .store
                        .take_slot(&self.backend, session, &request)
                        .await?
                    {
                        Ok(wait) => Slot::Taken(wait),
                        Err(retry) => Slot::Busy(retry),
                    },
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, period: Duration) -> RateLimit {
        RateLimit { count, period }
    }

    /// Takes slots as a sender would (waiting for each); the send instants.
    async fn send_times(slots: &LocalSlots, grid: &Grid, class: Class, n: usize) -> Vec<Instant> {
        let mut sent = Vec::new();
        while sent.len() < n {
            match slots.take("s", grid, class, Duration::MAX) {
                Slot::Taken(wait) => {
                    tokio::time::sleep(wait).await;
                    sent.push(Instant::now());
                }
                Slot::Busy(_) => panic!("the lookahead covers every slot"),
            }
        }
        sent
    }

    /// The most of `times` within any half-open window of `period`.
    fn busiest_window(times: &[Instant], period: Duration) -> usize {
        (0..times.len())
            .map(|i| {
                times[i..]
                    .iter()
                    .take_while(|t| **t - times[i] < period)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_backlog_uses_the_rate_and_never_exceeds_it_in_any_window() {
        let limit = rate(20, Duration::from_secs(1));
        let grid = Grid::new(limit, 0.5);
        let slots = LocalSlots::default();
        let times = send_times(&slots, &grid, Class::Revoke, 300).await;
        assert_eq!(busiest_window(&times, limit.period), 20);
        let took = times[299] - times[0];
        // The timer's millisecond resolution may add up to a millisecond per request.
        assert!(took >= grid.interval * 299, "{took:?}");
        // 300 requests at 20/s take 15 s at the full rate: at least 90 % of it.
        assert!(took.as_secs_f64() <= 15.0 / 0.9, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rotations_use_at_most_their_share_and_revokes_take_the_slots_between() {
        let limit = rate(10, Duration::from_secs(1));
        let grid = Grid::new(limit, 0.5);
        let slots = LocalSlots::default();
        let rotations = send_times(&slots, &grid, Class::Rotation, 20).await;
        assert_eq!(busiest_window(&rotations, limit.period), 5);
        // Right after a rotation, a revoke takes the next session slot, not the next
        // rotation slot.
        assert_eq!(
            slots.take("s", &grid, Class::Revoke, Duration::MAX),
            Slot::Taken(grid.interval)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_further_than_the_lookahead_is_not_taken() {
        let grid = Grid::new(rate(5, Duration::from_secs(1)), 1.0);
        let slots = LocalSlots::default();
        let take = |session, lookahead| slots.take(session, &grid, Class::Revoke, lookahead);
        assert_eq!(take("s", Duration::ZERO), Slot::Taken(Duration::ZERO));
        assert_eq!(take("s", Duration::ZERO), Slot::Busy(grid.interval));
        // The refusal took nothing: the next slot is still one interval away.
        assert_eq!(take("s", grid.interval), Slot::Taken(grid.interval));
        // Another session has a grid of its own.
        assert_eq!(take("t", Duration::ZERO), Slot::Taken(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_taken_a_little_late_keeps_the_grid_and_an_idle_session_restarts_it() {
        let grid = Grid::new(rate(10, Duration::from_secs(1)), 1.0);
        let slots = LocalSlots::default();
        let take = || match slots.take("s", &grid, Class::Revoke, Duration::MAX) {
            Slot::Taken(wait) => wait,
            Slot::Busy(_) => panic!("busy"),
        };
        assert_eq!(take(), Duration::ZERO);
        // Taken late, within the slack: the slot is the grid's, so the next one is one
        // interval after it, not after now.
        let late = grid.slack / 2;
        tokio::time::advance(grid.interval + late).await;
        assert_eq!(take(), Duration::ZERO);
        assert_eq!(take(), grid.interval - late);
        // After a long pause the grid starts again at now.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(take(), Duration::ZERO);
        assert_eq!(take(), grid.interval);
    }

    #[test]
    fn the_grid_keeps_a_margin_under_the_limit() {
        let grid = Grid::new(rate(20, Duration::from_secs(1)), 0.5);
        assert_eq!(grid.interval, Duration::from_micros(52_500));
        assert_eq!(grid.rotation_interval, Duration::from_micros(105_000));
        assert_eq!(grid.slack, Duration::from_millis(25));
        // 20 intervals span the period and the margin: the slack and the send jitter
        // can take 25 ms each without a window of the period holding 21 requests.
        assert!(grid.interval * 20 >= Duration::from_secs(1) + grid.slack * 2);
    }
}
