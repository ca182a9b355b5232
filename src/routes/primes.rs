//! Primes task replies: POST a task (202 once its record is durable; an
//! `Idempotency-Key` makes a retry answer the same task), GET one by id, now
//! or after `?wait`, and DELETE (cancel) a pending one, at /v1/primes/tasks
//! and at /tasks (the paths the service fibd replaces used); and the
//! delivery attempts of completion callbacks, through the outbound client.

use std::time::Duration;

use super::forward::{Render, TasksAt};
use super::late::{CallOwner, Forwarded, Shape, Waiting};
use super::route::{API_PREFIX, LEGACY_PREFIX, Route, task_id_text};
use super::{Answer, App, negotiate};
use crate::access::Caller;
use crate::base::digits;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::date::HttpDate;
use crate::http::parse::Request;
use crate::http::response::{ContentType, Head, Status, write_json_str};
use crate::net::session::Reply;
use crate::net::upstream::{CallError, Completion, HttpUrl, Outbound};
use crate::reply::output::Output;
use crate::reply::park::{ConnId, Ticket};
use crate::services::primes::callback::{Attempt, AttemptEnd, AttemptError, Callback};
use crate::services::primes::forward::{Ask, Refusal};
use crate::services::primes::request::{self as task_request};
use crate::services::primes::service::{
    Cancel, CancelRefused, NewTask, PrimesWaiter, Status as TaskStatus, TaskView,
};
use crate::services::primes::task::{ID_BYTES, IdempotencyKey, Owner, TaskId};
use crate::services::primes::{TABLE_WAIT, task_cost};

const USER_AGENT: &str = concat!("fibd/", env!("CARGO_PKG_VERSION"));

