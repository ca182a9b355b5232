//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see the
//! connection; they write replies into its `Output`.
//!
//! This file holds the route table, dispatch, charging and the answers every
//! service shares; each service's replies live in a file of their own
//! (`stepper`, `fib`, `primes`, `random`, `smart`, `ops`, `docs`), `number`
//! is the one writer of a Fibonacci value that the stepper and /v1/fib share,
//! and `trace` connects spans and their export to the app.

mod cluster;
mod docs;
mod fib;
mod number;
mod ops;
mod primes;
mod random;
pub mod route;
mod smart;
mod stepper;
mod trace;

use crate::access::{Access, Caller};
use crate::error::ApiError;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::message::Method;
use crate::http::parse::Request;
use crate::net::conn::{ConnRef, Output, Reply, Respond};
use crate::store::etcd::{Cluster, ClusterReply};
use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

use crate::access::ratelimit::{Decision, RateLimiter};
use crate::http::message::Persistence;
use crate::http::request_id::{RequestId, RequestIds};
use crate::http::response::{ContentType, Head, Status};
use crate::net::upstream::{Client, ClientConfig};
use crate::ops::metrics::Metrics;
use crate::ops::trace::{SpanStart, Tracer};
use crate::reply::park::{Parking, Ticket};
use crate::services::compute::ComputeWorker;
use crate::services::fib::service::FibService;
use crate::services::primes::service::{PrimesService, PrimesWaiter};
use crate::services::smart::{SmartConfig, SmartService};
use crate::services::stepper::{BatchId, Stepper};

pub use route::Route;
pub use smart::SmartReply;
use std::rc::Rc;
pub use stepper::StepShape;

/// Requests parked at most, across every service: each costs a few words
/// here and a connection slot, which `--max-connections` bounds anyway.
const PARKED_MAX: usize = 65_536;

/// Which service settles a parked request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A /v1/fib request waiting for the compute worker.
    Fib,
    /// An /api/smart request waiting for its upstream attempts.
    Smart,
    /// A primes task GET waiting for its task to settle (`?wait`).
    PrimesTask,
    /// Cluster mode: a /current, /next or /previous waiting for etcd.
    Step,
}

/// Cluster mode's state machine, with what each parked stepper request
/// needs for its reply: its route (for the metrics) and its shape.
pub type ClusterNode = Cluster<(Route, StepShape)>;

/// Who made an outbound call, so its completion reaches the right service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOwner {
    /// One attempt of the /api/smart request parked under this ticket.
    Smart(Ticket),
    /// A batch of finished spans POSTed to the Zipkin collector.
    TraceExport,
    /// Cluster mode: the one etcd call in flight.
    Etcd,
}

/// A parked request's reply, decided outside request handling (an upstream
/// answer, a timer, an expired deadline) and queued for the loop to deliver.
#[derive(Debug)]
pub enum LateReply {
    Smart(SmartReply),
    /// A primes task's `?wait` ended before the task settled: its status now.
    PrimesWaitOver(Option<PrimesWaiter>),
    /// Cluster mode: a stepper request's answer from etcd, or its 503.
    Step(Route, StepShape, ClusterReply),
}

/// Everything a reply may need, owned by the event loop's thread.
pub struct App {
    /// The local stepper: the index with `--store lmdb`; with `--store
    /// etcd` it only carries the primes tasks' records to LMDB.
    pub stepper: Stepper,
    /// `--store etcd`: the index shared with other nodes through etcd.
    pub cluster: Option<ClusterNode>,
    pub date: HttpDate,
    pub metrics: Metrics,
    /// The loop pass's clock reading; the server sets it, nothing here reads a clock.
    pub now: Instant,
    /// The same moment as Unix milliseconds, for what outlives a restart
    /// (task creation and retention).
    pub now_unix_ms: u64,
    /// Requests answered since the server last collected the count.
    pub answered: u64,
    /// False while commits fail: /readyz tells the load balancer.
    pub store_ready: bool,
    /// `--max-connections`, for the saturation gauge; the server sets it.
    pub connections_max: usize,
    /// When the process started serving: monotonic for rates, wall-clock for
    /// `process_start_time_seconds`.
    started: Instant,
    started_at: SystemTime,
    pub fib: FibService,
    pub primes: PrimesService,
    /// The compute threads /v1/fib and the primes tasks share.
    pub compute: Rc<ComputeWorker>,
    /// Requests answered later, by ticket; services keep only the tickets.
    pub parking: Parking<Waiting>,
    /// Keys, scopes and trusted proxies; the server reloads its keys on SIGHUP.
    pub access: Access,
    pub smart: SmartService,
    /// The outbound HTTP/1.1 client; the server drives its sockets.
    pub upstream: Client<CallOwner>,
    /// Replies to parked requests, decided and waiting to be delivered.
    settled: VecDeque<(Ticket, LateReply)>,
    limiter: RateLimiter,
    random: crate::services::random::RandomSource,
    /// The id of the request being answered; every head and error carries it.
    pub request_id: RequestId,
    request_ids: RequestIds,
    /// Present only with `--trace-zipkin`; `span` is the current request's.
    pub tracer: Option<Tracer>,
    span: Option<SpanStart>,
    /// The last span batch failed: logged once until one is delivered.
    span_export_failing: bool,
    /// Reused between requests so a body built before its head costs no allocation.
    body: Vec<u8>,
    draws: Vec<i64>,
}

