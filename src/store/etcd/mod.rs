//! The index in etcd (`--store etcd`): shared by every fibd node, written by
//! one elected leader (`election`) that folds every node's steps into one
//! transaction per batch. This file is the protocol: which call to send for
//! the batch the stepper handed over, and what the answer means for it.
//! Sans-IO and sans-clock: the loop sends the calls through the outbound
//! client and hands the answers back; `wire` is etcd's JSON gateway and
//! `relay` the internal endpoint between nodes; `records` keeps the primes
//! tasks' records beside the index. Batching, the cursor and the
//! replies are the stepper's (`services::stepper`), as with LMDB.
//!
//! # Rules
//! - One index call in flight at a time (and one election call beside it).
//!   The stepper's batches collect meanwhile, so a loop pass's reads share
//!   one quorum read and its steps one transaction.
//! - The leader's transaction is fenced by its term: it compares the leader
//!   key's create_revision and lease, so a node that lost the leadership,
//!   even without knowing it yet, can never apply a batch. It also compares
//!   the index's mod_revision with the one the leader last saw, and each
//!   writer key in it with its node's fence.
//! - A follower relays its batch's steps to the leader (`relay`), which
//!   applies them in one piece inside its own batch and answers on which
//!   index. A follower never writes the index.
//! - Replies are rendered only once their transaction committed: the values
//!   they show are known only then.
//! - Every node's writer key is its fence. A transaction or relay whose
//!   answer was lost (a timeout, a closed connection, an error status) is
//!   never guessed at: the node rewrites its writer key if it still holds
//!   the fence the attempt compared, which makes that attempt unable to
//!   apply ever after, or else finds the attempt's tag there, applied. Until
//!   it knows, nothing else is sent, and [`EtcdIndex::may_apply`] says a
//!   step whose wait ends then is answered "outcome unknown": it happens
//!   once or not at all.
//!
//! Calls to etcd rotate through the endpoints on failure; after a whole
//! round fails the node backs off and reports itself not ready until a call
//! succeeds.

pub mod election;
pub mod records;
pub mod relay;
pub mod wire;

use std::fmt::Display;
use std::time::{Duration, Instant};

use election::{Election, ElectionStats};
use relay::{RELAY_PATH, SECRET_FIELD};
use wire::{FenceAnswer, Keys, Revisioned, Term, TxnAnswer};

use crate::base::secret::Secret;
use crate::net::upstream::{CallError, Target};
use crate::store::index::{Channel, IndexBatch, IndexOutcome, Step, StoreCall, WriterPut};

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(800);
/// A relay the leader did not take is sent again after this long, doubling
/// while relays keep failing (up to `BACKOFF_MAX`).
const RELAY_RETRY: Duration = Duration::from_millis(20);

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
    /// Where the other nodes reach this one's internal endpoint
    /// (`--cluster-url`); None: at the address it listens on.
    pub url: Option<String>,
    pub secret: Secret,
    pub lease_ttl: Duration,
    pub reads: ReadMode,
    /// The deadline of one etcd call, or of one relay.
    pub call_timeout: Duration,
    /// How long a request waits for etcd before it is answered 503.
    pub wait: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// A range of the index (reads-only batches), or the first read.
    Read,
    /// A leader's transaction.
    Txn,
    /// A follower's steps sent to the leader.
    Relay,
    /// A node's writer key rewritten to settle an attempt whose answer was
    /// lost.
    Fence,
}

impl CallKind {
    pub const ALL: [CallKind; 4] = [
        CallKind::Read,
        CallKind::Txn,
        CallKind::Relay,
        CallKind::Fence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            CallKind::Read => "read",
            CallKind::Txn => "txn",
            CallKind::Relay => "relay",
            CallKind::Fence => "fence",
        }
    }
}

/// Counters for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EtcdStats {
    /// Calls by [`CallKind::ALL`] position: [answered, failed].
    pub calls: [[u64; 2]; 4],
    /// Transactions refused because a compare failed.
    pub conflicts: u64,
    /// Attempts whose answer was lost and had to be settled by a fence.
    pub unknown_outcomes: u64,
    /// Relays of other nodes' steps this node applied as the leader.
    pub relays_applied: u64,
    /// Whether this node leads now.
    pub leader: bool,
    pub election: ElectionStats,
}

