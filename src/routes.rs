//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see the
//! connection; they write replies into its `Output`.

use crate::conn::{Output, Reply, Respond};
use crate::error::ApiError;
use crate::fib::digits;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use crate::http::response::{ContentType, Head, Status};
use crate::random::{self, RandomQuery, RandomSource};
use crate::stepper::{BatchId, Reading, Step, StepError, Stepper, Value};

/// The resources fibd serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Current,
    Next,
    Previous,
    Random,
}

impl Route {
    pub fn from_path(path: &[u8]) -> Option<Route> {
        match path {
            b"/current" => Some(Route::Current),
            b"/next" => Some(Route::Next),
            b"/previous" => Some(Route::Previous),
            b"/v1/random" => Some(Route::Random),
            _ => None,
        }
    }

    /// The methods a route takes, as the Allow header lists them.
    fn allow(self) -> &'static str {
        match self {
            Route::Current | Route::Next | Route::Previous => "GET, HEAD, POST",
            Route::Random => "GET, HEAD",
        }
    }

    fn accepts(self, method: Method) -> bool {
        match self {
            Route::Current | Route::Next | Route::Previous => {
                matches!(method, Method::Get | Method::Head | Method::Post)
            }
            Route::Random => matches!(method, Method::Get | Method::Head),
        }
    }
}

/// Everything a reply may need, owned by the event loop's thread.
pub struct App {
    pub stepper: Stepper,
    pub date: HttpDate,
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
        }
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
    fn respond(&mut self, request: &Request<'_>, out: &mut Output) -> Reply {
        let result = match Route::from_path(request.path) {
            None => Err(ApiError::NotFound),
            Some(route) if !route.accepts(request.method) => Err(ApiError::MethodNotAllowed {
                allow: route.allow(),
            }),
            Some(route) => self.dispatch(route, request, out),
        };
        let close = match result {
            Ok(()) => !request.keep_alive,
            Err(error) => {
                let close = !request.keep_alive || error.closes_connection();
                error.write(out.buf(), &self.date, request.method == Method::Head, close);
                close
            }
        };
        if close {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }

    fn reject(&mut self, error: ApiError, out: &mut Output) {
        error.write(out.buf(), &self.date, false, true);
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
