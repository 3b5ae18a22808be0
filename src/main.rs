//! The `invite-worker` binary: parses the CLI, loads configuration, sets up logging and
//! calls into the library. Exit codes: 0 success, 2 usage or configuration, 1 otherwise
//! (including a bulk send with rejected lines and a replay that left selected messages).

/// jemalloc instead of glibc's malloc: about a fifth less of the worker's CPU per command
/// in the benchmark (allocation was a third of its profile), same peak RSS with the
/// settings in `.cargo/config.toml`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::{io::IsTerminal, path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use invite_worker::{
    command::CommandType,
    config::Settings,
    dead_letters::{self, Selection},
    links,
    send::{self, BulkDefaults, CommandSpec},
    store::{GroupKey, Store},
    telemetry,
    worker::Worker,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Parser)]
#[command(
    name = "invite-worker",
    version,
    about = "Revokes and rotates WhatsApp group invite links"
)]
struct Cli {
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
    /// Print events as JSON lines as they are published (a private temporary queue).
    Watch {
        /// Routing-key pattern, e.g. `invite_link.rotation_failed`.
        #[arg(long, default_value = "#")]
        pattern: String,
    },
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
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration and print the effective settings (secrets redacted).
    Check,
}

/// A failure with its exit code.
struct Failure {
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

impl From<sea_orm::DbErr> for Failure {
    fn from(e: sea_orm::DbErr) -> Self {
        Failure {
            code: 1,
            message: format!("database: {e}"),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // One line, whatever the causes' own formatting.
            let line = f.message.split_whitespace().collect::<Vec<_>>().join(" ");
            eprintln!("error: {line}");
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let settings = Settings::load(cli.config.as_deref()).map_err(|e| usage(e.to_string()))?;
    let one_shot = !matches!(
        cli.command,
        Cmd::Run | Cmd::Simulate { .. } | Cmd::Watch { .. }
    );
    telemetry::init(&settings.log, one_shot);
    match cli.command {
        Cmd::Run => {
            let worker = Worker::start(settings, None).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            worker.run(shutdown).await?;
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
                Some(path) => send_bulk(&settings, kind, args, &path).await?,
                None => {
                    let spec = validate_send(&settings, kind, args)?;
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
                println!(
                    "{}",
                    serde_json::to_string_pretty(&letters).unwrap_or_default()
                );
            } else {
                print!("{}", dead_letters::render(&letters));
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
            let missed = report.kept.len() + report.not_found.len();
            if missed > 0 {
                return Err(Failure {
                    code: 1,
                    message: format!("{missed} selected dead letter(s) not replayed"),
                });
            }
        }
        Cmd::Links(cmd) => {
            let store = Store::connect(settings.database.url.expose(), 1).await?;
            store.migrate().await?;
            match cmd {
                LinksCmd::List { json } => {
                    let list = links::list(&store).await?;
                    if json {
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&list).unwrap_or_default()
                        );
                    } else {
                        print!("{}", links::render_list(&list));
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
                        println!(
                            "{}",
                            serde_json::to_string_pretty(&detail).unwrap_or_default()
                        );
                    } else {
                        print!("{}", links::render_detail(&detail));
                    }
                }
            }
        }
        Cmd::Simulate { listen, token } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            invite_worker::simulator::http::run_simulate(listen, token, shutdown.cancelled_owned())
                .await?;
        }
        Cmd::Watch { pattern } => {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            invite_worker::watch::watch(&settings, &pattern, shutdown.cancelled_owned()).await?;
        }
        Cmd::Config(ConfigCmd::Check) => {
            println!("# configuration is valid; effective settings (secrets redacted):");
            print!("{}", settings.redacted_toml());
        }
    }
    Ok(())
}

fn validate_send(
    settings: &Settings,
    kind: CommandType,
    a: SendArgs,
) -> Result<CommandSpec, Failure> {
    let (Some(session), Some(group)) = (a.session, a.group) else {
        return Err(usage("--session and --group are required"));
    };
    let spec = CommandSpec {
        kind,
        session,
        group,
        backend: a.backend,
        reason: a.reason,
        requested_by: a.requested_by,
        command_id: a.command_id,
    };
    spec.validate(settings)
        .map_err(|e| usage(format!("--{}: {}", e.field.replace('_', "-"), e.message)))?;
    Ok(spec)
}

/// `send --from-file`: reports bad lines on stderr, publishes the rest with a progress
/// bar on a terminal, prints `published N, rejected M`; exit 1 when any line was rejected.
async fn send_bulk(
    settings: &Settings,
    kind: CommandType,
    a: SendArgs,
    path: &std::path::Path,
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
    let bulk = send::parse_bulk(&input, kind, &defaults, settings);
    for e in &bulk.rejected {
        eprintln!("line {}: {}", e.line, e.message);
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
