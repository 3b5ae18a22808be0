//! Operability: the HTTP endpoints and metrics, `dead-letters list|replay`, and bulk
//! `send --from-file`, driven through the real binary where an operator would use it.

use std::{collections::BTreeMap, time::Duration};

use invite_worker::{
    cli::{
        dead_letters::{self, Selection},
        links,
    },
    simulator::world::FaultSpec,
    store::{GroupKey, Store},
};
use serde_json::Value;

use crate::{
    on_both_databases,
    support::{Db, TestEnv, free_port, group, revoke, wait_until},
};

const WAIT: Duration = Duration::from_secs(30);

/// One sample of a Prometheus text exposition.
#[derive(Debug)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses Prometheus text format 0.0.4 strictly enough to fail on anything malformed:
/// `# HELP` / `# TYPE` lines, and samples `name{label="value",...} value [timestamp]`
/// whose family was declared by a `# TYPE` line.
pub(crate) fn parse_prometheus(text: &str) -> Vec<Sample> {
    let valid_name = |n: &str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    assert!(valid_name(name), "bad metric name: {line}");
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                        "bad type: {line}"
                    );
                    types.insert(name.to_owned(), kind.to_owned());
                }
                (Some("HELP"), Some(name), _) => assert!(valid_name(name), "{line}"),
                _ => {}
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "bad metric name: {line}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(body) = rest.strip_prefix('{') {
            let (parsed, after) = parse_labels(body, line);
            labels = parsed;
            rest = after;
        }
        let mut fields = rest.split_whitespace();
        let value = fields.next().unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp: {line}"));
        }
        assert!(fields.next().is_none(), "trailing text: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without # TYPE: {line}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    samples
}

