//! RabbitMQ: the topology and its declaration, a shared connection re-established after
//! a loss (to the next node of a cluster), a publisher with confirms, and the outbox
//! relay that publishes committed events.

mod connection;
mod declarations;
mod publisher;
mod relay;
mod topology;

pub use connection::Broker;
pub use declarations::{
    COMMANDS_QUEUE_ARGUMENTS, DEAD_LETTER_QUEUE, Declarations, NAMES as DECLARATION_NAMES,
    State as DeclarationState,
};
pub use publisher::{Confirm, PublishError, Publisher, properties, text_headers};
pub use relay::{Relay, RelayError};
pub use topology::{COMMANDS_BINDING, DURABLE, QueueOptions, Topology, declare};
