//! Shared HTTP plumbing for provider adapters (to be implemented).
