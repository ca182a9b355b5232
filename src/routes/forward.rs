//! Primes tasks in cluster mode: where a task request is answered (here,
//! at the leader, or nowhere just now), a follower's forwarding of it and
//! the reply it renders from the leader's answer, the leader's internal
//! endpoint, and the records' loop phase (a new term's tasks loaded, a
//! lost term's dropped).

use std::time::Duration;

use super::late::{CallOwner, Forwarded, LateReply, Shape, Waiting};
use super::{Answer, App};
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::parse::Request;
use crate::http::response::{ContentType, Status};
use crate::net::session::Reply;
use crate::net::upstream::{CallError, Completion, HttpUrl, Target};
use crate::reply::output::Output;
use crate::reply::park::{ConnId, Ticket};
use crate::services::primes::TABLE_WAIT;
use crate::services::primes::forward::{self, Ask, FORWARD_PATH};
use crate::services::primes::request as task_request;
use crate::services::primes::service::{
    NewTask, PrimesWaiter, Settle, Status as TaskStatus, TaskView,
};
use crate::services::primes::task::{ID_BYTES, Outcome, Task, TaskId};
use crate::store::etcd::records::RecordsEvent;
use crate::store::etcd::relay::SECRET_FIELD;

/// A forwarded request's park outlasts its call by this much, so the
/// call's own deadline ends it first.
const FORWARD_GRACE: Duration = Duration::from_secs(1);

/// Where this node's task requests are answered.
pub(super) enum TasksAt {
    /// This node holds the tasks: alone (LMDB), or as the cluster's leader.
    Here,
    /// Another node leads: forward to it.
    Leader(Target),
    /// No node can be reached that holds them (an election, a new leader
    /// loading them).
    Nowhere,
}

/// Who a task reply on the node holding the tasks is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Render {
    /// A client of this node's (a POST at /v1/primes/tasks or /tasks).
    Client { legacy: bool },
    /// A follower that forwarded its client's request: it gets the task's
    /// record and renders the reply itself.
    Follower,
}

impl Render {
    pub(super) fn posted_status(self) -> Status {
        match self {
            Render::Client { .. } => Status::ACCEPTED,
            Render::Follower => Status::OK,
        }
    }
}

impl App {
    pub(super) fn tasks_at(&self) -> TasksAt {
        let Some(records) = &self.records else {
            return TasksAt::Here;
        };
        let term = self.stepper.cluster_term(self.now);
        if records.holds(term) {
            return TasksAt::Here;
        }
        match (term, self.stepper.cluster_leader()) {
            (None, Some(leader)) => TasksAt::Leader(leader.clone()),
            _ => TasksAt::Nowhere,
        }
    }

    /// Sends a client's task request to the leader; the reply waits for
    /// its answer, within the call's deadline (the `wait` more of a GET
    /// that waits there).
    pub(super) fn forward(
        &mut self,
        conn: ConnId,
        leader: &Target,
        (ask, kind): (&Ask, Forwarded),
        out: &mut Output,
        shape: &Shape,
    ) -> Result<Answer, ApiError> {
        // Past the call's deadline, a GET may wait for this node's table.
        let wait = match ask {
            Ask::Get { wait, .. } => Duration::from_secs(*wait) + TABLE_WAIT,
            Ask::Post { .. } | Ask::Delete { .. } => Duration::ZERO,
        };
        let call_timeout = self
            .stepper
            .cluster_config()
            .map_or(Duration::ZERO, |c| c.call_timeout);
        let deadline = self.now + call_timeout + wait + FORWARD_GRACE;
        let ticket = self.park(conn, Waiting::PrimesForward, *shape, Some(deadline))?;
        if !self.send_forward(ticket, leader, ask, kind) {
            self.parking.take(ticket);
            return Err(ApiError::TasksUnavailable);
        }
        out.reserve(ticket);
        Ok(Answer::Later(Reply::Wait(ticket)))
    }

    /// Sends `ask` to the leader for the request parked under `ticket`;
    /// false if no connection could take it.
    fn send_forward(
        &mut self,
        ticket: Ticket,
        leader: &Target,
        ask: &Ask,
        kind: Forwarded,
    ) -> bool {
        let Some(config) = self.stepper.cluster_config() else {
            return false;
        };
        let wait = match ask {
            Ask::Get { wait, .. } => *wait,
            Ask::Post { .. } | Ask::Delete { .. } => 0,
        };
        let deadline = self.now + config.call_timeout + Duration::from_secs(wait);
        let body = forward::ask_body(ask);
        let secret = config.secret.as_field().unwrap_or_default();
        let request = leader.request_to(
            "POST",
            FORWARD_PATH,
            &[("Content-Type", "application/json"), (SECRET_FIELD, secret)],
            &body,
        );
        let owner = CallOwner::TaskForward(ticket, kind);
        self.upstream
            .send(owner, &request, deadline, self.now)
            .is_ok()
    }

