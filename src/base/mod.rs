//! Small structures every wing uses.
pub mod deadlines;
pub mod digits;
pub mod recency;
pub mod secret;
pub mod slab;
pub mod time;
pub mod window;
