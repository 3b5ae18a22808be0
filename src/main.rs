//! The `invite-worker` binary: parses the CLI, loads configuration, sets up logging and
//! calls into the library. Exit codes: 0 success, 2 usage or configuration, 1 otherwise.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use invite_worker::{
    command::{CommandType, GroupId, SessionId},
    config::Settings,
    links,
    send::{self, CommandSpec},
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
    #[arg(long)]
    session: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    backend: Option<String>,
    #[arg(long)]
    reason: Option<String>,
    #[arg(long)]
    requested_by: Option<String>,
    #[arg(long)]
    command_id: Option<Uuid>,
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
        Failure {
            code: 1,
            message: format!("{e:#}"),
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
            eprintln!("error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let settings = Settings::load(cli.config.as_deref()).map_err(|e| usage(e.to_string()))?;
    telemetry::init(&settings.log);
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
            let spec = validate_send(&settings, kind, args)?;
            let ids = send::publish(&settings, &[spec]).await?;
            for id in ids {
                println!("{id}");
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
    SessionId::parse(&a.session).map_err(|e| usage(format!("--session: {e}")))?;
    let backend = a
        .backend
        .clone()
        .unwrap_or_else(|| settings.default_backend.clone());
    let style = settings
        .backends
        .get(&backend)
        .map(|b| b.kind.group_style())
        .ok_or_else(|| {
            usage(format!(
                "--backend: {backend:?} is not a configured backend"
            ))
        })?;
    GroupId::parse(&a.group, style).map_err(|e| usage(format!("--group: {e}")))?;
    Ok(CommandSpec {
        kind,
        session: a.session,
        group: a.group,
        backend: a.backend,
        reason: a.reason,
        requested_by: a.requested_by,
        command_id: a.command_id,
    })
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
