//! Replies answered later, as the routes see them: the one [`Shape`] every
//! reply is written and accounted in, what a parked request keeps
//! ([`Parked`]), who settles it ([`Waiting`]), who made an outbound call
//! ([`CallOwner`]), and the decided replies waiting to be delivered
//! ([`LateReply`]).

use std::net::IpAddr;

use super::route::Route;
use crate::access::KeyId;
use crate::error::ApiError;
use crate::http::accept::Format;
use crate::http::message::{Method, Persistence};
use crate::http::request_id::RequestId;
use crate::ops::trace::SpanStart;
use crate::reply::park::{ConnId, Ticket};
use crate::services::fib::Value;
use crate::services::primes::forward;
use crate::services::primes::task::TaskId;
use crate::services::smart::service::SmartReply;
use crate::services::stepper::StepReply;
use crate::store::Channel;

/// How a reply is written and accounted, decided when its request arrived:
/// whether it is answered now or later, it ends through
/// `App::finish`, which counts it, ends its span, logs it and says whether
/// the connection stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// None for a path that matched no route.
    pub route: Option<Route>,
    pub method: Method,
    pub format: Format,
    pub persistence: Persistence,
    pub request_id: RequestId,
    /// The request's trace span, when it is sampled.
    pub span: Option<SpanStart>,
    /// The client's address, as resolved through trusted proxies.
    pub client: IpAddr,
    /// The API key it presented, when known.
    pub key: Option<KeyId>,
}

impl Shape {
    pub fn head_only(&self) -> bool {
        self.method == Method::Head
    }
}

/// Which service settles a parked request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Waiting {
    /// A /v1/fib request waiting for the compute worker.
    Fib,
    /// An /api/smart request waiting for its upstream attempts.
    Smart,
    /// A primes task GET waiting for its task to settle (`?wait`).
    PrimesTask(TaskId),
    /// A primes reply written already (a POST's 202, a DELETE's 200) that
    /// waits for its task's record to be durable.
    PrimesWritten,
    /// A /current, /next or /previous waiting for its batch.
    Step,
    /// Cluster mode: a primes task request forwarded to the leader; the
    /// call's deadline bounds the wait.
    PrimesForward,
}

/// What a parked request keeps: who settles it and how its reply is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parked {
    pub owner: Waiting,
    pub shape: Shape,
}

/// Who made an outbound call, so its completion reaches the right service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallOwner {
    /// One attempt of the /api/smart request parked under this ticket.
    Smart(Ticket),
    /// A batch of finished spans POSTed to the collector.
    TraceExport,
    /// A delivery attempt of this task's completion callback.
    Callback(TaskId),
    /// The stepper's store (etcd): the one index call in flight, or the
    /// election's.
    Store(Channel),
    /// The primes tasks' records in etcd: a load page or a commit.
    Records,
    /// A task request forwarded to the leader for the client parked here.
    TaskForward(Ticket, Forwarded),
}

/// Which request a follower forwarded, so the leader's answer becomes its
/// reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// A POST, at /v1/primes/tasks or at the legacy /tasks.
    Post {
        legacy: bool,
    },
    Get,
    Delete,
}

/// A parked request's reply, decided outside request handling (a commit,
/// a computation, an upstream answer, an expired deadline) and queued for
/// the loop to deliver.
#[derive(Debug)]
pub enum LateReply {
    Fib {
        n: u64,
        value: Value,
    },
    Step(StepReply),
    /// A primes task GET: the task's state now (it settled, or the wait ended).
    Task,
    /// A primes reply written already may leave: its task's record is durable.
    Durable,
    /// The write the reply waited for was not made durable: the reply, and
    /// everything queued after it on its connection, become one 503.
    Withdrawn,
    Smart(SmartReply),
    /// The leader's answer to a forwarded task request, or why there is none.
    Forwarded {
        ask: Forwarded,
        reply: Result<forward::Reply, ApiError>,
    },
    /// This node stopped holding the cluster's tasks while the reader waited.
    TasksMoved,
}

impl LateReply {
    /// Whether the reply replaces its slot and what followed it.
    pub fn withdraws(&self) -> bool {
        matches!(
            self,
            LateReply::Withdrawn | LateReply::Step(StepReply::Withdrawn)
        )
    }
}

/// A decided reply, with where it goes.
#[derive(Debug)]
pub struct Delivery {
    pub conn: ConnId,
    pub ticket: Ticket,
    pub(super) parked: Parked,
    pub(super) reply: LateReply,
}

impl Delivery {
    pub fn withdraws(&self) -> bool {
        self.reply.withdraws()
    }
}
