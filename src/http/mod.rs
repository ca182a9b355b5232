//! HTTP/1.1 as bytes: parsing requests and writing responses, with no socket in
//! sight. Everything here is sans-IO so it can be tested byte by byte; the
//! connection state machine in `conn` feeds it.

pub mod accept;
pub mod chunked;
pub mod date;
pub mod parse;
pub mod query;
pub mod response;
