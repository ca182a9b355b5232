//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers; and the loop phases that
//! carry the services' work between the loop, the stores and the compute
//! worker. Services never see a connection: a request answered later is a
//! parking ticket to them, and its connection keeps a slot for its reply.
//!
//! This file holds [`App`]: dispatch, charging, the phases, and the one
//! ending every reply goes through ([`App::finish`]: counted, its span
//! ended, logged, and whether the connection stays open), now or later.
//! `route` is the route table, `late` the vocabulary of replies answered
//! later; each service's replies live in a file of their own (`stepper`,
//! `fib`, `primes`, `random`, `smart`, `ops`, `docs`); `number` is the one
//! writer of a Fibonacci value that the stepper and /v1/fib share, and
//! `trace` connects spans and their export to the app.

mod docs;
mod fib;
mod forward;
pub mod late;
mod number;
mod ops;
mod primes;
mod random;
pub mod route;
mod smart;
mod stepper;
mod trace;

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use crate::access::destinations::Destinations;
use crate::access::ratelimit::{Decision, RateLimiter};
use crate::access::{Access, Caller};
use crate::base::time::unix_ms;
use crate::error::ApiError;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::message::{Method, Persistence};
use crate::http::parse::Request;
use crate::http::request_id::RequestIds;
use crate::http::response::{ContentType, Head, Status};
use crate::net::session::{ConnError, Listener, Peer, Reply, Respond};
use crate::net::upstream::{Client, Registrar};
use crate::ops::logging::{self, RequestFields};
use crate::ops::metrics::{Metrics, Watched};
use crate::ops::trace::{TraceConfig, Tracer};
use crate::reply::output::Output;
use crate::reply::park::{ConnId, Parking, Ticket};
use crate::services::compute::{ComputeWorker, Job, Output as Computed};
use crate::services::fib::service::FibService;
use crate::services::primes::service::{PrimesService, Settle};
use crate::services::random::RandomSource;
use crate::services::smart::service::SmartService;
use crate::services::stepper::{StepReply, Stepper};
use crate::store::Channel;
use crate::store::committer::{Committer, CommitterGone};
use crate::store::etcd::records::TaskRecords;
use crate::store::ledger::CommitOutcome;
use crate::store::ledger::Ledger;

use late::{CallOwner, Delivery, LateReply, Parked, Shape, Waiting};
pub use route::Route;
use route::Served;

/// Requests parked at most, across every service: each costs a few words
/// and its reply's shape here and a slot in its connection's output.
const PARKED_MAX: usize = 65_536;

/// What the app is built from; `boot` makes each part.
pub struct Parts {
    pub stepper: Stepper,
    pub committer: Committer,
    pub fib: FibService,
    pub primes: PrimesService,
    pub compute: Rc<ComputeWorker>,
    pub smart: SmartService,
    pub upstream: Client<CallOwner>,
    pub access: Access,
    pub limiter: RateLimiter,
    pub random: RandomSource,
    pub tracing: Option<TraceConfig>,
    /// Where a task's callback may go (`--callback-allow`).
    pub callback_allow: Destinations,
    /// `--max-connections`, for the saturation gauge.
    pub connections_max: usize,
    /// Which fibd this is, for /metrics.json.
    pub watched: Watched,
}

