//! Text output of the CLI: the tables of `links` and `dead-letters list` (invite codes
//! shortened), the reports of a replay and a migration, and pretty JSON for `--json`.

use serde::Serialize;

use super::{
    dead_letter_migration::Migration,
    dead_letters::{DeadLetter, ReplayReport},
    links::{LinkDetail, LinkView},
};
use crate::domain::fingerprint_code;

/// `value` as pretty JSON on stdout (for `--json`).
pub(super) fn print_json(value: &impl Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn short(code: &Option<String>) -> String {
    code.as_deref().map_or_else(|| "-".into(), fingerprint_code)
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

pub fn links_table(links: &[LinkView]) -> String {
    let mut out = format!(
        "{:<10} {:<20} {:<32} {:<8} {:<21} {:<21} {}\n",
        "BACKEND", "SESSION", "GROUP", "CODE", "EXPIRES_AT", "LAST_ROTATED", "ROTATIONS"
    );
    for l in links {
        out.push_str(&format!(
            "{:<10} {:<20} {:<32} {:<8} {:<21} {:<21} {}\n",
            l.backend,
            l.session_id,
            l.group_id,
            short(&l.invite_code),
            or_dash(&l.expires_at),
            or_dash(&l.last_rotated_at),
            l.rotation_count
        ));
    }
    out
}

pub fn link_detail(d: &LinkDetail) -> String {
    let mut out = String::new();
    match &d.link {
        Some(l) => out.push_str(&format!(
            "backend:   {}\nsession:   {}\ngroup:     {}\ncode:      {}\nissued:    {}\nexpires:   {} ({})\nrotations: {}\n",
            l.backend,
            l.session_id,
            l.group_id,
            short(&l.invite_code),
            or_dash(&l.issued_at),
            or_dash(&l.expires_at),
            or_dash(&l.expires_at_source),
            l.rotation_count
        )),
        None => out.push_str("not tracked\n"),
    }
    out.push_str(&format!(
        "\n{:<21} {:<16} {:<8} {:<15} {:<8} {:<8} {:<8} {}\n",
        "TIME", "OUTCOME", "TRIGGER", "COMMAND", "ATTEMPTS", "OLD", "NEW", "ERROR"
    ));
    for h in &d.history {
        let cmd = h
            .command_id
            .as_deref()
            .map_or("-".to_owned(), |c| c.chars().take(13).collect());
        out.push_str(&format!(
            "{:<21} {:<16} {:<8} {:<15} {:<8} {:<8} {:<8} {}\n",
            h.occurred_at,
            h.outcome,
            or_dash(&h.trigger),
            cmd,
            h.attempts,
            short(&h.old_code),
            short(&h.new_code),
            h.error_kind.as_deref().map_or("-".to_owned(), |k| format!(
                "{k}: {}",
                or_dash(&h.error_message)
            ))
        ));
    }
    out
}

/// The text table of `dead-letters list`.
pub fn dead_letters_table(letters: &[DeadLetter]) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{:<36} {:<20} {:<16} {:<28} {}\n",
        "COMMAND_ID", "TYPE", "SESSION", "GROUP", "ERROR"
    );
    for l in letters {
        out.push_str(&format!(
            "{:<36} {:<20} {:<16} {:<28} {}\n",
            dash(&l.command_id),
            dash(&l.command_type),
            dash(&l.session_id),
            dash(&l.group_id),
            l.error
        ));
    }
    out.push_str(&format!("{} dead-lettered command(s)\n", letters.len()));
    out
}

/// What `dead-letters replay` did: what stayed and why on stderr, the count on stdout.
/// Returns how many selected dead letters were not replayed.
pub(super) fn replay_report(report: &ReplayReport) -> usize {
    for (what, why) in &report.kept {
        eprintln!("{what}: left in the dead-letter queue: {why}");
    }
    for id in &report.not_found {
        eprintln!("{id}: not in the dead-letter queue");
    }
    print!("replayed {}", report.replayed.len());
    if report.duplicates_removed > 0 {
        print!(" ({} duplicate copies removed)", report.duplicates_removed);
    }
    println!();
    report.kept.len() + report.not_found.len()
}

/// What `dead-letters migrate` did, as one line.
pub fn migration_report(m: &Migration) -> String {
    if m.already && m.moved == 0 {
        format!(
            "{} is a quorum queue already; nothing to migrate\n",
            m.queue
        )
    } else {
        format!(
            "moved {} dead letter(s) into the quorum queue {}\n",
            m.moved, m.queue
        )
    }
}
