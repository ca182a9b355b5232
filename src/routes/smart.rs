//! /api/smart replies: the timeout checked, the call charged and parked with
//! the caller's deadline, attempts sent through the outbound client as the
//! plan (`crate::services::smart`) says, and the reply once the plan answers. A sampled
//! request's span waits with the call; each attempt gets a child span whose
//! context goes upstream in `traceparent`, ended won, failed or cancelled.

use std::time::Duration;

use super::late::{CallOwner, LateReply, Shape, Waiting};
use super::{Answer, App};
use crate::access::Caller;
use crate::base::digits;
use crate::error::ApiError;
use crate::http::parse::Request;
use crate::http::response::{ContentType, Head, Status};
use crate::net::session::Reply;
use crate::net::upstream::{CallError, Completion, Response};
use crate::reply::output::Output;
use crate::reply::park::{ConnId, Ticket};
use crate::services::smart::hosts::HostOutcome;
use crate::services::smart::plan::{self, Outcome, Step};
use crate::services::smart::service::{Attempt, Live, SmartReply};
use crate::services::smart::{self, AttemptKind, CallEnd, Failure, UpstreamFailure};

/// Tokens one call costs: it may hold up to three outbound connections for
/// up to a minute, so it weighs more than a cached answer.
const SMART_COST: u32 = 10;

impl App {
    /// GET /api/smart?timeout=MS: parks the request and sends the first attempt.
    pub(super) fn smart(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        request: &Request<'_>,
        out: &mut Output,
        shape: &Shape,
    ) -> Result<Answer, ApiError> {
        let timeout = smart::parse_timeout(request.query)
            .map_err(|message| ApiError::BadQuery { message })?;
        if !self.smart.is_configured() {
            let failure = Failure::NotConfigured;
            self.metrics.smart_outcome(CallEnd::Failed(failure), 0);
            return Err(ApiError::Upstream(UpstreamFailure {
                failure,
                time_ms: 0,
                attempts: 0,
                budget_exhausted: false,
            }));
        }
        self.charge(caller, SMART_COST)?;
        let deadline = self.now + timeout;
        // The span waits with the call; it ends when the reply is written.
        let ticket = self.park(conn, Waiting::Smart, *shape, Some(deadline))?;
        let (plan, step) = self.smart.plan(self.now);
        let live = Live {
            plan,
            started: self.now,
            deadline,
            attempts: Vec::with_capacity(usize::from(plan::ATTEMPTS_MAX)),
            tried: 0,
        };
        self.smart.insert(ticket, live);
        match self.smart_step(ticket, step, Vec::new()) {
            // Not even the first attempt found a connection: say so now
            // (the request's own span ends with that answer).
            Some(SmartReply {
                outcome:
                    Outcome::Failure {
                        failure,
                        attempts,
                        budget_exhausted,
                    },
                time_ms,
                ..
            }) => {
                self.parking.take(ticket);
                Err(ApiError::Upstream(UpstreamFailure {
                    failure,
                    time_ms,
                    attempts,
                    budget_exhausted,
                }))
            }
            reply => {
                if let Some(reply) = reply {
                    self.settled.push_back((ticket, LateReply::Smart(reply)));
                }
                out.reserve(ticket);
                Ok(Answer::Later(Reply::Wait(ticket)))
            }
        }
    }

    /// Sends the hedges of every call whose hedge delay has passed.
    pub(super) fn run_smart_timers(&mut self) {
        while let Some(ticket) = self.smart.due_hedge(self.now) {
            let Some(live) = self.smart.get_mut(ticket) else {
                continue;
            };
            let step = live.plan.tick(self.now);
            self.smart_settle(ticket, step, Vec::new());
        }
    }

    /// The caller's deadline passed. A call that already answered has its
    /// reply waiting for delivery: nothing to do for it.
    pub(super) fn expire_smart(&mut self, ticket: Ticket) {
        if let Some(live) = self.smart.get_mut(ticket) {
            let step = live.plan.expire();
            self.smart_settle(ticket, step, Vec::new());
        }
    }

    /// The caller hung up: its attempts are cancelled.
    pub(super) fn abandon_smart(&mut self, ticket: Ticket, shape: &Shape) {
        if let Some(live) = self.smart.remove(ticket) {
            self.cancel_attempts(&live, shape, HostOutcome::Cancelled);
            self.metrics
                .smart_outcome(CallEnd::ClientGone, live.plan.attempts());
        }
    }

