//! The index in etcd (`--store etcd`): shared by every fibd node, and this
//! node's group commit is one etcd transaction per batch. This file is the
//! protocol: which call to send for the batch the stepper handed over, and
//! what etcd's answer means for it. Sans-IO and sans-clock: the loop sends
//! the calls through the outbound client and hands the answers back;
//! `wire` is the JSON gateway's format. Batching, the cursor and the
//! replies are the stepper's (`services::stepper`), as with LMDB.
//!
//! # Rules
//! - One etcd call in flight at a time. The stepper's batches collect
//!   meanwhile, so a loop pass's reads share one quorum read and its steps
//!   one transaction.
//! - A batch's transaction compares the index's mod_revision with the one
//!   this node last saw. When another node moved the index first, the answer
//!   carries the index as it is now ([`IndexOutcome::Moved`]); the stepper
//!   applies the batch again on it. Replies are rendered only once their
//!   transaction committed: the values they show are known only then.
//! - A transaction whose answer was lost (a timeout, a closed connection, an
//!   error status) is never guessed at: a read-back of the index and of this
//!   node's writer tag, at one revision, tells whether it was applied. Until
//!   it is known, nothing else is sent. Sending the batch again with a new
//!   tag on the same revision fences the old attempt: at most one attempt of
//!   a batch can ever match the compare.
//! - While an attempt may still apply (one is in flight, its answer was lost,
//!   or it was read back as "not yet" while the index still sits at the
//!   revision it compared: a stopped member may still hold it),
//!   [`EtcdIndex::may_apply`] says so, and a step whose wait ends then is
//!   answered "outcome unknown": it happens once or not at all.
//! - A node that loses the race says so in the same transaction (its
//!   failure branch rewrites its `losing` key); a winner that sees another
//!   node's recent loss waits about one round trip (at most 20 ms,
//!   `YIELD_MAX`) before its next attempt. Without that, a node nearer
//!   etcd's leader wins every race and the others' steps wait out their time.
//!
//! Calls rotate through the endpoints on failure; after a whole round fails
//! the node backs off and reports itself not ready until a call succeeds.

pub mod wire;

use std::fmt::Display;
use std::time::{Duration, Instant};

use wire::{Keys, Revisioned, TxnAnswer};

use crate::net::upstream::{CallError, Target};
use crate::store::index::{IndexBatch, IndexOutcome, StoreCall};

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// A range of the index: the first read at start, and reads-only batches.
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

/// Counters for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EtcdStats {
    /// Calls by [`CallKind::ALL`] position: [answered, failed].
    pub calls: [[u64; 2]; 3],
    /// Transactions that found the index moved by another node.
    pub conflicts: u64,
    /// Transactions whose answer was lost and had to be read back.
    pub unknown_outcomes: u64,
    /// Pauses after a commit that saw another node losing races.
    pub yields: u64,
}

/// The stepper's batch in this store, across the attempts made for it.
#[derive(Debug)]
struct Batch {
    base: u64,
    target: u64,
    steps: u64,
    /// A call is due for it (handed over, not sent yet).
    due: bool,
    attempts: Vec<Attempt>,
    /// The last attempt's answer was lost: read back before anything else.
    unknown: bool,
    /// Read back as not applied, but the index has not moved since: the
    /// attempt may still arrive and apply, until another attempt on the
    /// same revision fences it.
    unfenced: bool,
}

/// One transaction sent for a batch.
#[derive(Debug)]
struct Attempt {
    /// The writer tag it puts; read back, it says this attempt applied.
    tag: String,
    /// The index it applies the batch on.
    base: u64,
    /// The index's mod_revision it compares with: it can apply only while
    /// the index is still at that revision.
    compare_revision: u64,
}

pub struct EtcdIndex {
    config: ClusterConfig,
    keys: Keys,
    /// The index as this node last saw it in etcd; None before the first read.
    known: Option<Revisioned>,
    batch: Option<Batch>,
    in_flight: Option<CallKind>,
    /// When the call in flight (or the last one) was sent.
    sent_at: Instant,
    endpoint: usize,
    failures_in_a_row: u32,
    /// No call before this (a back-off, or a yield to a losing node).
    retry_at: Option<Instant>,
    /// Makes this process's writer tags unique across restarts.
    nonce: u64,
    seq: u64,
    stats: EtcdStats,
}

