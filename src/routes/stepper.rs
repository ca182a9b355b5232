//! The stepper's replies: /current, /next and /previous.

use super::number::{JSON_INDEX, NumberReply, write_number};
use super::{App, Route, negotiate};
use crate::access::Caller;
use crate::conn::Output;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::date::HttpDate;
use crate::http::parse::{Method, Request};
use crate::stepper::{Reading, Step, StepError};

impl App {
    pub(super) fn stepper(
        &mut self,
        caller: &Caller,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<(), ApiError> {
        self.charge(caller, 1)?;
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
}

fn step_error(e: StepError) -> ApiError {
    match e {
        StepError::AtCeiling { max_index } => ApiError::AtCeiling { max_index },
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
        persistence: request.persistence(),
    };
    write_number(out, date, &shape, |head| {
        head.header_u64("X-Fib-Index", reading.index)
            .header("Cache-Control", b"no-store");
    });
}
