//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see the
//! connection; they write replies into its `Output`.
//!
//! This file holds the route table, dispatch, charging and the answers every
//! service shares; each service's replies live in a file of their own
//! (`stepper`, `fib`, `primes`, `random`, `ops`), and `number` is the one
//! writer of a Fibonacci value that the stepper and /v1/fib share.

mod fib;
mod number;
mod ops;
mod primes;
mod random;
mod stepper;

use crate::conn::{ConnRef, Output, Reply, Respond};
use crate::error::ApiError;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use std::time::Instant;

use crate::compute::ComputeWorker;
use crate::fib::service::FibService;
use crate::http::response::{ContentType, Head, Status};
use crate::metrics::Metrics;
use crate::park::{Parking, Ticket};
use crate::primes::service::{PrimesService, PrimesWaiter};
use crate::ratelimit::{self, Decision, RateLimiter};
use crate::stepper::{BatchId, Stepper};
use std::rc::Rc;

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
    /// POST a primes task (also at /tasks).
    PrimesTasks,
    /// GET one primes task by id (also at /tasks/{id}).
    PrimesTask,
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
        Route::PrimesTasks,
        Route::PrimesTask,
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
            Route::PrimesTasks => "/v1/primes/tasks",
            Route::PrimesTask => "/v1/primes/tasks/{id}",
        }
    }

    pub fn from_path(path: &[u8]) -> Option<Route> {
        Route::ALL
            .into_iter()
            .find(|r| r.path().as_bytes() == path)
            .or_else(|| primes::task_route(path))
    }

    /// The methods a route takes, as the Allow header lists them.
    fn allow(self) -> &'static str {
        match self {
            Route::Current | Route::Next | Route::Previous => "GET, HEAD, POST",
            Route::PrimesTasks => "POST",
            _ => "GET, HEAD",
        }
    }

    fn accepts(self, method: Method) -> bool {
        match self {
            Route::Current | Route::Next | Route::Previous => {
                matches!(method, Method::Get | Method::Head | Method::Post)
            }
            Route::PrimesTasks => method == Method::Post,
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
    /// A primes task GET waiting for its task to settle (`?wait`).
    PrimesTask,
}

/// A parked request whose deadline passed, as its owner gave it back.
#[derive(Clone, Copy, Debug)]
pub enum Expired {
    PrimesTask(Option<PrimesWaiter>),
    Fib,
}

/// Everything a reply may need, owned by the event loop's thread.
pub struct App {
    pub stepper: Stepper,
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
    pub fib: FibService,
    pub primes: PrimesService,
    /// The compute threads /v1/fib and the primes tasks share.
    pub compute: Rc<ComputeWorker>,
    /// Requests answered later, by ticket; services keep only the tickets.
    pub parking: Parking<Waiting>,
    limiter: RateLimiter,
    random: crate::random::RandomSource,
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
        random: crate::random::RandomSource,
        limiter: RateLimiter,
    ) -> App {
        let Services {
            stepper,
            fib,
            primes,
            compute,
        } = services;
        App {
            stepper,
            date,
            fib,
            primes,
            compute,
            now_unix_ms: 0,
            parking: Parking::new(PARKED_MAX),
            limiter,
            metrics: Metrics::default(),
            now: Instant::now(),
            answered: 0,
            store_ready: true,
            random,
            body: Vec::new(),
            draws: Vec::new(),
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
        body: &[u8],
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
                write_no_store(out, &self.date, request, ContentType::Json, body);
                done(Ok(()))
            }
            Route::Readyz if self.store_ready => {
                let body = b"{\"status\": \"ready\"}\n";
                write_no_store(out, &self.date, request, ContentType::Json, body);
                done(Ok(()))
            }
            Route::Readyz => Err(ApiError::NotReady),
            Route::Metrics => {
                self.metrics_page(request, out);
                done(Ok(()))
            }
            Route::PrimesTasks => self.primes_post(conn, request, body, out),
            Route::PrimesTask => self.primes_get(conn, request, out),
        }
    }

    /// Takes a parked request whose deadline passed back from the service
    /// that owns it, whether or not its client is still there.
    pub fn take_expired(&mut self, ticket: Ticket, owner: Waiting) -> Expired {
        match owner {
            Waiting::PrimesTask => Expired::PrimesTask(self.primes.forget_waiter(ticket)),
            Waiting::Fib => Expired::Fib,
        }
    }

    /// The answer to a request whose wait ended.
    pub fn expired_reply(&mut self, expired: Expired, out: &mut Output) -> Reply {
        match expired {
            Expired::PrimesTask(waiter) => self.primes_wait_over(waiter, out),
            // /v1/fib parks without a deadline; should one pass, its
            // computation is still owed: say so rather than hang.
            Expired::Fib => {
                ApiError::Busy.write(out.buf(), &self.date, false, true);
                self.metrics
                    .request(Some(Route::Fib), ApiError::Busy.status());
                Reply::Close
            }
        }
    }
}

impl Respond for App {
    fn body_limit(&self, request: &Request<'_>) -> Option<usize> {
        let route = Route::from_path(request.path)?;
        (route == Route::PrimesTasks && route.accepts(request.method))
            .then_some(crate::primes::request::BODY_BYTES_MAX)
    }

    fn respond(
        &mut self,
        conn: ConnRef,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
    ) -> Reply {
        let route = Route::from_path(request.path);
        let result = match route {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.dispatch(conn, route, request, body, out),
        };
        let (status, close) = match result {
            Ok(Answer::Later) => return Reply::Deferred,
            Ok(Answer::Now(status)) => (status, !request.keep_alive),
            Err(error) => {
                let close = !request.keep_alive || error.closes_connection();
                let limiter = &self.limiter;
                let head_only = request.method == Method::Head;
                error.write_with(out.buf(), &self.date, head_only, close, |head| {
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
        log::debug!(
            "{:?} {} -> {}",
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

    fn reject(&mut self, error: ApiError, out: &mut Output) {
        error.write(out.buf(), &self.date, false, true);
        self.metrics.request(None, error.status());
        self.answered += 1;
        log::debug!("rejected a request: {}", error.status().code());
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

/// A 200 with an inline body that no cache may keep; HEAD gets the head only.
fn write_no_store(
    out: &mut Output,
    date: &HttpDate,
    request: &Request<'_>,
    content_type: ContentType,
    body: &[u8],
) {
    let mut head = Head::start(out.buf(), Status::OK, date);
    head.content_type(content_type)
        .header("Cache-Control", b"no-store");
    let out = head.finish(Status::OK, body.len(), !request.keep_alive);
    if request.method != Method::Head {
        out.extend_from_slice(body);
    }
}
