//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see the
//! connection; they write replies into its `Output`.

use crate::conn::{ConnRef, Output, Reply, Respond};
use crate::error::ApiError;
use crate::fib::digits;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use std::time::Instant;

use crate::fib::request;
use crate::fib::service::{FibService, FibWaiter, Lookup};
use crate::http::response::{ContentType, Head, Status};
use crate::metrics::{Gauges, Metrics};
use crate::random::{self, RandomQuery, RandomSource};
use crate::ratelimit::{self, Decision, RateLimiter};
use crate::stepper::{BatchId, Reading, Step, StepError, Stepper, Value};

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
}

impl Route {
    pub const ALL: [Route; 8] = [
        Route::Current,
        Route::Next,
        Route::Previous,
        Route::Fib,
        Route::Random,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
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
    limiter: RateLimiter,
    random: RandomSource,
    /// Reused between requests so a body built before its head costs no allocation.
    body: Vec<u8>,
    draws: Vec<i64>,
}

impl App {
    pub fn new(
        stepper: Stepper,
        date: HttpDate,
        random: RandomSource,
        fib: FibService,
        limiter: RateLimiter,
    ) -> App {
        App {
            stepper,
            date,
            fib,
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
        }
    }

    /// /v1/fib: validated n, then 304, an answer now, or a deferred one.
    fn fib(
        &mut self,
        conn: ConnRef,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<Answer, ApiError> {
        let max_n = self.fib.max_n();
        let n = request::parse_n(request.query, max_n)
            .map_err(|error| ApiError::BadN { error, max_n })?;
        let format = negotiate(request, Format::Json)?;
        let revalidated = request
            .if_none_match
            .is_some_and(|tags| request::if_none_match(tags, n));
        let cost = if revalidated || self.fib.is_at_hand(n) {
            1
        } else {
            ratelimit::fib_compute_cost(n)
        };
        self.charge(conn, request, cost)?;
        if revalidated {
            let mut head = Head::start(out.buf(), Status::NOT_MODIFIED, &self.date);
            fib_cache_headers(&mut head, n);
            head.finish(Status::NOT_MODIFIED, 0, !request.keep_alive);
            return Ok(Answer::Now(Status::NOT_MODIFIED));
        }
        let waiter = FibWaiter {
            conn,
            format,
            head_only: request.method == Method::Head,
            keep_alive: request.keep_alive,
        };
        let (lookup, hit) = self.fib.lookup(n, waiter);
        self.metrics.fib_cache(hit);
        match lookup {
            Lookup::Ready(value) => {
                write_fib(out, n, &value, &waiter, &self.date);
                Ok(Answer::Now(Status::OK))
            }
            Lookup::Pending => Ok(Answer::Later),
            Lookup::Busy => Err(ApiError::Busy),
        }
    }

    /// Writes the reply of a request that waited for F(n).
    pub fn fib_reply(
        &mut self,
        waiter: &FibWaiter,
        n: u64,
        value: &Value,
        out: &mut Output,
    ) -> Reply {
        write_fib(out, n, value, waiter, &self.date);
        self.metrics.request(Some(Route::Fib), Status::OK);
        self.answered += 1;
        if waiter.keep_alive {
            Reply::KeepAlive
        } else {
            Reply::Close
        }
    }

    fn metrics_page(&mut self, request: &Request<'_>, out: &mut Output) {
        let gauges = Gauges {
            committed_index: self.stepper.committed_index(),
            pending_index: self.stepper.pending_index(),
            fib_cache_bytes: self.fib.cache_bytes(),
            fib_cache_entries: self.fib.cache_len(),
            fib_queue: self.fib.queued(),
            rate_limit_clients: self.limiter.clients(),
        };
        let mut text = String::with_capacity(8 * 1024);
        self.metrics.render(&gauges, &mut text);
        let body = text.as_bytes();
        write_no_store(out, &self.date, request, ContentType::Prometheus, body);
    }

    fn stepper(
        &mut self,
        conn: ConnRef,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        self.charge(conn, request, 1)?;
        let format = negotiate(request, Format::Text)?;
        let reading = match route {
            Route::Next => self.stepper.step(Step::Next).map_err(step_error)?,
            Route::Previous => self.stepper.step(Step::Previous).map_err(step_error)?,
            _ => {
                let stepper = &self.stepper;
                if out.has_unreleased_hold(|b| stepper.is_released(b)) {
                    stepper.current_after_own_steps()
                } else {
                    stepper.current()
                }
            }
        };
        write_reading(out, &reading, format, request, &self.date);
        Ok(())
    }

    fn random(
        &mut self,
        conn: ConnRef,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        let format = negotiate(request, Format::Json)?;
        let query = RandomQuery::parse(request.query).map_err(|e| ApiError::BadQuery {
            message: e.message(),
        })?;
        let values = u32::from(query.count.unwrap_or(1));
        self.charge(conn, request, values.div_ceil(RANDOM_VALUES_PER_TOKEN))?;
        self.draws.clear();
        for _ in 0..query.count.unwrap_or(1) {
            let value = self
                .random
                .uniform(query.min, query.max)
                .map_err(|_| ApiError::RandomUnavailable)?;
            self.draws.push(value);
        }
        self.body.clear();
        let content_type = match format {
            Format::Json => {
                random::write_json(&mut self.body, &query, &self.draws);
                ContentType::Json
            }
            Format::Text => {
                random::write_text(&mut self.body, &self.draws);
                ContentType::Text
            }
        };
        write_no_store(out, &self.date, request, content_type, &self.body);
        Ok(())
    }
}

impl Respond for App {
    fn respond(&mut self, conn: ConnRef, request: &Request<'_>, out: &mut Output) -> Reply {
        let route = Route::from_path(request.path);
        let result = match route {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.dispatch(conn, route, request, out),
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

/// F(n) never changes: the ETag comes from n alone and caches may keep it forever.
fn fib_cache_headers(head: &mut Head<'_>, n: u64) {
    head.header_with("ETag", |out| request::write_etag(out, n))
        .header("Cache-Control", b"public, max-age=31536000, immutable");
}

/// A /v1/fib reply: `{"n": N, "value": "F"}` as JSON, `F\n` as text.
fn write_fib(out: &mut Output, n: u64, value: &Value, waiter: &FibWaiter, date: &HttpDate) {
    let shape = NumberReply {
        json_key: JSON_N,
        key: n,
        value,
        format: waiter.format,
        head_only: waiter.head_only,
        close: !waiter.keep_alive,
    };
    write_number(out, date, &shape, |head| fib_cache_headers(head, n));
}

fn write_value(out: &mut Output, value: &Value) {
    match value {
        Value::Small(v) => digits::write_u128(out.buf(), *v),
        Value::Big(shared) => out.push_shared(shared.clone()),
    }
}

fn negotiate(request: &Request<'_>, default: Format) -> Result<Format, ApiError> {
    accept::negotiate(request.accept, default).ok_or(ApiError::NotAcceptable)
}

fn step_error(e: StepError) -> ApiError {
    match e {
        StepError::AtCeiling { max_index } => ApiError::AtCeiling { max_index },
    }
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

/// A stepper reply: `F\n` as text, or `{"index": N, "value": "F"}` as JSON.
fn write_reading(
    out: &mut Output,
    reading: &Reading,
    format: Format,
    request: &Request<'_>,
    date: &HttpDate,
) {
    if let Some(batch) = reading.durable_after {
        out.push_hold(batch);
    }
    let shape = NumberReply {
        json_key: JSON_INDEX,
        key: reading.index,
        value: &reading.value,
        format,
        head_only: request.method == Method::Head,
        close: !request.keep_alive,
    };
    write_number(out, date, &shape, |head| {
        head.header_u64("X-Fib-Index", reading.index)
            .header("Cache-Control", b"no-store");
    });
}

/// What the stepper's and /v1/fib's replies have in common: a Fibonacci
/// value, keyed by its index, as text or JSON.
struct NumberReply<'a> {
    json_key: &'static [u8],
    key: u64,
    value: &'a Value,
    format: Format,
    head_only: bool,
    close: bool,
}

fn write_number(
    out: &mut Output,
    date: &HttpDate,
    reply: &NumberReply<'_>,
    headers: impl FnOnce(&mut Head<'_>),
) {
    let (content_type, prefix_len, suffix): (ContentType, usize, &[u8]) = match reply.format {
        Format::Text => (ContentType::Text, 0, b"\n"),
        Format::Json => (
            ContentType::Json,
            reply.json_key.len() + digits::u128_len(u128::from(reply.key)) + JSON_VALUE.len(),
            b"\"}\n",
        ),
    };
    let length = prefix_len + reply.value.decimal_len() + suffix.len();
    let mut head = Head::start(out.buf(), Status::OK, date);
    head.content_type(content_type);
    headers(&mut head);
    let buf = head.finish(Status::OK, length, reply.close);
    if reply.head_only {
        return;
    }
    if reply.format == Format::Json {
        buf.extend_from_slice(reply.json_key);
        digits::write_u64(buf, reply.key);
        buf.extend_from_slice(JSON_VALUE);
    }
    write_value(out, reply.value);
    out.extend(suffix);
}

/// /v1/random draws that cost one token (a thousand draws take about 30 µs).
const RANDOM_VALUES_PER_TOKEN: u32 = 100;

const JSON_INDEX: &[u8] = b"{\"index\": ";
const JSON_N: &[u8] = b"{\"n\": ";
const JSON_VALUE: &[u8] = b", \"value\": \"";