impl EtcdIndex {
    pub fn new(config: ClusterConfig, nonce: u64, now: Instant) -> EtcdIndex {
        EtcdIndex {
            keys: Keys::new(&config.name, &config.node),
            config,
            known: None,
            batch: None,
            in_flight: None,
            sent_at: now,
            endpoint: 0,
            failures_in_a_row: 0,
            retry_at: None,
            nonce,
            seq: 0,
            stats: EtcdStats::default(),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn stats(&self) -> EtcdStats {
        self.stats
    }

    /// Whether etcd answers and the index is known: /readyz.
    pub fn is_ready(&self) -> bool {
        self.known.is_some() && self.failures_in_a_row < self.rotation()
    }

    /// Whether a batch may be handed over now.
    pub fn accepts(&self, now: Instant) -> bool {
        self.known.is_some()
            && self.in_flight.is_none()
            && !self.batch.as_ref().is_some_and(|b| b.due)
            && self.retry_at.is_none_or(|t| now >= t)
    }

    /// Takes the stepper's batch: a new one, or the same one again.
    pub fn submit(&mut self, batch: IndexBatch) {
        match &mut self.batch {
            Some(current) if !batch.fresh => {
                current.base = batch.base;
                current.target = batch.target;
                current.steps = batch.steps;
                current.due = true;
            }
            _ => {
                self.batch = Some(Batch {
                    base: batch.base,
                    target: batch.target,
                    steps: batch.steps,
                    due: true,
                    attempts: Vec::new(),
                    unknown: false,
                    unfenced: false,
                });
            }
        }
    }

    /// Whether an attempt of the batch may have been applied without this
    /// node knowing yet: one is in flight, or its answer was lost, or it
    /// was read back as "not yet" and is not fenced.
    pub fn may_apply(&self) -> bool {
        matches!(self.in_flight, Some(CallKind::Txn | CallKind::Readback))
            || self.batch.as_ref().is_some_and(|b| b.unknown || b.unfenced)
    }

    /// When the loop should wake for this store (a back-off ending).
    pub fn next_timer(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Whether a call is due now (the loop must not sleep).
    pub fn has_work(&self, now: Instant) -> bool {
        self.in_flight.is_none()
            && self.retry_at.is_none_or(|t| now >= t)
            && (self.known.is_none() || self.batch.as_ref().is_some_and(|b| b.due))
    }

    /// The call to send now, if one is due; its outcome comes back through
    /// [`EtcdIndex::answered`], [`EtcdIndex::failed`] or
    /// [`EtcdIndex::not_sent`].
    pub fn next_call(&mut self, now: Instant) -> Option<StoreCall> {
        if self.in_flight.is_some() || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.retry_at = None;
        let Some(known) = self.known else {
            let body = self.keys.range_body(false);
            return Some(self.send(CallKind::Read, wire::RANGE_PATH, body, now));
        };
        let batch = self.batch.as_mut().filter(|b| b.due)?;
        batch.due = false;
        if batch.unknown {
            self.stats.unknown_outcomes += 1;
            let body = self.keys.readback_body();
            return Some(self.send(CallKind::Readback, wire::TXN_PATH, body, now));
        }
        if batch.steps == 0 {
            let body = self
                .keys
                .range_body(self.config.reads == ReadMode::Serializable);
            return Some(self.send(CallKind::Read, wire::RANGE_PATH, body, now));
        }
        self.seq += 1;
        let tag = format!("{:016x}-{}", self.nonce, self.seq);
        let body = self
            .keys
            .step_txn_body(known.mod_revision, batch.target, &tag);
        batch.attempts.push(Attempt {
            tag,
            base: batch.base,
            compare_revision: known.mod_revision,
        });
        Some(self.send(CallKind::Txn, wire::TXN_PATH, body, now))
    }

    /// The call in flight got an HTTP answer.
    pub fn answered(&mut self, status: u16, body: &[u8], now: Instant) -> Option<IndexOutcome> {
        let kind = self.in_flight.take()?;
        let outcome = match kind {
            CallKind::Read => wire::read_range(status, body).map(|current| self.read(current)),
            CallKind::Txn => {
                wire::read_txn(&self.keys, status, body).map(|answer| self.txn(answer, now))
            }
            CallKind::Readback => wire::read_readback(status, body)
                .map(|(current, writer)| self.resolve(current, writer.as_deref(), true)),
        };
        match outcome {
            Ok(outcome) => {
                self.count(kind, true);
                self.failures_in_a_row = 0;
                outcome
            }
            Err(e) => self.call_failed(kind, &e, now),
        }
    }

    /// The call in flight got no answer (closed, timeout): it may have
    /// reached etcd.
    pub fn failed(&mut self, why: &CallError, now: Instant) -> Option<IndexOutcome> {
        let kind = self.in_flight.take()?;
        self.call_failed(kind, why, now)
    }

    /// The call in flight was never handed to the client (no connection
    /// was free): a transaction in it certainly did not happen, so there is
    /// nothing to read back.
    pub fn not_sent(&mut self, now: Instant) -> Option<IndexOutcome> {
        let unknown_before = self.batch.as_ref().is_some_and(|b| b.unknown);
        let kind = self.in_flight.take()?;
        let outcome = self.call_failed(kind, &"every outbound connection is busy", now);
        if let Some(batch) = &mut self.batch {
            batch.unknown = unknown_before;
            if kind == CallKind::Txn && !unknown_before {
                // The attempt never left: it cannot apply.
                batch.attempts.pop();
            }
        }
        outcome
    }

    fn send(
        &mut self,
        kind: CallKind,
        path: &'static str,
        body: Vec<u8>,
        now: Instant,
    ) -> StoreCall {
        self.in_flight = Some(kind);
        self.sent_at = now;
        let endpoint = &self.config.endpoints[self.endpoint];
        StoreCall {
            request: endpoint.request_to(
                "POST",
                path,
                &[("Content-Type", "application/json")],
                &body,
            ),
            deadline: now + self.config.call_timeout,
        }
    }

    /// A range answered: the first read, or a batch of reads.
    fn read(&mut self, current: Revisioned) -> Option<IndexOutcome> {
        self.learn(current);
        let index = self.known.map_or(current.index, |k| k.index);
        match self.batch.take() {
            Some(_) => Some(IndexOutcome::Applied {
                base: index,
                then: index,
            }),
            None => Some(IndexOutcome::Learned { current: index }),
        }
    }

    fn txn(&mut self, answer: TxnAnswer, now: Instant) -> Option<IndexOutcome> {
        match answer {
            TxnAnswer::Committed {
                revision,
                others_losing,
            } => {
                let batch = self.batch.take()?;
                if others_losing {
                    // Give a node that keeps losing a window of about one
                    // round trip to land its attempt before this node's next.
                    let round_trip = now.saturating_duration_since(self.sent_at);
                    self.retry_at = Some(now + round_trip.min(YIELD_MAX));
                    self.stats.yields += 1;
                }
                let base = batch.attempts.last().map_or(batch.base, |a| a.base);
                self.known = Some(Revisioned {
                    index: batch.target,
                    mod_revision: revision,
                });
                Some(IndexOutcome::Applied {
                    base,
                    then: batch.target,
                })
            }
            TxnAnswer::Moved { current, writer } => self.resolve(current, writer.as_deref(), false),
        }
    }

    /// The index moved: either by one of this batch's attempts (its tag is
    /// the writer's), then the batch is done, or by another node, then it
    /// goes again on the index as it is now.
    fn resolve(
        &mut self,
        current: Revisioned,
        writer: Option<&str>,
        readback: bool,
    ) -> Option<IndexOutcome> {
        self.learn(current);
        let Some(batch) = &mut self.batch else {
            return Some(IndexOutcome::Learned {
                current: current.index,
            });
        };
        let applied = writer.and_then(|w| batch.attempts.iter().find(|a| a.tag == w));
        if let Some(attempt) = applied {
            let base = attempt.base;
            self.batch = None;
            return Some(IndexOutcome::Applied {
                base,
                then: current.index,
            });
        }
        if !readback {
            self.stats.conflicts += 1;
        }
        batch.unknown = false;
        // Only an attempt whose compared revision is still the index's can
        // ever apply; the others are forgotten.
        batch
            .attempts
            .retain(|a| a.compare_revision >= current.mod_revision);
        batch.unfenced = !batch.attempts.is_empty();
        Some(IndexOutcome::Moved {
            current: current.index,
        })
    }

    /// etcd holds `current`: remember it, unless it is older than what this
    /// node saw (a serializable read from a member that lags behind).
    fn learn(&mut self, current: Revisioned) {
        if self
            .known
            .is_none_or(|k| current.mod_revision >= k.mod_revision)
        {
            self.known = Some(current);
        }
    }

    fn call_failed(
        &mut self,
        kind: CallKind,
        why: &dyn Display,
        now: Instant,
    ) -> Option<IndexOutcome> {
        self.count(kind, false);
        if let Some(batch) = &mut self.batch {
            batch.due = false;
            if kind != CallKind::Read {
                batch.unknown = true;
            }
        }
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
        self.batch.as_ref().map(|_| IndexOutcome::Retry)
    }

    fn rotation(&self) -> u32 {
        u32::try_from(self.config.endpoints.len()).unwrap_or(u32::MAX)
    }

    fn count(&mut self, kind: CallKind, succeeded: bool) {
        let row = CallKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.stats.calls[row][usize::from(!succeeded)] += 1;
    }
}
