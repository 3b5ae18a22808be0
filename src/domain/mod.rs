//! The contract's vocabulary: commands and their validated parts, invite links, error
//! kinds, backend kinds, events and their JSON Schemas. Imports nothing else of the
//! crate; every other module speaks in these types.

pub mod command;
pub mod error;
pub mod events;
pub mod kind;
pub mod link;
pub mod schema;

pub use command::{
    BackendResolver, Command, CommandId, CommandSpec, CommandType, GroupId, GroupIdStyle, IdError,
    Rejection, SessionId, SpecError,
};
pub use error::{BackendError, ErrorKind};
pub use kind::BackendKind;
pub use link::{InviteCode, LINK_PREFIX, Link, fingerprint_code};
