//! docs/contract.md §6.7: tokens never appear in logs, CLI output, events, dead letters or the
//! database. The real binary runs a full flow at `RUST_LOG=debug`, in text and JSON log
//! formats, against every HTTP provider kind of `invite-worker simulate`, including an
//! auth failure, a timeout and a 429; everything it leaves behind is searched for the
//! tokens.

use std::{collections::HashSet, process::Stdio, time::Duration};

use serde_json::{Value, json};
use tokio::{io::AsyncReadExt, task::JoinHandle};
use uuid::Uuid;

use crate::{
    support::SimulatorProcess,
    support::{Db, EventTap, TestEnv, free_port, group, wait_until},
};

const TOKEN: &str = "leaktok-4f9c1d7e2b";
const WRONG_TOKEN: &str = "badtok-8e2a6c0f31";
const WAIT: Duration = Duration::from_secs(60);

fn config(sim: &str) -> String {
    let mut cfg = String::from(
        "[retry]\ninitial_delay = \"50ms\"\nmax_delay = \"300ms\"\nmax_attempts = 4\n\n",
    );
    let backends = [
        ("wasend", "wasend", "LEAK_TOKEN"),
        ("wawp", "wawp", "LEAK_TOKEN"),
        ("gateway", "gateway", "LEAK_TOKEN"),
        ("meta_cloud", "meta_cloud", "LEAK_TOKEN"),
        ("waha", "waha", "LEAK_TOKEN"),
        ("evolution", "evolution", "LEAK_TOKEN"),
        ("wawp_wrong", "wawp", "LEAK_WRONG_TOKEN"),
        ("waha_wrong", "waha", "LEAK_WRONG_TOKEN"),
    ];
    for (name, kind, var) in backends {
        cfg.push_str(&format!(
            "[backends.{name}]\nkind = \"{kind}\"\nbase_url = \"{sim}/{kind}\"\n\
             token_env = \"{var}\"\ntimeout = \"1s\"\n\n"
        ));
    }
    cfg
}

/// A child process whose stdout and stderr are collected as it runs.
struct Captured {
    child: tokio::process::Child,
    readers: Vec<JoinHandle<Vec<u8>>>,
}

impl Captured {
    fn spawn(mut cmd: tokio::process::Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the worker");
        let mut readers = Vec::new();
        if let Some(mut out) = child.stdout.take() {
            readers.push(tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = out.read_to_end(&mut buf).await;
                buf
            }));
        }
        if let Some(mut err) = child.stderr.take() {
            readers.push(tokio::spawn(async move {
                let mut buf = Vec::new();
                let _ = err.read_to_end(&mut buf).await;
                buf
            }));
        }
        Self { child, readers }
    }

    /// SIGTERM, then the exit status and everything the process wrote.
    async fn stop(mut self) -> (bool, String) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the worker stops within 30s after SIGTERM")
            .expect("wait");
        let mut output = Vec::new();
        for r in self.readers {
            output.extend(r.await.unwrap_or_default());
        }
        (
            status.success(),
            String::from_utf8_lossy(&output).into_owned(),
        )
    }
}

async fn control(sim: &str, path: &str, body: Value) {
    let r = reqwest::Client::new()
        .post(format!("{sim}/_control/{path}"))
        .json(&body)
        .send()
        .await
        .expect("control request");
    assert!(r.status().is_success(), "{path}: {}", r.status());
}

/// Waits until an event has arrived for each of `ids`; returns them all.
async fn events_for(tap: &mut EventTap, ids: &HashSet<String>) -> Vec<Value> {
    let mut seen = Vec::new();
    let mut missing = ids.clone();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !missing.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (_, ev) = tap.take(1, left).await.remove(0);
        if let Some(id) = ev["command_id"].as_str() {
            missing.remove(id);
        }
        seen.push(ev);
    }
    seen
}

fn assert_clean(what: &str, text: &str) {
    for secret in [TOKEN, WRONG_TOKEN] {
        if let Some(at) = text.find(secret) {
            let start = text[..at]
                .char_indices()
                .rev()
                .nth(200)
                .map_or(0, |(i, _)| i);
            panic!(
                "{what} contains a token: …{}…",
                &text[start..(at + secret.len()).min(text.len())]
            );
        }
    }
}

/// Runs the CLI on `cfg` with the tokens in its environment; returns stdout and stderr.
async fn cli(env: &TestEnv, cfg: &str, args: &[&str]) -> [String; 2] {
    let mut cmd = env.cli_command(&[&["--config", cfg][..], args].concat());
    cmd.env("LEAK_TOKEN", TOKEN)
        .env("LEAK_WRONG_TOKEN", WRONG_TOKEN);
    let out = cmd.output().await.expect("run the CLI");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    [text(&out.stdout), text(&out.stderr)]
}

