//! Replies now and later: the replies queued on a connection in request
//! order, with slots for those answered later (`output`), and the table of
//! requests answered later, by ticket (`park`). No socket, no service.
pub mod output;
pub mod park;
