//! The HTTP provider adapters against wiremock servers: the exact requests each kind
//! sends, how every documented answer is normalised, and how every refusal is classified.

#[path = "backends/common.rs"]
mod common;
#[path = "backends/evolution.rs"]
mod evolution;
#[path = "backends/gateway.rs"]
mod gateway;
#[path = "backends/helpers.rs"]
mod helpers;
#[path = "backends/meta_cloud.rs"]
mod meta_cloud;
#[path = "backends/waha.rs"]
mod waha;
#[path = "backends/wasend.rs"]
mod wasend;
#[path = "backends/wawp.rs"]
mod wawp;
