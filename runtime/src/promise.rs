//! Promise (placeholder).