/// Everything a reply may need, owned by the event loop's thread.
pub struct App {
    stepper: Stepper,
    /// The LMDB group commit, and the thread that runs its commits.
    ledger: Ledger,
    committer: Committer,
    /// Cluster mode: the task records in etcd, which replace the commit
    /// thread for the ledger's batches.
    records: Option<TaskRecords>,
    fib: FibService,
    primes: PrimesService,
    /// The compute threads /v1/fib, the primes tasks and cursor jumps share.
    compute: Rc<ComputeWorker>,
    smart: SmartService,
    /// The outbound HTTP/1.1 client; the server hands it readiness.
    upstream: Client<CallOwner>,
    /// Requests answered later, by ticket; services keep only the tickets.
    parking: Parking<Parked>,
    /// Replies to parked requests, decided and waiting to be delivered.
    settled: VecDeque<(Ticket, LateReply)>,
    /// Keys, scopes and trusted proxies; reloaded on SIGHUP.
    access: Access,
    callback_allow: Destinations,
    limiter: RateLimiter,
    random: RandomSource,
    request_ids: RequestIds,
    /// Present only with a trace collector.
    tracer: Option<Tracer>,
    /// The last span batch failed: logged once until one is delivered.
    span_export_failing: bool,
    metrics: Metrics,
    /// The loop pass's clock reading ([`App::tick`]); nothing here reads a clock.
    now: Instant,
    /// The same moment as Unix milliseconds, for what outlives a restart
    /// (task creation and retention).
    now_unix_ms: u64,
    date: HttpDate,
    /// Requests answered in this loop pass, for the latency histogram.
    answered: u64,
    /// False while commits fail: /readyz tells the load balancer.
    store_ready: bool,
    connections_max: usize,
    watched: Watched,
    /// When the process started serving: monotonic for rates, wall-clock for
    /// `process_start_time_seconds`.
    started: Instant,
    started_at: SystemTime,
    /// Reused between requests so a body built before its head costs no allocation.
    body: Vec<u8>,
    draws: Vec<i64>,
}

/// A service's answer: written now (with its status), or later (a slot is
/// kept for it, and the connection goes on, closes, or waits).
enum Answer {
    Now(Status),
    Later(Reply),
}

impl App {
    pub fn new(parts: Parts, now: Instant, wall: SystemTime) -> App {
        let Parts {
            stepper,
            committer,
            fib,
            primes,
            compute,
            smart,
            upstream,
            access,
            limiter,
            mut random,
            tracing,
            callback_allow,
            connections_max,
            watched,
        } = parts;
        // A failed CSPRNG read leaves the prefix fixed: ids stay unique
        // within the run, which is what they are for; likewise span ids.
        let request_ids = RequestIds::new(random.next_u64().unwrap_or(0));
        let tracer = tracing.map(|config| {
            let seed = random.next_u64().unwrap_or(0);
            Tracer::new(config, smart.upstreams(), seed, now, wall)
        });
        let records = stepper.cluster_config().map(|config| {
            TaskRecords::new(&config.name, config.endpoints.clone(), config.call_timeout)
        });
        App {
            stepper,
            ledger: Ledger::new(),
            committer,
            records,
            fib,
            primes,
            compute,
            smart,
            upstream,
            parking: Parking::new(PARKED_MAX),
            settled: VecDeque::new(),
            access,
            callback_allow,
            limiter,
            random,
            request_ids,
            tracer,
            span_export_failing: false,
            metrics: Metrics::default(),
            now,
            now_unix_ms: unix_ms(wall),
            date: HttpDate::new(wall),
            answered: 0,
            store_ready: true,
            connections_max,
            watched,
            started: now,
            started_at: wall,
            body: Vec::new(),
            draws: Vec::new(),
        }
    }

    /// The loop's clock, read once at the start of its pass.
    pub fn tick(&mut self, now: Instant, wall: SystemTime) {
        self.now = now;
        self.now_unix_ms = unix_ms(wall);
        self.date.update(wall);
        if let Some(tracer) = &mut self.tracer {
            tracer.begin_pass(now);
        }
    }

    /// The end of a loop pass, `end` read once for what measures time: the
    /// requests answered in the pass, and the spans ended in it, took until
    /// then.
    pub fn pass_done(&mut self, end: Instant) {
        if self.answered > 0 {
            let answered = std::mem::take(&mut self.answered);
            self.metrics
                .answered(answered, end.saturating_duration_since(self.now));
        }
        if let Some(tracer) = &mut self.tracer {
            tracer.end_pass(end);
        }
    }

