//! `pause`, `resume` and `pause list`: hold the commands of a backend, or of one of its
//! sessions, for every worker process sharing the database (they obey within about a
//! second; held commands wait in the database, spending no attempt), and release them.

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Failure, output, usage};
use crate::{
    config::Settings,
    domain::{SessionId, events::rfc3339},
    store::{ALL_SESSIONS, Store},
};

/// At most this many characters of reason.
const MAX_REASON_CHARS: usize = 500;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(super) struct PauseArgs {
    #[command(subcommand)]
    list: Option<PauseList>,
    /// The backend to pause (all its sessions unless --session).
    #[arg(long, required = true)]
    backend: Option<String>,
    /// Only this session of the backend.
    #[arg(long)]
    session: Option<String>,
    /// Why; shown by `pause list`.
    #[arg(long)]
    reason: Option<String>,
}

#[derive(Subcommand)]
enum PauseList {
    /// The pauses in force.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(super) struct ResumeArgs {
    /// The backend to resume.
    #[arg(long)]
    backend: String,
    /// Only this session (a pause of the whole backend is resumed without it).
    #[arg(long)]
    session: Option<String>,
}

/// One pause as `pause list --json` prints it.
#[derive(Serialize)]
struct PauseView {
    backend: String,
    /// A session id, or `*` for every session of the backend.
    session_id: String,
    reason: Option<String>,
    paused_at: String,
}

/// The target of a pause or resume, checked like a command's: a configured backend, a
/// valid session id.
fn target<'a>(
    settings: &Settings,
    backend: &str,
    session: Option<&'a str>,
) -> Result<Option<&'a str>, Failure> {
    if !settings.backends.contains_key(backend) {
        return Err(usage(format!(
            "--backend: {backend:?} is not a configured backend"
        )));
    }
    if let Some(s) = session {
        SessionId::parse(s).map_err(|e| usage(format!("--session: {e}")))?;
    }
    Ok(session)
}

async fn store(settings: &Settings) -> Result<Store, Failure> {
    let store = Store::connect(settings.database.url.expose(), 1).await?;
    store.migrate().await?;
    Ok(store)
}

fn describe(backend: &str, session: Option<&str>) -> String {
    match session {
        Some(s) => format!("backend {backend} session {s}"),
        None => format!("backend {backend} (every session)"),
    }
}

pub(super) async fn pause(settings: &Settings, args: PauseArgs) -> Result<(), Failure> {
    if let Some(PauseList::List { json }) = args.list {
        return list(settings, json).await;
    }
    let backend = args.backend.unwrap_or_default();
    let session = target(settings, &backend, args.session.as_deref())?;
    if args
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
    {
        return Err(usage(format!(
            "--reason: at most {MAX_REASON_CHARS} characters"
        )));
    }
    let store = store(settings).await?;
    store
        .pause(&backend, session, args.reason.as_deref())
        .await?;
    store.close().await;
    println!("paused {}", describe(&backend, session));
    Ok(())
}

pub(super) async fn resume(settings: &Settings, args: ResumeArgs) -> Result<(), Failure> {
    let session = target(settings, &args.backend, args.session.as_deref())?;
    let store = store(settings).await?;
    let resumed = store.resume(&args.backend, session).await?;
    store.close().await;
    if !resumed {
        return Err(Failure {
            code: 1,
            message: format!("{} is not paused", describe(&args.backend, session)),
        });
    }
    println!("resumed {}", describe(&args.backend, session));
    Ok(())
}

async fn list(settings: &Settings, json: bool) -> Result<(), Failure> {
    let store = store(settings).await?;
    let pauses = store.pauses().await?;
    store.close().await;
    let views: Vec<PauseView> = pauses
        .into_iter()
        .map(|p| PauseView {
            backend: p.backend,
            session_id: p.session_id,
            reason: p.reason,
            paused_at: rfc3339(p.paused_at),
        })
        .collect();
    if json {
        output::print_json(&views);
        return Ok(());
    }
    println!(
        "{:<16} {:<24} {:<21} REASON",
        "BACKEND", "SESSION", "PAUSED_AT"
    );
    for p in &views {
        let session = if p.session_id == ALL_SESSIONS {
            "* (all)"
        } else {
            &p.session_id
        };
        println!(
            "{:<16} {:<24} {:<21} {}",
            p.backend,
            session,
            p.paused_at,
            p.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}
