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
//!   trusted proxies, and the reader of upstream responses (`http::upstream`).
//! - [`park`]: replies answered later: a ticket per parked request, which the
//!   service keeps instead of the connection, and the deadlines they expire at.
//! - [`routes`]: the route table, dispatch and charging (`routes/mod.rs`), and
//!   one file of replies per service (`stepper`, `fib`, `primes`, `random`,
//!   `smart`, `ops`, `docs` for /openapi.json and /docs, which `build.rs`
//!   renders from `openapi.json`; `number` is the value writer the stepper and
//!   /v1/fib share; `cluster` carries cluster mode's etcd calls and cursor
//!   jumps).
//! - [`error`]: every failure as a type, mapped to a status and JSON in one place.
//! - [`stepper`]: the global index and its group-commit bookkeeping (sans-IO).
//! - [`fib`]: the Fibonacci engine (a compile-time table; `fib::engine`, fast
//!   doubling in base-10^19 limbs with schoolbook, Karatsuba and NTT
//!   multiplication, so F(n) never leaves decimal; ibig as the binary oracle;
//!   a decimal cursor whose steps and printing are linear) and the /v1/fib
//!   service (byte-bounded cache, single flight).
//! - [`primes`]: primes as durable background tasks: the segmented sieve, the
//!   one shared JSON table, task records, retention (sans-IO service).
//! - [`compute`]: the low-priority threads and the one bounded queue that run
//!   every long computation (F(n), sieves) off the loop.
//! - [`random`]: the /v1/random service on the OS CSPRNG.
//! - [`access`]: who the client is and what it may do: API keys (a file,
//!   reloaded on SIGHUP) and their scopes, trusted reverse proxies, and which
//!   bucket and limit a request is charged to.
//! - [`smart`]: the /api/smart service: the hedging plan as a sans-IO state
//!   machine, and the live calls with their hedge timers.
//! - [`upstream`]: the outbound HTTP/1.1 client inside the loop (non-blocking
//!   connect, bounded keep-alive pool, deadlines), the only code that touches
//!   an upstream socket; the server drives it through a token range. Its
//!   callers are /api/smart and the trace exporter; where a call goes is an
//!   `upstream::Target`, resolved at start-up.
//! - [`request_id`]: the caller's `X-Request-Id` validated, or one made cheaply;
//!   echoed on every answer, in logs and error bodies.
//! - [`ratelimit`]: token buckets per client, weighted by the work a request costs.
//! - [`recency`]: the O(1) least-recently-used order the cache and the limiter share.
//! - [`committer`]: the commit thread that runs the store off the event loop.
//! - [`store`]: LMDB through heed: the stepper's index and the task records,
//!   written together, one transaction per batch.
//! - [`cluster`]: the other store of the index (`--store etcd`): one index
//!   that several nodes share in etcd, group commit as one compare-and-put
//!   transaction per batch, quorum reads for /current, lost answers read
//!   back (sans-IO; `cluster::etcd` is the JSON gateway's wire format, and
//!   `routes/cluster.rs` carries the calls through [`upstream`]).
//! - [`metrics`], [`logging`], [`systemd`]: Prometheus text and the dashboard's
//!   JSON, the journald-aware log format, sd_notify and socket activation.
//! - [`trace`]: W3C traceparent, sampled request spans in a bounded buffer,
//!   Zipkin v2 JSON batches for the outbound client to send (sans-IO);
//!   `routes/trace.rs` ends spans, makes /api/smart's attempt spans and hands
//!   batches to the client from a loop phase.
//! - [`config`]: command line and environment, validated once.
//!
//! `unsafe` is denied crate-wide and allowed at four fenced sites, each with a
//! `SAFETY` note: opening the LMDB map (`store`), adopting the socket systemd
//! passed and clearing its variables (`systemd`), and lowering the compute
//! threads' priority (`compute`).
//!
//! `main.rs` only wires these together.

pub mod access;
pub mod base;
pub mod boot;
pub mod config;
pub mod error;
pub mod http;
pub mod net;
pub mod ops;
pub mod reply;
pub mod routes;
pub mod server;
pub mod services;
pub mod store;
