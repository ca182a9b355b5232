//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see the
//! connection; they write replies into its `Output`.
//!
//! This file holds the route table, dispatch, charging and the answers every
//! service shares; each service's replies live in a file of their own
//! (`stepper`, `fib`, `random`, `ops`), and `number` is the one writer of a
//! Fibonacci value that the stepper and /v1/fib share.

mod fib;
mod number;
mod ops;
mod random;
mod stepper;

use crate::conn::{ConnRef, Output, Reply, Respond};
use crate::error::ApiError;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use std::time::{Instant, SystemTime};

use crate::fib::service::FibService;
use crate::http::response::{ContentType, Head, Status};
use crate::metrics::Metrics;
use crate::park::{Parking, Ticket};
use crate::ratelimit::{self, Decision, RateLimiter};
use crate::request_id::{RequestId, RequestIds};
use crate::stepper::{BatchId, Stepper};
use crate::trace::{SpanStart, TraceConfig, Tracer};

/// The resources fibd serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Current,
    Next,
    Previous,
    Fib,
    Random,
    Healthz,
    Readyz,
    Metrics,
    MetricsJson,
    Dashboard,
}

impl Route {
    pub const ALL: [Route; 10] = [
        Route::Current,
        Route::Next,
        Route::Previous,
        Route::Fib,
        Route::Random,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::MetricsJson,
        Route::Dashboard,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Route::Current => "/current",
            Route::Next => "/next",
            Route::Previous => "/previous",
            Route::Fib => "/v1/fib",
            Route::Random => "/v1/random",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::MetricsJson => "/metrics.json",
            Route::Dashboard => "/dashboard",
        }
    }

    pub fn from_path(path: &[u8]) -> Option<Route> {
        Route::ALL.into_iter().find(|r| r.path().as_bytes() == path)
    }

    /// The methods a route takes, as the Allow header lists them.
    fn allow(self) -> &'static str {
        match self {
            Route::Current | Route::Next | Route::Previous => "GET, HEAD, POST",
            _ => "GET, HEAD",
        }
    }

    fn accepts(self, method: Method) -> bool {
        match self {
            Route::Current | Route::Next | Route::Previous => {
                matches!(method, Method::Get | Method::Head | Method::Post)
            }
            _ => matches!(method, Method::Get | Method::Head),
        }
    }
}

/// Requests parked at most, across every service: each costs a few words
/// here and a connection slot, which `--max-connections` bounds anyway.
const PARKED_MAX: usize = 65_536;

/// Which service settles a parked request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A /v1/fib request waiting for the compute worker.
    Fib,
}

/// Everything a reply may need, owned by the event loop's thread.
pub struct App {
    pub stepper: Stepper,
    pub date: HttpDate,
    pub metrics: Metrics,
    /// The loop pass's clock reading; the server sets it, nothing here reads a clock.
    pub now: Instant,
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
    /// Requests answered later, by ticket; services keep only the tickets.
    pub parking: Parking<Waiting>,
    limiter: RateLimiter,
    random: crate::random::RandomSource,
    /// The id of the request being answered; every head and error carries it.
    pub request_id: RequestId,
    request_ids: RequestIds,
    /// Present only with `--trace-zipkin`; `span` is the current request's.
    pub tracer: Option<Tracer>,
    span: Option<SpanStart>,
    /// Reused between requests so a body built before its head costs no allocation.
    body: Vec<u8>,
    draws: Vec<i64>,
}

