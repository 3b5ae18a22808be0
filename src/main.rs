//! The `invite-worker` binary: parses the command line, loads the configuration, sets up
//! logging and runs the command through the library ([`invite_worker::cli`], which also
//! maps failures to exit codes).

/// jemalloc instead of glibc's malloc: about a fifth less of the worker's CPU per command
/// in the benchmark (allocation was a third of its profile), same peak RSS with the
/// settings in `.cargo/config.toml`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::Parser;
use invite_worker::{cli::Cli, ops::telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(result) = cli.run_standalone() {
        return result.map_or_else(|failure| failure.exit(), |()| ExitCode::SUCCESS);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let settings = match cli.settings() {
        Ok(settings) => settings,
        Err(failure) => return failure.exit(),
    };
    let _telemetry = telemetry::init(&settings.log, &settings.telemetry, cli.is_one_shot());
    match runtime.block_on(cli.run(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.exit(),
    }
}
