//! `send --from-file`: a file of CSV or JSON lines, each a command validated like the
//! worker will; bad lines are reported by number and skipped, the rest published in
//! pipelined batches with a progress bar.

use std::{io::IsTerminal, path::Path};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use uuid::Uuid;

use super::{Failure, SendArgs, send, usage};
use crate::{
    config::Settings,
    domain::{CommandSpec, CommandType, SpecError},
};

/// Values applied to every line of a bulk file that does not set its own.
#[derive(Clone, Debug, Default)]
pub(super) struct BulkDefaults {
    pub backend: Option<String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// A bulk file line that cannot become a command.
#[derive(Debug)]
pub(super) struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub error: BadLine,
}

/// What is wrong with a bulk file line.
#[derive(Debug, thiserror::Error)]
pub(super) enum BadLine {
    #[error("invalid JSON: {0}")]
    Json(serde_json::Error),
    #[error("expected session,group[,backend[,reason]], found {0} fields")]
    FieldCount(usize),
    #[error("unterminated quoted field")]
    Unterminated,
    #[error("unexpected text after a quoted field")]
    TextAfterQuote,
    /// A command the worker would reject.
    #[error(transparent)]
    Invalid(#[from] SpecError),
}

/// The commands of a bulk file and its rejected lines.
#[derive(Debug, Default)]
pub(super) struct Bulk {
    /// Valid commands with their line numbers, in file order.
    pub specs: Vec<(usize, CommandSpec)>,
    pub rejected: Vec<LineError>,
}

/// A JSON line of a bulk file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    #[serde(alias = "session")]
    session_id: String,
    #[serde(alias = "group")]
    group_id: String,
    #[serde(default)]
    backend: Option<String>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    requested_by: Option<String>,
    #[serde(default)]
    command_id: Option<Uuid>,
}

/// Parses a bulk file: each line is either a JSON object (`{"session_id"|"session",
/// "group_id"|"group", "backend"?, "reason"?, "requested_by"?, "command_id"?}`) or CSV
/// `session,group[,backend[,reason]]` (double quotes allowed). Blank lines, `#` comments
/// and a CSV header line starting with `session` are skipped. Every command is validated
/// against `settings` as [`CommandSpec::validate`] does.
pub(super) fn parse_bulk(
    input: &str,
    kind: CommandType,
    defaults: &BulkDefaults,
    settings: &Settings,
) -> Bulk {
    let mut bulk = Bulk::default();
    let mut seen_content = false;
    for (i, raw) in input.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let first = !seen_content;
        seen_content = true;
        let parsed = if line.starts_with('{') {
            json_line(line, kind)
        } else {
            match csv_fields(line) {
                Ok(fields) if first && is_header(&fields) => continue,
                Ok(fields) => csv_line(&fields, kind),
                Err(e) => Err(e),
            }
        };
        let result = parsed.and_then(|mut spec| {
            spec.backend = spec.backend.or_else(|| defaults.backend.clone());
            spec.reason = spec.reason.or_else(|| defaults.reason.clone());
            spec.requested_by = spec.requested_by.or_else(|| defaults.requested_by.clone());
            spec.validate(settings)?;
            Ok(spec)
        });
        match result {
            Ok(spec) => bulk.specs.push((line_no, spec)),
            Err(error) => bulk.rejected.push(LineError {
                line: line_no,
                error,
            }),
        }
    }
    bulk
}

fn json_line(line: &str, kind: CommandType) -> Result<CommandSpec, BadLine> {
    let j: JsonLine = serde_json::from_str(line).map_err(BadLine::Json)?;
    Ok(CommandSpec {
        kind,
        session: j.session_id,
        group: j.group_id,
        backend: j.backend.filter(|b| !b.is_empty()),
        reason: j.reason,
        requested_by: j.requested_by,
        command_id: j.command_id,
    })
}

fn is_header(fields: &[String]) -> bool {
    fields
        .first()
        .is_some_and(|f| matches!(f.to_ascii_lowercase().as_str(), "session" | "session_id"))
}

fn csv_line(fields: &[String], kind: CommandType) -> Result<CommandSpec, BadLine> {
    if !(2..=4).contains(&fields.len()) {
        return Err(BadLine::FieldCount(fields.len()));
    }
    let opt = |i: usize| fields.get(i).filter(|f| !f.is_empty()).cloned();
    Ok(CommandSpec {
        kind,
        session: fields[0].clone(),
        group: fields[1].clone(),
        backend: opt(2),
        reason: opt(3),
        requested_by: None,
        command_id: None,
    })
}

/// Splits one CSV line into trimmed fields; a field may be double-quoted, with `""`
/// for a literal quote.
fn csv_fields(line: &str) -> Result<Vec<String>, BadLine> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(BadLine::Unterminated),
                }
            }
            while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(_) => return Err(BadLine::TextAfterQuote),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_owned());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim().to_owned());
        }
    }
}