    /// Whether `token` is one of the outbound client's sockets.
    pub fn upstream_owns(&self, token: usize) -> bool {
        self.upstream.owns(token)
    }

    /// Readiness on one of the outbound client's sockets.
    pub fn upstream_ready(&mut self, token: usize, readable: bool, writable: bool) {
        self.upstream.on_ready(token, readable, writable, self.now);
    }

    /// A connection was accepted (`true`) or closed.
    pub fn connection(&mut self, opened: bool) {
        if opened {
            self.metrics.connection_opened();
        } else {
            self.metrics.connection_closed();
        }
    }

    /// SIGHUP: the API keys are read again.
    pub fn reload_keys(&mut self) {
        // A small, bounded file (`access::keyfile::FILE_BYTES_MAX`), read
        // between requests; connections and buckets are untouched.
        self.access.reload();
    }

    /// Loop phase: the commit thread's outcomes (and in cluster mode the
    /// task records' events). A dead commit thread is an error: nothing
    /// more may be acknowledged.
    pub fn commits(&mut self) -> Result<(), CommitterGone> {
        while let Some(outcome) = self.committer.try_outcome()? {
            self.committed(outcome);
        }
        self.records_events();
        Ok(())
    }

    /// A group commit's outcome, from the commit thread or etcd.
    fn committed(&mut self, outcome: CommitOutcome) {
        let Some(committed) = self.ledger.on_outcome(outcome) else {
            return;
        };
        let succeeded = committed.result.is_ok();
        match &committed.result {
            Ok(durable) => {
                self.metrics.commit(Some(durable.took));
                self.metrics.flushed(durable.flushes);
            }
            Err(_) => self.metrics.commit(None),
        }
        self.metrics.batch_committed(committed.writes);
        // In cluster mode a failed task commit says nothing of the node's
        // health: its term may just have ended.
        if self.store_ready != succeeded && self.records.is_none() {
            self.store_ready = succeeded;
            if succeeded {
                log::info!("commits succeed again; ready");
            }
        }
        let settled = &mut self.settled;
        self.stepper.on_commit(&committed, &mut |ticket, reply| {
            settled.push_back((ticket, LateReply::Step(reply)));
        });
        self.primes
            .on_commit(committed.effect, self.now, &mut |ticket, settle| {
                let reply = match settle {
                    Settle::Durable => LateReply::Durable,
                    Settle::Withdrawn => LateReply::Withdrawn,
                    Settle::TaskFinal => LateReply::Task,
                };
                settled.push_back((ticket, reply));
            });
    }

    /// Loop phase: hands each finished computation to the service that
    /// asked for it, and decides the replies it settles.
    pub fn computations(&mut self) {
        while let Some(computed) = self.compute.try_result() {
            match computed.output {
                Computed::Fib { n, digits } => {
                    let finished = self.fib.computed(n, digits, computed.elapsed);
                    self.metrics.fib_computed(finished.elapsed);
                    for ticket in finished.waiters {
                        let value = finished.value.clone();
                        self.settled
                            .push_back((ticket, LateReply::Fib { n, value }));
                    }
                }
                Computed::Cursor(cursor) => {
                    let settled = &mut self.settled;
                    self.stepper.jumped(*cursor, &mut |ticket, reply| {
                        settled.push_back((ticket, LateReply::Step(reply)));
                    });
                }
                Computed::Primes(table) => {
                    log::debug!("{} primes sieved in {:?}", table.len(), computed.elapsed);
                    let sieved = self.primes.sieved(table, self.now_unix_ms);
                    for elapsed_ms in sieved.durations_ms {
                        self.metrics.primes_task_done(elapsed_ms);
                    }
                    for waiter in sieved.ready {
                        let owner = self.parking.get(waiter.ticket).map(|p| p.payload.owner);
                        if owner == Some(Waiting::PrimesForward) {
                            self.forward_again(waiter.ticket, waiter.id);
                        } else {
                            self.settled.push_back((waiter.ticket, LateReply::Task));
                        }
                    }
                }
            }
        }
    }