/// One run of the worker binary in `format`: a revoke per backend, then the CLI's views.
async fn run_flow(env: &TestEnv, sim: &str, cfg: &str, format: &str, round: usize) -> Vec<String> {
    let port = free_port();
    let mut cmd = env.cli_command(&["--config", cfg, "run"]);
    cmd.env("RUST_LOG", "debug")
        .env("INVITE_WORKER__LOG__FORMAT", format)
        .env("INVITE_WORKER__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("LEAK_TOKEN", TOKEN)
        .env("LEAK_WRONG_TOKEN", WRONG_TOKEN);
    let mut tap = env.tap_events().await;
    let worker = Captured::spawn(cmd);
    let ready = format!("http://127.0.0.1:{port}/readyz");
    wait_until(WAIT, || async {
        reqwest::get(&ready)
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;

    // A timeout, a 429 with Retry-After and a failing read, all retried to success.
    control(
        sim,
        "faults",
        json!({"route": "wawp.reset", "count": 1, "hang": true}),
    )
    .await;
    control(
        sim,
        "faults",
        json!({"route": "gateway.reset", "count": 1, "status": 429, "retry_after": 1}),
    )
    .await;
    control(
        sim,
        "faults",
        json!({"route": "waha.read", "count": 1, "status": 503}),
    )
    .await;

    let mut lines = String::new();
    let mut ids = HashSet::new();
    for (i, backend) in [
        "wasend",
        "wawp",
        "gateway",
        "meta_cloud",
        "waha",
        "evolution",
        "wawp_wrong",
        "waha_wrong",
    ]
    .into_iter()
    .enumerate()
    {
        let id = Uuid::new_v4().to_string();
        let (session, group) = if backend == "meta_cloud" {
            ("106540352242922".to_owned(), format!("meta_group_{round}"))
        } else {
            ("sales".to_owned(), group(100 * round + i))
        };
        let line =
            json!({"session": session, "group": group, "backend": backend, "command_id": id});
        lines.push_str(&format!("{line}\n"));
        ids.insert(id);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("commands.jsonl");
    std::fs::write(&file, lines).expect("write");
    let mut outputs = Vec::new();
    let file = file.to_str().expect("path");
    outputs.extend(cli(env, cfg, &["send", "revoke", "--from-file", file]).await);

    let events = events_for(&mut tap, &ids).await;
    let failed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "invite_link.rotation_failed")
        .collect();
    assert_eq!(
        failed.len(),
        2,
        "the two wrong-token backends fail: {events:#?}"
    );
    assert!(failed.iter().all(|e| e["error"]["kind"] == "unauthorized"));
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event_type"] == "invite_link.rotated")
            .count(),
        6,
        "{events:#?}"
    );
    outputs.push(serde_json::to_string(&events).expect("events"));
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    outputs.push(metrics);

    for args in [
        &["links", "list", "--json"][..],
        &["dead-letters", "list", "--json"],
        &["dead-letters", "list"],
        &["config", "check"],
    ] {
        outputs.extend(cli(env, cfg, args).await);
    }
    let (ok, log) = worker.stop().await;
    assert!(ok, "the worker exits cleanly:\n{log}");
    assert!(log.contains("link rotated"), "debug logs were captured");
    outputs.push(log);
    outputs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_leaks_into_logs_output_events_or_the_database() {
    let sim = SimulatorProcess::spawn(TOKEN);
    let env = TestEnv::new(Db::Sqlite).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("leak.toml");
    std::fs::write(&cfg, config(&sim.base)).expect("write config");
    let cfg = cfg.to_str().expect("utf-8 path");

    for (round, format) in ["text", "json"].into_iter().enumerate() {
        for (i, text) in run_flow(&env, &sim.base, cfg, format, round + 1)
            .await
            .iter()
            .enumerate()
        {
            assert_clean(&format!("{format} run, output {i}"), text);
        }
    }

    let dead = env.dead_letters().await;
    assert_eq!(dead.len(), 4, "two unauthorized commands per run");
    for (body, header) in &dead {
        assert_clean("a dead letter", &String::from_utf8_lossy(body));
        assert_clean("a dead letter's header", header);
    }
    let db_url = env.settings.database.url.expose();
    let db_file = db_url
        .strip_prefix("sqlite://")
        .and_then(|p| p.split('?').next())
        .expect("sqlite path");
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(bytes) = std::fs::read(format!("{db_file}{suffix}")) {
            assert_clean(
                &format!("database file {suffix}"),
                &String::from_utf8_lossy(&bytes),
            );
        }
    }
}
