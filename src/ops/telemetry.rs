//! Logging setup: text or JSON lines, filtered by `RUST_LOG` or `log.filter`.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, LogSettings};

/// The filter of one-shot commands (`send`, `links`, `migrate`, …) unless `RUST_LOG` is
/// set: their outcome is their output or one `error:` line, so routine progress (applied
/// migrations) and the broker client's own reports of a failure they already give are
/// left out.
const ONE_SHOT_FILTER: &str = "warn,lapin=off";

/// Installs the global subscriber (stderr). Safe to call once per process. `one_shot`:
/// a command that runs once and exits, logged by [`ONE_SHOT_FILTER`] instead of
/// `log.filter`.
pub fn init(log: &LogSettings, one_shot: bool) {
    let configured = if one_shot {
        ONE_SHOT_FILTER
    } else {
        log.filter.as_str()
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match log.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
