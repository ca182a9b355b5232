//! fibd: a durable HTTP number service in one binary and one event-loop thread.
//!
//! # The flow
//! `socket → net::conn → net::session (http::parse) → routes → services →
//! store → reply → net::conn → socket`. A request answered at once is
//! written into its connection's output in the same pass; one answered later
//! (a step waiting for its commit, a computation, a task, an upstream call)
//! is parked under a ticket, its connection keeps a slot for its reply, and
//! the loop delivers the reply when the service that owns the ticket decides
//! it. Every reply, now or later, ends through one epilogue in `routes`
//! (counted, its span ended, logged, keep-alive decided).
//!
//! # Layout
//! The top of `src/` holds the wiring and the loop; everything else lives in
//! a wing named for what it is for. A wing only uses the wings below it in
//! this list, with one exception: `ops::metrics` reads the counters of the
//! wings that own them (and names its rows after `routes::route`, a leaf).
//! No two files import each other, directly or around a circle, a module
//! and its own children included (`scripts/import-cycles` checks it; CI runs
//! it):
//!
//! - `main.rs`: the command line; `serve` goes to [`boot`], `backup` to
//!   `store::backup`.
//! - [`boot`]: the wiring: store recovery, the chosen store of the index,
//!   services, listener, app, loop.
//! - [`server`]: the event loop, the only code that knows `mio::Poll`; its
//!   pass is a few named phases, with the clock read once at its start. It
//!   accepts from the public listener and the admin one (`--admin-listen`)
//!   through one path; each connection knows its listener, and the route
//!   table (`routes::route`, `Route::served`) decides what each serves.
//! - [`config`]: command line and environment, validated once.
//! - [`routes`]: request to reply. `mod.rs` holds `App` (dispatch, charging,
//!   the loop phases, the one epilogue); `route` the route table; `late`
//!   the shape every reply is written in and the replies answered later;
//!   one file of replies per service (`stepper`, `fib`, `primes`, `random`,
//!   `smart`, `ops`, `docs`); `forward` where a task request is answered in
//!   cluster mode (here, forwarded to the leader, or 503), the leader's
//!   internal task endpoint and the task records' phase; `number` the value
//!   writer the stepper and /v1/fib share; `trace` spans and their export.
//! - [`error`]: every failure as a type, mapped to a status and JSON in one
//!   place (the transport's, access's and the services' errors included).
//! - [`services`]: the domain, sans-IO where it can be:
//!   - `stepper`: the index /current, /next and /previous walk: group
//!     commit, read sharing and every reply, once, above the store;
//!   - `fib`: the Fibonacci engine (a compile-time table; fast doubling in
//!     base-10^19 limbs with schoolbook, Karatsuba and NTT multiplication;
//!     ibig as the oracle; a decimal cursor), the byte-bounded cache with
//!     single flight, the F(n) price;
//!   - `primes`: primes as durable background tasks (sieve, records,
//!     retention and eviction, fair shares, idempotency keys, cancellation,
//!     signed completion callbacks with retries; `forward`, a follower's
//!     task request as the leader takes it);
//!   - `smart`: /api/smart's guarded hedging: `plan` (one call's plan as
//!     a state machine), `budget` (the cap on extra attempts over a
//!     sliding window), `delay` (a fixed or percentile hedge delay from a
//!     windowed histogram), `hosts` (round robin over the upstream hosts
//!     with outlier ejection and probes), `service` (the live calls and
//!     what they share); `mod.rs` is the calls' vocabulary;
//!   - `random`: /v1/random on the OS CSPRNG;
//!   - `compute`: the low-priority threads and one bounded queue for every
//!     long computation.
//! - [`store`]: what fibd keeps durably: the index behind one interface
//!   (`IndexStore`: LMDB or etcd; `index`, its vocabulary); `ledger`, the
//!   group commit that the task records always ride (and the index with
//!   `--store lmdb`); `committer`, the thread that makes batches durable off
//!   the loop; `journal`, one flush per batch: the log, checkpoints into
//!   LMDB, recovery; `wal`, the write-ahead log's frames and file; `lmdb`,
//!   the only code that knows LMDB; `backup`, `fibd backup`'s hot copy
//!   from a second process (LMDB's, plus the log's frames since its
//!   checkpoint); `etcd`, cluster mode: the index
//!   protocol in `mod.rs` (the leader's fenced transaction, a follower's
//!   relay, the fence that settles a lost answer), `election` (the leader
//!   lease and campaign), `relay` (the internal endpoint's format between
//!   nodes), `records` (the task records: loaded by each new leader,
//!   written in fenced transactions in place of the commit thread) and
//!   `wire` (etcd's JSON gateway).
//! - [`access`]: who the client is and what it may do: API keys and scopes
//!   (`keyfile`, reloaded on SIGHUP), trusted proxies (`cidr`), where a
//!   client may make fibd send a request (`destinations`, the callbacks'
//!   allow-list), and the token buckets a request is charged to
//!   (`ratelimit`).
//! - [`ops`]: what the operator sees: `metrics` (Prometheus text and the
//!   dashboard's JSON, one walk; the JSON names the fibd it describes),
//!   `trace` (W3C traceparent, sampled spans, batches as Zipkin v2 or
//!   OTLP/HTTP JSON, the flush at a stop, sans-IO), `logging` (journal
//!   entries through the native protocol under journald, a request's lines
//!   with its fields; text elsewhere).
//! - [`net`]: everything that owns a socket: `conn`, the client socket
//!   shell, the only code that touches a client socket; `session`, the
//!   connection's request stream, sans-IO (pipelining, bodies, 100-continue,
//!   backpressure, timeouts) with its own error type; `upstream`, the
//!   outbound HTTP/1.1 client and its bounded pool (the only code that
//!   touches an upstream socket); `systemd`, sd_notify and socket activation
//!   (the public and the admin listener told apart by `LISTEN_FDNAMES`).
//! - [`reply`]: replies now and later, no socket and no service: `output`,
//!   the replies queued in request order with slots for those to come;
//!   `park`, the table of requests answered later, by ticket.
//! - [`http`]: sans-IO HTTP/1.1: `message` (method, version, persistence),
//!   the request parser, chunked bodies, query strings, content
//!   negotiation, the Date header, ETags, response heads, the client
//!   address behind trusted proxies, request ids, and the reader of
//!   upstream responses.
//! - [`base`]: small structures every wing uses: `slab` (keys with a free
//!   list), `deadlines` (a lazy-deletion deadline heap), `recency` (O(1)
//!   LRU order), `window` (a sliding window of time in slices), `digits`
//!   (integers into bytes without `fmt`), `secret` (a shared secret from a
//!   file, compared in constant time: the callbacks' key and the cluster's),
//!   `time`.
//!
//! Sockets are registered once, edge triggered, and readiness is
//! remembered per connection: unlike rustls's mio example, which derives
//! interest from state and re-registers after every event, no `epoll_ctl`
//! is made per request.
//!
//! `unsafe` is denied crate-wide and allowed at five fenced sites, each with
//! a `SAFETY` note: opening the LMDB map, the daemon's and a backup's
//! read-only one (`store::lmdb`), adopting the socket
//! systemd passed and clearing its variables (`net::systemd`), and lowering
//! the compute threads' priority (`services::compute`).

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
