//! The `gateway` backend kind (to be implemented: see PROVIDERS.md).
