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
//! - Every request waits at most `wait` (the loop expires its park). A step
//!   that no attempt sent so far can still apply (never sent, or every
//!   attempt lost its compare) is answered [`ClusterReply::Unavailable`] and
//!   left out of later attempts: it never happens. A step whose attempt is
//!   in flight, lost, or read back as "not yet" while the index still sits
//!   at the compared revision (the attempt may still arrive) is answered
//!   [`ClusterReply::OutcomeUnknown`]: it happens once or not at all.
//! - A node that loses the race says so in the same transaction (its
//!   failure branch rewrites its `losing` key); a winner that sees another
//!   node's recent loss waits about one round trip (at most 20 ms, `YIELD_MAX`)
//!   before its next attempt. Without that, a node nearer etcd's leader
//!   wins every race and the others' steps wait out their time.
//! - The cursor follows the index etcd holds: a few limb-wise steps for a
//!   short distance, a jump computed on the compute worker for a long one
//!   (see [`Jump`]); nothing is sent while it runs.
//!
//! Calls rotate through the endpoints on failure; after a whole round fails
//! the node backs off and reports itself not ready until a call succeeds.

pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use wire::{Keys, Revisioned, TxnAnswer};

use crate::net::upstream::Target;
use crate::reply::park::Ticket;
use crate::services::fib::cursor::Cursor;
use crate::services::stepper::{Step, Value};

/// Limb operations the loop may spend moving the cursor in one go (a limb
/// add is about a nanosecond, so this stays well under a millisecond).
const STEP_BUDGET_LIMB_OPS: u64 = 200_000;
/// Indices up to here are built on the loop: F(5000) has 1,045 digits.
const BUILD_ON_LOOP_MAX: u64 = 5_000;
/// Steps taken into one transaction at most; more wait for the next.
const BATCH_STEPS_MAX: usize = 8_192;
/// The longest a winner waits for a node that keeps losing the race.
const YIELD_MAX: Duration = Duration::from_millis(20);
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
    /// Pauses after a commit that saw another node losing races.
    pub yields: u64,
    pub jumps: u64,
}

struct Waiter<W> {
    shape: W,
    /// Part of a transaction already sent: expiring it means "unknown".
    sent: bool,
}

struct Batch {
    /// Its steps, in order; every attempt carries exactly these.
    steps: Vec<(Ticket, Step)>,
    attempts: Vec<Attempt>,
    /// The last attempt's answer was lost: read back before anything else.
    unknown: bool,
    /// Read back as not applied, but the index has not moved since: the
    /// attempt may still arrive and apply (a stopped etcd member holding
    /// it), until another attempt on the same revision fences it.
    unfenced: bool,
}