/// The stepper's batch in this store, across the attempts made for it.
#[derive(Debug)]
struct Batch {
    base: u64,
    target: u64,
    steps: u64,
    sequence: Vec<Step>,
    relays: Vec<WriterPut>,
    /// A call is due for it (handed over, not sent yet).
    due: bool,
    /// The tag of the attempt sent last, while it may still apply.
    attempt: Option<String>,
    /// The last attempt's answer was lost: fence before anything else.
    unknown: bool,
}

pub struct EtcdIndex {
    config: ClusterConfig,
    keys: Keys,
    election: Election,
    /// The index as this node last saw it in etcd; None before the first read.
    known: Option<Revisioned>,
    /// This node's writer key's mod_revision: what its attempts compare.
    fence: Option<u64>,
    batch: Option<Batch>,
    in_flight: Option<CallKind>,
    /// When the call in flight (or the last one) was sent.
    sent_at: Instant,
    endpoint: usize,
    failures_in_a_row: u32,
    /// Relays that failed since the last one the leader took (for the log).
    relay_failures_in_a_row: u32,
    /// No call before this (a back-off).
    retry_at: Option<Instant>,
    /// Makes this process's writer tags unique across restarts.
    nonce: u64,
    seq: u64,
    /// What became of the batch, found while making a call (the role it
    /// was handed over for lapsed): for the stepper to take.
    pending: Option<IndexOutcome>,
    stats: EtcdStats,
}

impl EtcdIndex {
    /// `url`: where the other nodes reach this one (`config.url`, or the
    /// address it listens on).
    pub fn new(config: ClusterConfig, url: &str, nonce: u64, now: Instant) -> EtcdIndex {
        let keys = Keys::new(&config.name, &config.node);
        let election = Election::new(
            keys.clone(),
            &config.node,
            url,
            config.lease_ttl,
            config.endpoints.clone(),
            config.call_timeout,
            now,
        );
        EtcdIndex {
            keys,
            election,
            config,
            known: None,
            fence: None,
            batch: None,
            in_flight: None,
            sent_at: now,
            endpoint: 0,
            failures_in_a_row: 0,
            relay_failures_in_a_row: 0,
            retry_at: None,
            nonce,
            seq: 0,
            pending: None,
            stats: EtcdStats::default(),
        }
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    pub fn stats(&self, now: Instant) -> EtcdStats {
        EtcdStats {
            leader: self.election.term(now).is_some(),
            election: self.election.stats(),
            ..self.stats
        }
    }

    /// Whether etcd answers, the index is known and a leader too: /readyz.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.known.is_some() && self.failures_in_a_row < self.rotation() && self.has_role(now)
    }

    /// This node's term while it leads.
    pub fn term(&self, now: Instant) -> Option<Term> {
        self.election.term(now)
    }

    /// The leader this node follows, where it can be reached.
    pub fn leader_target(&self) -> Option<&Target> {
        self.election.leader().and_then(|l| l.target.as_ref())
    }

    /// Whether this node leads now, so relays may join its batches.
    pub fn leads(&self, now: Instant) -> bool {
        self.election.term(now).is_some()
    }

    /// Whether a batch may be handed over now: the index is known, nothing
    /// is in flight or due, and a leader is known (this node or another).
    pub fn accepts(&self, now: Instant) -> bool {
        self.known.is_some()
            && self.fence.is_some()
            && self.in_flight.is_none()
            && !self.batch.as_ref().is_some_and(|b| b.due)
            && self.retry_at.is_none_or(|t| now >= t)
            && self.has_role(now)
    }

    /// Takes the stepper's batch: a new one, or the same one again.
    pub fn submit(&mut self, batch: IndexBatch) {
        let IndexBatch {
            fresh,
            base,
            target,
            steps,
            sequence,
            relays,
        } = batch;
        match &mut self.batch {
            Some(current) if !fresh => {
                current.base = base;
                current.target = target;
                current.steps = steps;
                current.sequence = sequence;
                current.relays = relays;
                current.due = true;
            }
            _ => {
                self.batch = Some(Batch {
                    base,
                    target,
                    steps,
                    sequence,
                    relays,
                    due: true,
                    attempt: None,
                    unknown: false,
                });
            }
        }
    }

    /// Whether an attempt of the batch may have been applied without this
    /// node knowing yet: one is in flight, or its answer was lost.
    pub fn may_apply(&self) -> bool {
        matches!(
            self.in_flight,
            Some(CallKind::Txn | CallKind::Relay | CallKind::Fence)
        ) || self.batch.as_ref().is_some_and(|b| b.unknown)
    }