    /// Loop phase: expired parks, due hedges, a due span batch, and the
    /// outbound client's own work (connects, writes, deadlines), with the
    /// answers that arrive.
    pub fn timers_and_calls(&mut self, registrar: &mut impl Registrar) {
        // Answers that arrived are settled before any deadline is looked
        // at: a call that succeeded in the pass its deadline passed is
        // answered with its success.
        self.settle_upstream();
        while let Some((ticket, parked)) = self.parking.expired(self.now) {
            let owner = parked.payload.owner;
            self.expire(ticket, owner);
        }
        self.run_smart_timers();
        self.export_spans();
        self.send_callbacks();
        self.upstream.drive(self.now, registrar);
        self.settle_upstream();
    }

    /// Loop phase (about once a second): deletes expired task records
    /// (through the next commit) and retries a sieve the compute queue
    /// refused.
    pub fn housekeeping(&mut self) {
        let expired = self.primes.expire(self.now_unix_ms);
        if expired > 0 {
            log::debug!("{expired} expired primes task(s) to delete");
        }
        self.primes.kick();
    }

    /// Loop phase: the stepper's next batch to its store, a cursor jump to
    /// the compute worker, the ledger's next batch (with the task records)
    /// to the commit thread, and the store's call to the outbound client.
    pub fn submit(&mut self) {
        let settled = &mut self.settled;
        let mut settle = |ticket, reply| settled.push_back((ticket, LateReply::Step(reply)));
        self.stepper.submit(&mut self.ledger, self.now, &mut settle);
        if let Some(index) = self.stepper.wanted_jump(self.now) {
            let started = self.compute.submit(Job::Cursor(index)).is_ok();
            self.stepper.jump_started(started, self.now);
        }
        if self.primes.take_join() {
            self.ledger.join();
        }
        if let Some(mut request) = self.ledger.take() {
            request.records = self.primes.take_writes(request.batch);
            match &mut self.records {
                Some(records) => {
                    let term = self.stepper.cluster_term(self.now);
                    records.submit(request, term, self.now);
                }
                None => self.committer.submit(request),
            }
        }
        // Every call due goes in this pass, with the same `now` the batch
        // was handed over at: an election call the pool cannot take does not
        // hold back the index's.
        while let Some(call) = self.stepper.next_call(self.now, &mut settle) {
            let owner = CallOwner::Store(call.channel);
            let sent = self
                .upstream
                .send(owner, &call.request, call.deadline, self.now);
            if sent.is_err() {
                self.stepper
                    .call_not_sent(call.channel, self.now, &mut settle);
                if call.channel == Channel::Index {
                    break;
                }
            }
        }
        self.send_records_call();
    }

    /// The next reply decided for a parked request whose client still
    /// waits, for the loop to deliver to its connection.
    pub fn next_delivery(&mut self) -> Option<Delivery> {
        while let Some((ticket, reply)) = self.settled.pop_front() {
            if let Some(parked) = self.parking.take(ticket) {
                return Some(Delivery {
                    conn: parked.conn,
                    ticket,
                    parked: parked.payload,
                    reply,
                });
            }
        }
        None
    }

    /// Writes a delivery into its slot (see [`Delivery::withdraws`]).
    pub fn write_delivery(&mut self, delivery: Delivery, out: &mut Output) -> Reply {
        let Delivery { parked, reply, .. } = delivery;
        let shape = parked.shape;
        let status = match reply {
            // The reply was written and accounted when the request came;
            // only its release was awaited.
            LateReply::Durable => return persistence_reply(shape.persistence),
            LateReply::Withdrawn | LateReply::Step(StepReply::Withdrawn) => {
                let shape = Shape {
                    persistence: Persistence::Close,
                    ..shape
                };
                let status = self.write_error(ApiError::CommitFailed, &shape, out);
                return self.finish(&shape, status, None);
            }
            LateReply::Fib { n, value } => self.write_fib_late(n, &value, &shape, out),
            LateReply::Step(reply) => self.write_step(reply, &shape, out),
            LateReply::Task => match parked.owner {
                Waiting::PrimesTask(id) => self.write_task_late(id, &shape, out),
                _ => self.write_error(ApiError::TaskNotFound, &shape, out),
            },
            LateReply::Smart(reply) => self.write_smart(reply, &shape, out),
            LateReply::Forwarded { ask, reply } => {
                self.write_forwarded_late(ask, reply, &shape, out)
            }
            LateReply::TasksMoved => self.write_error(ApiError::TasksUnavailable, &shape, out),
        };
        self.finish(&shape, status, None)
    }