/// The services that answer from state the loop owns.
pub struct Services {
    pub stepper: Stepper,
    pub fib: FibService,
    pub primes: PrimesService,
    pub compute: Rc<ComputeWorker>,
}

impl App {
    pub fn new(
        services: Services,
        date: HttpDate,
        mut random: crate::services::random::RandomSource,
        access: Access,
        limiter: RateLimiter,
    ) -> App {
        let Services {
            stepper,
            fib,
            primes,
            compute,
        } = services;
        // A failed CSPRNG read leaves the prefix fixed: ids stay unique
        // within the run, which is what they are for.
        let mut request_ids = RequestIds::new(random.next_u64().unwrap_or(0));
        App {
            request_id: request_ids.fresh(),
            request_ids,
            tracer: None,
            span: None,
            span_export_failing: false,
            stepper,
            cluster: None,
            date,
            fib,
            primes,
            compute,
            now_unix_ms: 0,
            parking: Parking::new(PARKED_MAX),
            access,
            smart: SmartService::new(SmartConfig::default()),
            upstream: Client::new(ClientConfig::unused()),
            settled: VecDeque::new(),
            limiter,
            metrics: Metrics::default(),
            now: Instant::now(),
            answered: 0,
            store_ready: true,
            connections_max: 0,
            started: Instant::now(),
            started_at: SystemTime::now(),
            random,
            body: Vec::new(),
            draws: Vec::new(),
        }
    }

    /// Gives /api/smart its upstream and the outbound client it calls through.
    pub fn with_upstream(mut self, smart: SmartService, upstream: Client<CallOwner>) -> App {
        self.smart = smart;
        self.upstream = upstream;
        self
    }

    /// Cluster mode: the index lives in etcd (see [`crate::store::etcd`]).
    pub fn with_cluster(mut self, cluster: ClusterNode) -> App {
        self.cluster = Some(cluster);
        self
    }

    /// A parked request's deadline passed: its owner gives it up and
    /// queues the reply it gets then (see [`App::take_settled`]).
    pub fn expire(&mut self, ticket: Ticket, owner: Waiting) {
        match owner {
            // /v1/fib parks without a deadline.
            Waiting::Fib => {}
            Waiting::Smart => self.expire_smart(ticket),
            Waiting::PrimesTask => {
                let waiter = self.primes.forget_waiter(ticket);
                self.settled
                    .push_back((ticket, LateReply::PrimesWaitOver(waiter)));
            }
            Waiting::Step => self.expire_step(ticket),
        }
    }

    /// A parked request's client left: its owner stops working for it
    /// (an /api/smart call cancels its attempts) and the ticket is freed.
    pub fn abandon(&mut self, ticket: Ticket, owner: Waiting) {
        match owner {
            // The computation may serve others; its reply finds no ticket.
            Waiting::Fib => {}
            Waiting::Smart => self.abandon_smart(ticket),
            Waiting::PrimesTask => {
                self.primes.forget_waiter(ticket);
            }
            // A step already sent still happens; one not sent yet is dropped.
            Waiting::Step => {
                if let Some(cluster) = &mut self.cluster {
                    cluster.expire(ticket);
                }
            }
        }
        self.parking.take(ticket);
    }