/// Parses `name="value",...}` and returns the labels and the text after the brace.
fn parse_labels<'a>(body: &'a str, line: &str) -> (BTreeMap<String, String>, &'a str) {
    let mut labels = BTreeMap::new();
    let mut chars = body.char_indices();
    loop {
        let mut key = String::new();
        loop {
            match chars.next() {
                Some((i, '}')) if key.is_empty() => return (labels, &body[i + 1..]),
                Some((_, '=')) => break,
                Some((_, c)) if c.is_ascii_alphanumeric() || c == '_' => key.push(c),
                other => panic!("bad label name at {other:?}: {line}"),
            }
        }
        assert!(!key.starts_with(|c: char| c.is_ascii_digit()), "{line}");
        assert_eq!(
            chars.next().map(|(_, c)| c),
            Some('"'),
            "unquoted value: {line}"
        );
        let mut value = String::new();
        loop {
            match chars.next().map(|(_, c)| c) {
                Some('\\') => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(c @ ('\\' | '"')) => value.push(c),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        }
        labels.insert(key, value);
        match chars.next() {
            Some((_, ',')) => {}
            Some((i, '}')) => return (labels, &body[i + 1..]),
            other => panic!("unexpected {other:?} after a label: {line}"),
        }
    }
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn get(url: &str) -> (u16, Option<String>, String) {
    let r = reqwest::get(url).await.expect("HTTP request");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, ctype, r.text().await.expect("body"))
}

#[test]
fn the_prometheus_parser_rejects_what_it_should() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"1\",y=\"a\\\"b\"} 3\n\
              # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
    let s = parse_prometheus(ok);
    assert_eq!(s.len(), 4);
    assert_eq!(s[0].labels["y"], "a\"b");
    for bad in [
        "# TYPE a counter\na{x=1} 3\n",
        "# TYPE a counter\na 3 x\n",
        "b 1\n",
        "# TYPE a counter\na{x=\"1\" 3\n",
    ] {
        let r = std::panic::catch_unwind(|| parse_prometheus(bad));
        assert!(r.is_err(), "accepted {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_answer_and_metrics_move_after_a_command() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut settings = env.settings.clone();
    let addr = format!("127.0.0.1:{}", free_port());
    settings.http.listen = addr.clone();
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;
    let base = format!("http://{addr}");

    let (status, _, body) = get(&format!("{base}/healthz")).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    wait_until(WAIT, || async {
        get(&format!("{base}/readyz")).await.0 == 200
    })
    .await;
    let (_, _, ready) = get(&format!("{base}/readyz")).await;
    assert!(
        ready.contains("database: up") && ready.contains("broker: up"),
        "{ready}"
    );
    assert_eq!(get(&format!("{base}/nope")).await.0, 404);

    let rotated = [("type", "revoke_invite"), ("outcome", "rotated")];
    let (status, ctype, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        ctype
            .as_deref()
            .is_some_and(|c| c.starts_with("text/plain")),
        "{ctype:?}"
    );
    let before = parse_prometheus(&text);
    let build = before
        .iter()
        .find(|s| s.name == "invite_worker_build_info")
        .expect("build info");
    assert_eq!(build.labels["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(build.value, 1.0);
    for always in [
        "invite_worker_commands_in_flight",
        "invite_worker_outbox_pending",
        "invite_worker_outbox_oldest_age_seconds",
        "invite_worker_retries_scheduled_total",
        "invite_worker_rate_limit_waits_total",
        "invite_worker_acks_total",
        "invite_worker_ack_frames_total",
    ] {
        assert!(
            before.iter().any(|s| s.name == always),
            "{always} present from the start"
        );
    }

    let id = env.send(&[revoke("sales", &group(70))]).await[0];
    events.until_command(id, WAIT).await;
    let after = parse_prometheus(&get(&format!("{base}/metrics")).await.2);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert!(moved("invite_worker_commands_total", &rotated) >= 1.0);
    assert!(
        moved(
            "invite_worker_command_duration_seconds_count",
            &[("type", "revoke_invite")]
        ) >= 1.0
    );
    let sim_reset = [("backend", "sim"), ("operation", "reset"), ("result", "ok")];
    assert!(moved("invite_worker_backend_requests_total", &sim_reset) >= 1.0);
    assert!(
        moved(
            "invite_worker_backend_request_duration_seconds_count",
            &[("backend", "sim"), ("operation", "reset")]
        ) >= 1.0
    );
    assert!(moved("invite_worker_events_published_total", &[]) >= 1.0);
    // The command's ack goes out beside its event, not necessarily before it.
    wait_until(WAIT, || async {
        let now = parse_prometheus(&get(&format!("{base}/metrics")).await.2);
        let moved = |name: &str| value(&now, name, &[]) - value(&before, name, &[]);
        moved("invite_worker_acks_total") >= 1.0 && moved("invite_worker_ack_frames_total") >= 1.0
    })
    .await;
    worker.stop().await;
}

/// The dead-lettered copy of `id`, once the relay has published it.
async fn wait_for_dead_letter(env: &TestEnv, id: uuid::Uuid) {
    let id = id.to_string();
    wait_until(WAIT, || {
        let id = id.clone();
        async move {
            dead_letters::list(&env.settings)
                .await
                .expect("list")
                .iter()
                .any(|l| l.command_id.as_deref() == Some(id.as_str()))
        }
    })
    .await;
}

on_both_databases!(a_replayed_dead_letter_completes_once_the_fault_is_gone);

async fn a_replayed_dead_letter_completes_once_the_fault_is_gone(db: Db) {
    let env = TestEnv::new(db).await;
    env.world.add_fault(FaultSpec {
        route: "*.reset".into(),
        count: 1,
        status: 403,
        retry_after: None,
        hang: false,
    });
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;
    let g = group(71);
    let id = env.send(&[revoke("sales", &g)]).await[0];
    let seen = events.until_command(id, WAIT).await;
    let (_, failed) = seen.last().expect("event");
    assert_eq!(failed["event_type"], "invite_link.rotation_failed");
    assert_eq!(failed["error"]["kind"], "not_admin");
    wait_for_dead_letter(&env, id).await;

    // Listing twice shows the same message: listing loses nothing.
    for _ in 0..2 {
        let (code, out, err) = env.cli(&["dead-letters", "list", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let list: Value = serde_json::from_str(&out).expect("JSON list");
        let list = list.as_array().expect("array");
        assert_eq!(list.len(), 1, "{out}");
        assert_eq!(list[0]["command_id"], id.to_string());
        assert_eq!(list[0]["type"], "revoke_invite");
        assert_eq!(list[0]["group_id"], g);
        let error = list[0]["error"].as_str().expect("error");
        assert!(error.starts_with("not_admin"), "{error}");
    }
    let (_, table, _) = env.cli(&["dead-letters", "list"]).await;
    assert!(table.starts_with("COMMAND_ID"), "{table}");
    assert!(table.contains(&id.to_string()) && table.contains("not_admin"));

    env.world.clear_faults();
    let (code, out, err) = env
        .cli(&["dead-letters", "replay", "--command-id", &id.to_string()])
        .await;
    assert_eq!((code, out.trim()), (0, "replayed 1"), "{err}");
    let seen = events.until_command(id, WAIT).await;
    let (_, rotated) = seen.last().expect("event");
    assert_eq!(rotated["event_type"], "invite_link.rotated", "{rotated:#}");
    assert_eq!(rotated["attempts"], 1, "a fresh attempt budget");
    assert_ne!(rotated["event_id"], failed["event_id"]);

    let key = GroupKey {
        backend: "sim".into(),
        session_id: "sales".into(),
        group_id: g.clone(),
    };
    let history: Vec<String> = links::show(&worker.store, &key)
        .await
        .expect("history")
        .history
        .into_iter()
        .map(|h| h.outcome)
        .collect();
    assert_eq!(history, ["failed", "replayed", "rotated"]);
    let row = worker
        .store
        .find_command(&id.to_string())
        .await
        .expect("read")
        .expect("row");
    assert_eq!((row.cycle, row.outcome.as_deref()), (2, Some("rotated")));
    assert!(
        env.dead_letters().await.is_empty(),
        "moved out of the queue"
    );
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_leaves_unselected_and_still_invalid_dead_letters_in_place() {
    let env = TestEnv::new(Db::Sqlite).await;
    env.world.add_fault(FaultSpec {
        route: "*.reset".into(),
        count: 2,
        status: 403,
        retry_after: None,
        hang: false,
    });
    let mut events = env.tap_events().await;
    let worker = env.start_worker().await;
    env.publish_raw(b"not a command").await;
    let first = env.send(&[revoke("sales", &group(72))]).await[0];
    events.until_command(first, WAIT).await;
    let second = env.send(&[revoke("sales", &group(73))]).await[0];
    events.until_command(second, WAIT).await;
    wait_for_dead_letter(&env, second).await;
    wait_until(WAIT, || async {
        dead_letters::list(&env.settings).await.expect("list").len() == 3
    })
    .await;
    let order: Vec<Option<String>> = dead_letters::list(&env.settings)
        .await
        .expect("list")
        .into_iter()
        .map(|l| l.command_id)
        .collect();

    let store = Store::connect(env.settings.database.url.expose(), 1)
        .await
        .expect("store");
    let unknown = uuid::Uuid::new_v4();
    let report = dead_letters::replay(
        &env.settings,
        &store,
        &Selection::Ids(vec![second, unknown]),
    )
    .await
    .expect("replay");
    assert_eq!(report.replayed, [second.to_string()]);
    assert_eq!(report.not_found, [unknown]);
    let seen = events.until_command(second, WAIT).await;
    assert_eq!(
        seen.last().expect("event").1["event_type"],
        "invite_link.rotated"
    );

    // The rest kept its order; --all replays the valid one and keeps the garbage.
    let left: Vec<Option<String>> = dead_letters::list(&env.settings)
        .await
        .expect("list")
        .into_iter()
        .map(|l| l.command_id)
        .collect();
    let expected: Vec<Option<String>> = order
        .into_iter()
        .filter(|c| c.as_deref() != Some(second.to_string().as_str()))
        .collect();
    assert_eq!(left, expected);
    let report = dead_letters::replay(&env.settings, &store, &Selection::All)
        .await
        .expect("replay all");
    assert_eq!(report.replayed, [first.to_string()]);
    assert_eq!(report.kept.len(), 1, "{:?}", report.kept);
    assert!(
        report.kept[0].1.starts_with("still invalid"),
        "{:?}",
        report.kept
    );
    events.until_command(first, WAIT).await;
    let left = dead_letters::list(&env.settings).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].body, Value::String("not a command".into()));
    store.close().await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_send_publishes_valid_lines_and_reports_bad_ones() {
    let env = TestEnv::new(Db::Sqlite).await;
    let bad = [137usize, 500, 901];
    let mut file = String::from("session,group,backend,reason\n");
    for n in 1..=1000 {
        let line_no = n + 1;
        let line = if line_no == bad[0] {
            "sales,not-a-group-jid".to_owned()
        } else if line_no == bad[1] {
            "{\"session\":\"sales\",\"group\":\"1@g.us\",\"backend\":\"nowhere\"}".to_owned()
        } else if line_no == bad[2] {
            "bad session!,120363041234567890@g.us".to_owned()
        } else if n % 2 == 0 {
            format!("{{\"session_id\":\"sales\",\"group_id\":\"{}\"}}", group(n))
        } else {
            format!("sales,{},sim,\"bulk, test\"", group(n))
        };
        file.push_str(&line);
        file.push('\n');
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("groups.csv");
    std::fs::write(&path, file).expect("write");

    let (code, out, err) = env
        .cli(&[
            "send",
            "revoke",
            "--from-file",
            path.to_str().expect("utf-8 path"),
        ])
        .await;
    assert_eq!(out.trim(), "published 997, rejected 3", "{err}");
    assert_eq!(code, 1, "rejected lines make exit code 1");
    let reported: Vec<&str> = err.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(reported.len(), 3, "{err}");
    for (line, n) in reported.iter().zip(bad) {
        assert!(line.starts_with(&format!("line {n}: ")), "{line}");
    }
    assert!(reported[0].contains("group"), "{err}");
    assert!(reported[1].contains("nowhere"), "{err}");
    assert!(reported[2].contains("session"), "{err}");
    assert_eq!(env.queue_len(&env.topology.commands_queue()).await, 997);

    let (code, _, err) = env.cli(&["send", "revoke", "--group", "1@g.us"]).await;
    assert_eq!(code, 2, "missing --session is a usage error: {err}");
}

/// A one-shot command that fails says why in one line on stderr, without the broker
/// client's own log lines or a cause printed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_send_reports_one_line() {
    let env = TestEnv::new(Db::Sqlite).await;
    let out = env
        .cli_command(&["send", "revoke", "--session", "sales", "--group", &group(1)])
        .env(
            "INVITE_WORKER__AMQP__URL",
            "amqp://guest:not-the-password@127.0.0.1:5672/%2f",
        )
        .output()
        .await
        .expect("run send");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: broker"), "{stderr}");
    assert_eq!(stderr.matches("ACCESS_REFUSED").count(), 1, "{stderr}");
    assert!(!stderr.contains("not-the-password"), "{stderr}");
}
