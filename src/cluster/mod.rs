//! Cluster mode (`--store etcd`): the stepper's index lives in etcd, shared
//! by every fibd node, and this node's group commit is one etcd transaction
//! per batch. Sans-IO and sans-clock: the loop hands requests, etcd's answers
//! and finished cursor jumps in, and takes out the next call to send, the
//! cursor jump to run off the loop, and the replies decided.
//!
//! # Rules
//! - One etcd call in flight at a time. Steps and /current requests that
//!   arrive meanwhile collect and ride on the next call, so a loop pass's
//!   /current requests share one quorum read and its steps one transaction.
//! - A batch's transaction compares the index's mod_revision with the one
//!   this node last saw. When another node moved the index first, the answer
//!   carries the index as it is now; the cursor moves there and the batch is
//!   applied again on it. Replies are rendered only once their transaction
//!   committed: the values they show are known only then.
//! - A transaction whose answer was lost (a timeout, a closed connection, an
//!   error status) is never guessed at: a read-back of the index and of this
//!   node's writer tag, at one revision, tells whether it was applied. Until
//!   it is known, nothing else is sent. Sending the batch again with a new
//!   tag on the same revision fences the old attempt: at most one attempt of
//!   a batch can ever match the compare.
//! - Every request waits at most `wait` (the loop expires its park): a step
//!   never sent is answered [`ClusterReply::Unavailable`] and is dropped; a
//!   step already sent is answered [`ClusterReply::OutcomeUnknown`] and is
//!   dropped from any later attempt (so it happened at most once).
//! - The cursor follows the index etcd holds: a few limb-wise steps for a
//!   short distance, a jump computed on the compute worker for a long one
//!   (see [`Jump`]); nothing is sent while it runs.
//!
//! Calls rotate through the endpoints on failure; after a whole round fails
//! the node backs off and reports itself not ready until a call succeeds.

pub mod etcd;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use etcd::{Keys, Revisioned, TxnAnswer};

use crate::fib::cursor::Cursor;
use crate::park::Ticket;
use crate::stepper::{Step, Value};
use crate::upstream::Target;

/// Limb operations the loop may spend moving the cursor in one go (a limb
/// add is about a nanosecond, so this stays well under a millisecond).
const STEP_BUDGET_LIMB_OPS: u64 = 200_000;
/// Indices up to here are built on the loop: F(5000) has 1,045 digits.
const BUILD_ON_LOOP_MAX: u64 = 5_000;
/// Steps taken into one transaction at most; more wait for the next.
const BATCH_STEPS_MAX: usize = 8_192;
/// A batch is given up (its steps answered) after this many conflicts in a
/// row, rather than chasing a hot index for ever.
const ATTEMPTS_MAX: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(800);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// /current from a quorum read started after the request arrived.
    Linearizable,
    /// /current from the endpoint's own copy: no quorum, possibly stale.
    Serializable,
}

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub endpoints: Vec<Target>,
    pub name: String,
    pub node: String,
    pub reads: ReadMode,
    /// The deadline of one etcd call.
    pub call_timeout: Duration,
    /// How long a request waits for etcd before it is answered 503.
    pub wait: Duration,
}

/// What a parked stepper request is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterReply {
    Index {
        index: u64,
        value: Value,
    },
    /// /next at `--max-index`: nothing moved.
    AtCeiling {
        max_index: u64,
    },
    /// etcd did not answer in time; the step was not made.
    Unavailable,
    /// The step's transaction was sent and its outcome could not be read
    /// back in time: it may or may not have been made (at most once).
    OutcomeUnknown,
}

/// A call for the loop to send: where, and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdCall {
    pub endpoint: usize,
    pub path: &'static str,
    pub body: Vec<u8>,
    pub kind: CallKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// A range of the index, for /current (and the first read at start).
    Read,
    /// A batch's compare-and-put.
    Txn,
    /// Both keys read back to resolve a transaction whose answer was lost.
    Readback,
}

impl CallKind {
    pub const ALL: [CallKind; 3] = [CallKind::Read, CallKind::Txn, CallKind::Readback];

