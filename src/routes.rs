//! From a parsed request to a reply: which resource, which method, which
//! representation, and the service that answers. Services never see bytes of
//! the connection; they write replies into its `Output`.

use crate::conn::{Output, Reply, Respond};
use crate::error::ApiError;
use crate::fib::digits;
use crate::http::accept::{self, Format};
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use crate::http::response::{ContentType, Head, Status};
use crate::stepper::{BatchId, Reading, Step, StepError, Stepper, Value};

/// The resources fibd serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Current,
    Next,
    Previous,
}

impl Route {
    pub fn from_path(path: &[u8]) -> Option<Route> {
        match path {
            b"/current" => Some(Route::Current),
            b"/next" => Some(Route::Next),
            b"/previous" => Some(Route::Previous),
            _ => None,
        }
    }

    /// The methods a route takes, as the Allow header lists them.
    fn allow(self) -> &'static str {
        "GET, HEAD, POST"
    }

    fn accepts(self, method: Method) -> bool {
        matches!(method, Method::Get | Method::Head | Method::Post)
    }
}

/// Everything a reply may need, owned by the event loop's thread.
pub struct App {
    pub stepper: Stepper,
    pub date: HttpDate,
}

impl App {
    pub fn new(stepper: Stepper, date: HttpDate) -> App {
        App { stepper, date }
    }

    fn error(&self, error: ApiError, request: &Request<'_>, out: &mut Output) -> Reply {
        let close = !request.keep_alive || error.closes_connection();
        error.write(out.buf(), &self.date, request.method == Method::Head, close);
        if close {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }

    fn stepper(
        &mut self,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<Reply, ApiError> {
        let format =
            accept::negotiate(request.accept, Format::Text).ok_or(ApiError::NotAcceptable)?;
        let reading = match route {
            Route::Current => {
                let stepper = &self.stepper;
                if out.has_unreleased_hold(|b| stepper.is_released(b)) {
                    stepper.current_after_own_steps()
                } else {
                    stepper.current()
                }
            }
            Route::Next => self.stepper.step(Step::Next).map_err(step_error)?,
            Route::Previous => self.stepper.step(Step::Previous).map_err(step_error)?,
        };
        write_reading(out, &reading, format, request, &self.date);
        Ok(keep_alive(request))
    }
}

impl Respond for App {
    fn respond(&mut self, request: &Request<'_>, out: &mut Output) -> Reply {
        let Some(route) = Route::from_path(request.path) else {
            return self.error(ApiError::NotFound, request, out);
        };
        if !route.accepts(request.method) {
            return self.error(
                ApiError::MethodNotAllowed {
                    allow: route.allow(),
                },
                request,
                out,
            );
        }
        match self.stepper(route, request, out) {
            Ok(reply) => reply,
            Err(error) => self.error(error, request, out),
        }
    }

    fn reject(&mut self, error: ApiError, out: &mut Output) {
        error.write(out.buf(), &self.date, false, true);
    }

    fn is_released(&self, batch: BatchId) -> bool {
        self.stepper.is_released(batch)
    }
}

fn step_error(e: StepError) -> ApiError {
    match e {
        StepError::AtCeiling { max_index } => ApiError::AtCeiling { max_index },
    }
}

fn keep_alive(request: &Request<'_>) -> Reply {
    if request.keep_alive {
        Reply::KeepAlive
    } else {
        Reply::Close
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
            JSON_INDEX.len() + digits::u64_len(reading.index) + JSON_VALUE.len(),
            b"\"}\n",
        ),
    };
    let length = prefix_len + reading.value.decimal_len() + suffix.len();
    let head_only = request.method == Method::Head;
    let buf = out.buf();
    let mut head = Head::start(buf, Status::OK, date);
    head.content_type(content_type)
        .header_u64("X-Fib-Index", reading.index)
        .header("Cache-Control", b"no-store");
    head.finish(Status::OK, length, !request.keep_alive);
    if head_only {
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
