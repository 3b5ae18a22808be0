//! The expiry scheduler: every `rotation.scan_interval` it claims tracked links expiring
//! within `rotation.lead` and publishes `rotate_expiring_link` commands for them. Command
//! ids are UUIDv5 of (backend, session, group, expires_at), so however many replicas scan
//! and however often, one expiry yields one rotation (the inbox absorbs duplicates).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::{
    broker::{PublishError, Publisher, Topology},
    config::Settings,
    domain::{
        CommandSpec, CommandType,
        events::{OutboxMessage, rfc3339},
    },
    ops::{metrics as m, trace},
    store::{Store, StoreError},
    worker::pacing::Grid,
};

/// Namespace of scheduled command ids.
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6c1e_5a0f_3b7d_4e2a_9c41_7f0d_2b8e_51a3);

/// Links claimed and published per round trip.
const BATCH: u64 = 1000;
/// A claimed link whose rotation has not happened after this long is published again
/// (same command id, so at most one rotation results).
const REPUBLISH_AFTER: Duration = Duration::from_secs(600);

/// The deterministic command id of the rotation for one expiry of one link.
pub fn command_id(backend: &str, session: &str, group: &str, expires_at: DateTime<Utc>) -> Uuid {
    let name = format!("{backend}|{session}|{group}|{}", rfc3339(expires_at));
    Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// Links expiring at or before this instant are due at `now`.
pub fn due_cutoff(now: DateTime<Utc>, lead: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lead).unwrap_or(chrono::Duration::days(1))
}

/// Whether a link expiring at `expires_at` is due for rotation at `now`.
pub fn is_due(expires_at: DateTime<Utc>, now: DateTime<Utc>, lead: Duration) -> bool {
    expires_at <= due_cutoff(now, lead)
}

/// Why a scan stopped before publishing everything due.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("the broker refused scheduled commands")]
    Refused,
}

/// Due links looked at per scan when checking that every session's rotations fit.
const FIT_CHECK_LIMIT: u64 = 100_000;

/// Rotations of one session that cannot all happen before their links expire.
#[derive(Debug, PartialEq, Eq)]
pub struct Shortfall {
    /// Links due.
    pub due: usize,
    /// Of those, how many would expire before their rotation.
    pub late: usize,
}

/// Whether rotations one `interval` apart from `now` reach each of `expiries` (sorted)
/// before it: the k-th (from 1) happens `k` intervals from now at the latest.
pub fn shortfall(
    expiries: &[DateTime<Utc>],
    now: DateTime<Utc>,
    interval: Duration,
) -> Option<Shortfall> {
    let step = chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
    let mut at = now;
    let late = expiries
        .iter()
        .filter(|e| {
            at = at
                .checked_add_signed(step)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            at > **e
        })
        .count();
    (late > 0).then_some(Shortfall {
        due: expiries.len(),
        late,
    })
}

pub struct Scheduler {
    store: Store,
    publisher: Arc<Publisher>,
    topology: Topology,
    settings: Arc<Settings>,
    /// Backends found short at the last check (their gauge goes back to 0 once they fit).
    short: std::sync::Mutex<HashSet<String>>,
}