    /// The next reply decided for a parked request, for the loop to deliver.
    pub fn take_settled(&mut self) -> Option<(Ticket, LateReply)> {
        self.settled.pop_front()
    }

    /// Writes a reply taken from [`App::take_settled`].
    pub fn write_late(&mut self, reply: LateReply, out: &mut Output) -> Reply {
        match reply {
            LateReply::Smart(reply) => self.write_smart(reply, out),
            LateReply::PrimesWaitOver(waiter) => self.primes_wait_over(waiter, out),
            LateReply::Step(route, shape, reply) => self.write_step(route, shape, reply, out),
        }
    }

    /// Whether the loop must run another pass before it sleeps.
    pub fn has_work(&self) -> bool {
        !self.settled.is_empty()
            || self.upstream.has_work()
            || self.cluster.as_ref().is_some_and(|c| c.has_work(self.now))
    }

    /// Routes every finished outbound call to the service that made it.
    pub fn settle_upstream(&mut self) {
        while let Some(done) = self.upstream.completed() {
            match done.tag {
                CallOwner::Smart(ticket) => self.smart_attempt_done(ticket, done),
                CallOwner::TraceExport => self.span_export_done(done),
                CallOwner::Etcd => self.etcd_call_done(done),
            }
        }
    }

    /// The earliest timer of a parked request, an outbound call or the
    /// next span batch.
    pub fn next_timer(&mut self) -> Option<Instant> {
        [
            self.parking.next_deadline(),
            self.smart.next_hedge(),
            self.upstream.next_deadline(),
            self.next_export(),
            self.cluster.as_ref().and_then(Cluster::next_timer),
        ]
        .into_iter()
        .flatten()
        .min()
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
        conn: ConnRef,
        owner: Waiting,
        deadline: Option<Instant>,
    ) -> Result<Ticket, ApiError> {
        self.parking
            .park(conn, owner, deadline)
            .map_err(|_| ApiError::Overloaded)
    }

    /// Who sent the request, and whether it may use `route`.
    fn admit(
        &self,
        conn: ConnRef,
        route: Route,
        request: &Request<'_>,
    ) -> Result<Caller, ApiError> {
        let caller = self.access.identify(conn.peer, request)?;
        if let Some(scope) = route.scope() {
            self.access.authorize(&caller, scope)?;
        }
        Ok(caller)
    }

    fn dispatch(
        &mut self,
        conn: ConnRef,
        caller: &Caller,
        route: Route,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
    ) -> Result<Answer, ApiError> {
        let done = |result: Result<(), ApiError>| result.map(|()| Answer::Now(Status::OK));
        match route {
            Route::Current | Route::Next | Route::Previous => {
                self.stepper(conn, caller, route, request, out)
            }
            Route::Fib => self.fib(conn, caller, request, out),
            Route::Random => done(self.random(caller, request, out)),
            Route::Healthz => {
                let body = b"{\"status\": \"ok\"}\n";
                self.write_no_store(out, request, ContentType::Json, body);
                done(Ok(()))
            }
            Route::Readyz if self.is_ready() => {
                let body = b"{\"status\": \"ready\"}\n";
                self.write_no_store(out, request, ContentType::Json, body);
                done(Ok(()))
            }
            Route::Readyz => Err(ApiError::NotReady),
            Route::Metrics => {
                self.metrics_page(request, out);
                done(Ok(()))
            }
            Route::Smart => self.smart(conn, caller, request),
            Route::MetricsJson => {
                self.metrics_json_page(request, out);
                done(Ok(()))
            }
            Route::Dashboard => {
                self.dashboard_page(request, out);
                done(Ok(()))
            }
            Route::PrimesTasks => self.primes_post(caller, request, body, out),
            Route::PrimesTask => self.primes_get(conn, caller, request, out),
            Route::OpenApi | Route::Docs => Ok(Answer::Now(self.api_document(route, request, out))),
        }
    }
}

impl Respond for App {
    fn body_limit(&self, request: &Request<'_>) -> Option<usize> {
        let route = Route::from_path(request.path)?;
        (route == Route::PrimesTasks && route.accepts(request.method))
            .then_some(crate::services::primes::request::BODY_BYTES_MAX)
    }

