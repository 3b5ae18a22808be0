//! The command line: its clap types, running each command, and the mapping of failures
//! to exit codes (0 success, 2 usage or configuration, 1 otherwise, including a bulk
//! send with rejected lines and a replay that left selected messages).

mod bulk;
pub mod dead_letter_migration;
pub mod dead_letters;
mod history;
pub mod links;
pub mod output;
mod pauses;
pub mod send;
mod simulate;
mod watch;

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::dead_letters::Selection;
use crate::{
    config::{QueueType, Settings},
    domain::{CommandType, schema},
    store::{GroupKey, Store, StoreError},
    worker::Worker,
};

/// The command line.
#[derive(Parser)]
#[command(
    name = "invite-worker",
    version,
    about = "Revokes and rotates WhatsApp group invite links"
)]
pub struct Cli {
    /// TOML configuration file (default: config/default.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the worker until SIGINT/SIGTERM.
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Publish a command.
    #[command(subcommand)]
    Send(SendCmd),
    /// Inspect tracked links.
    #[command(subcommand)]
    Links(LinksCmd),
    /// Export the history of every group (for audit consumers).
    #[command(subcommand)]
    History(history::HistoryCmd),
    /// Inspect and replay dead-lettered commands.
    #[command(subcommand)]
    DeadLetters(DeadLettersCmd),
    /// Run the provider simulator.
    Simulate {
        #[arg(long, default_value = "127.0.0.1:9470")]
        listen: std::net::SocketAddr,
        /// Require this token in every provider API's auth style.
        #[arg(long, env = "INVITE_WORKER_SIMULATOR_TOKEN")]
        token: Option<String>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Hold the commands of a backend or one of its sessions (every replica obeys within
    /// about a second; they wait, spending no attempt); `pause list` shows the pauses.
    Pause(pauses::PauseArgs),
    /// Release the commands `pause` held.
    Resume(pauses::ResumeArgs),
    /// Print the JSON Schema (draft 2020-12) of the command or of an event, as kept in
    /// `schemas/`.
    Schema {
        #[arg(value_enum)]
        which: SchemaName,
    },
    /// Print events as JSON lines as they are published (a private temporary queue).
    Watch {
        /// Routing-key pattern, e.g. `invite_link.rotation_failed`.
        #[arg(long, default_value = "#")]
        pattern: String,
    },
}

/// The schemas `schema` prints (`domain::schema::ALL`).
#[derive(Clone, Copy, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
enum SchemaName {
    Command,
    Rotated,
    RotationFailed,
}

#[derive(Subcommand)]
enum SendCmd {
    /// Publish a revoke_invite command.
    Revoke(SendArgs),
    /// Publish a rotate_expiring_link command.
    Rotate(SendArgs),
}

#[derive(Args)]
struct SendArgs {
    /// Provider session, instance or phone-number id.
    #[arg(long, required_unless_present = "from_file")]
    session: Option<String>,
    /// Group JID (`<digits>@g.us`), or the opaque group id for meta_cloud.
    #[arg(long, required_unless_present = "from_file")]
    group: Option<String>,
    /// Backend name (default: `default_backend`); with --from-file, for lines naming none.
    #[arg(long)]
    backend: Option<String>,
    /// Why, copied into events; with --from-file, for lines giving none.
    #[arg(long)]
    reason: Option<String>,
    /// Who asked, copied into events.
    #[arg(long)]
    requested_by: Option<String>,
    /// Idempotency key (default: a new UUID).
    #[arg(long, conflicts_with = "from_file")]
    command_id: Option<Uuid>,
    /// Publish one command per line of FILE (`-` for stdin): CSV
    /// `session,group[,backend,reason]` or JSON lines; bad lines are reported and skipped.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["session", "group"])]
    from_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum LinksCmd {
    /// All tracked links.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One link and its history.
    Show {
        #[arg(long)]
        session: String,
        #[arg(long)]
        group: String,
        #[arg(long)]
        backend: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeadLettersCmd {
    /// Dead-lettered commands and why; the queue is left as it was.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Move dead-lettered commands back to the commands exchange with a fresh attempt
    /// budget. Commands that would be rejected again stay.
    Replay {
        /// Replay this command (repeatable).
        #[arg(
            long = "command-id",
            value_name = "ID",
            required_unless_present = "all"
        )]
        command_id: Vec<Uuid>,
        /// Replay every dead-lettered command.
        #[arg(long, conflicts_with = "command_id")]
        all: bool,
    },
    /// Make a classic dead-letter queue (of an older version) a quorum queue, moving its
    /// messages with publisher confirms (an upgrade step).
    Migrate,
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration and print the effective settings (secrets redacted).
    Check,
}

impl Cli {
    /// The settings the command runs on: defaults, the configuration file, then the
    /// environment. A problem is a usage failure naming the key.
    pub fn settings(&self) -> Result<Settings, Failure> {
        Settings::load(self.config.as_deref()).map_err(|e| usage(e.to_string()))
    }

    /// Whether the command runs once and exits (logged as such, see
    /// [`crate::ops::telemetry::init`]), rather than serving until stopped.
    pub fn is_one_shot(&self) -> bool {
        !matches!(
            self.command,
            Cmd::Run | Cmd::Simulate { .. } | Cmd::Watch { .. }
        )
    }

    /// Runs a command that needs no configuration and prints only (`schema`): `None`
    /// for every other command.
    pub fn run_standalone(&self) -> Option<Result<(), Failure>> {
        let Cmd::Schema { which } = self.command else {
            return None;
        };
        print_schema(which);
        Some(Ok(()))
    }

    /// Runs the command on `settings` (see [`Cli::settings`]).
    pub async fn run(self, settings: Settings) -> Result<(), Failure> {
        match self.command {
            Cmd::Run => {
                let worker = Worker::start(settings, None)
                    .await
                    .map_err(anyhow::Error::from)?;
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                worker.run(shutdown).await.map_err(anyhow::Error::from)?;
            }
            Cmd::Migrate => {
                let store = Store::connect(settings.database.url.expose(), 1).await?;
                store.migrate().await?;
                println!("migrations applied");
            }
            Cmd::Send(cmd) => {
                let (kind, args) = match cmd {
                    SendCmd::Revoke(a) => (CommandType::RevokeInvite, a),
                    SendCmd::Rotate(a) => (CommandType::RotateExpiringLink, a),
                };
                match args.from_file.clone() {
                    Some(path) => bulk::run(&settings, kind, args, &path).await?,
                    None => {
                        let spec = send::spec_from_args(&settings, kind, args)?;
                        let ids = send::publish(&settings, &[spec])
                            .await
                            .map_err(anyhow::Error::from)?;
                        for id in ids {
                            println!("{id}");
                        }
                    }
                }
            }
            Cmd::DeadLetters(DeadLettersCmd::List { json }) => {
                let letters = dead_letters::list(&settings)
                    .await
                    .map_err(anyhow::Error::from)?;
                if json {
                    output::print_json(&letters);
                } else {
                    print!("{}", output::dead_letters_table(&letters));
                }
            }
            Cmd::DeadLetters(DeadLettersCmd::Replay { command_id, all }) => {
                let selection = if all {
                    Selection::All
                } else {
                    Selection::Ids(command_id)
                };
                let store = Store::connect(settings.database.url.expose(), 1).await?;
                store.migrate().await?;
                let report = dead_letters::replay(&settings, &store, &selection)
                    .await
                    .map_err(anyhow::Error::from)?;
                store.close().await;
                let missed = output::replay_report(&report);
                if missed > 0 {
                    return Err(Failure {
                        code: 1,
                        message: format!("{missed} selected dead letter(s) not replayed"),
                    });
                }
            }
            Cmd::DeadLetters(DeadLettersCmd::Migrate) => {
                if settings.amqp.queue_type != QueueType::Quorum {
                    return Err(usage(
                        "dead-letters migrate makes the dead-letter queue a quorum queue; \
                         amqp.queue_type is \"classic\"",
                    ));
                }
                let done = dead_letter_migration::migrate(&settings)
                    .await
                    .map_err(anyhow::Error::from)?;
                print!("{}", output::migration_report(&done));
            }
            Cmd::Links(cmd) => {
                let store = Store::connect(settings.database.url.expose(), 1).await?;
                store.migrate().await?;
                match cmd {
                    LinksCmd::List { json } => {
                        let list = links::list(&store).await?;
                        if json {
                            output::print_json(&list);
                        } else {
                            print!("{}", output::links_table(&list));
                        }
                    }
                    LinksCmd::Show {
                        session,
                        group,
                        backend,
                        json,
                    } => {
                        let key = GroupKey {
                            backend: backend.unwrap_or_else(|| settings.default_backend.clone()),
                            session_id: session,
                            group_id: group,
                        };
                        let detail = links::show(&store, &key).await?;
                        if json {
                            output::print_json(&detail);
                        } else {
                            print!("{}", output::link_detail(&detail));
                        }
                    }
                }
            }
            Cmd::Simulate { listen, token } => {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                simulate::run(listen, token, shutdown.cancelled_owned()).await?;
            }
            Cmd::Watch { pattern } => {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                watch::watch(&settings, &pattern, shutdown.cancelled_owned()).await?;
            }
            Cmd::Schema { which } => print_schema(which),
            Cmd::History(cmd) => history::run(&settings, cmd).await?,
            Cmd::Pause(args) => pauses::pause(&settings, args).await?,
            Cmd::Resume(args) => pauses::resume(&settings, args).await?,
            Cmd::Config(ConfigCmd::Check) => {
                println!("# configuration is valid; effective settings (secrets redacted):");
                print!("{}", settings.redacted_toml());
            }
        }
        Ok(())
    }
}

/// Prints one schema as `schemas/` holds it.
fn print_schema(which: SchemaName) {
    let schema = match which {
        SchemaName::Command => schema::command(),
        SchemaName::Rotated => schema::rotated(),
        SchemaName::RotationFailed => schema::rotation_failed(),
    };
    print!("{}", schema::to_file_text(&schema));
}

/// A failure with its exit code.
pub struct Failure {
    code: u8,
    message: String,
}

fn usage(message: impl Into<String>) -> Failure {
    Failure {
        code: 2,
        message: message.into(),
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        // The causes, outermost first, leaving out any that repeats what the one before
        // already says (lapin's errors wrap their source and print it again).
        let mut parts: Vec<String> = Vec::new();
        for cause in e.chain() {
            let text = cause.to_string();
            if !parts.last().is_some_and(|last| last.contains(&text)) {
                parts.push(text);
            }
        }
        Failure {
            code: 1,
            message: parts.join(": "),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure {
            code: 1,
            message: format!("database: {e}"),
        }
    }
}

impl Failure {
    /// Reports the failure on stderr as one line, `error: …`, and gives its exit code.
    pub fn exit(self) -> ExitCode {
        // One line, whatever the causes' own formatting.
        let line = self
            .message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        eprintln!("error: {line}");
        ExitCode::from(self.code)
    }
}

async fn stop_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    token.cancel();
}
