//! UDP (being written).
