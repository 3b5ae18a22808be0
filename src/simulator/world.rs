//! The simulator's in-memory world: sessions, groups and their invite codes, plus fault
//! injection, latency and request accounting. Shared by the in-process `simulator`
//! backend kind and by the HTTP server of `invite-worker simulate`.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::time::Instant as ClockInstant;

use chrono::{DateTime, Utc};
use rand::{Rng, distr::Alphanumeric};
use serde::{Deserialize, Serialize};

/// Requests kept in the request log (for [`SimWorld::requests`] and
/// [`SimWorld::request_times`]); older ones are dropped first.
pub const REQUEST_LOG_LEN: usize = 200_000;

/// Lifetime that the world reports for links on kinds that report expiries (wasend).
pub const SIM_LINK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Which operation a request performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Read,
    Reset,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Reset => "reset",
        }
    }
}

/// What a request hit, for counters and fault matching: e.g. `waha.reset`.
pub fn route(api: &str, op: Op) -> String {
    format!("{api}.{}", op.as_str())
}

/// A link as the world holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimLink {
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// Why the world refused a request. Each API front-end renders these in its own
/// provider's error shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimError {
    /// An injected fault: answer with this HTTP status (and Retry-After seconds).
    Fault {
        status: u16,
        retry_after: Option<u64>,
    },
    /// An injected hang: the request should not be answered (until the client times out).
    Hang,
    SessionNotFound,
    SessionDisconnected,
    GroupNotFound,
    NotAdmin,
}

/// One fault rule: the next `count` requests whose route matches `route` fail.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultSpec {
    /// `*`, an API (`waha`), an operation (`*.reset`) or a route (`waha.reset`).
    #[serde(default = "any_route")]
    pub route: String,
    #[serde(default = "one")]
    pub count: u32,
    /// HTTP status to answer; ignored when `hang` is set.
    #[serde(default = "server_error")]
    pub status: u16,
    #[serde(default)]
    pub retry_after: Option<u64>,
    #[serde(default)]
    pub hang: bool,
}

fn any_route() -> String {
    "*".into()
}
fn one() -> u32 {
    1
}
fn server_error() -> u16 {
    500
}

fn route_matches(pattern: &str, route: &str) -> bool {
    if pattern == "*" || pattern == route {
        return true;
    }
    let (api, op) = route.split_once('.').unwrap_or((route, ""));
    match pattern.split_once('.') {
        Some((pa, po)) => (pa == "*" || pa == api) && (po == "*" || po == op),
        None => pattern == api,
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionSpec {
    pub id: String,
    #[serde(default = "yes")]
    pub connected: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupSpec {
    pub session: String,
    pub group: String,
    #[serde(default = "yes")]
    pub admin: bool,
    /// Initial code; random when absent.
    #[serde(default)]
    pub code: Option<String>,
}

fn yes() -> bool {
    true
}

struct Group {
    admin: bool,
    link: SimLink,
    resets: u64,
    in_flight: u32,
    max_in_flight: u32,
}

#[derive(Default)]
struct State {
    sessions: HashMap<String, bool>,
    groups: HashMap<(String, String), Group>,
    faults: Vec<FaultSpec>,
    route_counts: HashMap<String, u64>,
    /// Request instants per session, for the rate-window statistic (bounded).
    session_requests: HashMap<String, VecDeque<Instant>>,
    max_in_any_second: HashMap<String, u32>,
    /// Recent requests, oldest first (bounded by [`REQUEST_LOG_LEN`]).
    request_log: VecDeque<Logged>,
    latency: Latency,
    auto_create: bool,
    in_flight_total: u32,
    max_in_flight_total: u32,
}

/// Counters returned by the control API and used by tests.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stats {
    pub routes: HashMap<String, u64>,
    /// `session|group` → resets performed.
    pub resets: HashMap<String, u64>,
    /// `session|group` → most requests seen in flight at once for that group.
    pub max_concurrency: HashMap<String, u32>,
    /// The largest per-group concurrency over all groups.
    pub max_group_concurrency: u32,
    /// `session` → most requests that session made within any one-second window.
    pub max_requests_per_second: HashMap<String, u32>,
    /// Most requests in flight at once over all groups.
    pub max_total_concurrency: u32,
}

/// The world. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct SimWorld {
    state: Arc<Mutex<State>>,
    /// The origin of [`RequestRecord::at`].
    started: ClockInstant,
}

impl Default for SimWorld {
    fn default() -> Self {
        Self::new(true)
    }
}

pub fn random_code() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(22)
        .map(char::from)
        .collect()
}

