//! Everything that owns a socket.
pub mod conn;
pub mod session;
pub mod systemd;
pub mod upstream;
