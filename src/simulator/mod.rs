//! The provider simulator (docs/contract.md §7): one in-memory world served in-process
//! (the `simulator` backend kind) and over HTTP in every provider's dialect (`simulate`).

pub mod server;
pub mod world;

pub use world::{
    FaultSpec, GroupSpec, Op, RequestRecord, SessionSpec, SimError, SimLink, SimWorld, Stats,
    busiest_window,
};
