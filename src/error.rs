//! Every way a request can fail, and the one place where a failure becomes an
//! HTTP status and a JSON body. Internal error text never reaches a client;
//! each message says what to change.

use crate::access::ratelimit::{self, Decision, Limit};
use crate::access::{Denied, Scope};
use crate::base::digits;
use crate::http::chunked::ChunkError;
use crate::http::date::HttpDate;
use crate::http::message::Persistence;
use crate::http::parse::ParseError;
use crate::http::request_id::RequestId;
use crate::http::response::{ContentType, Head, Status, write_json_str};
use crate::net::session::ConnError;
use crate::services::fib::request::NQueryError;
use crate::services::primes::forward::Refusal;
use crate::services::primes::request::{CallbackUrlError, TaskBodyError};
use crate::services::primes::service::{CancelRefused, Refused};
use crate::services::smart::{Failure, UpstreamFailure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// The request could not be framed; the connection closes after the answer.
    Parse(ParseError),
    Chunk(ChunkError),
    NotFound,
    MethodNotAllowed {
        allow: &'static str,
    },
    NotAcceptable,
    /// A query parameter is wrong; `message` names the accepted range.
    BadQuery {
        message: &'static str,
    },
    AtCeiling {
        max_index: u64,
    },
    /// /v1/fib's n is missing, malformed or out of range.
    BadN {
        error: NQueryError,
        max_n: u64,
    },
    /// The compute queue is full; retry after a moment.
    Busy,
    /// Too many requests wait for a later answer already.
    Overloaded,
    /// The client spent its token bucket, which has this limit.
    RateLimited {
        retry_after_secs: u32,
        limit: Limit,
    },
    /// An `X-API-Key` that is not in the key file.
    UnknownKey,
    /// No key, where one with `scope` is needed.
    KeyRequired {
        scope: Scope,
    },
    /// A known key without `scope`, where it is needed.
    ScopeMissing {
        scope: Scope,
    },
    /// The store could not make a step durable; the step was not applied.
    CommitFailed,
    /// Cluster mode: etcd did not answer within `--etcd-wait-ms`; the step
    /// was not made (or /current could not be read).
    StoreUnavailable,
    /// Cluster mode: the step's transaction was sent and its outcome could
    /// not be read back in time: it happened once or not at all.
    StepOutcomeUnknown,
    /// The internal endpoint, without the cluster secret (or not in
    /// cluster mode).
    ClusterSecret,
    /// A relay that is not a follower's steps, and why.
    BadRelay {
        message: &'static str,
    },
    /// A relay reached a node that does not lead the cluster; nothing was
    /// applied.
    NotLeader,
    /// A relay its node gave up on; nothing was applied, nor will be.
    RelayFenced,
    /// The client began a request and did not finish it in time.
    RequestTimeout,
    /// Commits are failing: the daemon is up but cannot make steps durable.
    NotReady,
    /// The OS CSPRNG failed; no number is better than a weak one.
    RandomUnavailable,
    /// /api/smart got no successful answer from its upstream, and why.
    Upstream(UpstreamFailure),
    /// A body that is not declared as JSON where JSON is read.
    UnsupportedMediaType,
    /// A primes task body is not `{"n": N}` with N in range.
    BadTask {
        error: TaskBodyError,
        max_n: u64,
    },
    /// The path's task id is not one fibd could have issued.
    BadTaskId,
    /// No stored task has this id.
    TaskNotFound,
    /// The cap on stored tasks is reached and no settled task can make room.
    TasksFull,
    /// Too many tasks wait for a computation.
    TaskQueueFull,
    /// This client holds its share of the unsettled tasks already.
    TaskShareFull,
    /// An `Idempotency-Key` that is not 1 to 255 visible ASCII characters.
    BadIdempotencyKey,
    /// An `Idempotency-Key` this client used for a task with another body.
    IdempotencyKeyReused,
    /// A DELETE of a task that cannot be cancelled, and why.
    CannotCancel(CancelRefused),
    /// A `callback_url` fibd will not call.
    BadCallback(CallbackUrlError),
    /// Too many callbacks wait for their delivery already.
    CallbackBacklog,
    /// A task is done but its result is being rebuilt after a restart.
    ResultUnavailable,
    /// Cluster mode: no node holds the tasks just now (an election, or a
    /// new leader loading them); nothing was done.
    TasksUnavailable,
    /// Cluster mode: a POST or DELETE forwarded to the leader whose answer
    /// was lost: it happened once or not at all.
    TaskOutcomeUnknown,
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Room(Refused::StoreFull) => ApiError::TasksFull,
            Refusal::Room(Refused::QueueFull) => ApiError::TaskQueueFull,
            Refusal::Room(Refused::ClientShare) => ApiError::TaskShareFull,
            Refusal::Room(Refused::CallbackBacklog) => ApiError::CallbackBacklog,
            Refusal::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            Refusal::NotFound => ApiError::TaskNotFound,
            Refusal::Cancel(refused) => ApiError::CannotCancel(refused),
            Refusal::CallbackNotAllowed => ApiError::BadCallback(CallbackUrlError::NotAllowed),
        }
    }
}