    pub(super) fn smart_attempt_done(&mut self, ticket: Ticket, done: Completion<CallOwner>) {
        self.metrics.upstream_call(done.elapsed);
        let request_id = self.parking.get(ticket).map(|p| p.payload.shape.request_id);
        let Some(live) = self.smart.get_mut(ticket) else {
            return;
        };
        let attempt = live.take_attempt(done.call);
        let received = done.result.as_ref().map_or(0, |r| r.status);
        let (step, answer, outcome) = match judge(done.result) {
            Ok(answer) => (live.plan.succeeded(), answer, HostOutcome::Ok),
            Err(failure) => (
                live.plan.failed(failure),
                Vec::new(),
                HostOutcome::Failed(failure),
            ),
        };
        if let Some(attempt) = attempt {
            self.smart.attempt_ended(&attempt, outcome, self.now);
            if let Some(request_id) = request_id {
                let label = if outcome == HostOutcome::Ok {
                    "won"
                } else {
                    "failed"
                };
                self.finish_span(attempt.span, received, request_id, Some(label));
            }
        }
        self.smart_settle(ticket, step, answer);
    }

    /// Cancels a call's attempts still in flight, each ending so for its
    /// host (cancelled, or timed out at the caller's deadline); their spans
    /// end cancelled.
    fn cancel_attempts(&mut self, live: &Live, shape: &Shape, outcome: HostOutcome) {
        for attempt in &live.attempts {
            self.upstream.cancel(attempt.call);
            self.smart.attempt_ended(attempt, outcome, self.now);
            self.finish_span(attempt.span, 0, shape.request_id, Some("cancelled"));
        }
    }

    /// Sends one attempt of this kind, to a host the call has not tried if
    /// it can, traced when the request is: a child span, and its context in
    /// the attempt's `traceparent`. False if no connection is free.
    fn send_attempt(&mut self, ticket: Ticket, kind: AttemptKind) -> bool {
        let (Some(live), Some(parked)) = (self.smart.get(ticket), self.parking.get(ticket)) else {
            return false;
        };
        let (deadline, tried, parent) = (live.deadline, live.tried, parked.payload.shape.span);
        let host = self.smart.pick_host(tried, self.now);
        let span = self.child_span(parent, "upstream", "GET", host);
        let request = match &span {
            Some(span) => self.smart.traced_request(host, &span.context.traceparent()),
            None => self.smart.request(host).cloned(),
        };
        let Some(request) = request else {
            return false;
        };
        let tag = CallOwner::Smart(ticket);
        match self.upstream.send(tag, &request, deadline, self.now) {
            Ok(call) => {
                if let Some(live) = self.smart.get_mut(ticket) {
                    live.attempts.push(Attempt {
                        call,
                        host,
                        kind,
                        sent_at: self.now,
                        span,
                    });
                    live.tried |= 1 << host;
                }
                true
            }
            // An attempt never sent leaves no span, and owes its host
            // nothing (a probe it was goes to the next attempt).
            Err(_) => {
                self.smart.attempt_unsent(host, self.now);
                false
            }
        }
    }

    /// Runs a step and queues the reply if the plan answered.
    fn smart_settle(&mut self, ticket: Ticket, step: Step, answer: Vec<u8>) {
        if let Some(reply) = self.smart_step(ticket, step, answer) {
            self.settled.push_back((ticket, LateReply::Smart(reply)));
        }
    }

    /// Carries out the plan's steps until it waits or answers; an answer
    /// ends the call and cancels its attempts still in flight.
    fn smart_step(
        &mut self,
        ticket: Ticket,
        mut step: Step,
        answer: Vec<u8>,
    ) -> Option<SmartReply> {
        loop {
            match step {
                Step::Wait => return None,
                Step::Send { count, kind } => {
                    let admitted = self.smart.admit(kind, count, self.now);
                    let mut sent = 0;
                    while sent < admitted && self.send_attempt(ticket, kind) {
                        sent += 1;
                    }
                    self.smart.sent(kind, sent, self.now);
                    step = self.smart.get_mut(ticket)?.plan.sent(count, admitted, sent);
                }
                Step::Answer(outcome) => {
                    let live = self.smart.remove(ticket)?;
                    let (end, attempts) = match outcome {
                        Outcome::Success { attempts } => (CallEnd::Ok, attempts),
                        Outcome::Failure {
                            failure, attempts, ..
                        } => (CallEnd::Failed(failure), attempts),
                    };
                    // Attempts still out when the deadline passed were too
                    // slow: that is their host's failure.
                    let left = match end {
                        CallEnd::Failed(Failure::Timeout) => HostOutcome::Failed(Failure::Timeout),
                        _ => HostOutcome::Cancelled,
                    };
                    if let Some(shape) = self.parking.get(ticket).map(|p| p.payload.shape) {
                        self.cancel_attempts(&live, &shape, left);
                    }
                    self.metrics.smart_outcome(end, attempts);
                    return Some(SmartReply {
                        outcome,
                        time_ms: millis(self.now.saturating_duration_since(live.started)),
                        answer,
                    });
                }
            }
        }
    }

