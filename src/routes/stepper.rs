//! The stepper's replies: /current, /next and /previous, from the local
//! stepper (LMDB: answered at once, held until their batch is on disk) or
//! from the cluster (etcd: parked until etcd answered).

use super::number::{JSON_INDEX, NumberReply, write_number};
use super::{Answer, App, LateReply, Route, Waiting, negotiate};
use crate::access::Caller;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::date::HttpDate;
use crate::http::message::Method;
use crate::http::parse::Request;
use crate::http::request_id::RequestId;
use crate::http::response::Status;
use crate::net::conn::{ConnRef, Output, Reply};
use crate::reply::park::Ticket;
use crate::services::fib::service::FibShape;
use crate::services::stepper::{Reading, Step, StepError};
use crate::store::etcd::ClusterReply;
use std::time::Duration;

/// A parked stepper reply is written like a /v1/fib one: the shape the
/// request asked for, decided when it arrived.
pub type StepShape = FibShape;

impl App {
    pub(super) fn stepper(
        &mut self,
        conn: ConnRef,
        caller: &Caller,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
    ) -> Result<Answer, ApiError> {
        self.charge(caller, 1)?;
        let format = negotiate(request, Format::Text)?;
        if let Some(wait) = self.cluster.as_ref().map(|c| c.config().wait) {
            return self.cluster_step(conn, route, request, format, wait);
        }
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
        write_reading(out, &reading, format, request, &self.date, &self.request_id);
        Ok(Answer::Now(Status::OK))
    }

    /// Cluster mode: the request waits for etcd, at most `wait`
    /// (`--etcd-wait-ms`).
    fn cluster_step(
        &mut self,
        conn: ConnRef,
        route: Route,
        request: &Request<'_>,
        format: Format,
        wait: Duration,
    ) -> Result<Answer, ApiError> {
        let ticket = self.park(conn, Waiting::Step, Some(self.now + wait))?;
        let shape = StepShape {
            format,
            head_only: request.method == Method::Head,
            persistence: request.persistence(),
            request_id: self.request_id,
            span: self.span.take(),
        };
        if let Some(cluster) = &mut self.cluster {
            match route {
                Route::Next => cluster.step(ticket, Step::Next, (route, shape)),
                Route::Previous => cluster.step(ticket, Step::Previous, (route, shape)),
                _ => cluster.current(ticket, (route, shape)),
            }
        }
        Ok(Answer::Later)
    }

    /// A parked stepper request's wait is over: its 503, now.
    pub(super) fn expire_step(&mut self, ticket: Ticket) {
        if let Some(((route, shape), reply)) = self.cluster.as_mut().and_then(|c| c.expire(ticket))
        {
            self.settled
                .push_back((ticket, LateReply::Step(route, shape, reply)));
        }
    }

    /// Moves the replies the cluster decided to the delivery queue.
    pub(super) fn collect_cluster_replies(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        while let Some((ticket, (route, shape), reply)) = cluster.take_settled() {
            self.settled
                .push_back((ticket, LateReply::Step(route, shape, reply)));
        }
    }

    /// Writes a parked stepper request's reply.
    pub(super) fn write_step(
        &mut self,
        route: Route,
        shape: StepShape,
        reply: ClusterReply,
        out: &mut Output,
    ) -> Reply {
        let status = match reply {
            ClusterReply::Index { index, value } => {
                let reading = Reading {
                    index,
                    value,
                    durable_after: None,
                };
                write_shaped(out, &reading, &shape, &self.date);
                Status::OK
            }
            ClusterReply::AtCeiling { max_index } => {
                self.write_error(ApiError::AtCeiling { max_index }, &shape, out)
            }
            ClusterReply::Unavailable => self.write_error(ApiError::StoreUnavailable, &shape, out),
            ClusterReply::OutcomeUnknown => {
                self.write_error(ApiError::StepOutcomeUnknown, &shape, out)
            }
        };
        self.metrics.request(Some(route), status);
        self.answered += 1;
        self.finish_span(shape.span, status.code(), shape.request_id, None);
        if shape.persistence.closes() {
            Reply::Close
        } else {
            Reply::KeepAlive
        }
    }

    fn write_error(&self, error: ApiError, shape: &StepShape, out: &mut Output) -> Status {
        self.write_late_error(
            error,
            shape.request_id,
            shape.head_only,
            shape.persistence,
            out,
        )
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
    request_id: &RequestId,
) {
    if let Some(batch) = reading.durable_after {
        out.push_hold(batch, *request_id);
    }
    let shape = StepShape {
        format,
        head_only: request.method == Method::Head,
        persistence: request.persistence(),
        request_id: *request_id,
        span: None,
    };
    write_shaped(out, reading, &shape, date);
}

fn write_shaped(out: &mut Output, reading: &Reading, shape: &StepShape, date: &HttpDate) {
    let shape = NumberReply {
        request_id: &shape.request_id,
        json_key: JSON_INDEX,
        key: reading.index,
        value: &reading.value,
        format: shape.format,
        head_only: shape.head_only,
        persistence: shape.persistence,
    };
    write_number(out, date, &shape, |head| {
        head.header_u64("X-Fib-Index", reading.index)
            .header("Cache-Control", b"no-store");
    });
}
