//! What the operator sees.
pub mod logging;
pub mod metrics;
pub mod trace;
