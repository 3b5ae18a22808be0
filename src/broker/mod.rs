//! RabbitMQ: the topology and its declaration, a shared connection re-established after
//! a loss, a publisher with confirms, and the outbox relay that publishes committed
//! events.

mod connection;
mod publisher;
mod relay;
mod topology;

pub use connection::Broker;
pub use publisher::{PublishError, Publisher, properties, text_headers};
pub use relay::{Relay, RelayError};
pub use topology::{COMMANDS_BINDING, Topology, declare};