    /// A parked request's client left (or its slot went with a withdrawn
    /// one): its owner stops working for it and the ticket is freed.
    pub fn abandon(&mut self, ticket: Ticket) {
        let Some(parked) = self.parking.take(ticket) else {
            return;
        };
        let shape = parked.payload.shape;
        match parked.payload.owner {
            // The computation may serve others; its reply finds no ticket.
            Waiting::Fib => {}
            Waiting::Smart => self.abandon_smart(ticket, &shape),
            Waiting::PrimesTask(_) => {
                self.primes.forget_waiter(ticket);
            }
            // The change stays made; its release finds no ticket.
            Waiting::PrimesWritten => {}
            // The leader's answer finds no ticket; nor does the table, if
            // the reader waited for it.
            Waiting::PrimesForward => {
                self.primes.forget_waiter(ticket);
            }
            // A step handed to the store still happens; one not yet is dropped.
            Waiting::Step => self.stepper.abandon(ticket),
        }
        // No status: the client left before one was written.
        self.finish_span(shape.span, 0, shape.request_id, None);
    }

    /// Whether the loop must run another pass before it sleeps.
    pub fn has_work(&mut self) -> bool {
        !self.settled.is_empty()
            || self.upstream.has_work()
            || self.stepper.has_work(self.now)
            || self.stepper.wants_submit(&self.ledger, self.now)
            || self.ledger.is_due()
            || self.primes.owes_writes()
            || self.primes.callback_due(self.now)
            || self
                .records
                .as_ref()
                .is_some_and(|r| r.has_work(self.stepper.cluster_term(self.now), self.now))
    }

