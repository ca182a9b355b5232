//! Replies now and later.
pub mod park;