impl SimWorld {
    /// `auto_create`: any well-formed session and group is treated as existing,
    /// connected and admin on first use.
    pub fn new(auto_create: bool) -> Self {
        let state = State {
            auto_create,
            ..State::default()
        };
        Self {
            state: Arc::new(Mutex::new(state)),
            started: ClockInstant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_auto_create(&self, on: bool) {
        self.lock().auto_create = on;
    }

    pub fn upsert_session(&self, spec: SessionSpec) {
        self.lock().sessions.insert(spec.id, spec.connected);
    }

    pub fn upsert_group(&self, spec: GroupSpec) {
        let mut st = self.lock();
        st.sessions.entry(spec.session.clone()).or_insert(true);
        let code = spec.code.unwrap_or_else(random_code);
        let link = SimLink {
            code,
            expires_at: Utc::now() + SIM_LINK_TTL,
        };
        match st
            .groups
            .get_mut(&(spec.session.clone(), spec.group.clone()))
        {
            Some(g) => {
                g.admin = spec.admin;
                g.link = link;
            }
            None => {
                st.groups.insert(
                    (spec.session, spec.group),
                    Group {
                        admin: spec.admin,
                        link,
                        resets: 0,
                        in_flight: 0,
                        max_in_flight: 0,
                    },
                );
            }
        }
    }

    /// Changes a group's code as another admin would, outside the worker.
    pub fn external_reset(&self, session: &str, group: &str) -> Option<String> {
        let mut st = self.lock();
        let g = st.groups.get_mut(&(session.to_owned(), group.to_owned()))?;
        g.link = SimLink {
            code: random_code(),
            expires_at: Utc::now() + SIM_LINK_TTL,
        };
        Some(g.link.code.clone())
    }

    /// The group's current link, without counting a request.
    pub fn peek(&self, session: &str, group: &str) -> Option<SimLink> {
        self.lock()
            .groups
            .get(&(session.to_owned(), group.to_owned()))
            .map(|g| g.link.clone())
    }

    pub fn add_fault(&self, fault: FaultSpec) {
        self.lock().faults.push(fault);
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Adds `latency` to every request that reaches a group.
    pub fn set_latency(&self, latency: Duration) {
        self.set_latency_between(latency, latency);
    }

    /// Adds to every request that reaches a group a latency drawn uniformly from
    /// `[min, max]` (`max` below `min` counts as `min`).
    pub fn set_latency_between(&self, min: Duration, max: Duration) {
        self.lock().latency = Latency {
            min,
            max: max.max(min),
        };
    }

    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let key = |(s, g): &(String, String)| format!("{s}|{g}");
        Stats {
            routes: st.route_counts.clone(),
            resets: st.groups.iter().map(|(k, g)| (key(k), g.resets)).collect(),
            max_concurrency: st
                .groups
                .iter()
                .map(|(k, g)| (key(k), g.max_in_flight))
                .collect(),
            max_group_concurrency: st
                .groups
                .values()
                .map(|g| g.max_in_flight)
                .max()
                .unwrap_or(0),
            max_requests_per_second: st.max_in_any_second.clone(),
            max_total_concurrency: st.max_in_flight_total,
        }
    }

    /// When requests matching `route` (a fault-style pattern: `*`, `waha`, `*.reset`,
    /// `waha.reset`) arrived, oldest first; covers the most recent requests only.
    pub fn request_times(&self, route: &str) -> Vec<Instant> {
        self.lock()
            .request_log
            .iter()
            .filter(|r| route_matches(route, &r.route))
            .map(|r| r.at.into_std())
            .collect()
    }

    /// Every request in the log (the most recent [`REQUEST_LOG_LEN`]), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock()
            .request_log
            .iter()
            .map(|r| RequestRecord {
                route: r.route.clone(),
                op: r.op,
                session: r.session.clone(),
                group: r.group.clone(),
                at: r.at.saturating_duration_since(self.started),
            })
            .collect()
    }

    /// The most requests of `session` in the log whose arrivals lie within one half-open
    /// window `[t, t + period)`, over every `t` (see [`busiest_window`]).
    pub fn busiest_window(&self, session: &str, period: Duration) -> usize {
        let arrivals: Vec<Duration> = self
            .lock()
            .request_log
            .iter()
            .filter(|r| r.session == session)
            .map(|r| r.at.saturating_duration_since(self.started))
            .collect();
        busiest_window(&arrivals, period)
    }

    /// Resets counters and the request log (not sessions, groups or codes).
    pub fn reset_stats(&self) {
        let mut st = self.lock();
        st.route_counts.clear();
        st.request_log.clear();
        st.session_requests.clear();
        st.max_in_any_second.clear();
        st.max_in_flight_total = 0;
        for g in st.groups.values_mut() {
            g.resets = 0;
            g.max_in_flight = 0;
        }
    }

    /// Serves one request: counts it, applies faults and latency, then reads or resets.
    pub async fn call(
        &self,
        route: &str,
        session: &str,
        group: &str,
        op: Op,
    ) -> Result<SimLink, SimError> {
        let key = (session.to_owned(), group.to_owned());
        let latency = {
            let mut st = self.lock();
            *st.route_counts.entry(route.to_owned()).or_default() += 1;
            let now = Instant::now();
            if st.request_log.len() >= REQUEST_LOG_LEN {
                st.request_log.pop_front();
            }
            st.request_log.push_back(Logged {
                route: route.to_owned(),
                op,
                session: session.to_owned(),
                group: group.to_owned(),
                at: ClockInstant::now(),
            });
            let window = st.session_requests.entry(session.to_owned()).or_default();
            window.push_back(now);
            while window
                .front()
                .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
            {
                window.pop_front();
            }
            let in_window = window.len() as u32;
            let max = st.max_in_any_second.entry(session.to_owned()).or_default();
            *max = (*max).max(in_window);

            if let Some(i) = st
                .faults
                .iter()
                .position(|f| route_matches(&f.route, route))
            {
                let fault = st.faults[i].clone();
                if fault.count <= 1 {
                    st.faults.remove(i);
                } else {
                    st.faults[i].count -= 1;
                }
                if fault.hang {
                    drop(st);
                    return Err(SimError::Hang);
                }
                return Err(SimError::Fault {
                    status: fault.status,
                    retry_after: fault.retry_after,
                });
            }
            if !st.sessions.contains_key(session) {
                if !st.auto_create {
                    return Err(SimError::SessionNotFound);
                }
                st.sessions.insert(session.to_owned(), true);
            }
            if st.sessions.get(session) == Some(&false) {
                return Err(SimError::SessionDisconnected);
            }
            if !st.groups.contains_key(&key) {
                if !st.auto_create {
                    return Err(SimError::GroupNotFound);
                }
                let link = SimLink {
                    code: random_code(),
                    expires_at: Utc::now() + SIM_LINK_TTL,
                };
                st.groups.insert(
                    key.clone(),
                    Group {
                        admin: true,
                        link,
                        resets: 0,
                        in_flight: 0,
                        max_in_flight: 0,
                    },
                );
            }
            let g = st.groups.get_mut(&key).expect("inserted above");
            if !g.admin {
                return Err(SimError::NotAdmin);
            }
            g.in_flight += 1;
            g.max_in_flight = g.max_in_flight.max(g.in_flight);
            st.in_flight_total += 1;
            st.max_in_flight_total = st.max_in_flight_total.max(st.in_flight_total);
            st.latency.sample()
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut st = self.lock();
        st.in_flight_total -= 1;
        let g = st.groups.get_mut(&key).expect("groups are never removed");
        g.in_flight -= 1;
        if op == Op::Reset {
            g.resets += 1;
            g.link = SimLink {
                code: random_code(),
                expires_at: Utc::now() + SIM_LINK_TTL,
            };
        }
        Ok(g.link.clone())
    }
}

mod traffic;

use traffic::{Latency, Logged};
pub use traffic::{RequestRecord, busiest_window};

#[cfg(test)]
mod tests;