impl From<ParseError> for ApiError {
    fn from(e: ParseError) -> Self {
        ApiError::Parse(e)
    }
}

impl From<ConnError> for ApiError {
    fn from(e: ConnError) -> Self {
        match e {
            ConnError::Parse(e) => ApiError::Parse(e),
            ConnError::Chunk(e) => ApiError::Chunk(e),
            ConnError::RequestTimeout => ApiError::RequestTimeout,
        }
    }
}

impl From<Denied> for ApiError {
    fn from(e: Denied) -> Self {
        match e {
            Denied::UnknownKey => ApiError::UnknownKey,
            Denied::KeyRequired { scope } => ApiError::KeyRequired { scope },
            Denied::ScopeMissing { scope } => ApiError::ScopeMissing { scope },
        }
    }
}

impl From<ChunkError> for ApiError {
    fn from(e: ChunkError) -> Self {
        ApiError::Chunk(e)
    }
}

impl ApiError {
    /// The task refusal this is, for a follower that forwarded the request
    /// to answer exactly as this node would.
    pub fn refusal(self) -> Option<Refusal> {
        Some(match self {
            ApiError::TasksFull => Refusal::Room(Refused::StoreFull),
            ApiError::TaskQueueFull => Refusal::Room(Refused::QueueFull),
            ApiError::TaskShareFull => Refusal::Room(Refused::ClientShare),
            ApiError::CallbackBacklog => Refusal::Room(Refused::CallbackBacklog),
            ApiError::IdempotencyKeyReused => Refusal::IdempotencyKeyReused,
            ApiError::TaskNotFound | ApiError::CannotCancel(CancelRefused::NotFound) => {
                Refusal::NotFound
            }
            ApiError::CannotCancel(refused) => Refusal::Cancel(refused),
            ApiError::BadCallback(_) => Refusal::CallbackNotAllowed,
            _ => return None,
        })
    }

