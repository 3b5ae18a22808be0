//! The rules pass `promtool check rules` and `promtool test rules`; every alert has its
//! annotations, a runbook section in `docs/operations.md`, and unit tests that see it
//! fire and not fire.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    process::Command,
};

use crate::{
    RULE_TESTS, RULES, read_yaml, recorded, root, rule_expressions, rules, worker_metrics,
};

/// Runs promtool with `args` from the repository root, failing with its output.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}): it comes with the distribution's `prometheus` \
                 package, which .ci/services-up installs"
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{text}", args.join(" "));
    text
}

/// The unit test files, relative to the repository root.
fn test_files() -> Vec<String> {
    let mut files: Vec<String> = fs::read_dir(root().join(RULE_TESTS))
        .expect("the rules' unit tests")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yml"))
        .map(|n| format!("{RULE_TESTS}/{n}"))
        .collect();
    files.sort();
    files
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let files = test_files();
    assert!(!files.is_empty(), "no unit tests in {RULE_TESTS}");
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let tested = promtool(&args);
    assert_eq!(
        tested.matches("SUCCESS").count(),
        files.len(),
        "every test file passes:\n{tested}"
    );
}

/// The alerts of the rules file, by name.
fn alerts() -> BTreeMap<String, serde_norway::Value> {
    rules()
        .into_iter()
        .filter_map(|r| Some((r["alert"].as_str()?.to_owned(), r)))
        .collect()
}

#[test]
fn every_alert_has_a_severity_annotations_and_a_runbook_section() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "found only {} alerts", alerts.len());
    let operations = fs::read_to_string(root().join("docs/operations.md")).expect("docs");
    let headings: BTreeSet<&str> = operations
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .collect();
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning" | "info")),
            "{name}: severity {severity:?}"
        );
        let annotation = |key: &str| rule["annotations"][key].as_str().unwrap_or("").to_owned();
        assert!(!annotation("summary").is_empty(), "{name}: no summary");
        assert!(
            !annotation("description").is_empty(),
            "{name}: no description"
        );
        assert_eq!(
            annotation("runbook_url"),
            format!("docs/operations.md#{}", name.to_lowercase()),
            "{name}: runbook_url"
        );
        assert!(
            headings.contains(name.as_str()),
            "docs/operations.md has no section `### {name}`"
        );
    }
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let mut fired = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for file in test_files() {
        let doc = read_yaml(&file);
        for case in doc["tests"].as_sequence().expect("tests").iter() {
            let checks = case["alert_rule_test"].as_sequence().cloned();
            for check in checks.into_iter().flatten() {
                let name = check["alertname"].as_str().expect("alertname").to_owned();
                let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
                if expected == 0 {
                    quiet.insert(name);
                } else {
                    fired.insert(name);
                }
            }
        }
    }
    let mut missing = Vec::new();
    for name in alerts().keys() {
        if !fired.contains(name) {
            missing.push(format!("{name}: no test sees it fire"));
        }
        if !quiet.contains(name) {
            missing.push(format!("{name}: no test sees it stay quiet"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_rules_read_only_the_workers_metrics_their_own_records_and_the_listed_external_ones() {
    let recorded = recorded();
    assert!(recorded.len() >= 5, "found only {recorded:?}");
    assert!(recorded.iter().all(|r| r.contains(':')), "{recorded:?}");
    let names = worker_metrics(RULES, &rule_expressions(), Some(&recorded));
    assert!(names.len() >= 10, "found only {names:?}");
}