    /// When the loop should wake for this store (a back-off ending, an
    /// election timer).
    pub fn next_timer(&self) -> Option<Instant> {
        self.retry_at
            .into_iter()
            .chain(self.election.next_timer())
            .min()
    }

    /// Whether a call is due now (the loop must not sleep).
    pub fn has_work(&self, now: Instant) -> bool {
        self.pending.is_some()
            || self.election.next_timer().is_some_and(|t| now >= t)
            || (self.in_flight.is_none()
                && self.retry_at.is_none_or(|t| now >= t)
                && (self.known.is_none() || self.batch.as_ref().is_some_and(|b| b.due)))
    }

    /// What became of the batch without a call (see [`EtcdIndex::next_call`]).
    pub fn take_outcome(&mut self) -> Option<IndexOutcome> {
        self.pending.take()
    }

    /// A graceful stop: resign the leadership, so another node takes over
    /// without waiting out the lease.
    pub fn resign(&mut self) {
        self.election.resign();
    }

    /// Whether a resignation asked for is done (or failed: the lease then
    /// runs out on its own).
    pub fn is_settled(&self) -> bool {
        self.election.resign_settled()
    }

    /// The call to send now, if one is due: the election's first; its
    /// outcome comes back through [`EtcdIndex::answered`],
    /// [`EtcdIndex::failed`] or [`EtcdIndex::not_sent`].
    pub fn next_call(&mut self, now: Instant) -> Option<StoreCall> {
        if let Some(call) = self.election.next_call(now) {
            let request = call.endpoint.request_to(
                "POST",
                call.path,
                &[("Content-Type", "application/json")],
                &call.body,
            );
            return Some(StoreCall {
                channel: Channel::Election,
                request,
                deadline: call.deadline,
            });
        }
        if self.in_flight.is_some() || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.retry_at = None;
        let (Some(known), Some(fence)) = (self.known, self.fence) else {
            let body = self.keys.first_read_body();
            return Some(self.send_etcd(CallKind::Read, wire::TXN_PATH, body, now));
        };
        let term = self.election.term(now);
        let leader = self.election.leader().and_then(|l| l.target.clone());
        let batch = self.batch.as_mut().filter(|b| b.due)?;
        if batch.unknown {
            self.stats.unknown_outcomes += 1;
            self.seq += 1;
            let mark = format!("fence-{:016x}-{}", self.nonce, self.seq);
            batch.due = false;
            let body = self.keys.fence_body(fence, &mark);
            return Some(self.send_etcd(CallKind::Fence, wire::TXN_PATH, body, now));
        }
        if batch.steps == 0 {
            batch.due = false;
            let body = self
                .keys
                .range_body(self.config.reads == ReadMode::Serializable);
            return Some(self.send_etcd(CallKind::Read, wire::RANGE_PATH, body, now));
        }
        self.seq += 1;
        let tag = format!("{:016x}-{}", self.nonce, self.seq);
        if let Some(term) = term {
            let own = WriterPut {
                node: self.config.node.clone(),
                fence,
                tag: tag.clone(),
                base: batch.base,
            };
            let writers: Vec<WriterPut> = std::iter::once(own)
                .chain(batch.relays.iter().cloned())
                .collect();
            let body = self
                .keys
                .step_txn_body(term, known.mod_revision, batch.target, &writers);
            batch.due = false;
            batch.attempt = Some(tag);
            return Some(self.send_etcd(CallKind::Txn, wire::TXN_PATH, body, now));
        }
        // A follower: its batch holds no relays (the stepper answers them
        // "not leader" before it hands the batch over). A batch handed over
        // while this node led, or while a leader was known, that cannot go
        // as it is now goes back to the stepper, which answers its relays
        // and plans it again.
        let Some(target) = leader.filter(|_| batch.relays.is_empty()) else {
            batch.due = false;
            self.pending = Some(IndexOutcome::Deposed {
                current: known.index,
            });
            return None;
        };
        let body = relay::relay_body(&self.config.node, &tag, fence, &batch.sequence);
        batch.due = false;
        batch.attempt = Some(tag);
        self.in_flight = Some(CallKind::Relay);
        self.sent_at = now;
        let request = target.request_to(
            "POST",
            RELAY_PATH,
            &[
                ("Content-Type", "application/json"),
                (
                    SECRET_FIELD,
                    self.config.secret.as_field().unwrap_or_default(),
                ),
            ],
            &body,
        );
        Some(StoreCall {
            channel: Channel::Index,
            request,
            deadline: now + self.config.call_timeout,
        })
    }

