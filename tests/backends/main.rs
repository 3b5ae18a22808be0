//! The HTTP provider adapters against wiremock servers: the exact requests each kind
//! sends, how every documented answer is normalised, and how every refusal is classified.

mod common;
mod evolution;
mod gateway;
mod meta_cloud;
mod support;
mod waha;
mod wasend;
mod wawp;
