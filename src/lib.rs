//! invite-worker: revokes and rotates WhatsApp group invite links on commands from
//! RabbitMQ, with an inbox for exactly-once effects and an outbox for events.

pub mod acks;
pub mod amqp;
pub mod backend;
pub mod batch;
pub mod command;
pub mod config;
pub mod dead_letters;
pub mod events;
pub mod failpoint;
pub mod http;
pub mod lanes;
pub mod links;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod ratelimit;
pub mod replicas;
pub mod retry;
pub mod scheduler;
pub mod send;
pub mod simulator;
pub mod store;
pub mod telemetry;
pub mod watch;
pub mod worker;
