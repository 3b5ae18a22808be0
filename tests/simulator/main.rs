//! The simulator's HTTP server driven over the network with reqwest: every provider's
//! dialect for success, auth and refusals, injected faults and hangs, the control API, the
//! request log and latency, and graceful shutdown. Each test runs its own server on
//! 127.0.0.1:0; tests that need exact instants drive the world itself on a paused clock.
//! `clients.rs` runs providers' official clients (Python) against it.

mod clients;
mod control;
mod dialects;
mod faults;
mod refusals;
mod requests;
mod support;
