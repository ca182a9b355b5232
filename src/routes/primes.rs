//! Primes task replies: POST a task (202 once its record is durable), GET
//! one by id, now or after `?wait`, at /v1/primes/tasks and at /tasks (the
//! paths the service fibd replaces used).

use std::time::Duration;

use super::late::{Shape, Waiting};
use super::route::{API_PREFIX, LEGACY_PREFIX, task_id_text};
use super::{Answer, App, negotiate};
use crate::access::Caller;
use crate::base::digits;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::parse::Request;
use crate::http::response::{ContentType, Head, Status, write_json_str};
use crate::net::session::Reply;
use crate::reply::output::Output;
use crate::reply::park::ConnId;
use crate::services::primes::request::{self as task_request};
use crate::services::primes::service::{PrimesWaiter, Refused, Status as TaskStatus, TaskView};
use crate::services::primes::task::{ID_BYTES, TaskId};
use crate::services::primes::task_cost;

/// A reader of a task done before a restart waits this long at most for
/// the table to be rebuilt (the default largest took 0.7 s on a busy VM here).
const TABLE_WAIT: Duration = Duration::from_secs(30);

impl App {
    /// POST: a validated task, accepted into the batch being collected; the
    /// 202 is written at once behind a slot that its batch's commit releases
    /// (or withdraws).
    pub(super) fn primes_post(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
        shape: &Shape,
    ) -> Result<Answer, ApiError> {
        if !task_request::is_json(request.content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let max_n = self.primes.max_n();
        let n = task_request::parse_body(body, max_n)
            .map_err(|error| ApiError::BadTask { error, max_n })?;
        let cost = task_cost(n, self.primes.is_table_hit(n));
        self.charge(caller, cost)?;
        self.primes.check_room(n).map_err(|refused| match refused {
            Refused::StoreFull => ApiError::TasksFull,
            Refused::QueueFull => ApiError::TaskQueueFull,
        })?;
        let id = self.new_task_id()?;
        // The 202 is accounted now; its span ends now too, so the parked
        // copy carries none.
        let held = Shape {
            span: None,
            ..*shape
        };
        let ticket = self.park(conn, Waiting::PrimesAccepted, held, None)?;
        let batch = self.ledger.join();
        let status = self.primes.accept(id, n, self.now_unix_ms, batch, ticket);
        out.reserve(ticket);
        self.body.clear();
        self.body.extend_from_slice(b"{\"request_id\": \"");
        id.write(&mut self.body);
        self.body.extend_from_slice(b"\", \"status\": \"");
        self.body.extend_from_slice(status.name().as_bytes());
        self.body.extend_from_slice(b"\"}\n");
        let prefix = if request.path.starts_with(API_PREFIX) {
            API_PREFIX
        } else {
            LEGACY_PREFIX
        };
        let mut head = Head::start(out.buf(), Status::ACCEPTED, &self.date, &shape.request_id);
        head.content_type(ContentType::Json)
            .header("Cache-Control", b"no-store")
            .header_with("Location", |v| {
                v.extend_from_slice(prefix);
                v.push(b'/');
                id.write(v);
            });
        let buf = head.finish(Status::ACCEPTED, self.body.len(), shape.persistence);
        if !shape.head_only() {
            buf.extend_from_slice(&self.body);
        }
        Ok(Answer::Now(Status::ACCEPTED))
    }

    /// GET: the task now, or parked until it settles or the wait ends.
    pub(super) fn primes_get(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        request: &Request<'_>,
        out: &mut Output,
        shape: &Shape,
    ) -> Result<Answer, ApiError> {
        let text = task_id_text(request.path).unwrap_or_default();
        let id = TaskId::parse(text).ok_or(ApiError::BadTaskId)?;
        let wait = task_request::parse_wait(request.query)
            .map_err(|message| ApiError::BadQuery { message })?;
        if negotiate(request, Format::Json)? != Format::Json {
            return Err(ApiError::NotAcceptable);
        }
        self.charge(caller, 1)?;
        let view = self.primes.view(id).ok_or(ApiError::TaskNotFound)?;
        if view.is_final() || (wait == 0 && !view.awaits_table()) {
            self.write_task(out, id, &view, shape);
            return Ok(Answer::Now(Status::OK));
        }
        let wait = if view.awaits_table() {
            TABLE_WAIT
        } else {
            Duration::from_secs(wait)
        };
        let deadline = Some(self.now + wait);
        let ticket = self.park(conn, Waiting::PrimesTask(id), *shape, deadline)?;
        self.primes.wait(PrimesWaiter { ticket, id });
        out.reserve(ticket);
        Ok(Answer::Later(Reply::Wait(ticket)))
    }

    /// The reply to a parked GET: its task became final, or the wait ended
    /// (then its state now, 200).
    pub(super) fn write_task_late(
        &mut self,
        id: TaskId,
        shape: &Shape,
        out: &mut Output,
    ) -> Status {
        match self.primes.view(id) {
            Some(view) if !view.awaits_table() => {
                self.write_task(out, id, &view, shape);
                Status::OK
            }
            Some(_) => self.write_error(ApiError::ResultUnavailable, shape, out),
            None => self.write_error(ApiError::TaskNotFound, shape, out),
        }
    }

    /// An unguessable id no stored task has.
    fn new_task_id(&mut self) -> Result<TaskId, ApiError> {
        loop {
            let mut bytes = [0u8; ID_BYTES];
            for half in bytes.chunks_mut(8) {
                let word = self
                    .random
                    .next_u64()
                    .map_err(|_| ApiError::RandomUnavailable)?;
                half.copy_from_slice(&word.to_le_bytes());
            }
            let id = TaskId::from_bytes(bytes);
            if !self.primes.contains(id) {
                return Ok(id);
            }
        }
    }

    /// `{"request_id": …, "n": …, "status": …}`, with `result` and
    /// `elapsed_ms` once done (the result shared from the table, not
    /// copied) or `error` once failed.
    fn write_task(&mut self, out: &mut Output, id: TaskId, view: &TaskView, shape: &Shape) {
        let body = &mut self.body;
        body.clear();
        body.extend_from_slice(b"{\"request_id\": \"");
        id.write(body);
        body.extend_from_slice(b"\", \"n\": ");
        digits::write_u64(body, view.n);
        body.extend_from_slice(b", \"status\": \"");
        body.extend_from_slice(view.status.name().as_bytes());
        body.push(b'"');
        // Where the shared result goes, if there is one.
        let mut split = None;
        match view.status {
            TaskStatus::Done { elapsed_ms } => {
                if view.result.is_some() {
                    body.extend_from_slice(b", \"result\": ");
                    split = Some(body.len());
                    body.push(b']');
                }
                body.extend_from_slice(b", \"elapsed_ms\": ");
                digits::write_u64(body, elapsed_ms);
            }
            TaskStatus::Failed(failure) => {
                body.extend_from_slice(b", \"error\": \"");
                write_json_str(body, failure.message().as_bytes());
                body.push(b'"');
            }
            TaskStatus::Pending | TaskStatus::Processing => {}
        }
        body.extend_from_slice(b"}\n");
        let split = split.unwrap_or(body.len());
        let result_len = view.result.as_ref().map_or(0, |(_, len)| *len);
        let mut head = Head::start(out.buf(), Status::OK, &self.date, &shape.request_id);
        head.content_type(ContentType::Json)
            .header("Cache-Control", b"no-store");
        let buf = head.finish(Status::OK, self.body.len() + result_len, shape.persistence);
        if shape.head_only() {
            return;
        }
        buf.extend_from_slice(&self.body[..split]);
        if let Some((table, len)) = &view.result {
            out.push_shared_prefix(table.clone(), *len);
        }
        out.extend(&self.body[split..]);
    }
}
