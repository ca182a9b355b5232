//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see the
//! connection; they write replies into its `Output`.

use crate::conn::{ConnRef, Output, Reply, Respond};
use crate::error::ApiError;
use crate::fib::digits;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use std::time::{Duration, Instant};

use crate::http::response::{ContentType, Head, Status};
use crate::metrics::{Gauges, Metrics, RouteLabel};
use crate::random::{self, RandomQuery, RandomSource};
use crate::stepper::{BatchId, Reading, Step, StepError, Stepper, Value};

/// The resources fibd serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Current,
    Next,
    Previous,
    Random,
    Healthz,
    Readyz,
    Metrics,
}

impl Route {
    pub fn from_path(path: &[u8]) -> Option<Route> {
        match path {
            b"/current" => Some(Route::Current),
            b"/next" => Some(Route::Next),
            b"/previous" => Some(Route::Previous),
            b"/v1/random" => Some(Route::Random),
            b"/healthz" => Some(Route::Healthz),
            b"/readyz" => Some(Route::Readyz),
            b"/metrics" => Some(Route::Metrics),
            _ => None,
        }
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

    fn label(self) -> RouteLabel {
        match self {
            Route::Current => RouteLabel::Current,
            Route::Next => RouteLabel::Next,
            Route::Previous => RouteLabel::Previous,
            Route::Random => RouteLabel::Random,
            Route::Healthz => RouteLabel::Healthz,
            Route::Readyz => RouteLabel::Readyz,
            Route::Metrics => RouteLabel::Metrics,
        }
    }
}

/// Everything a reply may need, owned by the event loop's thread.
pub struct App {
    pub stepper: Stepper,
    pub date: HttpDate,
    pub metrics: Metrics,
    /// False while commits fail: /readyz tells the load balancer.
    pub store_ready: bool,
    random: RandomSource,
    /// Reused between requests so a body built before its head costs no allocation.
    body: Vec<u8>,
    draws: Vec<i64>,
}

impl App {
    pub fn new(stepper: Stepper, date: HttpDate, random: RandomSource) -> App {
        App {
            stepper,
            date,
            metrics: Metrics::default(),
            store_ready: true,
            random,
            body: Vec::new(),
            draws: Vec::new(),
        }
    }

    fn dispatch(
        &mut self,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        match route {
            Route::Current | Route::Next | Route::Previous => self.stepper(route, request, out),
            Route::Random => self.random(request, out),
            Route::Healthz => {
                self.fixed_json(request, out, b"{\"status\": \"ok\"}\n");
                Ok(())
            }
            Route::Readyz if self.store_ready => {
                self.fixed_json(request, out, b"{\"status\": \"ready\"}\n");
                Ok(())
            }
            Route::Readyz => Err(ApiError::NotReady),
            Route::Metrics => {
                self.metrics_page(request, out);
                Ok(())
            }
        }
    }

    fn fixed_json(&self, request: &Request<'_>, out: &mut Output, body: &[u8]) {
        let mut head = Head::start(out.buf(), Status::OK, &self.date);
        head.content_type(ContentType::Json)
            .header("Cache-Control", b"no-store");
        finish_with_body(head, request, body);
    }

    fn metrics_page(&mut self, request: &Request<'_>, out: &mut Output) {
        let gauges = Gauges {
            committed_index: self.stepper.committed_index(),
            pending_index: self.stepper.pending_index(),
            ..Gauges::default()
        };
        let mut text = String::with_capacity(8 * 1024);
        self.metrics.render(&gauges, &mut text);
        let mut head = Head::start(out.buf(), Status::OK, &self.date);
        head.content_type(ContentType::Prometheus)
            .header("Cache-Control", b"no-store");
        finish_with_body(head, request, text.as_bytes());
    }

    fn stepper(
        &mut self,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<(), ApiError> {
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

    fn random(&mut self, request: &Request<'_>, out: &mut Output) -> Result<(), ApiError> {
        let format = negotiate(request, Format::Json)?;
        let query = RandomQuery::parse(request.query).map_err(|e| ApiError::BadQuery {
            message: e.message(),
        })?;
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
        let mut head = Head::start(out.buf(), Status::OK, &self.date);
        head.content_type(content_type)
            .header("Cache-Control", b"no-store");
        finish_with_body(head, request, &self.body);
        Ok(())
    }
}

impl Respond for App {
    fn respond(&mut self, _conn: ConnRef, request: &Request<'_>, out: &mut Output) -> Reply {
        let started = Instant::now();
        let route = Route::from_path(request.path);
        let result = match route {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.dispatch(route, request, out),
        };
        let (status, close) = match result {
            Ok(()) => (Status::OK, !request.keep_alive),
            Err(error) => {
                let close = !request.keep_alive || error.closes_connection();
                error.write(out.buf(), &self.date, request.method == Method::Head, close);
                (error.status(), close)
            }
        };
        let label = route.map_or(RouteLabel::Other, Route::label);
        self.metrics.request(label, status, started.elapsed());
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
        self.metrics
            .request(RouteLabel::Other, error.status(), Duration::ZERO);
        log::debug!("rejected a request: {}", error.status().code());
    }

    fn is_released(&self, batch: BatchId) -> bool {
        self.stepper.is_released(batch)
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

/// Ends a head for an inline body and appends the body unless this is HEAD.
fn finish_with_body(head: Head<'_>, request: &Request<'_>, body: &[u8]) {
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
    let (content_type, prefix_len, suffix): (ContentType, usize, &[u8]) = match format {
        Format::Text => (ContentType::Text, 0, b"\n"),
        Format::Json => (
            ContentType::Json,
            JSON_INDEX.len() + digits::u128_len(u128::from(reading.index)) + JSON_VALUE.len(),
            b"\"}\n",
        ),
    };
    let length = prefix_len + reading.value.decimal_len() + suffix.len();
    let mut head = Head::start(out.buf(), Status::OK, date);
    head.content_type(content_type)
        .header_u64("X-Fib-Index", reading.index)
        .header("Cache-Control", b"no-store");
    let buf = head.finish(Status::OK, length, !request.keep_alive);
    if request.method == Method::Head {
        return;
    }
    if format == Format::Json {
        buf.extend_from_slice(JSON_INDEX);
        digits::write_u64(buf, reading.index);
        buf.extend_from_slice(JSON_VALUE);
    }
    match &reading.value {
        Value::Small(v) => digits::write_u128(buf, *v),
        Value::Big(shared) => out.push_shared(shared.clone()),
    }
    out.extend(suffix);
}

const JSON_INDEX: &[u8] = b"{\"index\": ";
const JSON_VALUE: &[u8] = b", \"value\": \"";
