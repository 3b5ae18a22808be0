//! invite-worker: revokes and rotates WhatsApp group invite links on commands from
//! RabbitMQ, with an inbox for exactly-once effects and an outbox for events.

pub mod backend;
pub mod command;
pub mod config;
pub mod simulator;