    /// A call got an HTTP answer.
    pub fn answered(
        &mut self,
        channel: Channel,
        status: u16,
        body: &[u8],
        now: Instant,
    ) -> Option<IndexOutcome> {
        if channel == Channel::Election {
            self.election.answered(status, body, now);
            return None;
        }
        let kind = self.in_flight.take()?;
        let outcome = match kind {
            CallKind::Read if self.fence.is_none() => {
                wire::read_first(status, body).map(|(current, writer)| {
                    self.learn(current);
                    self.fence = Some(writer.mod_revision);
                    Some(IndexOutcome::Learned {
                        current: current.index,
                    })
                })
            }
            CallKind::Read => wire::read_range(status, body).map(|current| self.read(current)),
            CallKind::Txn => {
                let writers = 1 + self.batch.as_ref().map_or(0, |b| b.relays.len());
                wire::read_txn(status, body, writers).map(|answer| self.txn(answer, now))
            }
            CallKind::Fence => wire::read_fence(status, body).map(|answer| self.fenced(answer)),
            CallKind::Relay => {
                return match relay::read_answer(status, body) {
                    Ok(answer) => {
                        self.count(kind, true);
                        self.relayed(answer)
                    }
                    Err(why) => self.relay_failed(&why, now),
                };
            }
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

    /// A call got no answer (closed, timeout): it may have arrived.
    pub fn failed(
        &mut self,
        channel: Channel,
        why: &CallError,
        now: Instant,
    ) -> Option<IndexOutcome> {
        if channel == Channel::Election {
            self.election.failed(why, now);
            return None;
        }
        match self.in_flight.take()? {
            CallKind::Relay => self.relay_failed(why, now),
            kind => self.call_failed(kind, why, now),
        }
    }

    /// A call was never handed to the client (no connection was free): a
    /// transaction or relay in it certainly did not happen, so there is
    /// nothing to fence.
    pub fn not_sent(&mut self, channel: Channel, now: Instant) -> Option<IndexOutcome> {
        if channel == Channel::Election {
            self.election
                .failed(&"every outbound connection is busy", now);
            return None;
        }
        let unknown_before = self.batch.as_ref().is_some_and(|b| b.unknown);
        let kind = self.in_flight.take()?;
        let outcome = self.call_failed(kind, &"every outbound connection is busy", now);
        if let Some(batch) = &mut self.batch {
            batch.unknown = unknown_before;
            if matches!(kind, CallKind::Txn | CallKind::Relay) && !unknown_before {
                // The attempt never left: it cannot apply.
                batch.attempt = None;
            }
        }
        outcome
    }

    fn has_role(&self, now: Instant) -> bool {
        self.election.term(now).is_some()
            || self
                .election
                .leader()
                .is_some_and(|leader| leader.target.is_some())
    }

    fn send_etcd(
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
            channel: Channel::Index,
            request: endpoint.request_to(
                "POST",
                path,
                &[("Content-Type", "application/json")],
                &body,
            ),
            deadline: now + self.config.call_timeout,
        }
    }

    /// A range answered: a batch of reads.
    fn read(&mut self, current: Revisioned) -> Option<IndexOutcome> {
        self.learn(current);
        let index = self.known.map_or(current.index, |k| k.index);
        self.batch.take()?;
        Some(IndexOutcome::Applied {
            base: index,
            then: index,
            revision: current.mod_revision,
        })
    }

    fn txn(&mut self, answer: TxnAnswer, now: Instant) -> Option<IndexOutcome> {
        match answer {
            TxnAnswer::Committed { revision } => {
                let batch = self.batch.take()?;
                self.stats.relays_applied += batch.relays.len() as u64;
                self.known = Some(Revisioned {
                    index: batch.target,
                    mod_revision: revision,
                });
                self.fence = Some(revision);
                Some(IndexOutcome::Applied {
                    base: batch.base,
                    then: batch.target,
                    revision,
                })
            }
            TxnAnswer::Refused {
                current,
                leader,
                fences,
            } => {
                self.stats.conflicts += 1;
                self.learn(current);
                let batch = self.batch.as_mut()?;
                batch.attempt = None;
                // Nothing applied: the fences read are the ones to compare.
                if let Some(&own) = fences.first() {
                    self.fence = Some(own);
                }
                let term = self.election.term(now);
                let still_leads = matches!((term, &leader), (Some(Term { create_revision, lease }), Some(key))
                    if key.create_revision == create_revision && key.lease == lease);
                if !still_leads {
                    self.election.deposed(leader, now);
                    return Some(IndexOutcome::Deposed {
                        current: self.known_index(),
                    });
                }
                let fenced = batch
                    .relays
                    .iter()
                    .zip(fences.iter().skip(1))
                    .filter(|(relay, now_at)| relay.fence != **now_at)
                    .map(|(relay, _)| relay.node.clone())
                    .collect();
                Some(IndexOutcome::Moved {
                    current: self.known_index(),
                    fenced,
                })
            }
        }
    }

    /// A fence call answered: the lost attempt is known now.
    fn fenced(&mut self, answer: FenceAnswer) -> Option<IndexOutcome> {
        let batch = self.batch.as_mut()?;
        batch.unknown = false;
        let attempt = batch.attempt.take();
        match answer {
            FenceAnswer::Fenced { fence, current } => {
                self.fence = Some(fence);
                self.learn(current);
                Some(self.retry())
            }
            FenceAnswer::Moved { writer, current } => {
                self.fence = Some(writer.mod_revision);
                self.learn(current);
                match writer.applied {
                    Some((tag, base)) if Some(&tag) == attempt.as_ref() => {
                        let relays = self.batch.take().map_or(0, |b| b.relays.len());
                        self.stats.relays_applied += relays as u64;
                        Some(IndexOutcome::Applied {
                            base,
                            then: self.known_index(),
                            revision: writer.mod_revision,
                        })
                    }
                    // A fence of this node's whose answer was lost: nothing
                    // applied since.
                    None => Some(self.retry()),
                    Some(_) => {
                        log::error!(
                            "this node's writer key holds a batch it did not send: is another \
                             node running under the name {}?",
                            self.config.node
                        );
                        Some(self.retry())
                    }
                }
            }
        }
    }

    /// The leader applied the relayed steps.
    fn relayed(&mut self, answer: relay::RelayAnswer) -> Option<IndexOutcome> {
        self.relay_failures_in_a_row = 0;
        self.batch.take()?;
        self.fence = Some(answer.revision);
        self.learn(Revisioned {
            index: answer.then,
            mod_revision: answer.revision,
        });
        Some(IndexOutcome::Applied {
            base: answer.base,
            then: self.known_index(),
            revision: answer.revision,
        })
    }

    /// The leader did not answer a relay, or not with its outcome: it may
    /// have applied it, so it is fenced before anything else. etcd's health
    /// is not in question, so no endpoint is rotated.
    fn relay_failed(&mut self, why: &dyn Display, now: Instant) -> Option<IndexOutcome> {
        self.count(CallKind::Relay, false);
        let leader = self
            .election
            .leader()
            .map_or_else(|| "the leader".to_owned(), |l| l.node.clone());
        if self.relay_failures_in_a_row == 0 {
            log::warn!("relay to {leader} failed: {why}; fencing, then relaying again");
        } else {
            log::debug!("relay to {leader} failed: {why}");
        }
        self.relay_failures_in_a_row = self.relay_failures_in_a_row.saturating_add(1);
        self.election.leader_unreachable(now);
        let doubled = RELAY_RETRY.saturating_mul(1 << self.relay_failures_in_a_row.min(5));
        self.retry_at = Some(now + doubled.min(BACKOFF_MAX));
        let batch = self.batch.as_mut()?;
        batch.due = false;
        batch.unknown = true;
        Some(self.retry())
    }

    /// The batch goes again, on the index as this node knows it now.
    fn retry(&self) -> IndexOutcome {
        IndexOutcome::Retry {
            current: self.known.map(|k| k.index),
        }
    }

    /// The index as this node knows it: every outcome reports this one, so
    /// the stepper's base is always the index whose revision a transaction
    /// compares.
    fn known_index(&self) -> u64 {
        self.known.map_or(0, |k| k.index)
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
        self.batch.as_ref()?;
        Some(self.retry())
    }

    fn rotation(&self) -> u32 {
        u32::try_from(self.config.endpoints.len()).unwrap_or(u32::MAX)
    }

    fn count(&mut self, kind: CallKind, succeeded: bool) {
        let row = CallKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
        self.stats.calls[row][usize::from(!succeeded)] += 1;
    }
}