    fn respond(
        &mut self,
        conn: ConnRef,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
    ) -> Reply {
        self.request_id = self.request_ids.for_request(request.request_id);
        let route = Route::from_path(request.path);
        let mut caller = None;
        if let Some(tracer) = &mut self.tracer {
            let name = route.map_or("other", Route::path);
            self.span = tracer.start(request.traceparent, name, request.method.as_str(), self.now);
        }
        let result = match route {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.admit(conn, route, request).and_then(|admitted| {
                caller = Some(admitted);
                self.dispatch(conn, &admitted, route, request, body, out)
            }),
        };
        if let Some(key) = caller.and_then(|c| c.key) {
            let limited = matches!(result, Err(ApiError::RateLimited { .. }));
            self.access.count(key, limited);
        }
        let (status, persistence) = match result {
            // A service that parks a request takes `self.span` with it and
            // ends it when it writes the answer (see `fib`).
            Ok(Answer::Later) => return Reply::Deferred,
            Ok(Answer::Now(status)) => (status, request.persistence()),
            Err(error) => {
                let persistence = request.persistence().or_close(error.closes_connection());
                let head_only = request.method == Method::Head;
                let id = &self.request_id;
                if error.is_fault() {
                    log::warn!(
                        "{id} {:?} {}: {}",
                        request.method,
                        String::from_utf8_lossy(request.path),
                        error.status().code()
                    );
                }
                error.write(out.buf(), &self.date, id, head_only, persistence);
                (error.status(), persistence)
            }
        };
        self.metrics.request(route, status);
        self.answered += 1;
        let span = self.span.take();
        self.finish_span(span, status.code(), self.request_id, None);
        self.log_access(conn, caller.as_ref(), request, status);
        if persistence.closes() {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }

    fn reject(&mut self, error: ApiError, request_id: Option<RequestId>, out: &mut Output) {
        let id = request_id.unwrap_or_else(|| self.request_ids.fresh());
        error.write(out.buf(), &self.date, &id, false, Persistence::Close);
        self.metrics.request(None, error.status());
        self.answered += 1;
        if error.is_fault() {
            log::warn!("{id} answered {}: {error:?}", error.status().code());
        } else {
            log::debug!("{id} rejected: {}", error.status().code());
        }
    }

    fn is_released(&self, batch: BatchId) -> bool {
        self.stepper.is_released(batch)
    }
}

impl App {
    /// The access log, at debug level under the `fibd::access` target: the
    /// client's address (as resolved through trusted proxies) and its key's
    /// name, never the key.
    fn log_access(
        &self,
        conn: ConnRef,
        caller: Option<&Caller>,
        request: &Request<'_>,
        status: Status,
    ) {
        if !log::log_enabled!(target: "fibd::access", log::Level::Debug) {
            return;
        }
        let addr = caller.map_or_else(
            || self.access.client_address(conn.peer, request),
            |c| c.addr,
        );
        let key = caller
            .and_then(|c| c.key)
            .map_or("-", |k| self.access.key_name(k));
        log::debug!(
            target: "fibd::access",
            "{} {addr} key={key} {:?} {} -> {}",
            self.request_id,
            request.method,
            String::from_utf8_lossy(request.path),
            status.code()
        );
    }
}

/// A service's answer: written now (with its status), or deferred.
enum Answer {
    Now(Status),
    Later,
}

fn negotiate(request: &Request<'_>, default: Format) -> Result<Format, ApiError> {
    accept::negotiate(request.accept, default).ok_or(ApiError::NotAcceptable)
}

impl App {
    /// An error as the later reply of a parked request, in the shape the
    /// request asked for when it arrived.
    fn write_late_error(
        &self,
        error: ApiError,
        request_id: RequestId,
        head_only: bool,
        persistence: Persistence,
        out: &mut Output,
    ) -> Status {
        error.write(out.buf(), &self.date, &request_id, head_only, persistence);
        error.status()
    }

    /// A 200 with an inline body that no cache may keep; HEAD gets the head only.
    fn write_no_store(
        &self,
        out: &mut Output,
        request: &Request<'_>,
        content_type: ContentType,
        body: &[u8],
    ) {
        let mut head = Head::start(out.buf(), Status::OK, &self.date, &self.request_id);
        head.content_type(content_type)
            .header("Cache-Control", b"no-store");
        let out = head.finish(Status::OK, body.len(), request.persistence());
        if request.method != Method::Head {
            out.extend_from_slice(body);
        }
    }
}
