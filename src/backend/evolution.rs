//! The `evolution` backend kind (to be implemented: see PROVIDERS.md).