    pub fn name(self) -> &'static str {
        match self {
            CallKind::Read => "read",
            CallKind::Txn => "txn",
            CallKind::Readback => "readback",
        }
    }
}

/// How the cursor gets to an index too far to step to on the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Jump {
    /// The loop should hand `Job::Cursor(index)` to the compute worker.
    Wanted(u64),
    Running(u64),
}

/// Counters for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Calls by [`CallKind::ALL`] position: [answered, failed].
    pub calls: [[u64; 2]; 3],
    /// Transactions that found the index moved by another node.
    pub conflicts: u64,
    /// Transactions whose answer was lost and had to be read back.
    pub unknown_outcomes: u64,
    pub jumps: u64,
}

struct Waiter<W> {
    shape: W,
    /// Part of a transaction already sent: expiring it means "unknown".
    sent: bool,
}

struct Batch {
    steps: Vec<(Ticket, Step)>,
    /// Every tag sent for this batch, with the index it was applied on.
    attempts: Vec<(String, u64)>,
    /// The last attempt's answer was lost.
    unknown: bool,
}

pub struct Cluster<W> {
    config: ClusterConfig,
    keys: Keys,
    max_index: u64,
    /// Parked requests by ticket; the queues below name them by ticket and
    /// skip the ones answered already (expired).
    waiting: HashMap<Ticket, Waiter<W>>,
    steps: VecDeque<(Ticket, Step)>,
    reads: Vec<Ticket>,
    /// Reads answered by the last call, at `known`, once the cursor is there.
    reads_answered: Vec<Ticket>,
    batch: Option<Batch>,
    in_flight: Option<(CallKind, Vec<Ticket>)>,
    /// The index as this node last saw it in etcd; None before the first read.
    known: Option<Revisioned>,
    /// At `known.index` whenever no jump runs (None until the first one).
    cursor: Option<Cursor>,
    jump: Option<Jump>,
    endpoint: usize,
    failures_in_a_row: u32,
    retry_at: Option<Instant>,
    /// Makes this process's writer tags unique across restarts.
    nonce: u64,
    seq: u64,
    settled: VecDeque<(Ticket, W, ClusterReply)>,
    stats: ClusterStats,
}

impl<W> Cluster<W> {
    pub fn new(config: ClusterConfig, max_index: u64, nonce: u64) -> Cluster<W> {
        Cluster {
            keys: Keys::new(&config.name, &config.node),
            config,
            max_index,
            waiting: HashMap::new(),
            steps: VecDeque::new(),
            reads: Vec::new(),
            reads_answered: Vec::new(),
            batch: None,
            in_flight: None,
            known: None,
            cursor: None,
            jump: None,
            endpoint: 0,
            failures_in_a_row: 0,
            retry_at: None,
            nonce,
            seq: 0,
            settled: VecDeque::new(),
            stats: ClusterStats::default(),
        }
    }