    /// A forwarded GET whose task is done waited for this node's table to
    /// grow: it asks the leader again, and answers from the table then.
    pub(super) fn forward_again(&mut self, ticket: Ticket, id: TaskId) {
        let sent = match self.tasks_at() {
            TasksAt::Leader(leader) => {
                let ask = Ask::Get { id, wait: 0 };
                self.send_forward(ticket, &leader, &ask, Forwarded::Get)
            }
            TasksAt::Here | TasksAt::Nowhere => false,
        };
        if !sent {
            let reply = Err(ApiError::TasksUnavailable);
            self.settled.push_back((
                ticket,
                LateReply::Forwarded {
                    ask: Forwarded::Get,
                    reply,
                },
            ));
        }
    }

    /// The leader answered a forwarded request, or did not.
    pub(super) fn forward_done(
        &mut self,
        ticket: Ticket,
        ask: Forwarded,
        done: Completion<CallOwner>,
    ) {
        let reply = match done.result {
            // The leader answers an error only for what it did not do.
            Ok(response) => forward::read_reply(response.status, &response.body).map_err(|why| {
                log::debug!("a forwarded task request: {why}");
                ApiError::TasksUnavailable
            }),
            Err(CallError::Connect(_)) => Err(ApiError::TasksUnavailable),
            Err(_) if ask == Forwarded::Get => Err(ApiError::TasksUnavailable),
            Err(_) => Err(ApiError::TaskOutcomeUnknown),
        };
        // A done task whose result this node's table does not hold yet:
        // the reader waits for the table (as one of a task done before a
        // restart does), then asks again.
        if let Ok(forward::Reply::Task { seq, record, .. }) = &reply
            && let Some((id, task, _)) = Task::decode(*seq, record)
            && task
                .settled
                .is_some_and(|(outcome, _)| outcome == Outcome::Done)
            && !self.primes.is_table_hit(task.n)
        {
            self.primes.want_table(task.n);
            self.primes.wait(PrimesWaiter { ticket, id });
            return;
        }
        self.settled
            .push_back((ticket, LateReply::Forwarded { ask, reply }));
    }

    /// A follower's reply to its client, from the leader's answer: the
    /// 202 or the task document, with the result from this node's table.
    pub(super) fn write_forwarded_late(
        &mut self,
        ask: Forwarded,
        reply: Result<forward::Reply, ApiError>,
        shape: &Shape,
        out: &mut Output,
    ) -> Status {
        let (seq, record, processing, replayed) = match reply {
            Err(error) => return self.write_error(error, shape, out),
            Ok(forward::Reply::Refused(refusal)) => {
                return self.write_error(refusal.into(), shape, out);
            }
            Ok(forward::Reply::Task {
                seq,
                record,
                processing,
                replayed,
            }) => (seq, record, processing, replayed),
        };
        let Some((id, task, callback)) = Task::decode(seq, &record) else {
            return self.write_error(ApiError::TasksUnavailable, shape, out);
        };
        let status = TaskStatus::of(&task, processing);
        if let Forwarded::Post { legacy } = ask {
            self.write_accepted(out, legacy, shape, id, status, replayed);
            return Status::ACCEPTED;
        }
        let result = match status {
            TaskStatus::Done { .. } => match self.primes.result(task.n) {
                Some(result) => Some(result),
                None => {
                    self.primes.want_table(task.n);
                    return self.write_error(ApiError::ResultUnavailable, shape, out);
                }
            },
            _ => None,
        };
        let view = TaskView {
            n: task.n,
            status,
            result,
        };
        self.write_task_of(out, id, &view, callback.as_ref(), shape);
        Status::OK
    }

