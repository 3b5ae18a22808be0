//! Pacing benchmark (`cargo bench --bench pacing`): how much of a provider's
//! `rate_limit_per_session` the worker uses, counted at the provider. The provider is
//! `invite-worker simulate` run as a child process (an HTTP `waha` backend, the
//! simulator's jittered latency), whose request log (`GET /_control/requests`) gives
//! every request's arrival; the worker runs as one or two child processes on a fresh
//! database and a fresh AMQP name prefix per scenario. Scenarios (names for `BENCH_SKIP`):
//!
//! - `one_session`: 300 revokes for one session at 20/s (ideal 15.0 s);
//! - `fleet`: 50 sessions × 40 groups, each session at 5/s, 50 ms latency (ideal 8.0 s);
//! - `replicas`: `one_session` with two workers on one PostgreSQL database;
//! - `priority`: one revoke published behind 200 due rotations of its session (10/s);
//! - `pruning`: `fleet` with 200 groups per session (ideal 40.0 s) on PostgreSQL, then
//!   the same on a database holding a million finished commands and a million history
//!   rows past their retention windows (`BENCH_PRUNE_ROWS`), which the worker prunes
//!   while it drains; before that worker starts, `history export` of a tenth and of all
//!   of those history rows, with its peak resident memory;
//! - `backlog`: 100,000 revokes for one session at 5/s (`BENCH_BACKLOG`): the worker's
//!   resident memory as the backlog leaves the broker for the database.
//!
//! Each prints one line: requests at the provider, first request → last, the achieved
//! rate ((requests − 1) ÷ that time) ÷ the allowed rate, the busiest window of the
//! limit's period against the limit, and where relevant the ideal and ideal ÷ actual.
//! Every group is tracked beforehand (rows in `links`), so that a command costs one reset
//! request; the figures count reads too, should any happen.
//!
//! Environment: `BENCH_SKIP` (comma list of scenario names), `BENCH_WORKER` (another
//! worker build; the simulator is always this build's), `BENCH_DB` (`sqlite`, the
//! default, or `postgres`: the database of the one-process scenarios). Any other
//! `INVITE_WORKER__…` variable reaches the workers (e.g. a new configuration key to try);
//! the keys the benchmark sets itself win.

#[path = "support/mod.rs"]
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use chrono::Utc;
use entity::link;
use invite_worker::{
    broker::Topology,
    config::RateLimit,
    domain::{CommandType, command::CommandSpec},
    simulator::{busiest_window, world::random_code},
};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use sea_orm::{ActiveValue::Set, Database, EntityTrait};
use serde::Deserialize;

use support::{
    BenchDb, EventSink, Process, cleanup, declare_topology, new_topology, sink, skip, topo_prefix,
    worker_command,
};

/// The simulator's token and the worker's backend pointed at it.
const TOKEN: &str = "bench-pacing-token";
const BACKEND: &str = "prov";
/// The longest a scenario waits for its events before it reports a timeout.
const EVENTS_TIMEOUT: Duration = Duration::from_secs(120);
/// The longest a worker may take to answer `/readyz`, and the warm-up command.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Commands still in flight when a scenario ends are abandoned after this.
const SHUTDOWN_GRACE: &str = "5s";

/// The provider's latency for a scenario: uniform in `[ms, max_ms]`.
#[derive(Clone, Copy)]
struct Latency {
    ms: u64,
    max_ms: u64,
}

const JITTER: Latency = Latency { ms: 20, max_ms: 50 };

/// One request in the simulator's log.
#[derive(Clone, Debug, Deserialize)]
struct Request {
    op: String,
    session: String,
    group: String,
    at_ms: f64,
}

impl Request {
    fn at(&self) -> Duration {
        Duration::from_secs_f64(self.at_ms / 1000.0)
    }
}

/// `invite-worker simulate` as a child process.
struct Simulator {
    process: Process,
    base: String,
    client: reqwest::Client,
    /// This process's instant of the world's `at_ms` 0 (within half a round trip).
    origin: Instant,
}