    pub fn stats(&self) -> ClusterStats {
        self.stats
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether etcd answers and the index is known: /readyz.
    pub fn is_ready(&self) -> bool {
        self.known.is_some() && self.failures_in_a_row < self.rotation()
    }

    /// The index as this node last saw it committed in etcd.
    pub fn known_index(&self) -> Option<u64> {
        self.known.map(|k| k.index)
    }

    /// A /next or /previous, answered once its transaction committed.
    pub fn step(&mut self, ticket: Ticket, step: Step, shape: W) {
        self.waiting.insert(ticket, Waiter { shape, sent: false });
        self.steps.push_back((ticket, step));
    }

    /// A /current, answered from the next read (or transaction) sent.
    pub fn current(&mut self, ticket: Ticket, shape: W) {
        self.waiting.insert(ticket, Waiter { shape, sent: false });
        self.reads.push(ticket);
    }

    /// The request's wait is over (or its client left): its reply now.
    pub fn expire(&mut self, ticket: Ticket) -> Option<(W, ClusterReply)> {
        let waiter = self.waiting.remove(&ticket)?;
        let reply = if waiter.sent {
            ClusterReply::OutcomeUnknown
        } else {
            ClusterReply::Unavailable
        };
        Some((waiter.shape, reply))
    }

    /// The next reply decided, for the loop to deliver.
    pub fn take_settled(&mut self) -> Option<(Ticket, W, ClusterReply)> {
        self.settled.pop_front()
    }

    /// A cursor jump the loop should start on the compute worker.
    pub fn wanted_jump(&self) -> Option<u64> {
        match self.jump {
            Some(Jump::Wanted(index)) => Some(index),
            _ => None,
        }
    }

    /// The loop handed the jump to the compute worker (or could not: then it
    /// tries again after a back-off).
    pub fn jump_started(&mut self, started: bool, now: Instant) {
        if let Some(Jump::Wanted(index)) = self.jump {
            if started {
                self.jump = Some(Jump::Running(index));
            } else {
                self.retry_at = Some(now + BACKOFF_MIN);
            }
        }
    }

    /// A cursor computed off the loop arrived.
    pub fn jumped(&mut self, cursor: Cursor) {
        if self.jump == Some(Jump::Running(cursor.index())) {
            self.jump = None;
            self.stats.jumps += 1;
            self.cursor = Some(cursor);
            self.answer_reads();
        }
    }

    /// When the loop should wake for this service (a back-off ending).
    pub fn next_timer(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Whether a call is due now (the loop must not sleep).
    pub fn has_work(&self, now: Instant) -> bool {
        !self.settled.is_empty()
            || (self.in_flight.is_none()
                && self.jump.is_none()
                && self.retry_at.is_none_or(|t| now >= t)
                && (self.known.is_none()
                    || self.batch.is_some()
                    || !self.steps.is_empty()
                    || !self.reads.is_empty()))
    }

    /// The call to send now, if one is due; the loop reports its outcome
    /// through [`Cluster::answered`] or [`Cluster::failed`].
    pub fn next_call(&mut self, now: Instant) -> Option<EtcdCall> {
        if self.in_flight.is_some() || self.jump.is_some() {
            return None;
        }
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.retry_at = None;
        let Some(known) = self.known else {
            let body = self.keys.range_body(false);
            return Some(self.send(CallKind::Read, etcd::RANGE_PATH, body));
        };
        if self.batch.is_none() {
            self.batch = self.take_batch();
        }
        if let Some(batch) = &mut self.batch {
            if batch.unknown {
                let body = self.keys.readback_body();
                return Some(self.send(CallKind::Readback, etcd::TXN_PATH, body));
            }
            self.seq += 1;
            let tag = format!("{:016x}-{}", self.nonce, self.seq);
            let target = apply_all(known.index, &batch.steps, self.max_index);
            let body = self.keys.step_txn_body(known.mod_revision, target, &tag);
            batch.attempts.push((tag, known.index));
            return Some(self.send(CallKind::Txn, etcd::TXN_PATH, body));
        }
        if self.reads.is_empty() {
            return None;
        }
        let body = self
            .keys
            .range_body(self.config.reads == ReadMode::Serializable);
        Some(self.send(CallKind::Read, etcd::RANGE_PATH, body))
    }

    /// The call in flight got an HTTP answer.
    pub fn answered(&mut self, status: u16, body: &[u8], now: Instant) {
        let Some((kind, reads)) = self.in_flight.take() else {
            return;
        };
        let outcome = match kind {
            CallKind::Read => etcd::read_range(status, body).map(|current| {
                self.learn(current);
            }),
            CallKind::Txn => etcd::read_txn(status, body).map(|answer| self.txn_answered(answer)),
            CallKind::Readback => etcd::read_readback(status, body)
                .map(|(current, writer)| self.read_back(current, writer.as_deref())),
        };
        match outcome {
            Ok(()) => {
                self.count(kind, true);
                self.failures_in_a_row = 0;
                self.reads_answered.extend(reads);
                self.answer_reads();
            }
            Err(e) => self.call_failed(kind, reads, &e, now),
        }
    }

    /// The call in flight got no answer (connect error, closed, timeout), or
    /// could not be sent.
    pub fn failed(&mut self, why: &dyn std::fmt::Display, now: Instant) {
        if let Some((kind, reads)) = self.in_flight.take() {
            self.call_failed(kind, reads, why, now);
        }
    }

    fn send(&mut self, kind: CallKind, path: &'static str, body: Vec<u8>) -> EtcdCall {
        // The reads collected so far are answered by this call (a Txn or a
        // read-back is a quorum read too): they all arrived before it left.
        let reads = std::mem::take(&mut self.reads);
        self.in_flight = Some((kind, reads));
        EtcdCall {
            endpoint: self.endpoint,
            path,
            body,
            kind,
        }
    }

    /// The steps still waiting, in arrival order, as a new batch.
    fn take_batch(&mut self) -> Option<Batch> {
        let mut steps = Vec::new();
        while steps.len() < BATCH_STEPS_MAX {
            let Some((ticket, step)) = self.steps.pop_front() else {
                break;
            };
            if let Some(waiter) = self.waiting.get_mut(&ticket) {
                waiter.sent = true;
                steps.push((ticket, step));
            }
        }
        (!steps.is_empty()).then_some(Batch {
            steps,
            attempts: Vec::new(),
            unknown: false,
        })
    }

    fn txn_answered(&mut self, answer: TxnAnswer) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        match answer {
            TxnAnswer::Committed { revision } => {
                let base = batch.attempts.last().map_or(0, |(_, base)| *base);
                let index = self.render(&batch, base);
                self.known = Some(Revisioned {
                    index,
                    mod_revision: revision,
                });
            }
            TxnAnswer::Moved { current, writer } => {
                self.resolve(batch, current, writer.as_deref(), false);
            }
        }
    }

    fn read_back(&mut self, current: Revisioned, writer: Option<&str>) {
        if let Some(batch) = self.batch.take() {
            self.resolve(batch, current, writer, true);
        } else {
            self.learn(current);
        }
    }

    /// The index moved: either by one of this batch's attempts (its tag is
    /// the writer's), then the batch is done, or by another node, then it
    /// goes again on the index as it is now.
    fn resolve(
        &mut self,
        mut batch: Batch,
        current: Revisioned,
        writer: Option<&str>,
        readback: bool,
    ) {
        let applied = writer.and_then(|w| {
            let attempt = batch.attempts.iter().find(|(tag, _)| tag == w);
            attempt.map(|&(_, base)| base)
        });
        if let Some(base) = applied {
            self.render(&batch, base);
            self.learn(current);
            return;
        }
        if !readback {
            self.stats.conflicts += 1;
        }
        self.learn(current);
        batch.unknown = false;
        // Steps whose wait ended were answered "unknown"; leaving them out
        // now makes that answer true (they happen at most once: never).
        batch
            .steps
            .retain(|(ticket, _)| self.waiting.contains_key(ticket));
        if batch.attempts.len() >= ATTEMPTS_MAX {
            log::warn!(
                "a batch of {} step(s) lost {ATTEMPTS_MAX} races for the index in a row; answering 503",
                batch.steps.len()
            );
            for (ticket, _) in batch.steps {
                self.settle(ticket, ClusterReply::OutcomeUnknown);
            }
            return;
        }
        if !batch.steps.is_empty() {
            self.batch = Some(batch);
        }
    }

    /// Walks the cursor from `base` through the batch's steps, answering
    /// each with the index it made; returns the index after the last.
    fn render(&mut self, batch: &Batch, base: u64) -> u64 {
        self.move_cursor(base);
        let Some(mut cursor) = self.cursor.take() else {
            // Not reachable: a batch is only sent once the cursor is at the
            // index it is applied on. Answer from arithmetic alone then.
            return apply_all(base, &batch.steps, self.max_index);
        };
        for &(ticket, step) in &batch.steps {
            let reply = match step {
                Step::Next if cursor.index() >= self.max_index => ClusterReply::AtCeiling {
                    max_index: self.max_index,
                },
                Step::Next => {
                    cursor.forward();
                    index_reply(&cursor)
                }
                Step::Previous => {
                    cursor.back();
                    index_reply(&cursor)
                }
            };
            if self.waiting.contains_key(&ticket) {
                self.settle(ticket, reply);
            }
        }
        let index = cursor.index();
        self.cursor = Some(cursor);
        index
    }

    /// etcd holds `current`: remember it and move the cursor there.
    fn learn(&mut self, current: Revisioned) {
        if self
            .known
            .is_some_and(|k| current.mod_revision < k.mod_revision)
        {
            return; // a serializable read from a member that lags behind
        }
        self.known = Some(current);
        self.move_cursor(current.index);
    }

    /// Steps the cursor to `index` when that is cheap, or asks for a jump.
    fn move_cursor(&mut self, index: u64) {
        let cost = match &self.cursor {
            None if index <= BUILD_ON_LOOP_MAX => {
                self.cursor = Some(Cursor::at(index));
                return;
            }
            None => u64::MAX,
            Some(c) => index
                .abs_diff(c.index())
                .saturating_mul(c.decimal_len() as u64 / 18 + 1),
        };
        if cost > STEP_BUDGET_LIMB_OPS {
            self.cursor = None;
            self.jump = Some(Jump::Wanted(index));
            return;
        }
        if let Some(cursor) = &mut self.cursor {
            while cursor.index() < index {
                cursor.forward();
            }
            while cursor.index() > index {
                cursor.back();
            }
        }
    }

    /// Answers the reads of the last call at the known index, once the
    /// cursor is there.
    fn answer_reads(&mut self) {
        if self.reads_answered.is_empty() {
            return;
        }
        let Some(cursor) = self.cursor.as_ref().filter(|_| self.jump.is_none()) else {
            return;
        };
        let reply = index_reply(cursor);
        for ticket in std::mem::take(&mut self.reads_answered) {
            self.settle(ticket, reply.clone());
        }
    }

    fn call_failed(
        &mut self,
        kind: CallKind,
        reads: Vec<Ticket>,
        why: &dyn std::fmt::Display,
        now: Instant,
    ) {
        self.count(kind, false);
        if kind == CallKind::Txn {
            self.stats.unknown_outcomes += 1;
        }
        if let Some(batch) = &mut self.batch
            && kind != CallKind::Read
        {
            batch.unknown = true;
        }
        // The reads go with the next call, which leaves after this moment.
        self.reads.extend(reads);
        let endpoint = &self.config.endpoints[self.endpoint];
        if self.failures_in_a_row < self.rotation() {
            log::warn!("etcd {} at {endpoint} failed: {why}", kind.name());
        } else {
            log::debug!("etcd {} at {endpoint} failed: {why}", kind.name());
        }
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        self.endpoint = (self.endpoint + 1) % self.config.endpoints.len();
        if self.failures_in_a_row >= self.rotation() {
            let rounds = self.failures_in_a_row / self.rotation();
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << rounds.min(4))
                .min(BACKOFF_MAX);
            if self.failures_in_a_row == self.rotation() {
                log::error!("no etcd endpoint answers; steps wait, then get 503 (not ready)");
            }
            self.retry_at = Some(now + backoff);
        }
    }

