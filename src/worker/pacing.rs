//! Per-session pacing of backend requests (`rate_limit_per_session`): one pacer per
//! configured backend, shared by every in-flight command of the process. A session's
//! requests take slots in arrival order, and two of them never leave closer together
//! than `period / count` times the process's [share](super::replicas) (the number of
//! worker processes sharing the limit); other sessions are not slowed at all.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tokio::{sync::watch, time::Instant};

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

pub(super) struct Pacer {
    interval: Duration,
    /// How many processes share the limit; 0 holds every request back.
    share: watch::Receiver<u32>,
    sessions: Mutex<HashMap<String, Session>>,
}

/// A reserved slot; [`Pacer::wait`] turns it into permission to send.
#[derive(Debug)]
#[must_use]
pub(super) struct Ticket {
    slot: Instant,
}

impl Pacer {
    /// A pacer that has the whole limit to itself.
    #[cfg(test)]
    pub(super) fn new(rate: RateLimit) -> Self {
        Self::shared(rate, watch::channel(1).1)
    }

    /// A pacer that spaces each session's requests `share` times wider, and holds them
    /// all while `share` is 0.
    pub(super) fn shared(rate: RateLimit, share: watch::Receiver<u32>) -> Self {
        let base = rate.period / rate.count.max(1);
        let interval = (base + base * MARGIN_PERCENT / 100).max(Duration::from_micros(1));
        Self {
            interval,
            share,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    /// The least time between two requests of one session from this process now.
    pub(super) fn interval(&self) -> Duration {
        self.interval * (*self.share.borrow()).max(1)
    }

    /// How long a request for `session` reserved now would wait.
    pub(super) fn backlog(&self, session: &str) -> Duration {
        let now = Instant::now();
        self.lock()
            .get(session)
            .and_then(|s| s.next_slot)
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }

    /// Reserves the session's next slot, unless it is more than `max_wait` away: then
    /// nothing is reserved and the wait is returned.
    pub(super) fn reserve(
        &self,
        session: &str,
        max_wait: Option<Duration>,
    ) -> Result<Ticket, Duration> {
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
        s.next_slot = Some(slot + self.interval());
        Ok(Ticket { slot })
    }

    /// Sleeps until the ticket's slot and until the interval since the session's last
    /// request has passed (at the share of that moment: a slot reserved before the share
    /// grew is pushed back), and while the share is 0; then records the send. Call right
    /// before sending. Returns how long it waited (zero when the request could leave at
    /// once: no timer is set then).
    pub(super) async fn wait(&self, session: &str, ticket: Ticket) -> Duration {
        let start = Instant::now();
        let mut at = ticket.slot;
        let mut slept = false;
        let mut share = self.share.clone();
        loop {
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
                slept = true;
            }
            if *share.borrow_and_update() == 0 {
                // Held: go on once the share is known again (a closed channel means
                // the worker is stopping; the caller's cancellation ends the wait).
                if share.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                slept = true;
                continue;
            }
            let now = Instant::now();
            let mut sessions = self.lock();
            let s = sessions.entry(session.to_owned()).or_default();
            match s.last_sent.map(|t| t + self.interval()) {
                Some(earliest) if earliest > now => at = earliest,
                _ => {
                    s.last_sent = Some(now);
                    return if slept { now - start } else { Duration::ZERO };
                }
            }
        }
    }

    /// Reserves without a bound and waits: the usual way to pace one request.
    #[cfg(test)]
    pub(super) async fn acquire(&self, session: &str) -> Duration {
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
    async fn a_share_of_two_spaces_requests_twice_as_wide() {
        let (tx, rx) = watch::channel(2);
        let p = Pacer::shared(per_second(10), rx);
        let start = Instant::now();
        for _ in 0..3 {
            p.acquire("a").await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(2 * 210));
        // Back to the whole limit: the next slot was reserved at the old spacing.
        tx.send(1).unwrap();
        let t = Instant::now();
        p.acquire("a").await;
        p.acquire("a").await;
        assert_eq!(t.elapsed(), Duration::from_millis(210 + 105));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_reserved_before_the_share_grew_is_pushed_back() {
        let (tx, rx) = watch::channel(1);
        let p = Pacer::shared(per_second(10), rx);
        let first = p.reserve("a", None).unwrap();
        let second = p.reserve("a", None).unwrap();
        p.wait("a", first).await;
        let sent_first = Instant::now();
        tx.send(2).unwrap();
        p.wait("a", second).await;
        assert_eq!(Instant::now() - sent_first, Duration::from_millis(210));
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_zero_holds_requests_until_it_is_known() {
        let (tx, rx) = watch::channel(0);
        let p = std::sync::Arc::new(Pacer::shared(per_second(10), rx));
        let waiter = {
            let p = p.clone();
            tokio::spawn(async move { p.acquire("a").await })
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !waiter.is_finished(),
            "a request left while the share was 0"
        );
        tx.send(1).unwrap();
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(3));
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
