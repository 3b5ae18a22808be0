//! `history export`: every group's history as JSON lines, oldest first, read page by
//! page so that memory stays flat whatever the table's size — for an audit consumer that
//! joins late, before retention prunes the rows it needs.

use std::io::{self, Write};

use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Failure, links::HistoryView, usage};
use crate::{
    config::Settings,
    domain::SessionId,
    store::{HistoryFilter, Store},
};

/// Rows read per query.
const PAGE: u64 = 1_000;

#[derive(Subcommand)]
pub(super) enum HistoryCmd {
    /// Print history rows as JSON lines, oldest first: the fields of `links show --json`'s
    /// history plus backend, session_id and group_id.
    Export(ExportArgs),
}

#[derive(Args)]
pub(super) struct ExportArgs {
    /// Rows that occurred at or after this time (RFC 3339, or a date meaning its start,
    /// UTC).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Rows that occurred before this time (RFC 3339, or a date meaning its start, UTC).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only this backend's rows.
    #[arg(long)]
    backend: Option<String>,
    /// Only this session's rows.
    #[arg(long)]
    session: Option<String>,
}

/// One exported row.
#[derive(Serialize)]
struct ExportRow {
    backend: String,
    session_id: String,
    group_id: String,
    #[serde(flatten)]
    entry: HistoryView,
}

pub(super) async fn run(settings: &Settings, cmd: HistoryCmd) -> Result<(), Failure> {
    let HistoryCmd::Export(args) = cmd;
    let filter = filter(settings, args)?;
    let store = Store::connect(settings.database.url.expose(), 1).await?;
    store.migrate().await?;
    let result = export(&store, &filter, &mut io::stdout().lock()).await;
    store.close().await;
    result
}

/// Writes the rows `filter` selects to `out`, one JSON object per line, oldest first.
/// A reader that goes away (a closed pipe) ends the export without an error.
async fn export(
    store: &Store,
    filter: &HistoryFilter,
    out: &mut impl Write,
) -> Result<(), Failure> {
    let mut out = io::BufWriter::new(out);
    let mut after = None;
    loop {
        let page = store.history_page(filter, after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some((last.occurred_at, last.id));
        let full = page.len() as u64 == PAGE;
        for row in page {
            let line = ExportRow {
                backend: row.backend.clone(),
                session_id: row.session_id.clone(),
                group_id: row.group_id.clone(),
                entry: HistoryView::from(row),
            };
            let written = serde_json::to_writer(&mut out, &line)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(e) = written {
                return closed_or_failed(e);
            }
        }
        if !full {
            break;
        }
    }
    out.flush().or_else(closed_or_failed)
}

fn closed_or_failed(e: io::Error) -> Result<(), Failure> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        return Ok(());
    }
    Err(Failure {
        code: 1,
        message: format!("writing the export: {e}"),
    })
}

fn filter(settings: &Settings, args: ExportArgs) -> Result<HistoryFilter, Failure> {
    if let Some(b) = &args.backend
        && !settings.backends.contains_key(b)
    {
        return Err(usage(format!(
            "--backend: {b:?} is not a configured backend"
        )));
    }
    if let Some(s) = &args.session {
        SessionId::parse(s).map_err(|e| usage(format!("--session: {e}")))?;
    }
    let since = args
        .since
        .as_deref()
        .map(|t| time("--since", t))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|t| time("--until", t))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until)
        && u <= s
    {
        return Err(usage("--until must be later than --since"));
    }
    Ok(HistoryFilter {
        since,
        until,
        backend: args.backend,
        session: args.session,
    })
}

/// An RFC 3339 time, or a date (`2026-01-31`) meaning its start in UTC.
fn time(option: &str, text: &str) -> Result<DateTime<Utc>, Failure> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            usage(format!(
                "{option}: {text:?} is not an RFC 3339 time (2026-01-31T12:00:00Z) or a date \
                 (2026-01-31)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_dates() {
        assert_eq!(
            time("--since", "2026-01-31").ok(),
            Some("2026-01-31T00:00:00Z".parse().unwrap())
        );
        assert_eq!(
            time("--since", "2026-01-31T13:00:00+01:00").ok(),
            Some("2026-01-31T12:00:00Z".parse().unwrap())
        );
        let bad = time("--until", "yesterday")
            .err()
            .map(|f| (f.code, f.message));
        assert!(matches!(bad, Some((2, m)) if m.starts_with("--until: \"yesterday\"")));
    }
}
