//! Operating the process: health and metrics endpoints, the Prometheus metrics, logging
//! and span export, trace context across the broker, and the test-only crash points.

pub mod failpoint;
pub mod health;
pub(crate) mod metrics;
pub mod telemetry;
pub mod trace;
