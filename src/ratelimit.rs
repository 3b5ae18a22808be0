//! Per-session pacing of backend requests (`rate_limit_per_session`): one pacer per
//! configured backend, shared by every in-flight command of the process. A session's
//! requests take slots in arrival order, and two of them never leave closer together
//! than `period / count`; other sessions are not slowed at all.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::time::Instant;

use crate::config::RateLimit;

/// Extra spacing on top of `period / count`, so that jitter between sending a request
/// and the provider receiving it cannot make the provider count one request too many in
/// a window.
const MARGIN_PERCENT: u32 = 5;
/// Sessions kept before idle ones are forgotten.
const PRUNE_ABOVE: usize = 1024;

#[derive(Default)]
struct Session {
    /// The next free slot (reservations are handed out in order from here).
    next_slot: Option<Instant>,
    /// When the last request actually left.
    last_sent: Option<Instant>,
}

pub struct Pacer {
    interval: Duration,
    sessions: Mutex<HashMap<String, Session>>,
}

/// A reserved slot; [`Pacer::wait`] turns it into permission to send.
#[derive(Debug)]
#[must_use]
pub struct Ticket {
    slot: Instant,
}

impl Pacer {
    pub fn new(rate: RateLimit) -> Self {
        let base = rate.period / rate.count.max(1);
        let interval = (base + base * MARGIN_PERCENT / 100).max(Duration::from_micros(1));
        Self {
            interval,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The least time between two requests of one session.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How long a request for `session` reserved now would wait.
    pub fn backlog(&self, session: &str) -> Duration {
        let now = Instant::now();
        self.lock()
            .get(session)
            .and_then(|s| s.next_slot)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Reserves the session's next slot, unless it is more than `max_wait` away: then
    /// nothing is reserved and the wait is returned.
    pub fn reserve(&self, session: &str, max_wait: Option<Duration>) -> Result<Ticket, Duration> {
        let now = Instant::now();
        let mut sessions = self.lock();
        if sessions.len() > PRUNE_ABOVE {
            sessions.retain(|_, s| s.next_slot.is_some_and(|t| t > now));
        }
        let s = sessions.entry(session.to_owned()).or_default();
        let slot = s.next_slot.map_or(now, |t| t.max(now));
        if max_wait.is_some_and(|max| slot - now > max) {
            return Err(slot - now);
        }
        s.next_slot = Some(slot + self.interval);
        Ok(Ticket { slot })
    }

    /// Sleeps until the ticket's slot and until the interval since the session's last
    /// request has passed, then records the send. Call right before sending. Returns how
    /// long it waited (zero when the request could leave at once: no timer is set then).
    pub async fn wait(&self, session: &str, ticket: Ticket) -> Duration {
        let start = Instant::now();
        let mut at = ticket.slot;
        let mut slept = false;
        loop {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
                slept = true;
            }
            let now = Instant::now();
            let mut sessions = self.lock();
            let s = sessions.entry(session.to_owned()).or_default();
            match s.last_sent.map(|t| t + self.interval) {
                Some(earliest) if earliest > now => at = earliest,
                _ => {
                    s.last_sent = Some(now);
                    return if slept { now - start } else { Duration::ZERO };
                }
            }
        }
    }

    /// Reserves without a bound and waits: the usual way to pace one request.
    pub async fn acquire(&self, session: &str) -> Duration {
        match self.reserve(session, None) {
            Ok(ticket) => self.wait(session, ticket).await,
            Err(wait) => wait,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_second(count: u32) -> RateLimit {
        RateLimit {
            count,
            period: Duration::from_secs(1),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_session_is_spaced_and_others_are_not_slowed() {
        let p = Pacer::new(per_second(10));
        assert_eq!(p.interval(), Duration::from_millis(105));
        let start = Instant::now();
        for _ in 0..5 {
            p.acquire("a").await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(4 * 105));
        assert_eq!(p.backlog("a"), Duration::from_millis(105));
        assert_eq!(p.backlog("b"), Duration::ZERO);
        let t = Instant::now();
        p.acquire("b").await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    /// In real time: a request that leaves at once reports no wait (the metric of
    /// rate-limited requests counts only those that were held back).
    #[tokio::test]
    async fn a_free_slot_is_no_wait_and_a_taken_one_is() {
        let p = Pacer::new(per_second(1000));
        assert_eq!(p.acquire("a").await, Duration::ZERO);
        assert!(p.acquire("a").await > Duration::ZERO);
        assert_eq!(p.acquire("b").await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_get_distinct_slots_in_order() {
        let p = std::sync::Arc::new(Pacer::new(per_second(10)));
        let tickets: Vec<_> = (0..4).map(|_| p.reserve("a", None).unwrap()).collect();
        let waits: Vec<_> = tickets
            .into_iter()
            .map(|t| {
                let p = p.clone();
                tokio::spawn(async move { p.wait("a", t).await })
            })
            .collect();
        let mut got = Vec::new();
        for w in waits {
            got.push(w.await.unwrap());
        }
        let want: Vec<_> = (0..4).map(|i| Duration::from_millis(105 * i)).collect();
        assert_eq!(got, want);
    }

    #[tokio::test(start_paused = true)]
    async fn a_bounded_reservation_refuses_a_long_backlog_without_taking_a_slot() {
        let p = Pacer::new(per_second(10));
        for _ in 0..5 {
            let _ = p.reserve("a", None).unwrap();
        }
        let max = Some(Duration::from_millis(300));
        assert_eq!(p.reserve("a", max).unwrap_err(), Duration::from_millis(525));
        assert_eq!(p.backlog("a"), Duration::from_millis(525));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_sender_pushes_the_next_one_back() {
        let p = Pacer::new(per_second(10));
        let first = p.reserve("a", None).unwrap();
        let second = p.reserve("a", None).unwrap();
        // The first request is held up (say, by a database write) past the second slot.
        tokio::time::sleep(Duration::from_millis(150)).await;
        p.wait("a", first).await;
        let sent_first = Instant::now();
        p.wait("a", second).await;
        assert_eq!(Instant::now() - sent_first, Duration::from_millis(105));
    }
}
