//! /v1/fib replies: validation, revalidation (ETag, 304), the cache or the
//! compute worker, and the reply of a request that waited for F(n).

use super::late::{Shape, Waiting};
use super::number::{JSON_N, NumberReply, write_number};
use super::{Answer, App, negotiate};
use crate::access::Caller;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::date::HttpDate;
use crate::http::parse::Request;
use crate::http::response::{Head, Status};
use crate::net::session::Reply;
use crate::reply::output::Output;
use crate::reply::park::ConnId;
use crate::services::fib::service::AtHand;
use crate::services::fib::{Value, cost, request};

impl App {
    /// /v1/fib: validated n, then 304, an answer now, or a later one.
    pub(super) fn fib(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        request: &Request<'_>,
        out: &mut Output,
        shape: &mut Shape,
    ) -> Result<Answer, ApiError> {
        let max_n = self.fib.max_n();
        let n = request::parse_n(request.query, max_n)
            .map_err(|error| ApiError::BadN { error, max_n })?;
        shape.format = negotiate(request, Format::Json)?;
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
                &shape.request_id,
            );
            fib_cache_headers(&mut head, n);
            head.finish(Status::NOT_MODIFIED, 0, shape.persistence);
            return Ok(Answer::Now(Status::NOT_MODIFIED));
        }
        let value = match self.fib.at_hand(n) {
            AtHand::Hit(value) => Some((value, true)),
            AtHand::Computed(value) => Some((value, false)),
            AtHand::Missing => None,
        };
        self.metrics
            .fib_cache(value.as_ref().is_some_and(|(_, hit)| *hit));
        if let Some((value, _)) = value {
            write_fib(out, n, &value, shape, &self.date);
            return Ok(Answer::Now(Status::OK));
        }
        let ticket = self.park(conn, Waiting::Fib, *shape, None)?;
        if self.fib.wait_for(n, ticket).is_err() {
            self.parking.take(ticket);
            return Err(ApiError::Busy);
        }
        out.reserve(ticket);
        Ok(Answer::Later(Reply::Wait(ticket)))
    }

    /// The reply of a request that waited for F(n).
    pub(super) fn write_fib_late(
        &self,
        n: u64,
        value: &Value,
        shape: &Shape,
        out: &mut Output,
    ) -> Status {
        write_fib(out, n, value, shape, &self.date);
        Status::OK
    }
}

/// F(n) never changes: the ETag comes from n alone and caches may keep it forever.
fn fib_cache_headers(head: &mut Head<'_>, n: u64) {
    head.header_with("ETag", |out| request::write_etag(out, n))
        .header("Cache-Control", b"public, max-age=31536000, immutable");
}

/// A /v1/fib reply: `{"n": N, "value": "F"}` as JSON, `F\n` as text.
fn write_fib(out: &mut Output, n: u64, value: &Value, shape: &Shape, date: &HttpDate) {
    let reply = NumberReply {
        request_id: &shape.request_id,
        json_key: JSON_N,
        key: n,
        value,
        format: shape.format,
        head_only: shape.head_only(),
        persistence: shape.persistence,
    };
    write_number(out, date, &reply, |head| fib_cache_headers(head, n));
}