/// `send --from-file`: reports bad lines on stderr, publishes the rest with a progress
/// bar on a terminal, prints `published N, rejected M`; exit 1 when any line was rejected.
pub(super) async fn run(
    settings: &Settings,
    kind: CommandType,
    a: SendArgs,
    path: &Path,
) -> Result<(), Failure> {
    let input = if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| usage(format!("--from-file {}: {e}", path.display())))?;
    let defaults = BulkDefaults {
        backend: a.backend,
        reason: a.reason,
        requested_by: a.requested_by,
    };
    let bulk = parse_bulk(&input, kind, &defaults, settings);
    for e in &bulk.rejected {
        eprintln!("line {}: {}", e.line, e.error);
    }
    let specs: Vec<CommandSpec> = bulk.specs.into_iter().map(|(_, s)| s).collect();
    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::new(specs.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos}/{len} published {per_sec}") {
        bar.set_style(style);
    }
    let results = if specs.is_empty() {
        Ok(Vec::new())
    } else {
        send::publish_batched(settings, &specs, |n| bar.inc(n as u64)).await
    };
    bar.finish_and_clear();
    let results = results.map_err(anyhow::Error::from)?;
    let nacked = results.iter().filter(|(_, ok)| !ok).count();
    let published = results.len() - nacked;
    let rejected = bulk.rejected.len();
    if nacked > 0 {
        println!("published {published}, rejected {rejected}, refused by the broker {nacked}");
    } else {
        println!("published {published}, rejected {rejected}");
    }
    if rejected + nacked > 0 {
        return Err(Failure {
            code: 1,
            message: format!("{} line(s) not published", rejected + nacked),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendSettings, HttpProvider, Provider};

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.backends
            .insert("sim".into(), BackendSettings::simulator());
        let meta = Provider::MetaCloud {
            http: HttpProvider::new(None, None),
            api_version: None,
        };
        s.backends.insert("meta".into(), BackendSettings::of(meta));
        s
    }

    fn parse(input: &str) -> Bulk {
        parse_bulk(
            input,
            CommandType::RevokeInvite,
            &BulkDefaults {
                reason: Some("bulk".into()),
                ..Default::default()
            },
            &settings(),
        )
    }

    #[test]
    fn csv_and_json_lines_mix_with_header_comments_and_blanks() {
        let bulk = parse(concat!(
            "session,group,backend,reason\n",
            "# a comment\n",
            "\n",
            "sales,120363041234567890@g.us\n",
            "sales, 120363041234567891@g.us ,sim,\"leaked, on a forum\"\n",
            "{\"session\":\"106540352242922\",\"group\":\"meta_1\",\"backend\":\"meta\"}\n",
            "{\"session_id\":\"s\",\"group_id\":\"1@g.us\",\"reason\":\"own\"}\n",
        ));
        assert!(bulk.rejected.is_empty(), "{:?}", bulk.rejected);
        let lines: Vec<usize> = bulk.specs.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [4, 5, 6, 7]);
        let (_, second) = &bulk.specs[1];
        assert_eq!(second.group, "120363041234567891@g.us");
        assert_eq!(second.reason.as_deref(), Some("leaked, on a forum"));
        assert_eq!(bulk.specs[0].1.reason.as_deref(), Some("bulk"), "default");
        assert_eq!(bulk.specs[3].1.reason.as_deref(), Some("own"));
        assert_eq!(bulk.specs[2].1.backend.as_deref(), Some("meta"));
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_the_rest_kept() {
        let bulk = parse(concat!(
            "sales,120363041234567890@g.us\n",
            "sales\n",
            "bad session!,1@g.us\n",
            "sales,not-a-jid\n",
            "sales,1@g.us,nope\n",
            "{\"session\":\"s\"}\n",
            "{\"session\":\"s\",\"group\":\"1@g.us\",\"extra\":1}\n",
            "s,\"unterminated\n",
            "sales,2@g.us\n",
        ));
        assert_eq!(bulk.specs.len(), 2);
        let lines: Vec<usize> = bulk.rejected.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8]);
        let message = |i: usize| bulk.rejected[i].error.to_string();
        assert!(message(1).starts_with("session:"));
        assert!(message(2).starts_with("group:"));
        assert!(message(3).contains("\"nope\""));
    }

    #[test]
    fn a_header_only_counts_on_the_first_line() {
        let bulk = parse("sales,1@g.us\nsession,2@g.us\n");
        assert_eq!(bulk.specs.len(), 2);
    }

    #[test]
    fn quoted_csv_fields() {
        assert_eq!(csv_fields(r#""a""b", c ,"d""#).unwrap(), ["a\"b", "c", "d"]);
        assert_eq!(csv_fields("a,,b").unwrap(), ["a", "", "b"]);
        assert!(csv_fields(r#""a"x,b"#).is_err());
    }
}