impl App {
    /// POST: a validated task, accepted into the batch being collected; the
    /// 202 is written at once behind a slot that its batch's commit releases
    /// (or withdraws). A known `Idempotency-Key` with the same body answers
    /// the task it was first posted for instead. A cluster follower
    /// forwards the task to the leader, which holds the tasks.
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
        let body = task_request::parse_body(body, max_n)
            .map_err(|error| ApiError::BadTask { error, max_n })?;
        let n = body.n;
        let callback_url = body.callback_url.as_deref();
        let callback = callback_url
            .map(|url| {
                task_request::admit_callback(url, &self.callback_allow)
                    .map(|addr| (url, addr))
                    .map_err(ApiError::BadCallback)
            })
            .transpose()?;
        let owner = self.owner(caller);
        let idempotency = request
            .idempotency_key
            .map(|key| IdempotencyKey::new(owner, key).ok_or(ApiError::BadIdempotencyKey))
            .transpose()?;
        let legacy = !request.path.starts_with(API_PREFIX);
        match self.tasks_at() {
            TasksAt::Here => {}
            TasksAt::Leader(target) => {
                self.charge(caller, task_cost(n, self.primes.is_table_hit(n)))?;
                // This node renders the result when its client asks.
                self.primes.want_table(n);
                let ask = Ask::Post {
                    owner,
                    n,
                    callback_url: callback_url.map(str::to_owned),
                    idempotency,
                };
                return self.forward(
                    conn,
                    &target,
                    (&ask, Forwarded::Post { legacy }),
                    out,
                    shape,
                );
            }
            TasksAt::Nowhere => return Err(ApiError::TasksUnavailable),
        }
        let new = NewTask {
            id: TaskId::from_bytes([0; ID_BYTES]),
            n,
            owner,
            idempotency,
            callback,
        };
        self.post_here(
            conn,
            Some(caller),
            new,
            out,
            shape,
            Render::Client { legacy },
        )
    }

    /// A POST on the node holding the tasks (`charge`: its caller, when it
    /// came from a client here; a follower charged its own). `new.id` is
    /// chosen here.
    pub(super) fn post_here(
        &mut self,
        conn: ConnId,
        charge: Option<&Caller>,
        mut new: NewTask<'_>,
        out: &mut Output,
        shape: &Shape,
        render: Render,
    ) -> Result<Answer, ApiError> {
        let (n, callback_url) = (new.n, new.callback.map(|(url, _)| url));
        let posted = new
            .idempotency
            .and_then(|key| self.primes.idempotent(key))
            .map(|first| (first.id, first.n == n && first.callback_url == callback_url));
        if let Some((id, same)) = posted {
            if !same {
                return Err(ApiError::IdempotencyKeyReused);
            }
            if let Some(caller) = charge {
                self.charge(caller, 1)?;
            }
            let ticket = self.park_written(conn, shape)?;
            let batch = self.ledger.join();
            self.primes.replay(id, batch, ticket);
            let status = self
                .primes
                .view(id)
                .map_or(TaskStatus::Pending, |v| v.status);
            out.reserve(ticket);
            self.write_posted(out, shape, id, status, true, render);
            return Ok(Answer::Now(render.posted_status()));
        }
        if let Some(caller) = charge {
            self.charge(caller, task_cost(n, self.primes.is_table_hit(n)))?;
        }
        self.primes
            .check_room(n, new.owner, new.callback.is_some())
            .map_err(|refused| ApiError::from(Refusal::Room(refused)))?;
        new.id = self.new_task_id()?;
        let id = new.id;
        let ticket = self.park_written(conn, shape)?;
        let batch = self.ledger.join();
        let status = self.primes.accept(new, self.now_unix_ms, batch, ticket);
        out.reserve(ticket);
        self.write_posted(out, shape, id, status, false, render);
        Ok(Answer::Now(render.posted_status()))
    }

    /// A POST's reply: the client's 202, or the follower's record.
    fn write_posted(
        &mut self,
        out: &mut Output,
        shape: &Shape,
        id: TaskId,
        status: TaskStatus,
        replayed: bool,
        render: Render,
    ) {
        match render {
            Render::Client { legacy } => {
                self.write_accepted(out, legacy, shape, id, status, replayed);
            }
            Render::Follower => self.write_forwarded(out, id, shape, replayed),
        }
    }

    /// DELETE: cancels a pending task. The 200 (the task, now cancelled) is
    /// written at once behind a slot that the cancellation's commit releases.
    pub(super) fn primes_delete(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        request: &Request<'_>,
        out: &mut Output,
        shape: &Shape,
    ) -> Result<Answer, ApiError> {
        let id = path_task_id(request)?;
        if negotiate(request, Format::Json)? != Format::Json {
            return Err(ApiError::NotAcceptable);
        }
        self.charge(caller, 1)?;
        let owner = self.owner(caller);
        match self.tasks_at() {
            TasksAt::Here => self.delete_here(
                conn,
                id,
                owner,
                out,
                shape,
                Render::Client { legacy: false },
            ),
            TasksAt::Leader(target) => {
                let ask = Ask::Delete { id, owner };
                self.forward(conn, &target, (&ask, Forwarded::Delete), out, shape)
            }
            TasksAt::Nowhere => Err(ApiError::TasksUnavailable),
        }
    }

    pub(super) fn delete_here(
        &mut self,
        conn: ConnId,
        id: TaskId,
        owner: Owner,
        out: &mut Output,
        shape: &Shape,
        render: Render,
    ) -> Result<Answer, ApiError> {
        let cancel = self
            .primes
            .check_cancel(id, owner)
            .map_err(|refused| match refused {
                CancelRefused::NotFound => ApiError::TaskNotFound,
                refused => ApiError::CannotCancel(refused),
            })?;
        let ticket = self.park_written(conn, shape)?;
        let batch = self.ledger.join();
        match cancel {
            Cancel::Takes => self.primes.cancel(id, self.now_unix_ms, batch, ticket),
            Cancel::Repeats => self.primes.confirm(id, batch, ticket),
        }
        out.reserve(ticket);
        match render {
            Render::Client { .. } => {
                if let Some(view) = self.primes.view(id) {
                    let callback = self.primes.callback(id);
                    write_task(&mut self.body, &self.date, out, id, &view, callback, shape);
                }
            }
            Render::Follower => self.write_forwarded(out, id, shape, false),
        }
        Ok(Answer::Now(Status::OK))
    }

    /// Who a task of this caller's belongs to.
    fn owner(&self, caller: &Caller) -> Owner {
        match caller.key {
            Some(key) => Owner::key(self.access.key_name_digest(key)),
            None => Owner::addr(caller.addr),
        }
    }

    /// Parks a reply that is written now and released once its change is
    /// durable. Its span ends now, so the parked copy carries none.
    fn park_written(&mut self, conn: ConnId, shape: &Shape) -> Result<Ticket, ApiError> {
        let held = Shape {
            span: None,
            ..*shape
        };
        self.park(conn, Waiting::PrimesWritten, held, None)
    }

    /// The 202: the task's id and status, with its URL in `Location`; a
    /// replay says so in `Idempotent-Replayed`.
    pub(super) fn write_accepted(
        &mut self,
        out: &mut Output,
        legacy: bool,
        shape: &Shape,
        id: TaskId,
        status: TaskStatus,
        replayed: bool,
    ) {
        self.body.clear();
        self.body.extend_from_slice(b"{\"request_id\": \"");
        id.write(&mut self.body);
        self.body.extend_from_slice(b"\", \"status\": \"");
        self.body.extend_from_slice(status.name().as_bytes());
        self.body.extend_from_slice(b"\"}\n");
        let prefix = if legacy { LEGACY_PREFIX } else { API_PREFIX };
        let mut head = Head::start(out.buf(), Status::ACCEPTED, &self.date, &shape.request_id);
        head.content_type(ContentType::Json)
            .header("Cache-Control", b"no-store")
            .header_with("Location", |v| {
                v.extend_from_slice(prefix);
                v.push(b'/');
                id.write(v);
            });
        if replayed {
            head.header("Idempotent-Replayed", b"true");
        }
        let buf = head.finish(Status::ACCEPTED, self.body.len(), shape.persistence);
        if !shape.head_only() {
            buf.extend_from_slice(&self.body);
        }
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
        let id = path_task_id(request)?;
        let wait = task_request::parse_wait(request.query)
            .map_err(|message| ApiError::BadQuery { message })?;
        if negotiate(request, Format::Json)? != Format::Json {
            return Err(ApiError::NotAcceptable);
        }
        self.charge(caller, 1)?;
        match self.tasks_at() {
            TasksAt::Here => {
                self.get_here(conn, id, wait, out, shape, Render::Client { legacy: false })
            }
            TasksAt::Leader(target) => {
                let ask = Ask::Get { id, wait };
                self.forward(conn, &target, (&ask, Forwarded::Get), out, shape)
            }
            TasksAt::Nowhere => Err(ApiError::TasksUnavailable),
        }
    }

    pub(super) fn get_here(
        &mut self,
        conn: ConnId,
        id: TaskId,
        wait: u64,
        out: &mut Output,
        shape: &Shape,
        render: Render,
    ) -> Result<Answer, ApiError> {
        let view = self.primes.view(id).ok_or(ApiError::TaskNotFound)?;
        // A follower renders the result from its own table.
        let awaits_table = view.awaits_table() && render != Render::Follower;
        let settled = view.is_final() || (render == Render::Follower && view.awaits_table());
        if settled || (wait == 0 && !awaits_table) {
            match render {
                Render::Client { .. } => {
                    let callback = self.primes.callback(id);
                    write_task(&mut self.body, &self.date, out, id, &view, callback, shape);
                }
                Render::Follower => self.write_forwarded(out, id, shape, false),
            }
            return Ok(Answer::Now(Status::OK));
        }
        let wait = if awaits_table {
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
        if shape.route == Some(Route::TaskForward) {
            self.write_forwarded(out, id, shape, false);
            return Status::OK;
        }
        match self.primes.view(id) {
            Some(view) if !view.awaits_table() => {
                let callback = self.primes.callback(id);
                write_task(&mut self.body, &self.date, out, id, &view, callback, shape);
                Status::OK
            }
            Some(_) => self.write_error(ApiError::ResultUnavailable, shape, out),
            None => self.write_error(ApiError::TaskNotFound, shape, out),
        }
    }

    /// The task document for a task this node does not hold (a follower's,
    /// from the leader's record).
    pub(super) fn write_task_of(
        &mut self,
        out: &mut Output,
        id: TaskId,
        view: &TaskView,
        callback: Option<&Callback>,
        shape: &Shape,
    ) {
        write_task(&mut self.body, &self.date, out, id, view, callback, shape);
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
}

/// `{"request_id": …, "n": …, "status": …}`, with `result` and
/// `elapsed_ms` once done (the result shared from the table, not copied)
/// or `error` once failed, and the callback's state. `body` is scratch.
fn write_task(
    body: &mut Vec<u8>,
    date: &HttpDate,
    out: &mut Output,
    id: TaskId,
    view: &TaskView,
    callback: Option<&Callback>,
    shape: &Shape,
) {
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
    if view.result.is_some() && matches!(view.status, TaskStatus::Done { .. }) {
        body.extend_from_slice(b", \"result\": ");
        split = Some(body.len());
        body.push(b']');
    }
    write_settlement(body, view.status);
    if let Some(callback) = callback {
        write_callback(body, callback);
    }
    body.extend_from_slice(b"}\n");
    let split = split.unwrap_or(body.len());
    let result_len = view.result.as_ref().map_or(0, |(_, len)| *len);
    let mut head = Head::start(out.buf(), Status::OK, date, &shape.request_id);
    head.content_type(ContentType::Json)
        .header("Cache-Control", b"no-store");
    let buf = head.finish(Status::OK, body.len() + result_len, shape.persistence);
    if shape.head_only() {
        return;
    }
    buf.extend_from_slice(&body[..split]);
    if let Some((table, len)) = &view.result {
        out.push_shared_prefix(table.clone(), *len);
    }
    out.extend(&body[split..]);
}

impl App {
    /// Loop phase (with the timers): sends the callback attempts that are
    /// due, as many as `--callback-conns` allows in flight.
    pub(super) fn send_callbacks(&mut self) {
        while let Some(attempt) = self.primes.next_attempt(self.now) {
            let id = attempt.key;
            let Some(request) = self.callback_request(attempt) else {
                self.callback_attempt_ended(id, Err(AttemptError::NotAllowed));
                continue;
            };
            let deadline = self.now + self.primes.callback_timeout();
            let sent = self
                .upstream
                .send(CallOwner::Callback(id), &request, deadline, self.now);
            if sent.is_err() {
                self.callback_attempt_ended(id, Err(AttemptError::NoConnection));
            }
        }
    }

    /// A delivery attempt's answer: only a 2xx delivers.
    pub(super) fn callback_done(&mut self, id: TaskId, done: Completion<CallOwner>) {
        let result = match done.result {
            Ok(response) if (200..300).contains(&response.status) => Ok(()),
            Ok(response) => Err(AttemptError::Status(response.status)),
            Err(CallError::Timeout) => Err(AttemptError::Timeout),
            Err(CallError::Connect(_)) => Err(AttemptError::Connect),
            Err(CallError::Closed) => Err(AttemptError::Closed),
            Err(CallError::Response(_)) => Err(AttemptError::BadAnswer),
        };
        self.callback_attempt_ended(id, result);
    }

    fn callback_attempt_ended(&mut self, id: TaskId, result: Result<(), AttemptError>) {
        // Jitter needs no secrecy; a failed CSPRNG read only loses the spread.
        let jitter = self.random.next_u64().unwrap_or(0);
        let end = self
            .primes
            .attempt_done(id, result, self.now, self.now_unix_ms, jitter);
        if let Some(AttemptEnd::Delivered { latency }) = end {
            self.metrics.callback_delivered(latency);
        }
        if end == Some(AttemptEnd::Failed) {
            let mut why = Vec::new();
            if let Err(error) = result {
                error.describe(&mut why);
            }
            let mut task = Vec::new();
            id.write(&mut task);
            log::warn!(
                "callback of task {} failed for good: {}",
                String::from_utf8_lossy(&task),
                String::from_utf8_lossy(&why)
            );
        }
    }

    /// The signed POST of a settled task's document (without its result,
    /// which the receiver GETs at `task_url`: a result can be 9 MB, a
    /// delivery stays small).
    fn callback_request(&mut self, attempt: Attempt<TaskId>) -> Option<Outbound> {
        let url = HttpUrl::parse(&self.primes.callback(attempt.key)?.url).ok()?;
        let view = self.primes.view(attempt.key)?;
        let body = &mut self.body;
        body.clear();
        body.extend_from_slice(b"{\"request_id\": \"");
        attempt.key.write(body);
        body.extend_from_slice(b"\", \"n\": ");
        digits::write_u64(body, view.n);
        body.extend_from_slice(b", \"status\": \"");
        body.extend_from_slice(view.status.name().as_bytes());
        body.push(b'"');
        write_settlement(body, view.status);
        body.extend_from_slice(b", \"task_url\": \"");
        body.extend_from_slice(API_PREFIX);
        body.push(b'/');
        attempt.key.write(body);
        body.extend_from_slice(b"\"}");
        let signature = self.primes.sign(self.now_unix_ms / 1000, &self.body)?;
        let number = attempt.number.to_string();
        let fields = [
            ("Content-Type", "application/json"),
            ("User-Agent", USER_AGENT),
            ("Fibd-Signature", signature.as_str()),
            ("Fibd-Delivery-Attempt", number.as_str()),
        ];
        Some(Outbound::new(
            "POST",
            attempt.addr,
            &url.authority,
            &url.target,
            &fields,
            &self.body,
        ))
    }
}

/// How a settled task ended: `, "elapsed_ms": N` once done, `, "error": …`
/// once failed; nothing otherwise.
fn write_settlement(body: &mut Vec<u8>, status: TaskStatus) {
    match status {
        TaskStatus::Done { elapsed_ms } => {
            body.extend_from_slice(b", \"elapsed_ms\": ");
            digits::write_u64(body, elapsed_ms);
        }
        TaskStatus::Failed(failure) => {
            body.extend_from_slice(b", \"error\": \"");
            write_json_str(body, failure.message().as_bytes());
            body.push(b'"');
        }
        TaskStatus::Pending | TaskStatus::Processing | TaskStatus::Cancelled => {}
    }
}

/// `, "callback": {"url": …, "state": …, "attempts": N[, "last_error": …]}`.
fn write_callback(body: &mut Vec<u8>, callback: &Callback) {
    body.extend_from_slice(b", \"callback\": {\"url\": \"");
    write_json_str(body, callback.url.as_bytes());
    body.extend_from_slice(b"\", \"state\": \"");
    body.extend_from_slice(callback.state.name().as_bytes());
    body.extend_from_slice(b"\", \"attempts\": ");
    digits::write_u64(body, u64::from(callback.attempts));
    if let Some(error) = callback.last_error {
        body.extend_from_slice(b", \"last_error\": \"");
        // Plain ASCII sentences without quotes: nothing to escape.
        error.describe(body);
        body.push(b'"');
    }
    body.push(b'}');
}

/// The task id in the request's path.
fn path_task_id(request: &Request<'_>) -> Result<TaskId, ApiError> {
    let text = task_id_text(request.path).unwrap_or_default();
    TaskId::parse(text).ok_or(ApiError::BadTaskId)
}
