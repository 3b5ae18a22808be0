//! The `wawp` backend kind (to be implemented: see PROVIDERS.md).
