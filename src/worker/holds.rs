//! What holds a session's commands back besides its rate limit: an operator's pause
//! (read from the database every second, so every replica obeys it within about a
//! second) and the circuit breakers of its backend and of the session itself (per
//! process). A held command waits in the database, spending no attempt: a paused one
//! until it is resumed, one behind an open circuit until the circuit's next probe.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::BreakerSettings,
    domain::{BackendError, ErrorKind},
    ops::metrics as m,
    store::{ALL_SESSIONS, Store},
};

/// How often the pauses are read.
const PAUSES_EVERY: Duration = Duration::from_secs(1);
/// How long a command waits while another one probes a half-open circuit.
const PROBE_WAIT: Duration = Duration::from_millis(250);
/// A probe whose answer never came (its request was cut off) gives way to another after
/// this long.
const PROBE_LIMIT: Duration = Duration::from_secs(60);

type Key = (String, String);

/// Whether a session's next request may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Go,
    /// Go, as the probe of a half-open circuit: a request that is not sent after all
    /// hands the probe back ([`Probe`], [`Holds::unprobe`]).
    Probe,
    /// Paused by an operator: waits until resumed.
    Paused,
    /// Behind an open circuit: waits this long (until the next probe).
    Open(Duration),
}

/// The probe of a half-open circuit, taken by [`Holds::gate`] for a request not sent
/// yet. Dropped before [`Probe::sent`] (the command waits after all, or its run ends
/// without the request), it is handed back at once, so the next command probes instead
/// of every command waiting [`PROBE_LIMIT`].
pub(crate) struct Probe {
    holds: Arc<Holds>,
    backend: String,
    session: String,
    out: bool,
}

impl Probe {
    pub(crate) fn new(holds: Arc<Holds>, backend: &str, session: &str) -> Self {
        Self {
            holds,
            backend: backend.to_owned(),
            session: session.to_owned(),
            out: false,
        }
    }

    /// The request goes: the probe stays out until its answer is recorded.
    pub(crate) fn sent(mut self) {
        self.out = true;
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        if !self.out {
            self.holds.unprobe(&self.backend, &self.session);
        }
    }
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("backend", &self.backend)
            .field("session", &self.session)
            .finish()
    }
}

/// The pauses in force and the circuits of this process.
pub(crate) struct Holds {
    pauses: RwLock<HashSet<Key>>,
    circuits: Mutex<HashMap<Key, Circuit>>,
    breaker: BreakerSettings,
}

impl Holds {
    pub(crate) fn new(breaker: BreakerSettings) -> Self {
        Self {
            pauses: RwLock::default(),
            circuits: Mutex::default(),
            breaker,
        }
    }