impl Simulator {
    /// Starts the simulator on a free port and aligns its clock with ours.
    async fn start(latency: Latency) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_invite-worker"));
        cmd.args(["simulate", "--listen", "127.0.0.1:0", "--token", TOKEN])
            .env("INVITE_WORKER__LOG__FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = Process::spawn(cmd);
        let stdout = process.take_stdout().expect("piped stdout");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Reads the announced address, then drains the pipe until the simulator exits.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let (Some(addr), Some(tx)) = (line.strip_prefix("listening on "), tx.take()) {
                    let _ = tx.send(addr.to_owned());
                }
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the simulator announces its address within 10 s")
            .expect("the simulator exited before announcing its address");
        let mut sim = Self {
            process,
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            origin: Instant::now(),
        };
        sim.align_clock().await;
        sim.set_latency(latency).await;
        sim
    }

    fn waha_url(&self) -> String {
        format!("{}/waha", self.base)
    }

    async fn control(&self, path: &str, body: serde_json::Value) {
        let response = self
            .client
            .post(format!("{}/_control/{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("simulator control");
        assert!(response.status().is_success(), "control {path}");
    }

    /// One request without latency: its logged arrival lies between our instants before
    /// and after it, so `origin` is known within half that round trip. The log is then
    /// cleared.
    async fn align_clock(&mut self) {
        let url = format!(
            "{}/api/bench-clock/groups/120363000000000000%40g.us/invite-code",
            self.waha_url()
        );
        let before = Instant::now();
        let response = self
            .client
            .get(url)
            .header("X-Api-Key", TOKEN)
            .send()
            .await
            .expect("clock probe");
        let after = Instant::now();
        assert!(response.status().is_success(), "clock probe");
        let probe = self.requests(Some("bench-clock")).await;
        let at = probe.last().expect("the probe is logged").at();
        self.origin = (before + (after - before) / 2)
            .checked_sub(at)
            .expect("the world started after this process");
        self.reset().await;
    }

    async fn set_latency(&self, l: Latency) {
        self.control(
            "latency",
            serde_json::json!({ "ms": l.ms, "max_ms": l.max_ms }),
        )
        .await;
    }

    /// Clears the request log and counters.
    async fn reset(&self) {
        self.control("stats/reset", serde_json::json!({})).await;
    }

    /// The request log, oldest first, of one session when given.
    async fn requests(&self, session: Option<&str>) -> Vec<Request> {
        #[derive(Deserialize)]
        struct Log {
            requests: Vec<Request>,
        }
        let filter = session.map_or(String::new(), |s| {
            format!("?session={}", utf8_percent_encode(s, NON_ALPHANUMERIC))
        });
        let log: Log = self
            .client
            .get(format!("{}/_control/requests{filter}", self.base))
            .send()
            .await
            .expect("request log")
            .json()
            .await
            .expect("request log json");
        log.requests
    }

    /// Our instant of a logged arrival.
    fn instant_of(&self, r: &Request) -> Instant {
        self.origin + r.at()
    }
}

/// How a run of requests used a rate limit.
struct Pace {
    requests: usize,
    reads: usize,
    /// First request → last.
    span: Duration,
    busiest: usize,
}

impl Pace {
    fn of<'a>(log: impl IntoIterator<Item = &'a Request>, limit: RateLimit) -> Self {
        let log: Vec<&Request> = log.into_iter().collect();
        let at: Vec<Duration> = log.iter().map(|r| r.at()).collect();
        let span = match (at.iter().min(), at.iter().max()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        };
        Self {
            requests: log.len(),
            reads: log.iter().filter(|r| r.op == "read").count(),
            span,
            busiest: busiest_window(&at, limit.period),
        }
    }

    /// (requests − 1) ÷ first → last.
    fn rate(&self) -> Option<f64> {
        (self.requests > 1 && !self.span.is_zero())
            .then(|| (self.requests - 1) as f64 / self.span.as_secs_f64())
    }
}

fn allowed(limit: RateLimit) -> f64 {
    f64::from(limit.count) / limit.period.as_secs_f64()
}

fn period_name(limit: RateLimit) -> &'static str {
    if limit.period == Duration::from_secs(60) {
        "1 m"
    } else {
        "1 s"
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn pct(v: f64) -> String {
    format!("{:.0}%", 100.0 * v)
}

/// One printed line.
struct Line {
    scenario: String,
    requests: usize,
    span: Duration,
    /// Achieved ÷ allowed, with both rates.
    rate: String,
    /// Busiest window of the limit's period against the limit.
    window: String,
    ideal: String,
    ratio: String,
    note: String,
}

impl Line {
    /// The line of `pace` against `limit` (times `sessions` for the allowed rate).
    fn new(scenario: &str, pace: &Pace, limit: RateLimit, sessions: u32) -> Self {
        let allowed = allowed(limit) * f64::from(sessions);
        let rate = pace.rate().map_or("-".into(), |r| {
            format!("{} ({r:.1}/s of {allowed:.0}/s)", pct(r / allowed))
        });
        let mut note = String::new();
        if pace.reads > 0 {
            note.push_str(&format!("{} of the requests were reads; ", pace.reads));
        }
        Self {
            scenario: scenario.into(),
            requests: pace.requests,
            span: pace.span,
            rate,
            window: format!(
                "{}/{} per {}",
                pace.busiest,
                limit.count,
                period_name(limit)
            ),
            ideal: "-".into(),
            ratio: "-".into(),
            note,
        }
    }

    /// A scenario that could not run.
    fn failed(scenario: &str, limit: RateLimit, why: &str) -> Self {
        Self::new(scenario, &Pace::of(std::iter::empty(), limit), limit, 1)
            .note(format!("FAILED: {why}"))
    }

    fn ideal(mut self, ideal: Duration, actual: Duration) -> Self {
        self.ideal = secs(ideal);
        self.ratio = pct(ideal.as_secs_f64() / actual.as_secs_f64().max(f64::EPSILON));
        self
    }

    fn note(mut self, note: impl AsRef<str>) -> Self {
        self.note.push_str(note.as_ref());
        self
    }

    fn header() {
        println!(
            "\n{:<46} {:>8} {:>11} {:>26} {:>13} {:>8} {:>6}  note",
            "scenario", "requests", "first→last", "achieved ÷ allowed", "busiest", "ideal", "ratio"
        );
    }

    fn print(&self) {
        println!(
            "{:<46} {:>8} {:>11} {:>26} {:>13} {:>8} {:>6}  {}",
            self.scenario,
            self.requests,
            secs(self.span),
            self.rate,
            self.window,
            self.ideal,
            self.ratio,
            self.note.trim_end_matches("; ")
        );
    }
}

fn group_id(n: usize) -> String {
    format!("120363{n:012}@g.us")
}

fn command(kind: CommandType, session: &str, group: &str) -> CommandSpec {
    CommandSpec {
        kind,
        session: session.into(),
        group: group.into(),
        backend: None,
        reason: None,
        requested_by: None,
        command_id: None,
    }
}

/// A free local port for a worker's HTTP endpoints.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// What a scenario runs on: its topology, database, simulator, event sink and workers.
struct Rig {
    topo: Topology,
    db: BenchDb,
    sim: Simulator,
    sink: EventSink,
    workers: Vec<Process>,
}

impl Rig {
    /// A fresh topology and migrated database (of `db_kind`), and a simulator at
    /// `latency`.
    async fn new(db_kind: &str, latency: Latency) -> Self {
        let topo = new_topology();
        declare_topology(&topo).await;
        let db = BenchDb::new(db_kind).await;
        let mut migrate = Process::spawn(worker_command(
            &["migrate"],
            &topo_prefix(&topo),
            &db.url,
            &[],
        ));
        let status = migrate.wait_exit(START_TIMEOUT).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "invite-worker migrate: {status:?}"
        );
        Self {
            sink: sink(&topo).await,
            sim: Simulator::start(latency).await,
            topo,
            db,
            workers: Vec::new(),
        }
    }

    /// Tracks `(session, group)` links of the benchmark's backend, expiring in
    /// `expires_in`, as if the worker had rotated them before.
    async fn track(&self, links: &[(String, String)], expires_in: Duration) {
        let conn = Database::connect(&self.db.url).await.expect("database");
        let now = Utc::now();
        let expires = now + chrono::Duration::from_std(expires_in).expect("expiry");
        for chunk in links.chunks(500) {
            let rows = chunk.iter().map(|(session, group)| link::ActiveModel {
                backend: Set(BACKEND.into()),
                session_id: Set(session.clone()),
                group_id: Set(group.clone()),
                invite_code: Set(Some(random_code())),
                issued_at: Set(Some(now)),
                expires_at: Set(Some(expires)),
                expires_at_source: Set(Some("policy".into())),
                rotation_count: Set(0),
                updated_at: Set(now),
                ..Default::default()
            });
            link::Entity::insert_many(rows)
                .exec_without_returning(&conn)
                .await
                .expect("insert links");
        }
        let _ = conn.close().await;
    }

    /// Starts `replicas` workers whose backend is the simulator at `rate` per session,
    /// waits until each is ready, then runs a
    /// warm-up command and clears the events and the request log. False if they did not
    /// come up.
    async fn start_workers(&mut self, replicas: usize, rate: &str) -> bool {
        let mut ports = Vec::new();
        for _ in 0..replicas {
            let port = free_port();
            let env = [
                ("INVITE_WORKER__DEFAULT_BACKEND", BACKEND.to_owned()),
                ("INVITE_WORKER__BACKENDS__PROV__KIND", "waha".to_owned()),
                (
                    "INVITE_WORKER__BACKENDS__PROV__BASE_URL",
                    self.sim.waha_url(),
                ),
                ("INVITE_WORKER__BACKENDS__PROV__TOKEN", TOKEN.to_owned()),
                (
                    "INVITE_WORKER__BACKENDS__PROV__RATE_LIMIT_PER_SESSION",
                    rate.to_owned(),
                ),
                ("INVITE_WORKER__HTTP__LISTEN", format!("127.0.0.1:{port}")),
                (
                    "INVITE_WORKER__WORKER__SHUTDOWN_GRACE",
                    SHUTDOWN_GRACE.into(),
                ),
            ];
            self.workers.push(Process::spawn(worker_command(
                &["run"],
                &topo_prefix(&self.topo),
                &self.db.url,
                &env,
            )));
            ports.push(port);
        }
        for port in ports {
            if !self.ready(port).await {
                println!("worker on port {port} not ready within {START_TIMEOUT:?}");
                return false;
            }
        }
        let warm_up = command(
            CommandType::RevokeInvite,
            "bench-warm-up",
            &group_id(999_999),
        );
        let (id, _) = support::publish(&self.topo, [warm_up]).await[0];
        if !self.sink.wait_for_id(id, START_TIMEOUT).await {
            println!("the warm-up command got no event within {START_TIMEOUT:?}");
            return false;
        }
        self.sink.clear();
        self.sim.reset().await;
        true
    }

    async fn ready(&self, port: u16) -> bool {
        let end = Instant::now() + START_TIMEOUT;
        while Instant::now() < end {
            let answer = self
                .sim
                .client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await;
            if answer.is_ok_and(|a| a.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Waits for `n` events; the note to print when they did not all come.
    async fn wait_for(&self, n: usize, limit: Duration) -> String {
        let mut note = String::new();
        if !self.sink.wait_for(n, limit).await {
            note = format!(
                "TIMED OUT after {limit:?}: {} of {n} events; ",
                self.sink.len()
            );
        }
        if self.sink.failed() > 0 {
            note.push_str(&format!("{} rotation_failed events; ", self.sink.failed()));
        }
        note
    }

    /// Stops everything and deletes the topology and the database.
    async fn finish(self) {
        for worker in self.workers {
            worker.stop_within(Duration::from_secs(15)).await;
        }
        self.sim.process.stop_within(Duration::from_secs(5)).await;
        self.sink.close().await;
        cleanup(&self.topo).await;
        self.db.drop_it().await;
    }
}

/// 300 revokes of tracked groups for one session at 20/s, on `replicas` workers.
async fn one_session(scenario: &str, db_kind: &str, replicas: usize) -> Line {
    const N: usize = 300;
    const RATE: &str = "20/s";
    let limit = RateLimit::parse(RATE).expect("rate");
    let session = "hot";
    let mut rig = Rig::new(db_kind, JITTER).await;
    let links: Vec<(String, String)> = (0..N).map(|i| (session.into(), group_id(i))).collect();
    rig.track(&links, Duration::from_secs(7 * 24 * 3600)).await;
    if !rig.start_workers(replicas, RATE).await {
        rig.finish().await;
        return Line::failed(scenario, limit, "no worker");
    }
    let commands = links
        .iter()
        .map(|(s, g)| command(CommandType::RevokeInvite, s, g));
    support::publish(&rig.topo, commands).await;
    let note = rig.wait_for(N, EVENTS_TIMEOUT).await;
    let log = rig.sim.requests(Some(session)).await;
    let pace = Pace::of(&log, limit);
    let ideal = Duration::from_secs_f64(N as f64 / allowed(limit));
    let mut line = Line::new(scenario, &pace, limit, 1)
        .ideal(ideal, pace.span)
        .note(note);
    if replicas > 1 {
        line = line.note(format!(
            "{replicas} workers, published once both were ready"
        ));
    }
    rig.finish().await;
    line
}

/// 50 sessions × 40 tracked groups, each session at 5/s, 50 ms latency, the default
/// prefetch; the commands published session by session.
async fn fleet(db_kind: &str, groups: usize, pruning: Option<usize>) -> Line {
    const SESSIONS: usize = 50;
    const RATE: &str = "5/s";
    let limit = RateLimit::parse(RATE).expect("rate");
    let mut rig = Rig::new(db_kind, Latency { ms: 50, max_ms: 50 }).await;
    let session = |s: usize| format!("fleet-{s:02}");
    let links: Vec<(String, String)> = (0..SESSIONS)
        .flat_map(|s| (0..groups).map(move |g| (session(s), group_id(s * groups + g))))
        .collect();
    rig.track(&links, Duration::from_secs(7 * 24 * 3600)).await;
    let mut scenario = format!("fleet: {SESSIONS} sessions × {groups} at {RATE} ({db_kind})");
    if let Some(rows) = pruning {
        expired_rows(&rig.db.url, rows).await;
        export_memory(&rig, rows).await;
        scenario.push_str(&format!(", pruning {rows} + {rows} rows"));
    }
    let started = Instant::now();
    if !rig.start_workers(1, RATE).await {
        rig.finish().await;
        return Line::failed(&scenario, limit, "no worker");
    }
    let commands = links
        .iter()
        .map(|(s, g)| command(CommandType::RevokeInvite, s, g));
    let sent = support::publish(&rig.topo, commands).await;
    let note = rig.wait_for(links.len(), EVENTS_TIMEOUT).await;
    let first_publish = sent.first().expect("published").1;
    let last_event = rig
        .sink
        .arrivals
        .lock()
        .unwrap()
        .values()
        .max()
        .copied()
        .unwrap_or(first_publish);
    let drain = last_event - first_publish;
    let log: Vec<Request> = rig
        .sim
        .requests(None)
        .await
        .into_iter()
        .filter(|r| r.session.starts_with("fleet-"))
        .collect();
    let per_session: Vec<Pace> = (0..SESSIONS)
        .map(|s| Pace::of(log.iter().filter(|r| r.session == session(s)), limit))
        .collect();
    let worst_window = per_session.iter().map(|p| p.busiest).max().unwrap_or(0);
    let slowest = per_session
        .iter()
        .filter_map(Pace::rate)
        .min_by(f64::total_cmp)
        .map_or("-".into(), |r| pct(r / allowed(limit)));
    let mut line = Line::new(&scenario, &Pace::of(&log, limit), limit, SESSIONS as u32)
        .ideal(
            Duration::from_secs_f64(groups as f64 / allowed(limit)),
            drain,
        )
        .note(note)
        .note(format!(
            "drain {} (first publish → last event, the ratio's base); \
             slowest session {slowest} of its rate",
            secs(drain)
        ));
    line.window = format!(
        "{worst_window}/{} per {} (worst session)",
        limit.count,
        period_name(limit)
    );
    if pruning.is_some() {
        line = line.note(pruned_after(&rig.db.url, started).await);
    }
    rig.finish().await;
    line
}

/// Fills the database with `rows` finished commands and `rows` history rows past their
/// retention windows (30 and 400 days), as a worker that ran for months would have.
async fn expired_rows(db_url: &str, rows: usize) {
    use sea_orm::ConnectionTrait;
    let conn = Database::connect(db_url).await.expect("database");
    for sql in [
        format!(
            "INSERT INTO commands (command_id, command_type, backend, session_id, group_id, \
             status, outcome, attempts, cycle, received_at, updated_at, finished_at) \
             SELECT md5(i::text)::uuid::text, 'revoke_invite', '{BACKEND}', \
             'old-' || (i % 100), '1203630' || lpad(i::text, 11, '0') || '@g.us', 'done', \
             'rotated', 1, 1, t, t, t \
             FROM generate_series(1, {rows}) i, \
             LATERAL (SELECT now() - interval '40 days' + i * interval '1 ms' AS t) x"
        ),
        format!(
            "INSERT INTO link_history (backend, session_id, group_id, command_type, trigger, \
             outcome, attempts, old_code, new_code, started_at, occurred_at) \
             SELECT '{BACKEND}', 'old-' || (i % 100), \
             '1203630' || lpad(i::text, 11, '0') || '@g.us', 'revoke_invite', 'revoke', \
             'rotated', 1, 'OldCode0', 'NewCode0', t, t \
             FROM generate_series(1, {rows}) i, \
             LATERAL (SELECT now() - interval '401 days' + i * interval '1 ms' AS t) x"
        ),
        "ANALYZE".to_owned(),
    ] {
        conn.execute_unprepared(&sql)
            .await
            .expect("fill the database");
    }
    let _ = conn.close().await;
}

/// Rows still past their retention windows.
async fn expired_left(db_url: &str) -> i64 {
    use sea_orm::ConnectionTrait;
    let conn = Database::connect(db_url).await.expect("database");
    let row = conn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT (SELECT count(*) FROM commands WHERE finished_at < now() - interval \
             '30 days') + (SELECT count(*) FROM link_history WHERE occurred_at < now() - \
             interval '400 days') AS n",
        ))
        .await
        .expect("count")
        .expect("a row");
    let _ = conn.close().await;
    row.try_get("", "n").expect("n")
}

/// Waits (up to 10 minutes) until the worker started at `started` pruned every expired
/// row; the note saying how long it took.
async fn pruned_after(db_url: &str, started: Instant) -> String {
    let end = Instant::now() + Duration::from_secs(600);
    loop {
        let left = expired_left(db_url).await;
        if left == 0 {
            return format!(
                "; every expired row pruned {} after the worker started",
                secs(started.elapsed())
            );
        }
        if Instant::now() > end {
            return format!("; PRUNING UNFINISHED: {left} expired rows left");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `history export` of a tenth, then all, of the `rows` history rows: its peak resident
/// memory (sampled every 20 ms) and its time, printed as one line.
async fn export_memory(rig: &Rig, rows: usize) {
    use sea_orm::ConnectionTrait;
    let conn = Database::connect(&rig.db.url).await.expect("database");
    let tenth: chrono::DateTime<Utc> = conn
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            format!(
                "SELECT occurred_at FROM link_history ORDER BY occurred_at OFFSET {} LIMIT 1",
                rows / 10
            ),
        ))
        .await
        .expect("the tenth row")
        .expect("a row")
        .try_get("", "occurred_at")
        .expect("occurred_at");
    let _ = conn.close().await;
    let mut marks = Vec::new();
    for (label, until) in [(rows / 10, tenth), (rows, Utc::now())] {
        let started = Instant::now();
        let mut export = Process::spawn(worker_command(
            &["history", "export", "--until", &until.to_rfc3339()],
            &topo_prefix(&rig.topo),
            &rig.db.url,
            &[],
        ));
        let mut peak = 0.0f64;
        let status = loop {
            if let Some(status) = export.wait_exit(Duration::from_millis(20)).await {
                break status;
            }
            peak = peak.max(rss_mib(export.id(), "VmHWM:").unwrap_or(0.0));
        };
        let failed = if status.success() { "" } else { " FAILED" };
        marks.push(format!(
            "{label} rows in {}{failed} (peak RSS {peak:.1} MiB)",
            secs(started.elapsed())
        ));
    }
    println!("history export (postgres): {}", marks.join("; "));
}

/// 200 rotations of due links of one session (10/s), then one revoke of a 201st group:
/// how long the revoke waits, and how many rotations go before it.
async fn priority(db_kind: &str) -> Line {
    const ROTATIONS: usize = 200;
    const RATE: &str = "10/s";
    let limit = RateLimit::parse(RATE).expect("rate");
    let session = "busy";
    let scenario = format!("revoke behind {ROTATIONS} rotations at {RATE} ({db_kind})");
    let mut rig = Rig::new(db_kind, JITTER).await;
    let links: Vec<(String, String)> = (0..=ROTATIONS)
        .map(|i| (session.into(), group_id(i)))
        .collect();
    // Due: within the default `rotation.lead` (24 h), so the rotations are not skipped.
    rig.track(&links, Duration::from_secs(3600)).await;
    if !rig.start_workers(1, RATE).await {
        rig.finish().await;
        return Line::failed(&scenario, limit, "no worker");
    }
    let (rotations, revoked) = links.split_at(ROTATIONS);
    let revoked = &revoked[0].1;
    let commands = rotations
        .iter()
        .map(|(s, g)| command(CommandType::RotateExpiringLink, s, g));
    support::publish(&rig.topo, commands).await;
    let (id, published) = support::publish(
        &rig.topo,
        [command(CommandType::RevokeInvite, session, revoked)],
    )
    .await[0];
    let limit_wait = Duration::from_secs(60);
    let mut note = String::new();
    if !rig.sink.wait_for_id(id, limit_wait).await {
        note = format!("TIMED OUT: no event for the revoke within {limit_wait:?}; ");
    }
    let event = rig.sink.arrival(id);
    let log = rig.sim.requests(Some(session)).await;
    let reset = log.iter().find(|r| r.op == "reset" && r.group == *revoked);
    match reset {
        Some(reset) => {
            let before = log
                .iter()
                .filter(|r| r.op == "reset" && r.group != *revoked && r.at_ms < reset.at_ms)
                .count();
            let to_reset = rig
                .sim
                .instant_of(reset)
                .saturating_duration_since(published);
            note.push_str(&format!(
                "revoke's reset {} after its publish, ",
                secs(to_reset)
            ));
            if let Some(event) = event {
                note.push_str(&format!("its event {}; ", secs(event - published)));
            }
            note.push_str(&format!(
                "{before} of {ROTATIONS} rotation resets went before it; figures up to its event"
            ));
        }
        None => note.push_str("the revoke's reset never reached the provider"),
    }
    let mut line = Line::new(&scenario, &Pace::of(&log, limit), limit, 1).note(note);
    line.ideal = "next slot".into();
    rig.finish().await;
    line
}

/// The resident memory of process `pid` (`VmRSS` or `VmHWM`), in MiB.
fn rss_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// How many of the backlog's commands the broker handed over: those waiting in the
/// scenario's database and those already run.
async fn taken_from_broker(db_url: &str) -> u64 {
    use sea_orm::{EntityTrait, PaginatorTrait};
    let conn = Database::connect(db_url).await.expect("database");
    let waiting = entity::deferred_command::Entity::find()
        .count(&conn)
        .await
        .unwrap_or(0);
    let run = entity::command::Entity::find()
        .count(&conn)
        .await
        .unwrap_or(0);
    let _ = conn.close().await;
    waiting + run
}

/// 100,000 revokes for one session at 5/s: almost all of them wait in the database; the
/// worker's resident memory once a tenth, half and all of them left the broker.
async fn backlog(db_kind: &str) {
    let n = support::env_usize("BENCH_BACKLOG", 100_000);
    let mut rig = Rig::new(db_kind, JITTER).await;
    if !rig.start_workers(1, "5/s").await {
        println!("backlog: no worker");
        rig.finish().await;
        return;
    }
    let pid = rig.workers[0].id();
    let commands = (0..n).map(|i| command(CommandType::RevokeInvite, "backlog", &group_id(i)));
    let started = Instant::now();
    support::publish(&rig.topo, commands).await;
    let mut marks = Vec::new();
    for share in [10, 50, 100] {
        let want = (n as u64 * share / 100).saturating_sub(50);
        let end = Instant::now() + Duration::from_secs(600);
        while taken_from_broker(&rig.db.url).await < want && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let rss = rss_mib(pid, "VmRSS:").unwrap_or(f64::NAN);
        marks.push(format!(
            "{share} %: {rss:.1} MiB after {}",
            secs(started.elapsed())
        ));
    }
    let peak = rss_mib(pid, "VmHWM:").unwrap_or(f64::NAN);
    println!(
        "backlog: {n} revokes for one session at 5/s ({db_kind}): worker RSS with \
         {}; peak {peak:.1} MiB",
        marks.join(", ")
    );
    rig.finish().await;
}

#[tokio::main]
async fn main() {
    let db_kind = std::env::var("BENCH_DB").unwrap_or_else(|_| "sqlite".into());
    Line::header();
    if !skip("one_session") {
        one_session(
            &format!("one session: 300 at 20/s ({db_kind})"),
            &db_kind,
            1,
        )
        .await
        .print();
    }
    if !skip("fleet") {
        fleet(&db_kind, 40, None).await.print();
    }
    if !skip("pruning") {
        let rows = support::env_usize("BENCH_PRUNE_ROWS", 1_000_000);
        fleet("postgres", 200, None).await.print();
        fleet("postgres", 200, Some(rows)).await.print();
    }
    if !skip("replicas") {
        one_session(
            "hot session, 2 workers: 300 at 20/s (postgres)",
            "postgres",
            2,
        )
        .await
        .print();
    }
    if !skip("priority") {
        priority(&db_kind).await.print();
    }
    if !skip("backlog") {
        backlog(&db_kind).await;
    }
}
