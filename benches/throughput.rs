//! Throughput benchmark (`cargo bench --bench throughput`): on the local RabbitMQ and
//! PostgreSQL it measures, side by side, the broker ceiling (a minimal lapin
//! publish→consume→publish→ack loop with confirms) at prefetch 64 and 256, the worker end
//! to end on SQLite and on PostgreSQL at both prefetches (each compared with the mean of
//! the ceilings at its prefetch, measured before and again after those runs), the worker at 200 ms backend latency with prefetch 256, the worker's
//! memory while it drains a 100,000-command backlog, and the expiry scan over one million
//! tracked links. The worker runs as a child process (`invite-worker run`) so its peak RSS
//! is its own.
//!
//! Environment: `BENCH_COMMANDS` (default 10000), `BENCH_BACKLOG` (default 100000),
//! `BENCH_GROUPS` (default 2000), `BENCH_SKIP` (comma list of scenario names to skip),
//! `BENCH_WORKER` (another worker build), `BENCH_CEILING_ACKS=folded` (a diagnostic: the
//! ceiling folds its acks as the worker does, instead of acking each message).

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use invite_worker::{
    broker::Topology,
    domain::{CommandType, command::CommandSpec},
    worker::acks::Acks,
};
use lapin::{
    BasicProperties,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    },
    types::FieldTable,
};
use sea_orm::ConnectionTrait;

use support::{
    BenchDb, EventSink, Process, channel, cleanup, declare_topology, env_usize, new_topology, sink,
    skip, topo_prefix, worker_command,
};

struct Report {
    name: String,
    /// The consumer prefetch of the run: its ratio is to the ceiling at the same prefetch.
    prefetch: Option<u16>,
    commands: usize,
    per_sec: f64,
    /// Commands/s between the events at 10 % and 90 % of the run: the rate once the
    /// pipeline is full, without its filling at the start and draining at the end.
    steady_per_sec: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    peak_rss_mib: Option<f64>,
    note: String,
}

/// Distinct groups the commands are spread over (`BENCH_GROUPS`, default 2000). The
/// in-process simulator keeps state per group, which counts in the worker's RSS.
fn groups() -> usize {
    env_usize("BENCH_GROUPS", 2000).max(1)
}

fn command(i: usize) -> CommandSpec {
    let g = i % groups();
    CommandSpec {
        kind: CommandType::RevokeInvite,
        session: format!("bench-{}", g % 50),
        group: format!("120363{:012}@g.us", g),
        backend: None,
        reason: None,
        requested_by: None,
        command_id: None,
    }
}

/// Publishes `n` commands pipelined with confirms; returns publish instants by id.
async fn publish_commands(topo: &Topology, n: usize) -> HashMap<String, Instant> {
    support::publish(topo, (0..n).map(command))
        .await
        .into_iter()
        .map(|(id, at)| (id.to_string(), at))
        .collect()
}

fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct WorkerProcess(Process);

impl WorkerProcess {
    fn spawn(
        prefix: &str,
        db_url: &str,
        prefetch: u16,
        latency_ms: u64,
        read_before_reset: bool,
    ) -> Self {
        let mut env = vec![
            ("INVITE_WORKER__AMQP__PREFETCH", prefetch.to_string()),
            // `BENCH_WORKER_HTTP` (an address) serves the worker's metrics during the run.
            (
                "INVITE_WORKER__HTTP__LISTEN",
                std::env::var("BENCH_WORKER_HTTP").unwrap_or_default(),
            ),
            (
                "INVITE_WORKER__BACKENDS__SIM__READ_BEFORE_RESET",
                read_before_reset.to_string(),
            ),
        ];
        if latency_ms > 0 {
            env.push((
                "INVITE_WORKER__BACKENDS__SIM__LATENCY",
                format!("{latency_ms}ms"),
            ));
        }
        Self(Process::spawn(worker_command(
            &["run"],
            prefix,
            db_url,
            &env,
        )))
    }

    fn peak_rss_mib(&self) -> Option<f64> {
        rss_kib(self.0.id(), "VmHWM:").map(|k| k as f64 / 1024.0)
    }

    fn rss_mib(&self) -> Option<f64> {
        rss_kib(self.0.id(), "VmRSS:").map(|k| k as f64 / 1024.0)
    }

    fn stop(self) {
        self.0.stop();
    }
}

/// The event rate between the 10 % and the 90 % of `arrivals`.
fn steady_rate(arrivals: &HashMap<String, Instant>) -> Option<f64> {
    let mut at: Vec<Instant> = arrivals.values().copied().collect();
    at.sort();
    let (from, to) = (at.len() / 10, at.len() * 9 / 10);
    let span = at.get(to)?.duration_since(*at.get(from)?).as_secs_f64();
    (span > 0.0).then(|| (to - from) as f64 / span)
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[idx])
}

