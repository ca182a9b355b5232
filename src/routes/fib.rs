//! /v1/fib replies: validation, revalidation (ETag, 304), the cache or the
//! compute worker, and the reply of a request that waited for F(n).

use super::number::{JSON_N, NumberReply, write_number};
use super::{Answer, App, Route, Waiting, negotiate};
use crate::access::Caller;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::date::HttpDate;
use crate::http::message::Method;
use crate::http::parse::Request;
use crate::http::response::{Head, Status};
use crate::net::conn::{ConnRef, Output, Reply};
use crate::services::fib::service::{AtHand, FibShape, FibWaiter};
use crate::services::fib::{cost, request};
use crate::services::stepper::Value;

impl App {
    /// /v1/fib: validated n, then 304, an answer now, or a deferred one.
    pub(super) fn fib(
        &mut self,
        conn: ConnRef,
        caller: &Caller,
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
            cost::compute_cost(n)
        };
        self.charge(caller, cost)?;
        if revalidated {
            let mut head = Head::start(
                out.buf(),
                Status::NOT_MODIFIED,
                &self.date,
                &self.request_id,
            );
            fib_cache_headers(&mut head, n);
            head.finish(Status::NOT_MODIFIED, 0, request.persistence());
            return Ok(Answer::Now(Status::NOT_MODIFIED));
        }
        let value = match self.fib.at_hand(n) {
            AtHand::Hit(value) => Some((value, true)),
            AtHand::Computed(value) => Some((value, false)),
            AtHand::Missing => None,
        };
        self.metrics
            .fib_cache(value.as_ref().is_some_and(|(_, hit)| *hit));
        let shape = FibShape {
            format,
            head_only: request.method == Method::Head,
            persistence: request.persistence(),
            request_id: self.request_id,
            span: None,
        };
        if let Some((value, _)) = value {
            write_fib(out, n, &value, &shape, &self.date);
            return Ok(Answer::Now(Status::OK));
        }
        let ticket = self.park(conn, Waiting::Fib, None)?;
        // The span waits with the request; it ends when the value is written.
        let span = self.span.take();
        let waiter = FibWaiter {
            ticket,
            shape: FibShape { span, ..shape },
        };
        if self.fib.wait_for(n, waiter).is_err() {
            self.span = span;
            self.parking.take(ticket);
            return Err(ApiError::Busy);
        }
        Ok(Answer::Later)
    }

    /// Writes the reply of a request that waited for F(n).
    pub fn fib_reply(
        &mut self,
        waiter: &FibWaiter,
        n: u64,
        value: &Value,
        out: &mut Output,
    ) -> Reply {
        write_fib(out, n, value, &waiter.shape, &self.date);
        self.metrics.request(Some(Route::Fib), Status::OK);
        self.finish_span(
            waiter.shape.span,
            Status::OK.code(),
            waiter.shape.request_id,
            None,
        );
        log::debug!(
            "{} /v1/fib?n={n} -> 200 (computed)",
            waiter.shape.request_id
        );
        self.answered += 1;
        if waiter.shape.persistence.closes() {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }
}

/// F(n) never changes: the ETag comes from n alone and caches may keep it forever.
fn fib_cache_headers(head: &mut Head<'_>, n: u64) {
    head.header_with("ETag", |out| request::write_etag(out, n))
        .header("Cache-Control", b"public, max-age=31536000, immutable");
}

/// A /v1/fib reply: `{"n": N, "value": "F"}` as JSON, `F\n` as text.
fn write_fib(out: &mut Output, n: u64, value: &Value, shape: &FibShape, date: &HttpDate) {
    let shape = NumberReply {
        request_id: &shape.request_id,
        json_key: JSON_N,
        key: n,
        value,
        format: shape.format,
        head_only: shape.head_only,
        persistence: shape.persistence,
    };
    write_number(out, date, &shape, |head| fib_cache_headers(head, n));
}
