//! The monitoring pack under `deploy/` holds together: the Prometheus rules pass
//! `promtool check rules` and their unit tests ([`rules`]), every alert carries its
//! annotations and a runbook section of `docs/operations.md` that exists, and every
//! metric the rules and the Grafana dashboard read is one a running worker exports
//! ([`live`]), or one of the few from elsewhere listed in [`EXTERNAL`].

mod live;
mod promql;
mod rules;
#[path = "../worker/support/teardown.rs"]
mod teardown;

use std::{collections::BTreeSet, fs, path::PathBuf};

use serde_json::Value as Json;
use serde_norway::Value as Yaml;

/// The metrics the pack reads that do not come from the worker: Prometheus's own `up`,
/// and RabbitMQ's per-object queue depths (the rabbitmq_prometheus plugin). The
/// dashboard and the rules may name these and no other metric outside the worker's.
pub(crate) const EXTERNAL: [&str; 3] = [
    "up",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages",
];

pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) const RULES: &str = "deploy/prometheus/invite-worker.rules.yml";
pub(crate) const RULE_TESTS: &str = "deploy/prometheus/tests";
pub(crate) const DASHBOARD: &str = "deploy/grafana/invite-worker.json";

pub(crate) fn read_yaml(path: &str) -> Yaml {
    let text = fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every rule of the rules file, across its groups.
pub(crate) fn rules() -> Vec<Yaml> {
    let file = read_yaml(RULES);
    let groups = file["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().expect("rules").clone())
        .collect()
}

/// The names the rules file records.
pub(crate) fn recorded() -> BTreeSet<String> {
    rules()
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_owned))
        .collect()
}

/// Every expression of the rules file.
pub(crate) fn rule_expressions() -> Vec<String> {
    rules()
        .iter()
        .map(|r| {
            r["expr"]
                .as_str()
                .expect("every rule has an expr")
                .to_owned()
        })
        .collect()
}

/// Every query of the dashboard: each panel's targets (rows' panels included) and the
/// metric of each `label_values(metric, label)` variable, as an expression.
pub(crate) fn dashboard_expressions() -> Vec<String> {
    let text = fs::read_to_string(root().join(DASHBOARD)).expect("dashboard");
    let dashboard: Json = serde_json::from_str(&text).expect("the dashboard is JSON");
    fn panels(list: &Json, out: &mut Vec<String>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.push(target["expr"].as_str().expect("a target's expr").to_owned());
            }
            panels(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    panels(&dashboard["panels"], &mut out);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let query = match &variable["query"] {
            Json::Object(q) => q.get("query").and_then(Json::as_str).unwrap_or(""),
            q => q.as_str().unwrap_or(""),
        };
        if let Some(args) = query
            .strip_prefix("label_values(")
            .and_then(|a| a.strip_suffix(')'))
        {
            let metric = args.rsplit_once(',').map_or(args, |(m, _)| m);
            out.push(metric.trim().to_owned());
        }
    }
    out
}

/// The worker's metrics (`invite_worker_…`) among the names `exprs` read; panics on a
/// name that is neither the worker's, nor recorded by the rules (when `recorded` is
/// given), nor [`EXTERNAL`].
pub(crate) fn worker_metrics(
    what: &str,
    exprs: &[String],
    recorded: Option<&BTreeSet<String>>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut strangers = Vec::new();
    for expr in exprs {
        for name in promql::metric_names(expr) {
            if name.starts_with("invite_worker_") {
                out.insert(name);
            } else if !EXTERNAL.contains(&name.as_str())
                && !recorded.is_some_and(|r| r.contains(&name))
            {
                strangers.push(format!("{name} in {expr}"));
            }
        }
    }
    assert!(
        strangers.is_empty(),
        "{what} reads metrics that are neither the worker's, nor recorded by {RULES}, nor \
         listed in EXTERNAL:\n{}",
        strangers.join("\n")
    );
    out
}

#[test]
fn the_dashboard_reads_only_the_workers_metrics_and_the_listed_external_ones() {
    let exprs = dashboard_expressions();
    assert!(exprs.len() >= 20, "found only {} queries", exprs.len());
    // No recorded series: the dashboard works without the rules loaded.
    let names = worker_metrics(DASHBOARD, &exprs, None);
    for wanted in [
        "invite_worker_commands_total",
        "invite_worker_deferred_commands",
        "invite_worker_backend_requests_total",
        "invite_worker_backend_request_duration_seconds_bucket",
        "invite_worker_rate_limit_waits_total",
        "invite_worker_breaker_open",
        "invite_worker_paused",
        "invite_worker_outbox_pending",
        "invite_worker_outbox_oldest_age_seconds",
        "invite_worker_dead_lettered_total",
        "invite_worker_rotations_late",
        "invite_worker_live_replicas",
        "invite_worker_ready",
    ] {
        assert!(
            names.contains(wanted),
            "the dashboard has no panel on {wanted}"
        );
    }
}