impl Scheduler {
    pub fn new(
        store: Store,
        publisher: Arc<Publisher>,
        topology: Topology,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            store,
            publisher,
            topology,
            settings,
            short: Default::default(),
        }
    }

    fn message(&self, link: &entity::link::Model) -> Option<OutboxMessage> {
        let expires_at = link.expires_at?;
        let id = command_id(&link.backend, &link.session_id, &link.group_id, expires_at);
        let spec = CommandSpec {
            kind: CommandType::RotateExpiringLink,
            session: link.session_id.clone(),
            group: link.group_id.clone(),
            backend: Some(link.backend.clone()),
            reason: Some(format!("link expires at {}", rfc3339(expires_at))),
            requested_by: Some("scheduler".into()),
            command_id: Some(id),
        };
        Some(OutboxMessage {
            exchange: self.topology.commands_exchange(),
            routing_key: CommandType::RotateExpiringLink.routing_key(),
            message_id: Some(id.to_string()),
            message_type: None,
            correlation_id: None,
            // Each scheduled rotation starts a trace of its own.
            headers: trace::start(&tracing::Span::current()),
            payload: spec.body(id),
        })
    }

    /// One scan at `now`: claims and publishes everything due. Returns how many
    /// rotations were published.
    pub async fn scan(&self, now: DateTime<Utc>) -> Result<usize, ScanError> {
        let due = due_cutoff(now, self.settings.rotation.lead);
        let mut published = 0;
        loop {
            let links = self
                .store
                .claim_due(now, due, REPUBLISH_AFTER, BATCH)
                .await?;
            if links.is_empty() {
                break;
            }
            let ids: Vec<i64> = links.iter().map(|l| l.id).collect();
            let msgs: Vec<OutboxMessage> = links.iter().filter_map(|l| self.message(l)).collect();
            match self.publisher.publish_batch(&msgs).await {
                Ok(confirms) if confirms.iter().all(|c| c.is_ack()) => published += msgs.len(),
                outcome => {
                    let _ = self.store.unschedule(&ids).await;
                    return Err(match outcome {
                        Err(e) => e.into(),
                        Ok(_) => ScanError::Refused,
                    });
                }
            }
            if (links.len() as u64) < BATCH {
                break;
            }
        }
        if let Ok(n) = self.store.count_links_due(due).await {
            m::links_due(n);
        }
        self.check_fit(now, due).await?;
        Ok(published)
    }

    /// Rotations use at most `rotation.rate_share` of each session's rate: says (metric
    /// and warning, with the numbers) which sessions' due links cannot all be rotated
    /// before they expire at that pace.
    async fn check_fit(&self, now: DateTime<Utc>, due: DateTime<Utc>) -> Result<(), ScanError> {
        let expiries = self.store.due_expiries(due, FIT_CHECK_LIMIT).await?;
        let mut late: HashMap<String, usize> = HashMap::new();
        for group in expiries.chunk_by(|a, b| (&a.0, &a.1) == (&b.0, &b.1)) {
            let (backend, session) = (&group[0].0, &group[0].1);
            let Some(b) = self.settings.backends.get(backend) else {
                continue;
            };
            let grid = Grid::new(b.rate_limit(), self.settings.rotation.rate_share);
            let times: Vec<DateTime<Utc>> = group.iter().map(|(_, _, e)| *e).collect();
            let Some(s) = shortfall(&times, now, grid.rotation_interval) else {
                continue;
            };
            warn!(
                backend = %backend,
                session = %session,
                due = s.due,
                late = s.late,
                rotations_per_minute = 60.0 / grid.rotation_interval.as_secs_f64(),
                earliest_expiry = %rfc3339(times[0]),
                "due links cannot all be rotated before they expire at rotation.rate_share \
                 of the session's rate: raise rotation.lead or rotation.rate_share"
            );
            *late.entry(backend.clone()).or_default() += s.late;
        }
        let mut before = self.short.lock().unwrap_or_else(|p| p.into_inner());
        for backend in before.iter().filter(|b| !late.contains_key(*b)) {
            m::rotations_late(backend, 0);
        }
        for (backend, n) in &late {
            m::rotations_late(backend, *n);
        }
        *before = late.into_keys().collect();
        Ok(())
    }

    pub async fn run(self, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.rotation.scan_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match self.scan(Utc::now()).await {
                Ok(0) => {}
                Ok(n) => info!(published = n, "scheduled rotations of expiring links"),
                Err(e) => warn!(error = %e, "expiry scan failed; will retry next interval"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotations_fit_when_each_comes_before_its_expiry() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let minutes = |m: i64| now + chrono::Duration::minutes(m);
        let every_minute = Duration::from_secs(60);
        assert_eq!(
            shortfall(&[minutes(1), minutes(2), minutes(3)], now, every_minute),
            None
        );
        // Three due within two minutes: the third rotation comes a minute late.
        assert_eq!(
            shortfall(&[minutes(1), minutes(2), minutes(2)], now, every_minute),
            Some(Shortfall { due: 3, late: 1 })
        );
        // Already expired: late however fast.
        assert_eq!(
            shortfall(&[minutes(-1)], now, Duration::from_millis(1)),
            Some(Shortfall { due: 1, late: 1 })
        );
        assert_eq!(shortfall(&[], now, every_minute), None);
    }

    #[test]
    fn command_id_is_deterministic_per_expiry() {
        let t = DateTime::parse_from_rfc3339("2026-11-29T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let a = command_id("sim", "s", "1@g.us", t);
        assert_eq!(a, command_id("sim", "s", "1@g.us", t));
        assert_ne!(
            a,
            command_id("sim", "s", "1@g.us", t + chrono::Duration::seconds(1))
        );
        assert_ne!(a, command_id("sim", "s", "2@g.us", t));
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn due_exactly_within_lead() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let lead = Duration::from_secs(3600);
        assert!(is_due(now + chrono::Duration::minutes(60), now, lead));
        assert!(is_due(now - chrono::Duration::minutes(1), now, lead));
        assert!(!is_due(now + chrono::Duration::minutes(61), now, lead));
    }

    #[test]
    fn cutoff_is_now_plus_lead() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cut = due_cutoff(now, Duration::from_secs(24 * 3600));
        assert_eq!(rfc3339(cut), "2026-11-23T10:00:00Z");
    }
}