    /// The earliest timer of a parked request, an outbound call, a hedge,
    /// the next span batch or the stepper's store.
    pub fn next_timer(&mut self) -> Option<Instant> {
        [
            self.parking.next_deadline(),
            self.smart.next_hedge(),
            self.upstream.next_deadline(),
            self.next_export(),
            self.stepper.next_timer(),
            self.primes.next_callback(),
            self.records.as_ref().and_then(TaskRecords::next_timer),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether every write taken so far is durable (or certainly not made):
    /// a graceful stop waits for this whatever its grace.
    pub fn writes_settled(&self) -> bool {
        self.stepper.is_settled() && self.ledger.is_settled()
    }

    /// Whether every parked request is answered.
    pub fn replies_settled(&self) -> bool {
        self.parking.is_empty()
    }

    /// Whether primes tasks are stored, or a sieve waits to start
    /// (housekeeping is due only then).
    pub fn has_tasks(&self) -> bool {
        self.primes.stored() > 0 || self.primes.wants_sieve()
    }

    /// The index last made durable, for systemd's STATUS=.
    pub fn committed_index(&self) -> u64 {
        self.stepper.committed_index()
    }

    /// Waits for every batch handed to the commit thread, then stops it.
    /// A graceful stop begins: a cluster leader hands the leadership on.
    /// Spans waiting for export go at once.
    pub fn begin_stop(&mut self) {
        self.stepper.resign();
        if let Some(tracer) = &mut self.tracer {
            tracer.begin_stop();
        }
    }

    pub fn shutdown(self) -> Vec<CommitOutcome> {
        self.committer.shutdown()
    }

    /// The one ending of every reply, now or later: counts it, ends its
    /// span, logs it, and says whether the connection stays open. `path` is
    /// the request's, when the request is at hand (else the route's).
    fn finish(&mut self, shape: &Shape, status: Status, path: Option<&[u8]>) -> Reply {
        self.metrics.request(shape.route, status);
        self.answered += 1;
        if let Some(key) = shape.key {
            self.access.count(key, status == Status::TOO_MANY_REQUESTS);
        }
        self.finish_span(shape.span, status.code(), shape.request_id, None);
        self.log_access(shape, path, status);
        persistence_reply(shape.persistence)
    }

    /// Writes `error` in the shape the request asked for; a server-side
    /// fault is logged at warning with the request's id.
    fn write_error(&self, error: ApiError, shape: &Shape, out: &mut Output) -> Status {
        let id = &shape.request_id;
        if error.is_fault() {
            let fields = self.request_fields(shape, error.status());
            logging::request_line(
                log::Level::Warn,
                module_path!(),
                &fields,
                format_args!(
                    "{id} {:?} {}: answered {}: {error:?}",
                    shape.method, fields.route, fields.status
                ),
            );
        }
        error.write(
            out.buf(),
            &self.date,
            id,
            shape.head_only(),
            shape.persistence,
        );
        error.status()
    }

    /// The access log, at debug level under the `fibd::access` target: the
    /// client's address (as resolved through trusted proxies) and its key's
    /// name, never the key.
    fn log_access(&self, shape: &Shape, path: Option<&[u8]>, status: Status) {
        if !log::log_enabled!(target: "fibd::access", log::Level::Debug) {
            return;
        }
        let fields = self.request_fields(shape, status);
        let path = match path {
            Some(path) => String::from_utf8_lossy(path),
            None => fields.route.into(),
        };
        logging::request_line(
            log::Level::Debug,
            "fibd::access",
            &fields,
            format_args!(
                "{} {} key={} {:?} {path} -> {}",
                fields.request_id, fields.client, fields.key_name, shape.method, fields.status
            ),
        );
    }

    /// The journal fields of a line about `shape`'s request, answered `status`.
    fn request_fields<'a>(&'a self, shape: &'a Shape, status: Status) -> RequestFields<'a> {
        RequestFields {
            request_id: shape.request_id.as_str(),
            route: shape.route.map_or("(no route)", Route::path),
            status: status.code(),
            client: shape.client,
            key_name: shape.key.map_or("-", |k| self.access.key_name(k)),
        }
    }

    /// Charges the client's token bucket what this request costs, once the
    /// service knows it: 1 for a cheap answer, the measured compute cost for
    /// an uncached F(n), one token per 100 numbers for /v1/random. Health and
    /// metrics never call it, so probes never starve. The bucket and limit
    /// are the caller's (`crate::access`); an unlimited caller pays nothing.
    fn charge(&mut self, caller: &Caller, cost: u32) -> Result<(), ApiError> {
        let Some(limit) = caller.limit else {
            return Ok(());
        };
        match self.limiter.charge(caller.bucket, cost, limit, self.now) {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after_secs } => Err(ApiError::RateLimited {
                retry_after_secs,
                limit,
            }),
        }
    }

    /// Parks a request for a service to answer later (503 when the table is full).
    fn park(
        &mut self,
        conn: ConnId,
        owner: Waiting,
        shape: Shape,
        deadline: Option<Instant>,
    ) -> Result<Ticket, ApiError> {
        self.parking
            .park(conn, Parked { owner, shape }, deadline)
            .map_err(|_| ApiError::Overloaded)
    }

    /// A parked request's deadline passed: its owner gives it up and
    /// queues the reply it gets then.
    fn expire(&mut self, ticket: Ticket, owner: Waiting) {
        match owner {
            // These park without a deadline.
            Waiting::Fib | Waiting::PrimesWritten => {}
            // Past its call's deadline: it waited for this node's table.
            Waiting::PrimesForward => {
                self.primes.forget_waiter(ticket);
                let reply = Err(ApiError::ResultUnavailable);
                let ask = late::Forwarded::Get;
                self.settled
                    .push_back((ticket, LateReply::Forwarded { ask, reply }));
            }
            Waiting::Smart => self.expire_smart(ticket),
            Waiting::PrimesTask(_) => {
                self.primes.forget_waiter(ticket);
                self.settled.push_back((ticket, LateReply::Task));
            }
            Waiting::Step => {
                if let Some(reply) = self.stepper.expire(ticket) {
                    self.settled.push_back((ticket, LateReply::Step(reply)));
                }
            }
        }
    }

    /// Routes every finished outbound call to the service that made it.
    fn settle_upstream(&mut self) {
        while let Some(done) = self.upstream.completed() {
            match done.tag {
                CallOwner::Smart(ticket) => self.smart_attempt_done(ticket, done),
                CallOwner::TraceExport => self.span_export_done(done),
                CallOwner::Callback(id) => self.callback_done(id, done),
                CallOwner::Records => self.records_call_done(done),
                CallOwner::TaskForward(ticket, ask) => self.forward_done(ticket, ask, done),
                CallOwner::Store(channel) => {
                    self.metrics.etcd_call(done.elapsed);
                    let settled = &mut self.settled;
                    self.stepper
                        .call_done(channel, done.result, self.now, &mut |ticket, reply| {
                            settled.push_back((ticket, LateReply::Step(reply)));
                        });
                }
            }
        }
    }

    /// Whether `route` is served on `listener`: each route says where it is
    /// served (`Route::served`); elsewhere it does not exist (404).
    fn serves(&self, route: Route, listener: Listener) -> bool {
        match (route.served(), listener) {
            (Served::Both, _) | (Served::Public, Listener::Public) => true,
            (Served::Admin, Listener::Public) => self.watched.listeners.admin.is_none(),
            (Served::Admin, Listener::Admin) => true,
            (Served::Public, Listener::Admin) => false,
        }
    }

    /// Who sent the request, and whether it may use `route`.
    fn admit(&self, from: Peer, route: Route, request: &Request<'_>) -> Result<Caller, ApiError> {
        let caller = self.access.identify(from.addr, request)?;
        if let Some(scope) = route.scope() {
            self.access.authorize(&caller, scope)?;
        }
        Ok(caller)
    }

    /// Hands the request to the service of `shape.route`.
    fn dispatch(
        &mut self,
        from: Peer,
        caller: &Caller,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
        shape: &mut Shape,
    ) -> Result<Answer, ApiError> {
        let now = |status: Status| Ok(Answer::Now(status));
        let Some(route) = shape.route else {
            return Err(ApiError::NotFound);
        };
        match route {
            Route::Current | Route::Next | Route::Previous => {
                self.stepper(from.conn, caller, route, request, out, shape)
            }
            Route::Fib => self.fib(from.conn, caller, request, out, shape),
            Route::Random => {
                self.random(caller, request, out, shape)?;
                now(Status::OK)
            }
            Route::Healthz => {
                let body = b"{\"status\": \"ok\"}\n";
                self.write_no_store(out, shape, ContentType::Json, body);
                now(Status::OK)
            }
            Route::Readyz if self.store_ready && self.stepper.is_ready(self.now) => {
                let body = b"{\"status\": \"ready\"}\n";
                self.write_no_store(out, shape, ContentType::Json, body);
                now(Status::OK)
            }
            Route::Readyz => Err(ApiError::NotReady),
            Route::Metrics => {
                self.metrics_page(shape, out);
                now(Status::OK)
            }
            Route::Smart => self.smart(from.conn, caller, request, out, shape),
            Route::MetricsJson => {
                self.metrics_json_page(shape, out);
                now(Status::OK)
            }
            Route::Dashboard => {
                self.dashboard_page(shape, out);
                now(Status::OK)
            }
            Route::PrimesTasks => self.primes_post(from.conn, caller, request, body, out, shape),
            Route::PrimesTask if request.method == Method::Delete => {
                self.primes_delete(from.conn, caller, request, out, shape)
            }
            Route::PrimesTask => self.primes_get(from.conn, caller, request, out, shape),
            Route::OpenApi | Route::Docs => now(self.api_document(route, request, out, shape)),
            Route::Relay => self.relay(from.conn, request, body, out, shape),
            Route::TaskForward => self.task_forwarded(from.conn, request, body, out, shape),
        }
    }

    /// A 200 with an inline body that no cache may keep; HEAD gets the head only.
    fn write_no_store(
        &self,
        out: &mut Output,
        shape: &Shape,
        content_type: ContentType,
        body: &[u8],
    ) {
        let mut head = Head::start(out.buf(), Status::OK, &self.date, &shape.request_id);
        head.content_type(content_type)
            .header("Cache-Control", b"no-store");
        let out = head.finish(Status::OK, body.len(), shape.persistence);
        if !shape.head_only() {
            out.extend_from_slice(body);
        }
    }
}

impl Respond for App {
    fn body_limit(&self, request: &Request<'_>) -> Option<usize> {
        let route = Route::from_path(request.path)?;
        match route {
            _ if !route.accepts(request.method) => None,
            Route::PrimesTasks => Some(crate::services::primes::request::BODY_BYTES_MAX),
            Route::Relay => Some(crate::store::etcd::relay::RELAY_BODY_BYTES_MAX),
            Route::TaskForward => Some(crate::services::primes::forward::ASK_BYTES_MAX),
            _ => None,
        }
    }

