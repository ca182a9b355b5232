//! The stepper's replies: /current, /next and /previous. A step, and a
//! read that must wait (one behind its own connection's steps, or any read
//! when the index is shared through etcd), keep a slot in their
//! connection's output and are answered once their batch is durable; a
//! read of an index this node alone writes is answered at once. In cluster
//! mode the leader also takes the steps its followers relay
//! (`store::etcd::relay`), and answers them the same way.

use super::late::{Shape, Waiting};
use super::number::{JSON_INDEX, NumberReply, write_number};
use super::{Answer, App, Route, negotiate, persistence_reply};
use crate::access::Caller;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::date::HttpDate;
use crate::http::parse::Request;
use crate::http::response::ContentType;
use crate::http::response::Status;
use crate::reply::output::Output;
use crate::reply::park::ConnId;
use crate::services::fib::Value;
use crate::services::stepper::{Step, StepReply};
use crate::store::etcd::relay::{self, RelayAnswer};

impl App {
    pub(super) fn stepper(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        route: Route,
        request: &Request<'_>,
        out: &mut Output,
        shape: &mut Shape,
    ) -> Result<Answer, ApiError> {
        self.charge(caller, 1)?;
        shape.format = negotiate(request, Format::Text)?;
        if route == Route::Current
            && let Some(reading) = self.stepper.current_now(out.has_open_slot())
        {
            write_reading(out, reading.index, &reading.value, shape, &self.date);
            return Ok(Answer::Now(Status::OK));
        }
        let deadline = self.stepper.wait().map(|wait| self.now + wait);
        let ticket = self.park(conn, Waiting::Step, *shape, deadline)?;
        out.reserve(ticket);
        match route {
            Route::Next => self.stepper.step(ticket, Step::Next),
            Route::Previous => self.stepper.step(ticket, Step::Previous),
            _ => self.stepper.read(ticket),
        }
        // Pipelined requests go on behind the slot: they join the same batch.
        Ok(Answer::Later(persistence_reply(shape.persistence)))
    }

    /// A stepper request's reply, once its batch is decided.
    pub(super) fn write_step(&self, reply: StepReply, shape: &Shape, out: &mut Output) -> Status {
        match reply {
            StepReply::Index { index, value } => {
                write_reading(out, index, &value, shape, &self.date);
                Status::OK
            }
            StepReply::AtCeiling { max_index } => {
                self.write_error(ApiError::AtCeiling { max_index }, shape, out)
            }
            StepReply::Unavailable => self.write_error(ApiError::StoreUnavailable, shape, out),
            StepReply::OutcomeUnknown => self.write_error(ApiError::StepOutcomeUnknown, shape, out),
            StepReply::Withdrawn => self.write_error(ApiError::CommitFailed, shape, out),
            StepReply::Relayed {
                base,
                then,
                revision,
            } => {
                let body = relay::answer_body(RelayAnswer {
                    base,
                    then,
                    revision,
                });
                self.write_no_store(out, shape, ContentType::Json, body.as_bytes());
                Status::OK
            }
            StepReply::NotLeader => self.write_error(ApiError::NotLeader, shape, out),
            StepReply::RelayFenced => self.write_error(ApiError::RelayFenced, shape, out),
        }
    }

    /// A follower's steps, relayed to this node (cluster mode): they join
    /// the batch in one piece if this node leads, and are answered once its
    /// transaction committed.
    pub(super) fn relay(
        &mut self,
        conn: ConnId,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
        shape: &mut Shape,
    ) -> Result<Answer, ApiError> {
        shape.format = Format::Json;
        self.check_cluster_secret(request)?;
        let relay = relay::read_relay(body).map_err(|message| ApiError::BadRelay { message })?;
        if self.stepper.cluster_node() == Some(relay.node.as_str()) {
            return Err(ApiError::BadRelay {
                message: "the relay names this very node: every node of a cluster needs a \
                          --node-name of its own",
            });
        }
        if !self.stepper.takes_relays(self.now) {
            return Err(ApiError::NotLeader);
        }
        let deadline = self.stepper.wait().map(|wait| self.now + wait);
        let ticket = self.park(conn, Waiting::Step, *shape, deadline)?;
        out.reserve(ticket);
        self.stepper.relay(ticket, relay);
        Ok(Answer::Later(persistence_reply(shape.persistence)))
    }
}

impl App {
    /// An internal endpoint's guard: the request carries the cluster secret
    /// (cluster mode only).
    pub(super) fn check_cluster_secret(&self, request: &Request<'_>) -> Result<(), ApiError> {
        let secret = self
            .stepper
            .cluster_secret()
            .ok_or(ApiError::ClusterSecret)?;
        if request
            .cluster_secret
            .is_some_and(|given| secret.matches(given))
        {
            Ok(())
        } else {
            Err(ApiError::ClusterSecret)
        }
    }
}

/// A stepper reply: `F\n` as text, or `{"index": N, "value": "F"}` as JSON.
fn write_reading(out: &mut Output, index: u64, value: &Value, shape: &Shape, date: &HttpDate) {
    let reply = NumberReply {
        request_id: &shape.request_id,
        json_key: JSON_INDEX,
        key: index,
        value,
        format: shape.format,
        head_only: shape.head_only(),
        persistence: shape.persistence,
    };
    write_number(out, date, &reply, |head| {
        head.header_u64("X-Fib-Index", index)
            .header("Cache-Control", b"no-store");
    });
}
