//! Logging setup (text or JSON lines, filtered by `RUST_LOG` or `log.filter`) and, when
//! `telemetry.otlp_endpoint` is set, the export of the crate's spans over OTLP/HTTP.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, fmt, prelude::*, registry::LookupSpan,
};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// The filter of one-shot commands (`send`, `links`, `migrate`, …) unless `RUST_LOG` is
/// set: their outcome is their output or one `error:` line, so routine progress (applied
/// migrations) and the broker client's own reports of a failure they already give are
/// left out.
const ONE_SHOT_FILTER: &str = "warn,lapin=off";

/// The spans exported: this crate's, from `info` (the `command` span of each command run,
/// `send`'s span of each command published).
fn exported() -> Targets {
    Targets::new().with_target("invite_worker", Level::INFO)
}

/// Span export, while it runs: dropping it sends the spans still buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: spans not exported at exit: {e}");
        }
    }
}

/// The tracer provider exporting to `telemetry.otlp_endpoint` (batched, on a thread of its
/// own); `None` when export is off. Call it outside the async runtime.
fn provider(telemetry: &TelemetrySettings) -> Option<SdkTracerProvider> {
    let url = telemetry.traces_url()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .build();
    match exporter {
        Ok(exporter) => Some(
            SdkTracerProvider::builder()
                .with_resource(
                    Resource::builder()
                        .with_service_name("invite-worker")
                        .build(),
                )
                .with_batch_exporter(exporter)
                .build(),
        ),
        Err(e) => {
            eprintln!("warning: spans will not be exported: {e}");
            None
        }
    }
}

/// Installs the global subscriber (stderr), and the span export when configured. Safe to
/// call once per process, outside the async runtime; keep the returned [`Telemetry`]
/// until the process ends. `one_shot`: a command that runs once and exits, logged by
/// [`ONE_SHOT_FILTER`] instead of `log.filter`.
pub fn init(log: &LogSettings, telemetry: &TelemetrySettings, one_shot: bool) -> Telemetry {
    let configured = if one_shot {
        ONE_SHOT_FILTER
    } else {
        log.filter.as_str()
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(configured))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = provider(telemetry);
    let spans = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("invite-worker"))
            .with_filter(exported())
    });
    let _ = tracing_subscriber::registry()
        .with(logs(log.format).with_filter(filter))
        .with(spans)
        .try_init();
    Telemetry { provider }
}

/// The log lines' layer, in `format`.
fn logs<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    match format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .boxed(),
    }
}
