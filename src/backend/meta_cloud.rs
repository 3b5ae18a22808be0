//! The `meta_cloud` backend kind (to be implemented: see PROVIDERS.md).
