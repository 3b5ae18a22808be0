//! The simulator's HTTP server (to be implemented).
