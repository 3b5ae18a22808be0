//! sea-orm entity definitions of invite-worker's tables. Behaviour lives in the main
//! crate's `store` module; this crate only describes rows.

pub mod command;
pub mod deferred_command;
pub mod group_lease;
pub mod history;
pub mod link;
pub mod outbox;
pub mod pause;
pub mod session_slot;
pub mod worker_heartbeat;
