//! Small structures every wing uses.
pub mod digits;
pub mod recency;
