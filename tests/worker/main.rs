//! End-to-end tests of the worker against the real RabbitMQ and both databases, with the
//! in-process simulator or the `invite-worker simulate` binary as the backend.

mod acks;
mod crashes;
mod declarations;
mod holds;
mod hygiene;
mod migration;
mod operations;
mod outages;
mod pacing;
mod pipeline;
mod providers;
mod retries;
mod scheduler;
mod secrets;
mod shutdown;
mod support;
mod traces;