    pub fn status(self) -> Status {
        match self {
            ApiError::Parse(e) => parse_status(e),
            ApiError::Chunk(ChunkError::BodyTooLarge) => Status::PAYLOAD_TOO_LARGE,
            ApiError::Chunk(_) => Status::BAD_REQUEST,
            ApiError::NotFound => Status::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => Status::METHOD_NOT_ALLOWED,
            ApiError::NotAcceptable => Status::NOT_ACCEPTABLE,
            ApiError::RequestTimeout => Status::REQUEST_TIMEOUT,
            ApiError::BadQuery { .. } => Status::BAD_REQUEST,
            ApiError::AtCeiling { .. } | ApiError::RelayFenced => Status::CONFLICT,
            ApiError::ClusterSecret => Status::UNAUTHORIZED,
            ApiError::BadRelay { .. } => Status::BAD_REQUEST,
            ApiError::NotLeader => Status::MISDIRECTED,
            ApiError::BadN {
                error: NQueryError::AboveMax | NQueryError::TooLarge,
                ..
            } => Status::UNPROCESSABLE,
            ApiError::BadN { .. } => Status::BAD_REQUEST,
            ApiError::Busy | ApiError::Overloaded => Status::SERVICE_UNAVAILABLE,
            ApiError::RateLimited { .. } => Status::TOO_MANY_REQUESTS,
            ApiError::UnknownKey | ApiError::KeyRequired { .. } => Status::UNAUTHORIZED,
            ApiError::ScopeMissing { .. } => Status::FORBIDDEN,
            ApiError::CommitFailed
            | ApiError::StoreUnavailable
            | ApiError::StepOutcomeUnknown
            | ApiError::RandomUnavailable
            | ApiError::NotReady
            | ApiError::Upstream(_) => Status::SERVICE_UNAVAILABLE,
            ApiError::UnsupportedMediaType => Status::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BadTask { error, .. } if error.is_unprocessable() => Status::UNPROCESSABLE,
            ApiError::BadCallback(_) => Status::UNPROCESSABLE,
            ApiError::CallbackBacklog => Status::SERVICE_UNAVAILABLE,
            ApiError::BadTask { .. } | ApiError::BadTaskId => Status::BAD_REQUEST,
            ApiError::TaskNotFound => Status::NOT_FOUND,
            ApiError::TasksFull
            | ApiError::TaskQueueFull
            | ApiError::ResultUnavailable
            | ApiError::TasksUnavailable
            | ApiError::TaskOutcomeUnknown => Status::SERVICE_UNAVAILABLE,
            ApiError::TaskShareFull => Status::TOO_MANY_REQUESTS,
            ApiError::BadIdempotencyKey => Status::BAD_REQUEST,
            ApiError::IdempotencyKeyReused => Status::UNPROCESSABLE,
            ApiError::CannotCancel(CancelRefused::NotFound) => Status::NOT_FOUND,
            ApiError::CannotCancel(CancelRefused::NotOwner) => Status::FORBIDDEN,
            ApiError::CannotCancel(_) => Status::CONFLICT,
        }
    }