    /// `{"time": T, "api": <the upstream's JSON>, "attempts": N}`, or the
    /// failure's 503.
    pub(super) fn write_smart(
        &mut self,
        reply: SmartReply,
        shape: &Shape,
        out: &mut Output,
    ) -> Status {
        match reply.outcome {
            Outcome::Success { attempts } => {
                self.body.clear();
                self.body.extend_from_slice(b"{\"time\": ");
                digits::write_u64(&mut self.body, reply.time_ms);
                self.body.extend_from_slice(b", \"api\": ");
                self.body.extend_from_slice(&reply.answer);
                self.body.extend_from_slice(b", \"attempts\": ");
                digits::write_u64(&mut self.body, u64::from(attempts));
                self.body.extend_from_slice(b"}\n");
                let mut head = Head::start(out.buf(), Status::OK, &self.date, &shape.request_id);
                head.content_type(ContentType::Json)
                    .header("Cache-Control", b"no-store");
                let buf = head.finish(Status::OK, self.body.len(), shape.persistence);
                if !shape.head_only() {
                    buf.extend_from_slice(&self.body);
                }
                Status::OK
            }
            Outcome::Failure {
                failure,
                attempts,
                budget_exhausted,
            } => {
                let error = ApiError::Upstream(UpstreamFailure {
                    failure,
                    time_ms: reply.time_ms,
                    attempts,
                    budget_exhausted,
                });
                self.write_error(error, shape, out)
            }
        }
    }
}

/// An attempt's result as the plan sees it: the JSON answer, or why not.
fn judge(result: Result<Response, CallError>) -> Result<Vec<u8>, Failure> {
    let response = result.map_err(|e| match e {
        CallError::Connect(_) => Failure::Refused,
        CallError::Closed => Failure::Closed,
        CallError::Timeout => Failure::Timeout,
        CallError::Response(e) => Failure::BadHttp(e),
    })?;
    if !(200..300).contains(&response.status) {
        return Err(Failure::Status(response.status));
    }
    let mut body = response.body;
    let end = body.len() - body.trim_ascii_end().len();
    body.truncate(body.len() - end);
    let start = body.len() - body.trim_ascii_start().len();
    body.drain(..start);
    if !is_json(&body) {
        return Err(Failure::NotJson);
    }
    Ok(body)
}

/// Whether `bytes` is one JSON value, so it can be embedded verbatim.
fn is_json(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(status: u16, body: &[u8]) -> Result<Response, CallError> {
        Ok(Response {
            status,
            body: body.to_vec(),
            keep_alive: true,
        })
    }

    #[test]
    fn only_a_2xx_json_answer_succeeds() {
        assert_eq!(
            judge(ok(200, b" {\"a\": [1, 2]}\n")),
            Ok(b"{\"a\": [1, 2]}".to_vec())
        );
        assert_eq!(judge(ok(204, b"")), Err(Failure::NotJson));
        assert_eq!(judge(ok(200, b"{\"a\": ")), Err(Failure::NotJson));
        assert_eq!(judge(ok(200, b"{} {}")), Err(Failure::NotJson));
        assert_eq!(judge(ok(200, b"\"\xff\"")), Err(Failure::NotJson));
        assert_eq!(judge(ok(500, b"{}")), Err(Failure::Status(500)));
        assert_eq!(judge(Err(CallError::Closed)), Err(Failure::Closed));
        assert_eq!(
            judge(Err(CallError::Connect(
                std::io::ErrorKind::ConnectionRefused
            ))),
            Err(Failure::Refused)
        );
    }
}