impl App {
    pub fn new(
        stepper: Stepper,
        date: HttpDate,
        mut random: crate::random::RandomSource,
        fib: FibService,
        limiter: RateLimiter,
    ) -> App {
        // A failed CSPRNG read leaves the prefix fixed: ids stay unique
        // within the run, which is what they are for.
        let mut request_ids = RequestIds::new(random.next_u64().unwrap_or(0));
        App {
            request_id: request_ids.fresh(),
            request_ids,
            tracer: None,
            span: None,
            stepper,
            date,
            fib,
            parking: Parking::new(PARKED_MAX),
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

    /// Records a span for sampled requests from now on (`--trace-zipkin`).
    pub fn enable_tracing(&mut self, config: TraceConfig) {
        // As for request ids: a failed CSPRNG read only makes ids predictable.
        let seed = self.random.next_u64().unwrap_or(0);
        self.tracer = Some(Tracer::new(config, seed, self.now, SystemTime::now()));
    }

    /// Ends the current request's span, if it is sampled.
    fn finish_span(&mut self, span: Option<SpanStart>, status: Status, request_id: RequestId) {
        if let (Some(tracer), Some(span)) = (&mut self.tracer, span) {
            tracer.finish(span, status.code(), request_id, None, Instant::now());
        }
    }

    /// Charges the client's token bucket what this request costs, once the
    /// service knows it: 1 for a cheap answer, the measured compute cost for
    /// an uncached F(n), one token per 100 numbers for /v1/random. Health and
    /// metrics never call it, so probes never starve.
    fn charge(&mut self, conn: ConnRef, request: &Request<'_>, cost: u32) -> Result<(), ApiError> {
        let client = self.limiter.client_key(request.api_key, conn.peer);
        match self.limiter.charge(client, cost, self.now) {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after_secs } => {
                Err(ApiError::RateLimited { retry_after_secs })
            }
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

    fn dispatch(
        &mut self,
        conn: ConnRef,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<Answer, ApiError> {
        let done = |result: Result<(), ApiError>| result.map(|()| Answer::Now(Status::OK));
        match route {
            Route::Current | Route::Next | Route::Previous => {
                done(self.stepper(conn, route, request, out))
            }
            Route::Fib => self.fib(conn, request, out),
            Route::Random => done(self.random(conn, request, out)),
            Route::Healthz => {
                let body = b"{\"status\": \"ok\"}\n";
                self.write_no_store(out, request, ContentType::Json, body);
                done(Ok(()))
            }
            Route::Readyz if self.store_ready => {
                let body = b"{\"status\": \"ready\"}\n";
                self.write_no_store(out, request, ContentType::Json, body);
                done(Ok(()))
            }
            Route::Readyz => Err(ApiError::NotReady),
            Route::Metrics => {
                self.metrics_page(request, out);
                done(Ok(()))
            }
            Route::MetricsJson => {
                self.metrics_json_page(request, out);
                done(Ok(()))
            }
            Route::Dashboard => {
                self.dashboard_page(request, out);
                done(Ok(()))
            }
        }
    }
}

impl Respond for App {
    fn respond(&mut self, conn: ConnRef, request: &Request<'_>, out: &mut Output) -> Reply {
        self.request_id = self.request_ids.for_request(request.request_id);
        let route = Route::from_path(request.path);
        if let Some(tracer) = &mut self.tracer {
            let name = route.map_or("other", Route::path);
            self.span = tracer.start(request.traceparent, name, request.method.as_str(), self.now);
        }
        let result = match route {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.dispatch(conn, route, request, out),
        };
        let (status, close) = match result {
            // A service that parks a request takes `self.span` with it and
            // ends it when it writes the answer (see `fib`).
            Ok(Answer::Later) => return Reply::Deferred,
            Ok(Answer::Now(status)) => (status, !request.keep_alive),
            Err(error) => {
                let close = !request.keep_alive || error.closes_connection();
                let limiter = &self.limiter;
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
                error.write_with(out.buf(), &self.date, id, head_only, close, |head| {
                    if let ApiError::RateLimited { retry_after_secs } = error {
                        let limited = Decision::Limited { retry_after_secs };
                        head.header_with(ratelimit::POLICY_HEADER, |v| limiter.write_policy(v))
                            .header_with(ratelimit::STATE_HEADER, |v| {
                                limiter.write_state(v, &limited)
                            });
                    }
                });
                (error.status(), close)
            }
        };
        self.metrics.request(route, status);
        self.answered += 1;
        let span = self.span.take();
        self.finish_span(span, status, self.request_id);
        log::debug!(
            "{} {:?} {} -> {}",
            self.request_id,
            request.method,
            String::from_utf8_lossy(request.path),
            status.code()
        );
        if close {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }

    fn reject(&mut self, error: ApiError, request_id: Option<RequestId>, out: &mut Output) {
        let id = request_id.unwrap_or_else(|| self.request_ids.fresh());
        error.write(out.buf(), &self.date, &id, false, true);
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

/// A service's answer: written now (with its status), or deferred.
enum Answer {
    Now(Status),
    Later,
}

fn negotiate(request: &Request<'_>, default: Format) -> Result<Format, ApiError> {
    accept::negotiate(request.accept, default).ok_or(ApiError::NotAcceptable)
}

impl App {
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
        let out = head.finish(Status::OK, body.len(), !request.keep_alive);
        if request.method != Method::Head {
            out.extend_from_slice(body);
        }
    }
}