    fn message(self) -> &'static str {
        match self {
            ApiError::Parse(e) => e.message(),
            ApiError::Chunk(e) => e.message(),
            ApiError::NotFound => {
                "no such resource; try /current, /next, /previous, /v1/fib?n=N, /v1/random, \
                 POST /v1/primes/tasks, /api/smart?timeout=MS, /healthz, /readyz or /metrics; \
                 /docs and /openapi.json describe them all"
            }
            ApiError::MethodNotAllowed { .. } => {
                "method not allowed here; the Allow header lists the ones that are"
            }
            ApiError::NotAcceptable => {
                "no acceptable representation; send Accept: text/plain or application/json"
            }
            ApiError::BadQuery { message } => message,
            ApiError::AtCeiling { .. } => {
                "the index is at its ceiling (max_index); /next is refused, /previous still works"
            }
            ApiError::BadN { error, .. } => error.message_up_to_limit(),
            ApiError::Busy => "too many large Fibonacci numbers are being computed; retry shortly",
            ApiError::Overloaded => "too many requests are waiting for an answer; retry shortly",
            ApiError::RateLimited { .. } => {
                "rate limit reached; retry after the number of seconds in Retry-After. The \
                 operator sets the limits per client with --rate-limit and --rate-burst, and \
                 per API key in the --api-keys file"
            }
            ApiError::UnknownKey => {
                "this X-API-Key is not one this server knows; check it, or send no key \
                 where anonymous access is allowed"
            }
            ApiError::KeyRequired { scope: Scope::Step } => {
                "stepping needs an API key with the step scope; send it in X-API-Key \
                 (/current stays open)"
            }
            ApiError::ScopeMissing { scope: Scope::Step } => {
                "this API key lacks the step scope that stepping needs; ask the operator for one"
            }
            ApiError::CommitFailed => {
                "the change could not be made durable and was not made; retry shortly"
            }
            ApiError::StoreUnavailable => {
                "the shared store (etcd) did not answer in time; the step was not made; \
                 retry after Retry-After"
            }
            ApiError::StepOutcomeUnknown => {
                "the shared store (etcd) did not confirm this step in time: it was made once \
                 or not at all; read /current before retrying"
            }
            ApiError::RequestTimeout => {
                "the request was not completed in time; send it whole, without long pauses"
            }
            ApiError::ClusterSecret => {
                "this internal endpoint is for the nodes of a cluster: they send the cluster \
                 secret in Fibd-Cluster-Secret"
            }
            ApiError::BadRelay { message } => message,
            ApiError::NotLeader => {
                "this node does not lead the cluster; nothing was applied: relay to the leader"
            }
            ApiError::RelayFenced => {
                "this relay's node has given up on it (it moved its fence or sent a newer \
                 one); nothing was applied"
            }
            ApiError::NotReady => {
                "the store is failing to commit; steps are refused until it recovers"
            }
            ApiError::RandomUnavailable => {
                "the operating system's random number generator failed; retry shortly"
            }
            ApiError::Upstream(f) => upstream_detail(f.failure),
            ApiError::UnsupportedMediaType => {
                "a task is JSON: send Content-Type: application/json and a body like {\"n\": 100}"
            }
            ApiError::BadTask { error, .. } => error.message(),
            ApiError::BadTaskId => {
                "a task id is the 22-character request_id that POST /v1/primes/tasks returned"
            }
            ApiError::TaskNotFound => {
                "no task has this id: use the request_id a POST returned; settled tasks are \
                 deleted after the retention time, or earlier when the store needs room"
            }
            ApiError::TasksFull => {
                "the task store (--primes-tasks-max) holds only tasks that have not settled \
                 yet, and those are never dropped; retry after Retry-After"
            }
            ApiError::TaskQueueFull => "too many tasks wait for a computation; retry shortly",
            ApiError::TaskShareFull => {
                "this client holds --primes-pending-per-client unsettled tasks (or callbacks \
                 not delivered yet) already; retry after Retry-After, once some settle, or \
                 cancel some"
            }
            ApiError::BadIdempotencyKey => {
                "Idempotency-Key is 1 to 255 visible ASCII characters (a UUID, say); send the \
                 same key and body to retry a POST"
            }
            ApiError::IdempotencyKeyReused => {
                "this Idempotency-Key was used for a task with another body (another n or \
                 callback_url); a retry sends the same body, a new task needs a new key"
            }
            ApiError::BadCallback(error) => error.message(),
            ApiError::CallbackBacklog => {
                "too many tasks wait for their callback's delivery (--callback-pending); retry \
                 shortly, or post without a callback_url and poll"
            }
            ApiError::CannotCancel(CancelRefused::NotFound) => {
                "no task has this id: use the request_id a POST returned"
            }
            ApiError::CannotCancel(CancelRefused::NotOwner) => {
                "only the API key that posted this task may cancel it"
            }
            ApiError::CannotCancel(CancelRefused::Running) => {
                "the task is already running (a sieve that covers it is under way) and cannot \
                 be cancelled; it will be done shortly"
            }
            ApiError::CannotCancel(CancelRefused::Done) => {
                "the task is already done and cannot be cancelled"
            }
            ApiError::CannotCancel(CancelRefused::Failed) => {
                "the task has already failed and cannot be cancelled"
            }
            ApiError::ResultUnavailable => {
                "the task is done; its result is being computed on this node; retry shortly"
            }
            ApiError::TasksUnavailable => {
                "the cluster's tasks are not reachable just now (a leader is being elected, or \
                 is loading them); nothing was done; retry shortly"
            }
            ApiError::TaskOutcomeUnknown => {
                "the leader holding the tasks did not answer in time: the change happened once \
                 or not at all; retry with the same Idempotency-Key to find out safely"
            }
        }
    }

    /// Framing errors leave the connection in an unknown state, so it closes.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            ApiError::Parse(_)
                | ApiError::Chunk(_)
                | ApiError::CommitFailed
                | ApiError::RequestTimeout
        )
    }

    /// Server-side faults a person should hear about; the rest are the
    /// client's business (and the access log's, at debug).
    pub fn is_fault(self) -> bool {
        matches!(
            self,
            ApiError::CommitFailed
                | ApiError::RandomUnavailable
                | ApiError::StoreUnavailable
                | ApiError::StepOutcomeUnknown
        )
    }

    /// Appends the whole response: head and JSON body (none for HEAD).
    pub fn write(
        self,
        out: &mut Vec<u8>,
        date: &HttpDate,
        request_id: &RequestId,
        head_only: bool,
        persistence: Persistence,
    ) {
        let status = self.status();
        let body = self.body(request_id);
        let mut head = Head::start(out, status, date, request_id);
        head.content_type(ContentType::Json)
            .header("Cache-Control", b"no-store");
        match self {
            ApiError::MethodNotAllowed { allow } => {
                head.header("Allow", allow.as_bytes());
            }
            ApiError::RateLimited {
                retry_after_secs,
                limit,
            } => {
                let limited = Decision::Limited { retry_after_secs };
                head.header_u64("Retry-After", u64::from(retry_after_secs))
                    .header_with(ratelimit::POLICY_HEADER, |v| limit.write_policy(v))
                    .header_with(ratelimit::STATE_HEADER, |v| limit.write_state(v, &limited));
            }
            ApiError::UnknownKey | ApiError::KeyRequired { .. } => {
                head.header(
                    "WWW-Authenticate",
                    b"ApiKey realm=\"fibd\", header=\"X-API-Key\"",
                );
            }
            // A pending task settles within a sieve (under a second at the
            // default largest n), so a share or queue frees up that soon.
            ApiError::TaskShareFull => {
                head.header("Retry-After", b"1");
            }
            _ if status == Status::SERVICE_UNAVAILABLE => {
                head.header("Retry-After", b"1");
            }
            _ => {}
        }
        head.finish(status, body.len(), persistence);
        if !head_only {
            out.extend_from_slice(&body);
        }
    }

    /// The JSON body: `{"error": "...", "status": N, ..., "request_id": "..."}`.
    fn body(self, request_id: &RequestId) -> Vec<u8> {
        if let ApiError::Upstream(f) = self {
            return upstream_body(f, request_id);
        }
        let mut out = Vec::with_capacity(160);
        out.extend_from_slice(b"{\"error\": \"");
        write_json_str(&mut out, self.message().as_bytes());
        if let ApiError::BadN { max_n, .. } = self {
            digits::write_u64(&mut out, max_n);
        }
        out.extend_from_slice(b"\", \"status\": ");
        digits::write_u64(&mut out, u64::from(self.status().code()));
        match self {
            ApiError::AtCeiling { max_index } => {
                out.extend_from_slice(b", \"max_index\": ");
                digits::write_u64(&mut out, max_index);
            }
            ApiError::BadN { max_n, .. } => {
                out.extend_from_slice(b", \"min_n\": 0, \"max_n\": ");
                digits::write_u64(&mut out, max_n);
            }
            ApiError::BadTask { max_n, .. } => {
                out.extend_from_slice(b", \"min_n\": 1, \"max_n\": ");
                digits::write_u64(&mut out, max_n);
            }
            ApiError::StoreUnavailable => {
                out.extend_from_slice(b", \"code\": \"store_unavailable\"")
            }
            ApiError::StepOutcomeUnknown => {
                out.extend_from_slice(b", \"code\": \"step_outcome_unknown\"");
            }
            ApiError::NotLeader => out.extend_from_slice(b", \"code\": \"not_leader\""),
            ApiError::TasksUnavailable => {
                out.extend_from_slice(b", \"code\": \"tasks_unavailable\"");
            }
            ApiError::TaskOutcomeUnknown => {
                out.extend_from_slice(b", \"code\": \"task_outcome_unknown\"");
            }
            ApiError::RelayFenced => out.extend_from_slice(b", \"code\": \"relay_fenced\""),
            ApiError::BadCallback(CallbackUrlError::Malformed(why)) => {
                out.extend_from_slice(b", \"detail\": \"");
                write_json_str(&mut out, why.as_bytes());
                out.push(b'"');
            }
            ApiError::CannotCancel(refused) => {
                let status = match refused {
                    CancelRefused::Running => "processing",
                    CancelRefused::Done => "done",
                    CancelRefused::Failed => "failed",
                    CancelRefused::NotFound | CancelRefused::NotOwner => "",
                };
                if !status.is_empty() {
                    out.extend_from_slice(b", \"task_status\": \"");
                    out.extend_from_slice(status.as_bytes());
                    out.push(b'"');
                }
            }
            _ => {}
        }
        out.extend_from_slice(b", \"request_id\": \"");
        write_json_str(&mut out, request_id.as_bytes());
        out.extend_from_slice(b"\"}\n");
        out
    }
}

