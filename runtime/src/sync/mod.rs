//! Sync primitives (placeholder).