/// One transaction sent for a batch.
struct Attempt {
    /// The writer tag it puts; read back, it says this attempt applied.
    tag: String,
    /// The index it applies the batch on.
    base: u64,
    /// The index's mod_revision it compares with: it can apply only while
    /// the index is still at that revision.
    compare_revision: u64,
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
    /// When the call in flight (or the last one) was sent.
    sent_at: Instant,
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
            sent_at: Instant::now(),
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
        let reply = if waiter.sent && self.batch_may_be_applied() {
            ClusterReply::OutcomeUnknown
        } else {
            ClusterReply::Unavailable
        };
        Some((waiter.shape, reply))
    }

    /// Whether an attempt of the current batch may have been applied
    /// without this node knowing yet: one is in flight, or its answer was
    /// lost and not read back yet.
    fn batch_may_be_applied(&self) -> bool {
        let in_flight = matches!(
            self.in_flight,
            Some((CallKind::Txn | CallKind::Readback, _))
        );
        in_flight || self.batch.as_ref().is_some_and(|b| b.unknown || b.unfenced)
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
            return Some(self.send(CallKind::Read, wire::RANGE_PATH, body, now));
        };
        if self.batch.is_none() {
            self.batch = self.take_batch();
        }
        if let Some(batch) = &mut self.batch
            && !batch.unknown
            && !batch.unfenced
        {
            // No attempt can apply any more: steps whose wait ended (and
            // were answered then) are left out, so they never happen.
            let waiting = &self.waiting;
            batch
                .steps
                .retain(|(ticket, _)| waiting.contains_key(ticket));
            if batch.steps.is_empty() {
                self.batch = None;
                return self.next_call(now);
            }
        }
        if let Some(batch) = &mut self.batch {
            if batch.unknown {
                self.stats.unknown_outcomes += 1;
                let body = self.keys.readback_body();
                return Some(self.send(CallKind::Readback, wire::TXN_PATH, body, now));
            }
            self.seq += 1;
            let tag = format!("{:016x}-{}", self.nonce, self.seq);
            let target = apply_all(known.index, &batch.steps, self.max_index);
            let body = self.keys.step_txn_body(known.mod_revision, target, &tag);
            batch.attempts.push(Attempt {
                tag,
                base: known.index,
                compare_revision: known.mod_revision,
            });
            return Some(self.send(CallKind::Txn, wire::TXN_PATH, body, now));
        }
        if self.reads.is_empty() {
            return None;
        }
        let body = self
            .keys
            .range_body(self.config.reads == ReadMode::Serializable);
        Some(self.send(CallKind::Read, wire::RANGE_PATH, body, now))
    }

    /// The call in flight got an HTTP answer.
    pub fn answered(&mut self, status: u16, body: &[u8], now: Instant) {
        let Some((kind, reads)) = self.in_flight.take() else {
            return;
        };
        let outcome = match kind {
            CallKind::Read => wire::read_range(status, body).map(|current| {
                self.learn(current);
            }),
            CallKind::Txn => wire::read_txn(&self.keys, status, body)
                .map(|answer| self.txn_answered(answer, now)),
            CallKind::Readback => wire::read_readback(status, body)
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

    /// The call in flight got no answer (closed, timeout): it may have
    /// reached etcd.
    pub fn failed(&mut self, why: &dyn std::fmt::Display, now: Instant) {
        if let Some((kind, reads)) = self.in_flight.take() {
            self.call_failed(kind, reads, why, now);
        }
    }

    /// The call in flight was never handed to the client (no connection
    /// was free): a transaction in it certainly did not happen, so there is
    /// nothing to read back.
    pub fn not_sent(&mut self, why: &dyn std::fmt::Display, now: Instant) {
        let unknown_before = self.batch.as_ref().is_some_and(|b| b.unknown);
        self.failed(why, now);
        if let Some(batch) = &mut self.batch {
            batch.unknown = unknown_before;
        }
    }

    fn send(
        &mut self,
        kind: CallKind,
        path: &'static str,
        body: Vec<u8>,
        now: Instant,
    ) -> EtcdCall {
        // The reads collected so far are answered by this call (a Txn or a
        // read-back is a quorum read too): they all arrived before it left.
        let reads = std::mem::take(&mut self.reads);
        self.in_flight = Some((kind, reads));
        self.sent_at = now;
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
            unfenced: false,
        })
    }

    fn txn_answered(&mut self, answer: TxnAnswer, now: Instant) {
        let Some(batch) = self.batch.take() else {
            return;
        };
        match answer {
            TxnAnswer::Committed {
                revision,
                others_losing,
            } => {
                if others_losing {
                    // Give a node that keeps losing a window of about one
                    // round trip to land its attempt before this node's next.
                    let round_trip = now.saturating_duration_since(self.sent_at);
                    self.retry_at = Some(now + round_trip.min(YIELD_MAX));
                    self.stats.yields += 1;
                }
                let base = batch.attempts.last().map_or(0, |a| a.base);
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
        let applied = writer.and_then(|w| batch.attempts.iter().find(|a| a.tag == w));
        let applied = applied.map(|a| a.base);
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
        // Only an attempt whose compared revision is still the index's can
        // ever apply; the others are forgotten.
        batch
            .attempts
            .retain(|a| a.compare_revision >= current.mod_revision);
        batch.unfenced = !batch.attempts.is_empty();
        if batch
            .steps
            .iter()
            .any(|(t, _)| self.waiting.contains_key(t))
        {
            self.batch = Some(batch);
        }
    }

    /// Walks the cursor from `base` through the batch's steps, answering
    /// each with the index it made; returns the index after the last.
    fn render(&mut self, batch: &Batch, base: u64) -> u64 {
        self.move_cursor(base);
        let Some(mut cursor) = self.cursor.take() else {
            // Not reachable: a batch is only sent once the cursor is at the
            // index it is applied on. Made, but not renderable: say so.
            log::error!("cluster: no cursor at index {base} to render a committed batch");
            for &(ticket, _) in &batch.steps {
                self.settle(ticket, ClusterReply::OutcomeUnknown);
            }
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
            // Each step costs the limbs of the larger end: F(i) has about
            // 0.209·i digits, 19 to a limb (i/86 errs on the dear side).
            Some(c) => index
                .abs_diff(c.index())
                .saturating_mul(index.max(c.index()) / 86 + 1),
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

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;

    use super::*;
    use crate::reply::park::Parking;

    type Node = Cluster<u32>;

    fn node(endpoints: usize) -> Node {
        let endpoints = (0..endpoints)
            .map(|i| Target::resolve(&format!("http://127.0.0.1:{}", 2379 + i)).unwrap())
            .collect();
        let config = ClusterConfig {
            endpoints,
            name: "t".into(),
            node: "n1".into(),
            reads: ReadMode::Linearizable,
            call_timeout: Duration::from_secs(1),
            wait: Duration::from_secs(3),
        };
        Cluster::new(config, 100, 0xab)
    }

    fn tickets(n: usize) -> Vec<Ticket> {
        let mut parking = Parking::<()>::new(1024);
        (0..n)
            .map(|i| {
                let conn = crate::net::conn::ConnRef {
                    token: mio::Token(i),
                    serial: i as u64,
                    peer: std::net::Ipv4Addr::LOCALHOST.into(),
                };
                parking.park(conn, (), None).unwrap()
            })
            .collect()
    }

    fn kv(index: u64, rev: u64) -> String {
        format!(
            r#"{{"kvs":[{{"mod_revision":"{rev}","value":"{}"}}]}}"#,
            B64.encode(index.to_string())
        )
    }

    fn range(index: u64, rev: u64) -> String {
        kv(index, rev)
    }

    fn moved(index: u64, rev: u64, writer: &str) -> String {
        format!(
            r#"{{"header":{{"revision":"{rev}"}},"responses":[{{"response_range":{}}},{{"response_range":{{"kvs":[{{"value":"{}"}}]}}}}]}}"#,
            kv(index, rev),
            B64.encode(writer)
        )
    }

    fn committed(rev: u64) -> String {
        format!(r#"{{"header":{{"revision":"{rev}"}},"succeeded":true}}"#)
    }

    /// The tag and the put index of a step transaction's body.
    fn sent(call: &EtcdCall) -> (String, u64, String) {
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        let put = |i: usize| {
            let v = body["success"][i]["request_put"]["value"].as_str().unwrap();
            String::from_utf8(B64.decode(v).unwrap()).unwrap()
        };
        let expected = body["compare"][0]["mod_revision"]
            .as_str()
            .unwrap()
            .to_owned();
        (put(1), put(0).parse().unwrap(), expected)
    }

    fn replies(n: &mut Node) -> Vec<(u32, ClusterReply)> {
        std::iter::from_fn(|| n.take_settled().map(|(_, w, r)| (w, r))).collect()
    }

    fn index(reply: &ClusterReply) -> u64 {
        match reply {
            ClusterReply::Index { index, .. } => *index,
            other => panic!("not an index: {other:?}"),
        }
    }

    /// A node that has read index `at` (revision `rev`).
    fn started(at: u64, rev: u64) -> (Node, Instant) {
        let mut n = node(3);
        let now = Instant::now();
        let call = n.next_call(now).unwrap();
        assert_eq!(call.kind, CallKind::Read);
        n.answered(200, range(at, rev).as_bytes(), now);
        assert!(n.is_ready());
        (n, now)
    }

    #[test]
    fn a_pass_of_steps_is_one_txn_and_replies_wait_for_its_commit() {
        let (mut n, now) = started(5, 10);
        let t = tickets(4);
        n.step(t[0], Step::Next, 0);
        n.step(t[1], Step::Next, 1);
        n.step(t[2], Step::Previous, 2);
        n.step(t[3], Step::Next, 3);
        let call = n.next_call(now).unwrap();
        assert_eq!(call.kind, CallKind::Txn);
        let (tag, put, expected) = sent(&call);
        assert_eq!((put, expected.as_str()), (7, "10"));
        assert_eq!(tag, "00000000000000ab-1");
        assert!(n.next_call(now).is_none(), "one call in flight");
        assert!(replies(&mut n).is_empty(), "nothing before the commit");
        n.answered(200, committed(11).as_bytes(), now);
        let got: Vec<(u32, u64)> = replies(&mut n)
            .iter()
            .map(|(w, r)| (*w, index(r)))
            .collect();
        assert_eq!(got, [(0, 6), (1, 7), (2, 6), (3, 7)]);
        assert_eq!(n.known_index(), Some(7));
        let ClusterReply::Index { value, .. } = &replies_after_read(&mut n, now)[0].1 else {
            panic!()
        };
        assert_eq!(value.decimal_len(), 2, "F(7) = 13");
    }

    fn replies_after_read(n: &mut Node, now: Instant) -> Vec<(u32, ClusterReply)> {
        n.current(tickets(1)[0], 9);
        let call = n.next_call(now).unwrap();
        let known = n.known.unwrap();
        n.answered(200, range(known.index, known.mod_revision).as_bytes(), now);
        assert_eq!(call.kind, CallKind::Read);
        replies(n)
    }

    #[test]
    fn reads_of_one_pass_share_one_quorum_read_and_later_ones_wait_for_the_next() {
        let (mut n, now) = started(3, 4);
        let t = tickets(3);
        n.current(t[0], 0);
        n.current(t[1], 1);
        let call = n.next_call(now).unwrap();
        assert_eq!(call.kind, CallKind::Read);
        let body: serde_json::Value = serde_json::from_slice(&call.body).unwrap();
        assert_eq!(body["serializable"], false);
        n.current(t[2], 2); // arrived after the read left: not answered by it
        n.answered(200, range(4, 5).as_bytes(), now);
        let got: Vec<(u32, u64)> = replies(&mut n)
            .iter()
            .map(|(w, r)| (*w, index(r)))
            .collect();
        assert_eq!(got, [(0, 4), (1, 4)]);
        assert_eq!(n.next_call(now).unwrap().kind, CallKind::Read);
        n.answered(200, range(4, 5).as_bytes(), now);
        assert_eq!(index(&replies(&mut n)[0].1), 4);
    }

    #[test]
    fn a_conflict_applies_the_batch_again_on_the_index_another_node_made() {
        let (mut n, now) = started(5, 10);
        let t = tickets(2);
        n.step(t[0], Step::Next, 0);
        n.step(t[1], Step::Next, 1);
        n.next_call(now).unwrap();
        n.answered(200, moved(9, 12, "someone-else-3").as_bytes(), now);
        assert!(replies(&mut n).is_empty());
        assert_eq!(n.stats().conflicts, 1);
        let (tag, put, expected) = sent(&n.next_call(now).unwrap());
        assert_eq!((put, expected.as_str()), (11, "12"));
        assert_eq!(tag, "00000000000000ab-2", "a new tag per attempt");
        n.answered(200, committed(13).as_bytes(), now);
        let got: Vec<u64> = replies(&mut n).iter().map(|(_, r)| index(r)).collect();
        assert_eq!(got, [10, 11]);
    }

    #[test]
    fn a_lost_answer_is_read_back_and_an_applied_txn_is_not_sent_again() {
        let (mut n, now) = started(5, 10);
        n.step(tickets(1)[0], Step::Next, 0);
        let (tag, _, _) = sent(&n.next_call(now).unwrap());
        n.failed(&"no answer before the deadline", now);
        let readback = n.next_call(now).unwrap();
        assert_eq!(readback.kind, CallKind::Readback);
        assert_eq!(readback.endpoint, 1, "the next endpoint");
        // It was applied, and another node stepped after it.
        n.answered(200, moved(8, 15, &tag).as_bytes(), now);
        assert_eq!(index(&replies(&mut n)[0].1), 6);
        assert_eq!(n.known_index(), Some(8));
        assert!(n.next_call(now).is_none(), "nothing left to send");
    }

    #[test]
    fn a_lost_answer_that_was_not_applied_goes_again_under_a_new_tag() {
        let (mut n, now) = started(5, 10);
        n.step(tickets(1)[0], Step::Previous, 0);
        n.next_call(now).unwrap();
        n.failed(&"closed", now);
        n.next_call(now).unwrap();
        n.answered(200, moved(5, 10, "00000000000000ab-0").as_bytes(), now);
        let (tag, put, expected) = sent(&n.next_call(now).unwrap());
        assert_eq!(
            (tag.as_str(), put, expected.as_str()),
            ("00000000000000ab-2", 4, "10")
        );
        // The first attempt arrives late and wins: the second's compare
        // fails and the writer tag names the first.
        n.answered(200, moved(4, 11, "00000000000000ab-1").as_bytes(), now);
        assert_eq!(index(&replies(&mut n)[0].1), 4);
        assert!(n.next_call(now).is_none());
    }

    #[test]
    fn an_expired_step_is_unavailable_before_it_is_sent_and_unknown_after() {
        let (mut n, now) = started(5, 10);
        let t = tickets(3);
        n.step(t[0], Step::Next, 0);
        assert_eq!(n.expire(t[0]), Some((0, ClusterReply::Unavailable)));
        n.step(t[1], Step::Next, 1);
        let (_, put, _) = sent(&n.next_call(now).unwrap());
        assert_eq!(put, 6, "the expired step is not in the batch");
        assert_eq!(n.expire(t[1]), Some((1, ClusterReply::OutcomeUnknown)));
        n.failed(&"timeout", now);
        // Not applied, read back: the batch has no live step left, so it is
        // dropped, which makes "unknown" true (it happened zero times).
        n.next_call(now).unwrap();
        n.answered(200, moved(5, 10, "").as_bytes(), now);
        n.step(t[2], Step::Next, 2);
        let (_, put, _) = sent(&n.next_call(now).unwrap());
        assert_eq!(put, 6);
    }

    #[test]
    fn a_far_move_waits_for_a_jump_computed_off_the_loop() {
        let (mut n, now) = started(5, 10);
        n.current(tickets(1)[0], 0);
        n.next_call(now).unwrap();
        n.answered(200, range(90_000, 99).as_bytes(), now);
        assert_eq!(n.wanted_jump(), Some(90_000));
        assert!(replies(&mut n).is_empty());
        n.jump_started(true, now);
        assert!(n.next_call(now).is_none(), "nothing is sent during a jump");
        n.jumped(Cursor::at(90_000));
        let got = replies(&mut n);
        assert_eq!(index(&got[0].1), 90_000);
        let ClusterReply::Index { value, .. } = &got[0].1 else {
            panic!()
        };
        assert_eq!(
            value.decimal_len(),
            crate::services::fib::decimal(90_000).len()
        );
    }

    #[test]
    fn a_whole_round_of_failures_is_not_ready_and_backs_off() {
        let (mut n, now) = started(5, 10);
        for ticket in tickets(3) {
            n.current(ticket, 0);
            n.next_call(now).unwrap();
            n.failed(&"refused", now);
        }
        assert!(!n.is_ready());
        assert!(n.next_call(now).is_none(), "backing off");
        let later = n.next_timer().unwrap();
        let call = n.next_call(later).unwrap();
        n.answered(200, range(5, 10).as_bytes(), later);
        assert!(n.is_ready());
        assert_eq!(call.kind, CallKind::Read);
        assert_eq!(
            replies(&mut n).len(),
            3,
            "every read waited and was answered"
        );
    }

    #[test]
    fn next_at_the_ceiling_is_refused_inside_the_batch() {
        let (mut n, now) = started(99, 10);
        let t = tickets(3);
        n.step(t[0], Step::Next, 0);
        n.step(t[1], Step::Next, 1);
        n.step(t[2], Step::Previous, 2);
        let (_, put, _) = sent(&n.next_call(now).unwrap());
        assert_eq!(put, 99);
        n.answered(200, committed(11).as_bytes(), now);
        let got = replies(&mut n);
        assert_eq!(index(&got[0].1), 100);
        assert_eq!(got[1].1, ClusterReply::AtCeiling { max_index: 100 });
        assert_eq!(index(&got[2].1), 99);
    }

    #[test]
    fn an_error_status_or_garbage_is_a_failed_call() {
        let (mut n, now) = started(5, 10);
        n.step(tickets(1)[0], Step::Next, 0);
        n.next_call(now).unwrap();
        n.answered(503, br#"{"error":"etcdserver: request timed out"}"#, now);
        assert_eq!(n.next_call(now).unwrap().kind, CallKind::Readback);
        n.answered(200, b"not json", now);
        assert_eq!(n.next_call(now).unwrap().kind, CallKind::Readback);
    }

    #[test]
    fn a_step_read_back_as_not_applied_stays_unknown_until_a_new_attempt_fences_the_old() {
        let (mut n, now) = started(5, 10);
        let t = tickets(2);
        n.step(t[0], Step::Next, 0);
        n.step(t[1], Step::Next, 1);
        n.next_call(now).unwrap();
        n.failed(&"timeout", now);
        n.next_call(now).unwrap();
        // Not applied yet, and the index is still at the compared revision:
        // the lost attempt may still arrive and apply.
        n.answered(200, moved(5, 10, "").as_bytes(), now);
        assert_eq!(n.expire(t[0]), Some((0, ClusterReply::OutcomeUnknown)));
        // So the next attempt carries both steps, on the same revision.
        let (_, put, expected) = sent(&n.next_call(now).unwrap());
        assert_eq!((put, expected.as_str()), (7, "10"));
        n.answered(200, committed(11).as_bytes(), now);
        let got: Vec<(u32, u64)> = replies(&mut n)
            .iter()
            .map(|(w, r)| (*w, index(r)))
            .collect();
        assert_eq!(got, [(1, 7)]);
    }

    #[test]
    fn a_step_that_expires_between_attempts_no_attempt_can_apply_is_left_out() {
        let (mut n, now) = started(5, 10);
        let t = tickets(2);
        n.step(t[0], Step::Next, 0);
        n.step(t[1], Step::Next, 1);
        n.next_call(now).unwrap();
        n.answered(200, moved(8, 12, "other-1").as_bytes(), now);
        assert_eq!(n.expire(t[0]), Some((0, ClusterReply::Unavailable)));
        let (_, put, expected) = sent(&n.next_call(now).unwrap());
        assert_eq!((put, expected.as_str()), (9, "12"), "one step, not two");
    }

    #[test]
    fn a_winner_that_sees_another_node_losing_yields_one_round_trip() {
        let (mut n, now) = started(5, 10);
        n.step(tickets(1)[0], Step::Next, 0);
        n.next_call(now).unwrap();
        let later = now + Duration::from_millis(4);
        let losing = B64.encode("/fibd/t/losing/n2");
        let answer = format!(
            r#"{{"header":{{"revision":"11"}},"succeeded":true,"responses":[{{}},{{}},{{"response_range":{{"kvs":[{{"key":"{losing}"}}]}}}}]}}"#
        );
        n.answered(200, answer.as_bytes(), later);
        assert_eq!(replies(&mut n).len(), 1);
        n.step(tickets(2)[1], Step::Next, 1);
        assert!(n.next_call(later).is_none(), "yielding");
        assert_eq!(n.next_timer(), Some(later + Duration::from_millis(4)));
        assert!(n.next_call(later + Duration::from_millis(4)).is_some());
        assert_eq!(n.stats().yields, 1);
    }
}
