//! invite-worker: revokes and rotates WhatsApp group invite links on commands from
//! RabbitMQ, with an inbox for exactly-once effects and an outbox for events.
//!
//! Dependencies point one way: `cli` and `worker` use `broker`, `store`, `backend` and
//! `simulator`, which use `ops`, which uses `domain` and `config` (`config` uses `domain`).
//! `admin` (the admin API and console, started by `worker`) acts through the same
//! functions as the CLI: `cli::{links, dead_letters, send}`, which use no `worker`.

pub mod admin;
pub mod backend;
pub mod broker;
pub mod cli;
pub mod config;
pub mod domain;
pub mod ops;
pub mod simulator;
pub mod store;
pub mod worker;