/// /api/smart's failure: the kind as `error` (for programs), elapsed
/// `time` and `attempts` sent, `budget_exhausted` when the extra-attempt
/// budget kept the call from retrying or hedging, and a `detail` for people.
fn upstream_body(f: UpstreamFailure, request_id: &RequestId) -> Vec<u8> {
    let mut out = Vec::with_capacity(200);
    out.extend_from_slice(b"{\"error\": \"");
    out.extend_from_slice(f.failure.code().as_bytes());
    out.extend_from_slice(b"\", \"status\": 503, \"time\": ");
    digits::write_u64(&mut out, f.time_ms);
    out.extend_from_slice(b", \"attempts\": ");
    digits::write_u64(&mut out, u64::from(f.attempts));
    let budget: &[u8] = if f.budget_exhausted {
        b", \"budget_exhausted\": true"
    } else {
        b", \"budget_exhausted\": false"
    };
    out.extend_from_slice(budget);
    if let Failure::Status(status) = f.failure {
        out.extend_from_slice(b", \"upstream_status\": ");
        digits::write_u64(&mut out, u64::from(status));
    }
    out.extend_from_slice(b", \"detail\": \"");
    write_json_str(&mut out, upstream_detail(f.failure).as_bytes());
    if let Failure::Status(status) = f.failure {
        out.extend_from_slice(b" ");
        digits::write_u64(&mut out, u64::from(status));
    }
    if f.budget_exhausted {
        out.extend_from_slice(BUDGET_EXHAUSTED.as_bytes());
    }
    out.extend_from_slice(b"\", \"request_id\": \"");
    write_json_str(&mut out, request_id.as_bytes());
    out.extend_from_slice(b"\"}\n");
    out
}

