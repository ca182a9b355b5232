//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see the
//! connection; they write replies into its `Output`.
//!
//! This file holds the route table, dispatch, charging and the answers every
//! service shares; each service's replies live in a file of their own
//! (`stepper`, `fib`, `random`, `ops`, `docs`), and `number` is the one writer
//! of a Fibonacci value that the stepper and /v1/fib share.

mod docs;
mod fib;
mod number;
mod ops;
mod random;
mod stepper;

use crate::access::{Access, Caller, Scope};
use crate::conn::{ConnRef, Output, Reply, Respond};
use crate::error::ApiError;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use std::time::Instant;

use crate::fib::service::FibService;
use crate::http::response::{ContentType, Head, Persistence, Status};
use crate::metrics::Metrics;
use crate::park::{Parking, Ticket};
use crate::ratelimit::{Decision, RateLimiter};
use crate::stepper::{BatchId, Stepper};

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
    /// This API's OpenAPI description (`openapi.json`, built in).
    OpenApi,
    /// The same description as an HTML reference.
    Docs,
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
        Route::OpenApi,
        Route::Docs,
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
            Route::OpenApi => "/openapi.json",
            Route::Docs => "/docs",
        }
    }

    /// Other paths of the same resource, kept for clients of the services
    /// fibd replaces. A path with `{name}` is a template: the route matches
    /// it itself, and the template is how openapi.json names it.
    // One arm until the primes tasks add theirs (`/tasks`, `/tasks/{id}`).
    #[allow(clippy::match_single_binding)]
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            _ => &[],
        }
    }

    pub fn from_path(path: &[u8]) -> Option<Route> {
        Route::ALL.into_iter().find(|r| {
            r.path().as_bytes() == path || r.aliases().iter().any(|a| a.as_bytes() == path)
        })
    }

    /// The methods a route takes, as the Allow header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Current | Route::Next | Route::Previous => "GET, HEAD, POST",
            _ => "GET, HEAD",
        }
    }

    /// What a key needs beyond reading, when `crate::access` enforces it.
    fn scope(self) -> Option<Scope> {
        match self {
            Route::Next | Route::Previous => Some(Scope::Step),
            _ => None,
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
    pub fib: FibService,
    /// Requests answered later, by ticket; services keep only the tickets.
    pub parking: Parking<Waiting>,
    /// Keys, scopes and trusted proxies; the server reloads its keys on SIGHUP.
    pub access: Access,
    limiter: RateLimiter,
    random: crate::random::RandomSource,
    /// Reused between requests so a body built before its head costs no allocation.
    body: Vec<u8>,
    draws: Vec<i64>,
}

impl App {
    pub fn new(
        stepper: Stepper,
        date: HttpDate,
        random: crate::random::RandomSource,
        fib: FibService,
        access: Access,
        limiter: RateLimiter,
    ) -> App {
        App {
            stepper,
            date,
            fib,
            parking: Parking::new(PARKED_MAX),
            access,
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
        out: &mut Output,
    ) -> Result<Answer, ApiError> {
        let done = |result: Result<(), ApiError>| result.map(|()| Answer::Now(Status::OK));
        match route {
            Route::Current | Route::Next | Route::Previous => {
                done(self.stepper(caller, route, request, out))
            }
            Route::Fib => self.fib(conn, caller, request, out),
            Route::Random => done(self.random(caller, request, out)),
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
            Route::OpenApi | Route::Docs => Ok(Answer::Now(self.api_document(route, request, out))),
        }
    }
}

impl Respond for App {
    fn respond(&mut self, conn: ConnRef, request: &Request<'_>, out: &mut Output) -> Reply {
        let route = Route::from_path(request.path);
        let mut caller = None;
        let result = match route {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.admit(conn, route, request).and_then(|admitted| {
                caller = Some(admitted);
                self.dispatch(conn, &admitted, route, request, out)
            }),
        };
        if let Some(key) = caller.and_then(|c| c.key) {
            let limited = matches!(result, Err(ApiError::RateLimited { .. }));
            self.access.count(key, limited);
        }
        let (status, persistence) = match result {
            Ok(Answer::Later) => return Reply::Deferred,
            Ok(Answer::Now(status)) => (status, request.persistence()),
            Err(error) => {
                let persistence = request.persistence().or_close(error.closes_connection());
                let head_only = request.method == Method::Head;
                error.write(out.buf(), &self.date, head_only, persistence);
                (error.status(), persistence)
            }
        };
        self.metrics.request(route, status);
        self.answered += 1;
        self.log_access(conn, caller.as_ref(), request, status);
        if persistence.closes() {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }

    fn reject(&mut self, error: ApiError, out: &mut Output) {
        error.write(out.buf(), &self.date, false, Persistence::Close);
        self.metrics.request(None, error.status());
        self.answered += 1;
        log::debug!("rejected a request: {}", error.status().code());
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
            "{addr} key={key} {:?} {} -> {}",
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
    let out = head.finish(Status::OK, body.len(), request.persistence());
    if request.method != Method::Head {
        out.extend_from_slice(body);
    }
}
