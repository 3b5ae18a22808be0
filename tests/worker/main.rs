//! End-to-end tests of the worker against the real RabbitMQ and both databases, with the
//! in-process simulator as the backend.

mod helpers;
mod operations;
mod pipeline;
mod providers;
mod scheduler;
mod secrets;