/// What a failed call adds when the budget refused its extra attempts.
const BUDGET_EXHAUSTED: &str = "; budget exhausted: no more attempts were sent, as extra attempts \
     (retries and hedges) already reached --hedge-budget's share of recent calls";

fn upstream_detail(failure: Failure) -> &'static str {
    match failure {
        Failure::Timeout => "no attempt answered successfully within the timeout",
        Failure::Status(_) => "the upstream answered with an error status:",
        Failure::Refused => "the upstream refused the connection or could not be reached",
        Failure::Closed => "the upstream closed or reset the connection before a whole answer",
        Failure::Saturated => {
            "every outbound connection fibd may open (--upstream-max-conns) is in use; retry shortly"
        }
        Failure::BadHttp(e) => e.message(),
        Failure::NotJson => "the upstream's answer is not JSON",
        Failure::NotConfigured => {
            "fibd was started without --upstream, so /api/smart has no upstream to call"
        }
    }
}

fn parse_status(e: ParseError) -> Status {
    match e {
        ParseError::HeadTooLarge | ParseError::TooManyHeaders => Status::HEADERS_TOO_LARGE,
        ParseError::UriTooLong => Status::URI_TOO_LONG,
        ParseError::UnsupportedVersion | ParseError::Http2Preface => Status::VERSION_NOT_SUPPORTED,
        ParseError::UnsupportedTransferEncoding => Status::NOT_IMPLEMENTED,
        ParseError::BodyTooLarge => Status::PAYLOAD_TOO_LARGE,
        _ => Status::BAD_REQUEST,
    }
}
