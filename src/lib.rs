//! fibd: a durable HTTP Fibonacci stepper in one binary and one event-loop thread.
//!
//! # Layout
//! The request flow is `socket → conn → http::parse → routes → service →
//! store → reply → conn → socket`, one module a step:
//!
//! - [`server`]: the mio event loop, the only code that knows `Poll`; accepts,
//!   drives connections, applies commit outcomes, handles signals.
//! - [`conn`]: one connection's state machine, the only code that touches a
//!   socket; ordered replies, pipelining, backpressure, replies held for a commit.
//! - [`http`]: sans-IO HTTP/1.1: request parser, chunked bodies, query strings,
//!   content negotiation, the Date header, `If-None-Match`, response heads
//!   (and the one rule for the `Connection` field), the client address behind
//!   trusted proxies.
//! - [`park`]: replies answered later: a ticket per parked request, which the
//!   service keeps instead of the connection, and the deadlines they expire at.
//! - [`routes`]: the route table, dispatch and charging (`routes/mod.rs`), and
//!   one file of replies per service (`stepper`, `fib`, `random`, `ops`,
//!   `docs` for /openapi.json and /docs, which `build.rs` renders from
//!   `openapi.json`; `number` is the value writer the stepper and /v1/fib share).
//! - [`error`]: every failure as a type, mapped to a status and JSON in one place.
//! - [`stepper`]: the global index and its group-commit bookkeeping (sans-IO).
//! - [`fib`]: the Fibonacci engine (a compile-time table, fast doubling on big
//!   integers, a decimal cursor whose steps and printing are linear) and the
//!   /v1/fib service (byte-bounded cache, single flight, compute worker).
//! - [`random`]: the /v1/random service on the OS CSPRNG.
//! - [`access`]: who the client is and what it may do: API keys (a file,
//!   reloaded on SIGHUP) and their scopes, trusted reverse proxies, and which
//!   bucket and limit a request is charged to.
//! - [`ratelimit`]: token buckets per client, weighted by the work a request costs.
//! - [`recency`]: the O(1) least-recently-used order the cache and the limiter share.
//! - [`committer`]: the commit thread that runs the store off the event loop.
//! - [`store`]: LMDB through heed.
//! - [`metrics`], [`logging`], [`systemd`]: Prometheus text, the journald-aware
//!   log format, sd_notify and socket activation.
//! - [`config`]: command line and environment, validated once.
//!
//! `unsafe` is denied crate-wide and allowed at four fenced sites, each with a
//! `SAFETY` note: opening the LMDB map (`store`), adopting the socket systemd
//! passed and clearing its variables (`systemd`), and lowering the compute
//! threads' priority (`fib::worker`).
//!
//! `main.rs` only wires these together.

pub mod access;
pub mod committer;
pub mod config;
pub mod conn;
pub mod error;
pub mod fib;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod park;
pub mod random;
pub mod ratelimit;
pub mod recency;
pub mod routes;
pub mod server;
pub mod stepper;
pub mod store;
pub mod systemd;
