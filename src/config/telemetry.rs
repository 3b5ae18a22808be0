//! `[telemetry]`: where spans go. Off by default; a command's trace context crosses the
//! broker either way (docs/contract.md, "Tracing").

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// An OTLP/HTTP (protobuf) collector, e.g. `http://127.0.0.1:4318`: spans are sent
    /// to `<endpoint>/v1/traces`. Empty: no spans are exported.
    pub otlp_endpoint: String,
}

impl TelemetrySettings {
    /// The rule serde cannot express, as (key, problem).
    pub(super) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.otlp_endpoint.is_empty() {
            return Ok(());
        }
        match url::Url::parse(&self.otlp_endpoint) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
            _ => Err((
                "telemetry.otlp_endpoint",
                "must be an http(s) URL like \"http://127.0.0.1:4318\", or \"\" to disable",
            )),
        }
    }

    /// Where spans are posted: `<otlp_endpoint>/v1/traces`; `None` when export is off.
    pub fn traces_url(&self) -> Option<String> {
        (!self.otlp_endpoint.is_empty())
            .then(|| format!("{}/v1/traces", self.otlp_endpoint.trim_end_matches('/')))
    }
}