    fn respond(
        &mut self,
        from: Peer,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
    ) -> Reply {
        let route = Route::from_path(request.path).filter(|&r| self.serves(r, from.listener));
        let span = self.tracer.as_mut().and_then(|tracer| {
            let name = route.map_or("other", Route::path);
            tracer
                .start(request.traceparent, name, request.method.as_str(), self.now)
                .map(|span| span.with_path(request.path))
        });
        let mut shape = Shape {
            route,
            method: request.method,
            format: Format::Json,
            persistence: request.persistence(),
            request_id: self.request_ids.for_request(request.request_id),
            span,
            client: from.addr,
            key: None,
        };
        let admitted = match route {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.admit(from, route, request),
        };
        let result = match admitted {
            Ok(caller) => {
                shape.client = caller.addr;
                shape.key = caller.key;
                self.dispatch(from, &caller, request, body, out, &mut shape)
            }
            Err(error) => {
                // Who it was still matters to the log, behind a proxy too.
                shape.client = self.access.client_address(from.addr, request);
                Err(error)
            }
        };
        match result {
            // The shape waits with the parked request; its reply ends it.
            Ok(Answer::Later(reply)) => reply,
            Ok(Answer::Now(status)) => self.finish(&shape, status, Some(request.path)),
            Err(error) => {
                shape.persistence = shape.persistence.or_close(error.closes_connection());
                let status = self.write_error(error, &shape, out);
                self.finish(&shape, status, Some(request.path))
            }
        }
    }

    fn reject(&mut self, error: ConnError, out: &mut Output) {
        let error = ApiError::from(error);
        let id = self.request_ids.fresh();
        error.write(out.buf(), &self.date, &id, false, Persistence::Close);
        self.metrics.request(None, error.status());
        self.answered += 1;
        log::debug!("{id} rejected: {}", error.status().code());
    }
}

fn persistence_reply(persistence: Persistence) -> Reply {
    if persistence.closes() {
        Reply::Close
    } else {
        Reply::KeepAlive
    }
}

fn negotiate(request: &Request<'_>, default: Format) -> Result<Format, ApiError> {
    accept::negotiate(request.accept, default).ok_or(ApiError::NotAcceptable)
}
