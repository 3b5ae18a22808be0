//! `send`: validates commands like the worker will, and publishes them to the commands
//! exchange with publisher confirms: one from the command line, or many from a file of
//! CSV or JSON lines (`--from-file`), pipelined in batches.

use std::time::Duration;

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::ShortString,
};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{
    amqp::{Broker, Topology, declare},
    command::{CommandType, GroupId, SessionId},
    config::Settings,
};

/// Commands published before waiting for their confirms.
pub const BATCH: usize = 256;

/// One command to publish, as given on the command line or in a bulk file.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub kind: CommandType,
    pub session: String,
    pub group: String,
    pub backend: Option<String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub command_id: Option<Uuid>,
}

impl CommandSpec {
    pub fn body(&self, id: Uuid) -> Vec<u8> {
        let mut v = json!({
            "command_id": id.to_string(),
            "type": self.kind.as_str(),
            "session_id": self.session,
            "group_id": self.group,
        });
        for (k, val) in [
            ("backend", &self.backend),
            ("reason", &self.reason),
            ("requested_by", &self.requested_by),
        ] {
            if let Some(val) = val {
                v[k] = json!(val);
            }
        }
        serde_json::to_vec(&v).unwrap_or_default()
    }

    /// Checks the spec as the worker would parse it: session id, group id in the style
    /// of the backend's kind, and a configured backend.
    pub fn validate(&self, settings: &Settings) -> Result<(), SpecError> {
        SessionId::parse(&self.session).map_err(|e| SpecError::new("session", e))?;
        let backend = self.backend.as_deref().unwrap_or(&settings.default_backend);
        let style = settings
            .backends
            .get(backend)
            .map(|b| b.kind.group_style())
            .ok_or_else(|| {
                SpecError::new(
                    "backend",
                    format!("{backend:?} is not a configured backend"),
                )
            })?;
        GroupId::parse(&self.group, style).map_err(|e| SpecError::new("group", e))?;
        for (field, text) in [
            ("reason", &self.reason),
            ("requested_by", &self.requested_by),
        ] {
            if text.as_ref().is_some_and(|t| t.chars().count() > 500) {
                return Err(SpecError::new(field, "at most 500 characters"));
            }
        }
        Ok(())
    }
}

/// A field of a [`CommandSpec`] that the worker would reject.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    pub field: &'static str,
    pub message: String,
}

impl SpecError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("broker (after {confirmed} commands were confirmed): {source}")]
    Broker {
        confirmed: usize,
        source: lapin::Error,
    },
    #[error("no publisher confirm within {timeout:?} (after {confirmed} commands were confirmed)")]
    Timeout { confirmed: usize, timeout: Duration },
    #[error("the broker refused {0} command(s) (nack)")]
    Nacked(usize),
}

/// Publishes commands and returns their ids, each confirmed by the broker.
pub async fn publish(settings: &Settings, specs: &[CommandSpec]) -> Result<Vec<Uuid>, SendError> {
    let results = publish_batched(settings, specs, |_| {}).await?;
    let refused = results.iter().filter(|(_, ok)| !ok).count();
    if refused > 0 {
        return Err(SendError::Nacked(refused));
    }
    Ok(results.into_iter().map(|(id, _)| id).collect())
}

/// Publishes commands in pipelined batches of [`BATCH`], calling `progress` with the
/// number settled after each batch. Returns, per spec and in order, its command_id and
/// whether the broker confirmed it (false: nacked).
pub async fn publish_batched(
    settings: &Settings,
    specs: &[CommandSpec],
    mut progress: impl FnMut(usize),
) -> Result<Vec<(Uuid, bool)>, SendError> {
    let topo = Topology::new(&settings.amqp.name_prefix);
    let broker = Broker::new(
        settings.amqp.url.expose(),
        topo.clone(),
        settings.amqp.queue_type,
    );
    let timeout = settings.amqp.confirm_timeout;
    let mut results = Vec::with_capacity(specs.len());
    let broker_err = |confirmed: usize| move |source| SendError::Broker { confirmed, source };
    let ch = match broker.channel().await {
        Ok(ch) => ch,
        Err(e) => {
            broker.close().await;
            return Err(broker_err(0)(e));
        }
    };
    let outcome = async {
        declare(&ch, &topo, settings.amqp.queue_type)
            .await
            .map_err(broker_err(0))?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_err(0))?;
        for batch in specs.chunks(BATCH) {
            let confirmed = results.len();
            let mut pending = Vec::with_capacity(batch.len());
            for spec in batch {
                let id = spec.command_id.unwrap_or_else(Uuid::new_v4);
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(ShortString::from(id.to_string()));
                let confirm = ch
                    .basic_publish(
                        topo.commands_exchange().as_str().into(),
                        spec.kind.routing_key().as_str().into(),
                        BasicPublishOptions::default(),
                        &spec.body(id),
                        props,
                    )
                    .await
                    .map_err(broker_err(confirmed))?;
                pending.push((id, confirm));
            }
            let wait = async {
                let mut acks = Vec::with_capacity(pending.len());
                for (id, p) in pending {
                    acks.push((id, p.await?.is_ack()));
                }
                Ok::<_, lapin::Error>(acks)
            };
            let acks = tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| SendError::Timeout { confirmed, timeout })?
                .map_err(broker_err(confirmed))?;
            progress(acks.len());
            results.extend(acks);
        }
        Ok(())
    }
    .await;
    let _ = ch.close(200, "OK".into()).await;
    broker.close().await;
    outcome.map(|()| results)
}

/// Values applied to every line of a bulk file that does not set its own.
#[derive(Clone, Debug, Default)]
pub struct BulkDefaults {
    pub backend: Option<String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
}

/// A bulk file line that cannot become a command.
#[derive(Debug, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

/// The commands of a bulk file and its rejected lines.
#[derive(Debug, Default)]
pub struct Bulk {
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
pub fn parse_bulk(
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
            spec.validate(settings).map_err(|e| e.to_string())?;
            Ok(spec)
        });
        match result {
            Ok(spec) => bulk.specs.push((line_no, spec)),
            Err(message) => bulk.rejected.push(LineError {
                line: line_no,
                message,
            }),
        }
    }
    bulk
}

fn json_line(line: &str, kind: CommandType) -> Result<CommandSpec, String> {
    let j: JsonLine = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
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

fn csv_line(fields: &[String], kind: CommandType) -> Result<CommandSpec, String> {
    if !(2..=4).contains(&fields.len()) {
        return Err(format!(
            "expected session,group[,backend[,reason]], found {} fields",
            fields.len()
        ));
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
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
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
                    None => return Err("unterminated quoted field".into()),
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
                Some(_) => return Err("unexpected text after a quoted field".into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{backend::BackendKind, config::BackendSettings};

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.backends
            .insert("sim".into(), BackendSettings::simulator());
        let mut meta = BackendSettings::simulator();
        meta.kind = BackendKind::MetaCloud;
        s.backends.insert("meta".into(), meta);
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
        assert!(bulk.rejected[1].message.starts_with("session:"));
        assert!(bulk.rejected[2].message.starts_with("group:"));
        assert!(bulk.rejected[3].message.contains("\"nope\""));
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
