//! The `wasend` backend kind (to be implemented: see PROVIDERS.md).
