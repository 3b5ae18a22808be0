//! The `waha` backend kind (to be implemented: see PROVIDERS.md).