    /// Whether `backend`/`session` may send now; taking a half-open circuit's probe when
    /// it is free.
    pub(crate) fn gate(&self, backend: &str, session: &str) -> Gate {
        if self.is_paused(backend, session) {
            return Gate::Paused;
        }
        let now = Instant::now();
        let mut circuits = self.lock();
        let keys = [key(backend, ALL_SESSIONS), key(backend, session)];
        let wait = keys
            .iter()
            .filter_map(|k| circuits.get(k))
            .map(|c| c.wait(now))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            return Gate::Open(wait);
        }
        let mut probe = false;
        for k in &keys {
            if let Some(c) = circuits.get_mut(k) {
                probe |= c.take_probe(now);
            }
        }
        if probe { Gate::Probe } else { Gate::Go }
    }

    /// Hands back a probe taken by [`Holds::gate`] whose request was not sent.
    pub(crate) fn unprobe(&self, backend: &str, session: &str) {
        let mut circuits = self.lock();
        for k in [key(backend, ALL_SESSIONS), key(backend, session)] {
            if let Some(Circuit::HalfOpen { probe_since, .. }) = circuits.get_mut(&k) {
                *probe_since = None;
            }
        }
    }

    /// Whether the session's commands are held now (paused, or behind an open circuit
    /// or another command's probe), without taking a probe.
    pub(crate) fn is_held(&self, backend: &str, session: &str) -> bool {
        if self.is_paused(backend, session) {
            return true;
        }
        let now = Instant::now();
        let circuits = self.lock();
        [key(backend, ALL_SESSIONS), key(backend, session)]
            .iter()
            .filter_map(|k| circuits.get(k))
            .any(|c| !c.wait(now).is_zero())
    }

    /// Whether the session is paused (by itself or with its whole backend).
    pub(crate) fn is_paused(&self, backend: &str, session: &str) -> bool {
        let pauses = self.pauses.read().unwrap_or_else(|p| p.into_inner());
        pauses.contains(&key(backend, ALL_SESSIONS)) || pauses.contains(&key(backend, session))
    }

    /// Records a request's result in the circuits of its backend and its session. Only
    /// transient failures count against them (for the backend, not a disconnected
    /// session, which says nothing of the others); any other answer shows the provider
    /// is there. Rate limiting counts neither way.
    pub(crate) fn record<T>(&self, backend: &str, session: &str, result: &Result<T, BackendError>) {
        let (for_backend, for_session) = match result.as_ref().map_err(|e| e.kind) {
            Ok(_) => (Some(false), Some(false)),
            Err(ErrorKind::RateLimited) => (None, None),
            Err(ErrorKind::BackendUnavailable) => (Some(true), Some(true)),
            Err(ErrorKind::SessionDisconnected) => (None, Some(true)),
            Err(_) => (Some(false), Some(false)),
        };
        if self.breaker.failures == 0 {
            return;
        }
        let now = Instant::now();
        let mut circuits = self.lock();
        for (session, failed) in [(ALL_SESSIONS, for_backend), (session, for_session)] {
            let Some(failed) = failed else { continue };
            let k = key(backend, session);
            if !failed && !circuits.contains_key(&k) {
                continue;
            }
            let c = circuits.entry(k).or_default();
            match c.record(failed, now, &self.breaker) {
                Change::Opened(cooldown) => {
                    warn!(
                        backend,
                        session,
                        ?cooldown,
                        "circuit open: calls held until the next probe"
                    );
                    m::breaker_open(backend, session, true);
                    m::breaker_trip(backend);
                }
                Change::Closed => {
                    info!(backend, session, "circuit closed: calls resume");
                    m::breaker_open(backend, session, false);
                }
                Change::None => {}
            }
            if c.is_idle() {
                circuits.remove(&key(backend, session));
            }
        }
    }

    /// Replaces the pauses in force, logging and counting what changed.
    fn set_pauses(&self, now: HashSet<Key>) {
        let mut pauses = self.pauses.write().unwrap_or_else(|p| p.into_inner());
        for (backend, session) in now.difference(&pauses) {
            info!(backend = %backend, session = %session, "paused");
            m::paused(backend, session, true);
        }
        for (backend, session) in pauses.difference(&now) {
            info!(backend = %backend, session = %session, "resumed");
            m::paused(backend, session, false);
        }
        *pauses = now;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Circuit>> {
        self.circuits.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the pauses now, then every [`PAUSES_EVERY`] until `stop`.
    pub(crate) async fn watch_pauses(&self, store: &Store, stop: &CancellationToken) {
        let mut failing = false;
        loop {
            match store.pauses().await {
                Ok(rows) => {
                    failing = false;
                    self.set_pauses(
                        rows.into_iter()
                            .map(|p| (p.backend, p.session_id))
                            .collect(),
                    );
                }
                Err(e) if !failing => {
                    failing = true;
                    warn!(error = %e, "cannot read the pauses; keeping the last ones read");
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(PAUSES_EVERY) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Reads the pauses once (before the first command is taken).
    pub(crate) async fn load_pauses(&self, store: &Store) {
        if let Ok(rows) = store.pauses().await {
            self.set_pauses(
                rows.into_iter()
                    .map(|p| (p.backend, p.session_id))
                    .collect(),
            );
        }
    }
}

fn key(backend: &str, session: &str) -> Key {
    (backend.to_owned(), session.to_owned())
}

/// One circuit: closed (counting consecutive failures), open until a probe, or half-open
/// while one probe is out.
#[derive(Debug)]
enum Circuit {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
        cooldown: Duration,
    },
    HalfOpen {
        cooldown: Duration,
        probe_since: Option<Instant>,
    },
}

impl Default for Circuit {
    fn default() -> Self {
        Self::Closed { failures: 0 }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Change {
    Opened(Duration),
    Closed,
    None,
}

impl Circuit {
    /// How long a request must wait now: zero when closed, or when a probe may go.
    fn wait(&self, now: Instant) -> Duration {
        match *self {
            Self::Closed { .. } => Duration::ZERO,
            Self::Open { until, .. } => until.saturating_duration_since(now),
            Self::HalfOpen {
                probe_since: Some(t),
                ..
            } if now.duration_since(t) < PROBE_LIMIT => PROBE_WAIT,
            Self::HalfOpen { .. } => Duration::ZERO,
        }
    }

    /// Takes the probe of a circuit whose cool-down is over; false when closed.
    fn take_probe(&mut self, now: Instant) -> bool {
        match *self {
            Self::Closed { .. } => false,
            Self::Open { cooldown, .. } | Self::HalfOpen { cooldown, .. } => {
                *self = Self::HalfOpen {
                    cooldown,
                    probe_since: Some(now),
                };
                true
            }
        }
    }

    fn record(&mut self, failed: bool, now: Instant, s: &BreakerSettings) -> Change {
        match (&*self, failed) {
            (Self::Closed { failures }, true) => {
                let failures = failures + 1;
                if failures >= s.failures {
                    *self = Self::Open {
                        until: now + s.cooldown,
                        cooldown: s.cooldown,
                    };
                    Change::Opened(s.cooldown)
                } else {
                    *self = Self::Closed { failures };
                    Change::None
                }
            }
            (Self::Closed { .. }, false) => {
                *self = Self::Closed { failures: 0 };
                Change::None
            }
            (Self::HalfOpen { cooldown, .. }, true) => {
                let cooldown = (*cooldown * 2).min(s.max_cooldown);
                *self = Self::Open {
                    until: now + cooldown,
                    cooldown,
                };
                Change::Opened(cooldown)
            }
            // A late failure of a request sent before the circuit opened.
            (Self::Open { .. }, true) => Change::None,
            (Self::Open { .. } | Self::HalfOpen { .. }, false) => {
                *self = Self::Closed { failures: 0 };
                Change::Closed
            }
        }
    }

    fn is_idle(&self) -> bool {
        matches!(self, Self::Closed { failures: 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holds() -> Holds {
        Holds::new(BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(4),
        })
    }

    fn unavailable() -> Result<(), BackendError> {
        Err(BackendError::new(ErrorKind::BackendUnavailable, "503"))
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_the_circuit_and_a_probe_closes_it() {
        let h = holds();
        for _ in 0..2 {
            h.record("b", "s1", &unavailable());
        }
        assert_eq!(h.gate("b", "s2"), Gate::Go);
        h.record("b", "s3", &unavailable());
        // The backend's circuit holds every session, for the cool-down.
        assert_eq!(h.gate("b", "s2"), Gate::Open(Duration::from_secs(1)));
        assert_eq!(h.gate("other", "s2"), Gate::Go);
        tokio::time::advance(Duration::from_secs(1)).await;
        // One probe goes; the others wait for its answer.
        assert_eq!(h.gate("b", "s2"), Gate::Probe);
        assert_eq!(h.gate("b", "s4"), Gate::Open(PROBE_WAIT));
        assert!(h.is_held("b", "s4"));
        // A probe not sent after all is handed back.
        h.unprobe("b", "s2");
        assert_eq!(h.gate("b", "s4"), Gate::Probe);
        h.record("b", "s4", &Ok(()));
        assert_eq!(h.gate("b", "s2"), Gate::Go);
        assert!(!h.is_held("b", "s2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_cool_down_up_to_the_cap() {
        let h = holds();
        for _ in 0..3 {
            h.record("b", "s", &unavailable());
        }
        for expected in [2, 4, 4] {
            tokio::time::advance(Duration::from_secs(4)).await;
            assert_eq!(h.gate("b", "s"), Gate::Probe);
            h.record("b", "s", &unavailable());
            assert_eq!(h.gate("b", "s"), Gate::Open(Duration::from_secs(expected)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_refusals_never_open_it_and_a_disconnected_session_holds_only_itself() {
        let h = holds();
        for _ in 0..10 {
            h.record(
                "b",
                "s",
                &Err::<(), _>(BackendError::new(ErrorKind::NotAdmin, "403")),
            );
            h.record(
                "b",
                "s",
                &Err::<(), _>(BackendError::new(ErrorKind::RateLimited, "429")),
            );
        }
        assert_eq!(h.gate("b", "s"), Gate::Go);
        for _ in 0..3 {
            let gone = BackendError::new(ErrorKind::SessionDisconnected, "not connected");
            h.record("b", "s", &Err::<(), _>(gone));
        }
        assert!(matches!(h.gate("b", "s"), Gate::Open(_)));
        assert_eq!(h.gate("b", "t"), Gate::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unsent_is_handed_back_and_a_sent_one_stays_out() {
        let h = Arc::new(holds());
        for _ in 0..3 {
            h.record("b", "s", &unavailable());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(h.gate("b", "s"), Gate::Probe);
        drop(Probe::new(h.clone(), "b", "s"));
        assert_eq!(h.gate("b", "s"), Gate::Probe, "handed back when dropped");
        Probe::new(h.clone(), "b", "s").sent();
        assert_eq!(
            h.gate("b", "s"),
            Gate::Open(PROBE_WAIT),
            "out until answered"
        );
        h.record("b", "s", &Ok(()));
        assert_eq!(h.gate("b", "s"), Gate::Go);
    }

    #[test]
    fn a_pause_of_a_backend_holds_all_its_sessions() {
        let h = holds();
        h.set_pauses(HashSet::from([key("b", ALL_SESSIONS), key("c", "s")]));
        assert_eq!(h.gate("b", "any"), Gate::Paused);
        assert_eq!(h.gate("c", "s"), Gate::Paused);
        assert_eq!(h.gate("c", "t"), Gate::Go);
        h.set_pauses(HashSet::new());
        assert_eq!(h.gate("b", "any"), Gate::Go);
    }
}