/// The broker's ceiling for the worker's message pattern, without database or backend.
async fn ceiling(n: usize, prefetch: u16) -> Report {
    let topo = new_topology();
    declare_topology(&topo).await;
    let sink = sink(&topo).await;
    let (conn, consume_ch) = channel().await;
    let publish_ch = conn.create_channel().await.unwrap();
    publish_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    consume_ch
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume_ch
        .basic_consume(
            topo.commands_queue().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let events = topo.events_exchange();
    // A diagnostic: the ceiling folding its acks as the worker does.
    let folded = std::env::var("BENCH_CEILING_ACKS").is_ok_and(|v| v == "folded");
    let (acks, acker) = Acks::start(consume_ch.clone());
    let acker = tokio::spawn(acker);
    let relay = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        let mut handled = 0;
        while handled < n {
            let Some(Ok(d)) = consumer.next().await else {
                break;
            };
            handled += 1;
            let ch = publish_ch.clone();
            let events = events.clone();
            if folded {
                acks.delivered(d.delivery_tag);
            }
            let acks = acks.clone();
            tasks.spawn(async move {
                let v: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                let body = serde_json::to_vec(&serde_json::json!({"command_id": v["command_id"]}))
                    .unwrap();
                ch.basic_publish(
                    events.as_str().into(),
                    "invite_link.rotated".into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
                if folded {
                    acks.settled(d.delivery_tag);
                } else {
                    d.ack(BasicAckOptions::default()).await.unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        drop(acks);
        let _ = acker.await;
    });
    let start = Instant::now();
    let sent = publish_commands(&topo, n).await;
    let ok = sink.wait_for(n, Duration::from_secs(600)).await;
    let elapsed = start.elapsed();
    let _ = relay.await;
    let _ = conn.close(200, "OK".into()).await;
    let mut report = latency_report(
        &format!("broker ceiling, prefetch {prefetch} (no db, no backend)"),
        n,
        elapsed,
        &sent,
        &sink,
        None,
        ok,
    );
    cleanup(&topo).await;
    report.prefetch = Some(prefetch);
    report
}

/// The ceiling measured again later in the run, named after what it follows.
async fn ceiling_again(n: usize, prefetch: u16, after: &str) -> Report {
    let mut again = ceiling(n, prefetch).await;
    again.name = format!("{} again, after {after}", again.name);
    again
}

fn latency_report(
    name: &str,
    n: usize,
    elapsed: Duration,
    sent: &HashMap<String, Instant>,
    sink: &EventSink,
    rss: Option<f64>,
    complete: bool,
) -> Report {
    let arrivals = sink.arrivals.lock().unwrap();
    let mut lat: Vec<f64> = sent
        .iter()
        .filter_map(|(id, t)| {
            arrivals
                .get(id)
                .map(|a| a.duration_since(*t).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Report {
        name: name.into(),
        prefetch: None,
        commands: n,
        per_sec: arrivals.len() as f64 / elapsed.as_secs_f64(),
        steady_per_sec: steady_rate(&arrivals),
        p50_ms: percentile(&lat, 0.50),
        p99_ms: percentile(&lat, 0.99),
        peak_rss_mib: rss,
        note: if complete {
            String::new()
        } else {
            format!("INCOMPLETE: {} of {n} events", arrivals.len())
        },
    }
}

/// One end-to-end run. Before the measured commands, one command per group (`BENCH_GROUPS`)
/// makes every group tracked, as in a worker that has been running: the measured commands
/// then act on known links.
async fn worker_run(
    name: &str,
    db_kind: &str,
    n: usize,
    prefetch: u16,
    latency_ms: u64,
    read_before_reset: bool,
) -> Report {
    let topo = new_topology();
    declare_topology(&topo).await;
    let db = BenchDb::new(db_kind).await;
    let sink = sink(&topo).await;
    let worker = WorkerProcess::spawn(
        &topo_prefix(&topo),
        &db.url,
        prefetch,
        latency_ms,
        read_before_reset,
    );
    // Wait until the worker consumes: a warm-up command round trip.
    warm_up(&topo, &sink).await;
    let tracked = groups();
    let _ = publish_commands(&topo, tracked).await;
    assert!(
        sink.wait_for(tracked + 1, Duration::from_secs(600)).await,
        "warm-up commands did not complete"
    );
    sink.arrivals.lock().unwrap().clear();
    let start = Instant::now();
    let sent = publish_commands(&topo, n).await;
    let ok = sink.wait_for(n, Duration::from_secs(900)).await;
    let elapsed = start.elapsed();
    let rss = worker.peak_rss_mib();
    worker.stop();
    let mut report = latency_report(name, n, elapsed, &sent, &sink, rss, ok);
    report.prefetch = Some(prefetch);
    cleanup(&topo).await;
    db.drop_it().await;
    report
}

async fn warm_up(topo: &Topology, sink: &EventSink) {
    let _ = publish_commands(topo, 1).await;
    assert!(
        sink.wait_for(1, Duration::from_secs(60)).await,
        "worker did not come up"
    );
}

async fn backlog(n: usize, prefetch: u16) -> Report {
    let topo = new_topology();
    declare_topology(&topo).await;
    let db = BenchDb::new("postgres").await;
    let sink = sink(&topo).await;
    let _ = publish_commands(&topo, n).await;
    let worker = WorkerProcess::spawn(&topo_prefix(&topo), &db.url, prefetch, 0, false);
    let start = Instant::now();
    let mut samples = Vec::new();
    let done = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(r) = worker.rss_mib() {
            samples.push((sink.arrivals.lock().unwrap().len(), r));
        }
        let got = sink.arrivals.lock().unwrap().len();
        if got >= n {
            break true;
        }
        if start.elapsed() > Duration::from_secs(1200) {
            break false;
        }
    };
    let elapsed = start.elapsed();
    let peak = worker.peak_rss_mib();
    worker.stop();
    let quarter = |q: usize| {
        samples
            .get(samples.len() * q / 4)
            .map(|s| s.1)
            .unwrap_or(0.0)
    };
    let note = format!(
        "RSS at 0/25/50/75/100% of drain: {:.1}/{:.1}/{:.1}/{:.1}/{:.1} MiB{}",
        samples.first().map(|s| s.1).unwrap_or(0.0),
        quarter(1),
        quarter(2),
        quarter(3),
        samples.last().map(|s| s.1).unwrap_or(0.0),
        if done { "" } else { " INCOMPLETE" }
    );
    let arrivals = sink.arrivals.lock().unwrap().clone();
    let report = Report {
        name: format!("backlog of {n} (postgres, prefetch {prefetch})"),
        prefetch: Some(prefetch),
        commands: n,
        per_sec: arrivals.len() as f64 / elapsed.as_secs_f64(),
        steady_per_sec: steady_rate(&arrivals),
        p50_ms: None,
        p99_ms: None,
        peak_rss_mib: peak,
        note,
    };
    cleanup(&topo).await;
    db.drop_it().await;
    report
}

/// The expiry scan at scale: one million tracked links on PostgreSQL, 1% due. Times the
/// scheduler's claim of every due link (batches of 1000, as `Scheduler::scan` does) and
/// the due-count query; publishing the commands is not included.
async fn scan_at_scale() {
    let db = BenchDb::new("postgres").await;
    let store = invite_worker::store::Store::connect(&db.url, 4)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let insert = "INSERT INTO links (backend, session_id, group_id, invite_code, issued_at, expires_at, \
                  expires_at_source, rotation_count, updated_at) \
                  SELECT 'sim', 'bench-' || (i % 50), '120363' || lpad(i::text, 12, '0') || '@g.us', 'AbCd' || i, \
                  now(), now() + CASE WHEN i % 100 = 0 THEN interval '1 hour' ELSE interval '7 days' END, \
                  'policy', 1, now() FROM generate_series(1, 1000000) AS i";
    let started = Instant::now();
    store.connection().execute_unprepared(insert).await.unwrap();
    store
        .connection()
        .execute_unprepared("ANALYZE links")
        .await
        .unwrap();
    let loaded = started.elapsed();
    let now = chrono::Utc::now();
    let due = invite_worker::worker::scheduler::due_cutoff(now, Duration::from_secs(24 * 3600));
    let started = Instant::now();
    let count = store.count_links_due(due).await.unwrap();
    let counted = started.elapsed();
    let started = Instant::now();
    let mut claimed = 0;
    loop {
        let batch = store
            .claim_due(now, due, Duration::from_secs(600), 1000)
            .await
            .unwrap();
        claimed += batch.len();
        if batch.len() < 1000 {
            break;
        }
    }
    let scan = started.elapsed();
    println!(
        "\nexpiry scan, postgres, 1,000,000 links (loaded in {:.1} s): {count} due counted in {:.0} ms; \
         {claimed} claimed in {:.0} ms (one scan)",
        loaded.as_secs_f64(),
        counted.as_secs_f64() * 1000.0,
        scan.as_secs_f64() * 1000.0
    );
    store.close().await;
    db.drop_it().await;
}

/// Prints every report; the ratio of a worker run is to the broker ceiling measured at
/// the same prefetch.
fn print(reports: &[Report]) {
    println!(
        "\n{:<66} {:>8} {:>8} {:>8} {:>9} {:>9} {:>10} {:>8}  note",
        "scenario", "commands", "cmds/s", "steady/s", "p50 ms", "p99 ms", "peak RSS", "vs ceil"
    );
    // The machine's speed drifts within one run of the benchmark: a worker run is
    // compared with the ceilings at its prefetch measured just before and just after it
    // (the mean of those that exist).
    let is_ceiling = |r: &Report| r.name.starts_with("broker");
    let ceiling = |i: usize, prefetch: Option<u16>| {
        let same = |r: &&Report| is_ceiling(r) && r.prefetch == prefetch;
        let before = reports[..i].iter().rev().find(same);
        let after = reports[i + 1..].iter().find(same);
        let runs: Vec<f64> = before.into_iter().chain(after).map(|r| r.per_sec).collect();
        (!runs.is_empty()).then(|| runs.iter().sum::<f64>() / runs.len() as f64)
    };
    for (i, r) in reports.iter().enumerate() {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let ratio = ceiling(i, r.prefetch)
            .filter(|_| !is_ceiling(r))
            .map_or("-".into(), |c| format!("{:.0}%", 100.0 * r.per_sec / c));
        println!(
            "{:<66} {:>8} {:>8.0} {:>8} {:>9} {:>9} {:>10} {:>8}  {}",
            r.name,
            r.commands,
            r.per_sec,
            r.steady_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            f(r.p50_ms),
            f(r.p99_ms),
            r.peak_rss_mib.map_or("-".into(), |v| format!("{v:.1} MiB")),
            ratio,
            r.note
        );
    }
}

#[tokio::main]
async fn main() {
    let n = env_usize("BENCH_COMMANDS", 10_000);
    let backlog_n = env_usize("BENCH_BACKLOG", 100_000);
    let mut reports = Vec::new();
    // The contract's default prefetch (64), and 256, which a PostgreSQL deployment
    // draining a large backlog would use (and the 200 ms scenario prescribes).
    let prefetches = [64u16, 256];
    if !skip("ceiling") {
        for prefetch in prefetches {
            reports.push(ceiling(n, prefetch).await);
            print(&reports);
        }
    }
    if !skip("sqlite") {
        reports.push(
            worker_run(
                "worker, sqlite, 0 ms backend, prefetch 64",
                "sqlite",
                n,
                64,
                0,
                false,
            )
            .await,
        );
        print(&reports);
    }
    if !skip("postgres") {
        for prefetch in prefetches {
            reports.push(
                worker_run(
                    &format!("worker, postgres, 0 ms backend, prefetch {prefetch}"),
                    "postgres",
                    n,
                    prefetch,
                    0,
                    false,
                )
                .await,
            );
            print(&reports);
        }
    }
    if !skip("ceiling") && !skip("postgres") {
        for prefetch in prefetches {
            reports.push(ceiling_again(n, prefetch, "the worker runs").await);
            print(&reports);
        }
    }
    if !skip("latency") {
        let ideal = 256.0 / 0.2;
        for (read, label, requests) in [
            (false, "read_before_reset = false (default)", 1.0),
            (true, "read_before_reset = true", 2.0),
        ] {
            let mut r = worker_run(
                &format!("worker, postgres, 200 ms backend, prefetch 256, {label}"),
                "postgres",
                n,
                256,
                200,
                read,
            )
            .await;
            // Its ratio is to prefetch / latency, not to the broker ceiling.
            r.prefetch = None;
            // A worker without any overhead still needs ceil(n / 256) rounds of 200 ms
            // (times the requests) for the whole run: the pipeline fills and drains.
            let no_overhead = n as f64 / ((n as f64 / 256.0).ceil() * 0.2 * requests);
            let pct = |v: f64| 100.0 * v / ideal;
            let steady = r.steady_per_sec.unwrap_or(0.0);
            r.note = format!(
                "{} ideal prefetch/latency = {ideal:.0}/s: {:.0}% (steady {:.0}%); \
                 with {requests} requests per command: {:.0}/s, {:.0}% (steady {:.0}%); \
                 whole run without overhead: {no_overhead:.0}/s",
                r.note,
                pct(r.per_sec),
                pct(steady),
                ideal / requests,
                pct(r.per_sec) * requests,
                pct(steady) * requests,
            );
            reports.push(r);
            print(&reports);
        }
    }
    if !skip("backlog") {
        reports.push(backlog(backlog_n, 256).await);
        if !skip("ceiling") {
            reports.push(ceiling_again(n, 256, "the backlog").await);
        }
    }
    if !reports.is_empty() {
        print(&reports);
    }
    if !skip("scan") {
        scan_at_scale().await;
    }
}