    /// The leader's internal endpoint: a follower's client's task request,
    /// decided here as if it had come here, and answered with the task's
    /// record (or the refusal) once durable.
    pub(super) fn task_forwarded(
        &mut self,
        conn: ConnId,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
        shape: &mut Shape,
    ) -> Result<Answer, ApiError> {
        shape.format = Format::Json;
        self.check_cluster_secret(request)?;
        if !matches!(self.tasks_at(), TasksAt::Here) || self.records.is_none() {
            return Err(ApiError::NotLeader);
        }
        let ask = forward::read_ask(body).map_err(|message| ApiError::BadRelay { message })?;
        let shape = &*shape;
        let answer = match ask {
            Ask::Post {
                owner,
                n,
                callback_url,
                idempotency,
            } => {
                if n == 0 || n > self.primes.max_n() {
                    return Err(ApiError::BadRelay {
                        message: "n is outside this leader's --primes-max-n: every node of a \
                                  cluster needs the same limits",
                    });
                }
                let callback = callback_url
                    .as_deref()
                    .map(|url| {
                        task_request::admit_callback(url, &self.callback_allow)
                            .map(|addr| (url, addr))
                            .map_err(ApiError::BadCallback)
                    })
                    .transpose();
                let new = callback.map(|callback| NewTask {
                    id: TaskId::from_bytes([0; ID_BYTES]),
                    n,
                    owner,
                    idempotency,
                    callback,
                });
                new.and_then(|new| self.post_here(conn, None, new, out, shape, Render::Follower))
            }
            Ask::Get { id, wait } => self.get_here(conn, id, wait, out, shape, Render::Follower),
            Ask::Delete { id, owner } => {
                self.delete_here(conn, id, owner, out, shape, Render::Follower)
            }
        };
        match answer {
            Err(error) => {
                let refusal = error.refusal().ok_or(error)?;
                let body = forward::reply_body(&forward::Reply::Refused(refusal));
                self.write_no_store(out, shape, ContentType::Json, &body);
                Ok(Answer::Now(Status::OK))
            }
            answer => answer,
        }
    }

    /// The leader's answer to a follower: the task's record as it stands.
    pub(super) fn write_forwarded(
        &mut self,
        out: &mut Output,
        id: TaskId,
        shape: &Shape,
        replayed: bool,
    ) {
        let reply = match self.primes.record(id) {
            Some((seq, record, processing)) => forward::Reply::Task {
                seq,
                record,
                processing,
                replayed,
            },
            None => forward::Reply::Refused(forward::Refusal::NotFound),
        };
        let body = forward::reply_body(&reply);
        self.write_no_store(out, shape, ContentType::Json, &body);
    }

    /// Loop phase (cluster mode): the task records' events. A new term's
    /// records become this node's tasks; a lost term's tasks are dropped
    /// (a reader waiting on one is answered 503); a commit's outcome
    /// settles its replies as the LMDB commit thread's would.
    pub(super) fn records_events(&mut self) {
        while let Some(event) = self.records.as_mut().and_then(|r| r.take_event()) {
            let loaded = match event {
                RecordsEvent::Committed(outcome) => {
                    self.committed(outcome);
                    continue;
                }
                RecordsEvent::Loaded(records) => Some(records),
                RecordsEvent::Lost => None,
            };
            let moved = loaded.is_none();
            let records = loaded
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(seq, record)| {
                    let Some((id, task, mut callback)) = Task::decode(seq, &record) else {
                        log::warn!("task record {seq} in etcd is not one this version reads");
                        return None;
                    };
                    // Where a callback goes is decided by this node's allow-list.
                    if let Some(callback) = &mut callback {
                        callback.addr = HttpUrl::parse(&callback.url)
                            .ok()
                            .and_then(|url| self.callback_allow.admit(&url).ok());
                    }
                    Some((id, task, callback))
                })
                .collect();
            let settled = &mut self.settled;
            let waiters = self.primes.replace_tasks(
                records,
                self.now_unix_ms,
                self.now,
                &mut |ticket, settle| {
                    if settle == Settle::Withdrawn {
                        settled.push_back((ticket, LateReply::Withdrawn));
                    }
                },
            );
            for waiter in waiters {
                let reply = if moved {
                    LateReply::TasksMoved
                } else {
                    LateReply::Task
                };
                self.settled.push_back((waiter.ticket, reply));
            }
        }
    }

    /// Loop phase: the records' next call (a load page or a commit) to etcd.
    pub(super) fn send_records_call(&mut self) {
        let term = self.stepper.cluster_term(self.now);
        let Some(records) = &mut self.records else {
            return;
        };
        if let Some((request, deadline)) = records.next_call(term, self.now)
            && self
                .upstream
                .send(CallOwner::Records, &request, deadline, self.now)
                .is_err()
        {
            records.failed(&"every outbound connection is busy", self.now);
        }
    }

    /// A records call finished.
    pub(super) fn records_call_done(&mut self, done: Completion<CallOwner>) {
        let Some(records) = &mut self.records else {
            return;
        };
        self.metrics.etcd_call(done.elapsed);
        match done.result {
            Ok(response) => records.answered(response.status, &response.body, self.now),
            Err(e) => records.failed(&e, self.now),
        }
    }
}