    fn rotation(&self) -> u32 {
        u32::try_from(self.config.endpoints.len()).unwrap_or(u32::MAX)
    }

    fn count(&mut self, kind: CallKind, succeeded: bool) {
        let row = CallKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.stats.calls[row][usize::from(!succeeded)] += 1;
    }

    fn settle(&mut self, ticket: Ticket, reply: ClusterReply) {
        if let Some(waiter) = self.waiting.remove(&ticket) {
            self.settled.push_back((ticket, waiter.shape, reply));
        }
    }
}

/// The index after one step from `index` (the same rule the LMDB stepper
/// follows: /next stops at the ceiling, /previous at 0).
fn apply(index: u64, step: Step, max_index: u64) -> u64 {
    match step {
        Step::Next if index >= max_index => index,
        Step::Next => index + 1,
        Step::Previous => index.saturating_sub(1),
    }
}

fn apply_all(index: u64, steps: &[(Ticket, Step)], max_index: u64) -> u64 {
    steps
        .iter()
        .fold(index, |i, &(_, step)| apply(i, step, max_index))
}

fn index_reply(cursor: &Cursor) -> ClusterReply {
    ClusterReply::Index {
        index: cursor.index(),
        value: Value::at_cursor(cursor),
    }
}

/// Only the figures that matter in a log line.
impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("steps", &self.steps.len())
            .field("attempts", &self.attempts.len())
            .field("unknown", &self.unknown)
            .finish()
    }
}
