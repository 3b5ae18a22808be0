//! The metric names a PromQL expression reads: what is left of it once strings, label
//! matchers, ranges, grouping clauses, functions, keywords and numbers are taken out.

/// Words of PromQL that are no metric: operators, modifiers, aggregations (which may
/// precede their parenthesis with a `by (…)` clause).
const KEYWORDS: [&str; 27] = [
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// Clauses whose parenthesised list holds label names, not metrics.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// `expr` with string literals, `{…}` label matchers and `[…]` ranges blanked out.
fn blank_literals(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut chars = expr.chars();
    let mut depth = 0;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                out.push(' ');
            }
            '{' | '[' => {
                depth += 1;
                out.push(' ');
            }
            '}' | ']' => {
                depth -= 1;
                out.push(' ');
            }
            _ if depth > 0 => out.push(' '),
            _ => out.push(c),
        }
    }
    out
}

/// The metric names `expr` reads, in order of appearance, without repeats.
pub(crate) fn metric_names(expr: &str) -> Vec<String> {
    let text = blank_literals(expr);
    let chars: Vec<char> = text.chars().collect();
    let is_start = |c: char| c.is_ascii_alphabetic() || c == '_' || c == ':';
    let is_part = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names: Vec<String> = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_digit() || c == '.' {
            // A number, with its exponent or a duration's unit (`1e3`, `5m`).
            while i < chars.len() && (is_part(chars[i]) || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !is_start(c) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && is_part(chars[i]) {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        if LABEL_LISTS.contains(&word.as_str()) && next == Some(&'(') {
            // Skip the label list.
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            continue;
        }
        let function = next == Some(&'(');
        let keyword = KEYWORDS.contains(&word.to_ascii_lowercase().as_str());
        let variable = start > 0 && chars[start - 1] == '$';
        if !function && !keyword && !variable && !names.contains(&word) {
            names.push(word);
        }
    }
    names
}

#[test]
fn the_extractor_finds_the_metrics_and_nothing_else() {
    let cases: [(&str, &[&str]); 6] = [
        (
            r#"histogram_quantile(0.99, sum by (job, backend, le) (rate(invite_worker_backend_request_duration_seconds_bucket{job="invite-worker"}[5m])))"#,
            &["invite_worker_backend_request_duration_seconds_bucket"],
        ),
        (
            r#"count by (job) (up{job="invite-worker"} == 1) > on (job) job:invite_worker_live_replicas:max"#,
            &["up", "job:invite_worker_live_replicas:max"],
        ),
        (
            r#"sum by (queue) (rabbitmq_queue_messages_ready{queue=~"(.+\\.)?invite_link\\.commands"}) and 1e3 < bool 2"#,
            &["rabbitmq_queue_messages_ready"],
        ),
        (
            "sum(rate(a_total{job=\"$job\"}[$__rate_interval])) / sum(rate(b_total[5m] offset 1h))",
            &["a_total", "b_total"],
        ),
        (
            "max_over_time(x:y:z[30m]) unless ignoring (instance) group_left (version) c",
            &["x:y:z", "c"],
        ),
        ("absent(up{job='a \"b\"'}) or vector(0)", &["up"]),
    ];
    for (expr, expected) in cases {
        assert_eq!(metric_names(expr), expected, "{expr}");
    }
}
