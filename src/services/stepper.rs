//! The global Fibonacci index that /current, /next and /previous walk: the
//! step rule, group commit, read sharing and every reply, written once above
//! the store that keeps the index (`store::IndexStore`: LMDB or etcd).
//!
//! Sans-IO and sans-clock. Requests join the *collecting* batch under their
//! parking tickets; one batch at a time goes to the store, which says on
//! which index it was applied. Only then are its replies rendered, each
//! from the index its step made (a cursor walked through the batch), so a
//! reply never shows a step a crash could take back, and the values are
//! right even when another node moved the index first (etcd). The replies
//! go to a `settle` sink the caller gives; a connection keeps a slot for
//! each (`reply::output`), so pipelined steps keep joining the batch.
//!
//! Reads: with a store this node alone writes (LMDB), the durable index is
//! current, so a /current that follows no step of its own connection is
//! answered at once ([`Stepper::current_now`]) and never waits behind a
//! commit. Otherwise it joins the collecting batch and is answered at its
//! place in it: after its own steps (read-your-writes), and, with etcd, from
//! a quorum read or transaction that left after it arrived, shared by every
//! read of the batch.
//!
//! The cursor follows the durable index: a few limb-wise steps for a short
//! distance, a jump computed on the compute worker for a long one (another
//! node moved the index far); nothing is sent while it runs.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::base::secret::Secret;
use crate::net::upstream::Target;
use crate::net::upstream::{CallError, Response};
use crate::reply::park::Ticket;
use crate::services::fib::Value;
use crate::services::fib::cursor::Cursor;
pub use crate::store::Step;
use crate::store::etcd::relay::Relay;
use crate::store::etcd::wire::Term;
use crate::store::etcd::{ClusterConfig, EtcdStats};
use crate::store::ledger::{Committed, Ledger};
use crate::store::{Channel, IndexBatch, IndexOutcome, IndexStore, StoreCall, WriterPut};

/// Limb operations the loop may spend moving the cursor in one go (a limb
/// add is about a nanosecond, so this stays well under a millisecond).
const STEP_BUDGET_LIMB_OPS: u64 = 200_000;
/// Indices up to here are built on the loop: F(5000) has 1,045 digits.
const BUILD_ON_LOOP_MAX: u64 = 5_000;
/// Requests taken into one batch at most; more wait for the next.
const BATCH_OPS_MAX: usize = 8_192;
/// A jump the compute queue refused is asked for again after this long.
const JUMP_RETRY: Duration = Duration::from_millis(50);
/// After a shared store's batch is answered, the next one waits at most
/// this long for as many requests as it answered to come back, beside
/// those that came while it was in flight (at the leader its clients and
/// the followers' next relays, at a follower its clients before its next
/// relay): a round trip of theirs is a fraction of a millisecond on a LAN,
/// etcd's commit several, so the next transaction carries them instead of
/// leaving half of them for the one after (group commit's linger, as
/// Kafka's `linger.ms`).
const LINGER_MAX: Duration = Duration::from_millis(1);
/// Other nodes' relays in one batch at most: each adds a compare, a put and
/// a range to the transaction, and etcd takes 128 of each by default.
const RELAYS_PER_BATCH_MAX: usize = 64;

/// A request waiting in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Step(Step),
    /// /current, answered at its place in the batch.
    Read,
    /// Another node's steps, relayed to this leader, applied in one piece
    /// (they are kept in `Stepper::relays`).
    Relay,
}

/// What a request of the stepper's is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepReply {
    Index {
        index: u64,
        value: Value,
    },
    /// /next at `--max-index`: nothing moved.
    AtCeiling {
        max_index: u64,
    },
    /// The commit failed; the step was not applied.
    Withdrawn,
    /// The store did not answer in time; the step was not made (or the
    /// index could not be read).
    Unavailable,
    /// The step was sent and its outcome could not be read back in time: it
    /// may or may not have been made (at most once).
    OutcomeUnknown,
    /// A relay's steps were applied on `base`; the index is `then` after
    /// the batch, at etcd's `revision`.
    Relayed {
        base: u64,
        then: u64,
        revision: u64,
    },
    /// A relay reached a node that does not lead: nothing was applied.
    NotLeader,
    /// A relay its node gave up on (it rewrote its fence, or sent a newer
    /// one): nothing was applied, nor ever will be.
    RelayFenced,
}

/// The durable index, for a read answered at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub index: u64,
    pub value: Value,
}

/// How the cursor gets to an index too far to step to on the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Jump {
    /// The loop should hand `Job::Cursor(index)` to the compute worker.
    Wanted(u64),
    Running(u64),
}

#[derive(Debug)]
struct Batch {
    ops: Vec<(Ticket, Op)>,
    /// Handed to the store and not answered yet.
    submitted: bool,
    /// Handed to the store before: a new attempt of the same batch.
    sent_before: bool,
    /// Applied on `.base`, waiting for the cursor to get there before its
    /// replies are rendered.
    applied: Option<Applied>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Applied {
    base: u64,
    /// The index in the store now.
    then: u64,
    revision: u64,
}

pub struct Stepper {
    store: IndexStore,
    max_index: u64,
    /// The index the store last reported durable; None before the first
    /// read (etcd).
    known: Option<u64>,
    /// At `known`, unless a jump runs (or before the first read).
    cursor: Option<Cursor>,
    /// F(`known`), shared by every read answered at once.
    value: Value,
    jump: Option<Jump>,
    jump_retry_at: Option<Instant>,
    /// Requests not answered yet, and whether their batch was handed to the
    /// store: the queues name them by ticket and skip the ones gone
    /// (expired, or their client left).
    waiting: HashMap<Ticket, bool>,
    collecting: VecDeque<(Ticket, Op)>,
    /// The steps of every [`Op::Relay`] still waiting, by ticket.
    relays: HashMap<Ticket, Relay>,
    batch: Option<Batch>,
    /// Requests the last batch answered, when it was a shared store's: the
    /// next batch lingers for as many (see [`LINGER_MAX`]).
    answered_last: Option<usize>,
    linger: Option<Linger>,
    jumps: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Linger {
    until: Instant,
    /// Requests collected that end it early.
    expect: usize,
}

impl Stepper {
    /// A stepper on `store`, at `recovered` when the index is local (LMDB).
    /// Building the cursor there is the one super-linear computation (about
    /// 0.1 s near 10^7), done once; with etcd it waits for the first read.
    pub fn new(store: IndexStore, max_index: u64, recovered: Option<u64>) -> Stepper {
        let cursor = recovered.map(Cursor::at);
        let value = cursor.as_ref().map_or(Value::Small(0), Value::at_cursor);
        Stepper {
            store,
            max_index,
            known: recovered,
            cursor,
            value,
            jump: None,
            jump_retry_at: None,
            waiting: HashMap::new(),
            collecting: VecDeque::new(),
            relays: HashMap::new(),
            batch: None,
            answered_last: None,
            linger: None,
            jumps: 0,
        }
    }

    /// How long a request may wait for the store, if it can time out (etcd).
    pub fn wait(&self) -> Option<Duration> {
        match &self.store {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => Some(etcd.config().wait),
        }
    }

    /// A /next or /previous: it joins the collecting batch.
    pub fn step(&mut self, ticket: Ticket, step: Step) {
        self.join(ticket, Op::Step(step));
    }

    /// A /current answered now, when the store is this node's alone and the
    /// connection has no step of its own still waiting (`after_own`).
    pub fn current_now(&self, after_own: bool) -> Option<Reading> {
        if !self.store.is_exclusive() || after_own || self.jump.is_some() {
            return None;
        }
        Some(Reading {
            index: self.known?,
            value: self.value.clone(),
        })
    }

    /// A /current that [`Stepper::current_now`] could not answer: it joins
    /// the collecting batch.
    pub fn read(&mut self, ticket: Ticket) {
        self.join(ticket, Op::Read);
    }

    /// Whether this node leads the cluster, so relays may join its batches.
    pub fn takes_relays(&self, now: Instant) -> bool {
        self.store.takes_relays(now)
    }

    /// The secret relays must carry, in cluster mode.
    pub fn cluster_secret(&self) -> Option<&Secret> {
        match &self.store {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => Some(&etcd.config().secret),
        }
    }

    /// Another node's steps, relayed to this leader: they join the
    /// collecting batch in one piece.
    pub fn relay(&mut self, ticket: Ticket, relay: Relay) {
        self.relays.insert(ticket, relay);
        self.join(ticket, Op::Relay);
    }

    /// The request's wait is over: its reply now, if it still waited.
    pub fn expire(&mut self, ticket: Ticket) -> Option<StepReply> {
        let sent = self.waiting.remove(&ticket)?;
        if !sent {
            // Handed to the store, a relay's steps stay until its batch is
            // settled: they move the cursor for the steps after them.
            self.relays.remove(&ticket);
        }
        Some(if sent && self.store.may_apply() {
            StepReply::OutcomeUnknown
        } else {
            StepReply::Unavailable
        })
    }

    /// The request's client left: a step already handed to the store still
    /// happens; one that was not is dropped.
    pub fn abandon(&mut self, ticket: Ticket) {
        if self.waiting.remove(&ticket) == Some(false) {
            self.relays.remove(&ticket);
        }
    }

    /// Loop phase: hands the next batch to the store when it takes one. A
    /// batch that writes nothing to a store of this node's alone (reads,
    /// /previous at 0) is answered at once.
    pub fn submit(
        &mut self,
        ledger: &mut Ledger,
        now: Instant,
        settle: &mut impl FnMut(Ticket, StepReply),
    ) {
        loop {
            if self.batch.is_none() {
                if self.lingers(now) {
                    return;
                }
                self.linger = None;
                self.batch = self.take_batch();
            }
            let Some(batch) = &mut self.batch else {
                return;
            };
            let Some(base) = self.known else {
                return;
            };
            if batch.submitted
                || batch.applied.is_some()
                || self.jump.is_some()
                || !self.store.accepts(ledger, now)
            {
                return;
            }
            // Unless an attempt that carried them may still apply (then they
            // go as they were), requests whose wait ended are left out, and
            // those that arrived since the last attempt join.
            if !self.store.may_apply() {
                let (waiting, relays) = (&self.waiting, &mut self.relays);
                batch.ops.retain(|(ticket, op)| {
                    let keep = waiting.contains_key(ticket);
                    if !keep && *op == Op::Relay {
                        relays.remove(ticket);
                    }
                    keep
                });
                take_waiting(&mut self.collecting, &mut self.waiting, &mut batch.ops);
                let leads = self.store.takes_relays(now);
                drop_relays(
                    batch,
                    &mut self.relays,
                    &mut self.waiting,
                    settle,
                    |_, _| (!leads).then_some(StepReply::NotLeader),
                );
                drop_superseded(batch, &mut self.relays, &mut self.waiting, settle);
            }
            if batch.ops.is_empty() {
                self.batch = None;
                continue;
            }
            let planned = plan(base, &batch.ops, &self.relays, self.max_index);
            if self.store.is_exclusive() && !planned.moves {
                batch.applied = Some(Applied {
                    base,
                    then: base,
                    revision: 0,
                });
                self.render_applied(settle);
                continue;
            }
            let fresh = !batch.sent_before;
            batch.submitted = true;
            batch.sent_before = true;
            self.store.submit(
                IndexBatch {
                    fresh,
                    base,
                    target: planned.target,
                    steps: planned.steps,
                    sequence: planned.sequence,
                    relays: planned.relays,
                },
                ledger,
            );
            return;
        }
    }

    /// A commit of the ledger finished (the batch may have ridden in it).
    pub fn on_commit(&mut self, committed: &Committed, settle: &mut impl FnMut(Ticket, StepReply)) {
        if let Some(outcome) = self.store.on_commit(committed) {
            self.apply(outcome, settle);
        }
    }

    /// The store's next outbound call, for the loop to send. A batch the
    /// store found it can no longer send as it was handed over (this node
    /// stopped leading meanwhile) is settled first.
    pub fn next_call(
        &mut self,
        now: Instant,
        settle: &mut impl FnMut(Ticket, StepReply),
    ) -> Option<StoreCall> {
        let call = self.store.next_call(now);
        if let Some(outcome) = self.store.take_outcome() {
            self.apply(outcome, settle);
        }
        call
    }

    /// The cluster's configuration, in cluster mode.
    pub fn cluster_config(&self) -> Option<&ClusterConfig> {
        match &self.store {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => Some(etcd.config()),
        }
    }

    /// This node's term while it leads the cluster.
    pub fn cluster_term(&self, now: Instant) -> Option<Term> {
        match &self.store {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => etcd.term(now),
        }
    }

    /// The leader this node follows, where it can be reached.
    pub fn cluster_leader(&self) -> Option<&Target> {
        match &self.store {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => etcd.leader_target(),
        }
    }

    /// This node's name in the cluster, in cluster mode.
    pub fn cluster_node(&self) -> Option<&str> {
        match &self.store {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => Some(&etcd.config().node),
        }
    }

    /// The store's call was answered, or failed.
    pub fn call_done(
        &mut self,
        channel: Channel,
        result: Result<Response, CallError>,
        now: Instant,
        settle: &mut impl FnMut(Ticket, StepReply),
    ) {
        if let Some(outcome) = self.store.call_done(channel, result, now) {
            self.apply(outcome, settle);
        }
        // Requests that came while the call was in flight wait already:
        // the answered ones come back on top of them.
        if let Some(answered) = self.answered_last.take() {
            self.linger = Some(Linger {
                until: now + LINGER_MAX,
                expect: answered + self.collecting.len(),
            });
        }
    }

    /// Whether the next batch still waits for the requests the last one
    /// answered to come back.
    fn lingers(&self, now: Instant) -> bool {
        self.linger
            .is_some_and(|l| now < l.until && self.collecting.len() < l.expect)
    }

    /// The store's call could not be handed to the outbound client.
    pub fn call_not_sent(
        &mut self,
        channel: Channel,
        now: Instant,
        settle: &mut impl FnMut(Ticket, StepReply),
    ) {
        if let Some(outcome) = self.store.call_not_sent(channel, now) {
            self.apply(outcome, settle);
        }
    }

    /// A graceful stop begins: a leader hands the leadership on.
    pub fn resign(&mut self) {
        self.store.resign();
    }

    /// A cursor jump the loop should start on the compute worker.
    pub fn wanted_jump(&self, now: Instant) -> Option<u64> {
        match self.jump {
            Some(Jump::Wanted(index)) if self.jump_retry_at.is_none_or(|t| now >= t) => Some(index),
            _ => None,
        }
    }

    /// The loop handed the jump to the compute worker (or could not: then it
    /// asks again a little later).
    pub fn jump_started(&mut self, started: bool, now: Instant) {
        if let Some(Jump::Wanted(index)) = self.jump {
            if started {
                self.jump = Some(Jump::Running(index));
                self.jump_retry_at = None;
            } else {
                self.jump_retry_at = Some(now + JUMP_RETRY);
            }
        }
    }

    /// A cursor computed off the loop arrived.
    pub fn jumped(&mut self, cursor: Cursor, settle: &mut impl FnMut(Ticket, StepReply)) {
        if self.jump != Some(Jump::Running(cursor.index())) {
            return; // the index moved on meanwhile; another jump is wanted
        }
        self.jump = None;
        self.jumps += 1;
        self.value = Value::at_cursor(&cursor);
        self.cursor = Some(cursor);
        self.render_applied(settle);
        // Answered after a jump, not after a call: no linger.
        self.answered_last = None;
    }

    /// When the loop should wake for the stepper (a back-off or a jump retry).
    pub fn next_timer(&self) -> Option<Instant> {
        let jump = self.jump_retry_at.filter(|_| self.jump.is_some());
        // Only while a request waits on it: with none, the next one wakes
        // the loop by itself.
        let linger = self
            .linger
            .filter(|_| !self.collecting.is_empty())
            .map(|l| l.until);
        self.store
            .next_timer()
            .into_iter()
            .chain(jump)
            .chain(linger)
            .min()
    }

    /// Whether a call is due now: the loop must not sleep.
    pub fn has_work(&self, now: Instant) -> bool {
        self.store.has_work(now)
    }

    /// Whether [`Stepper::submit`] would hand a batch over now.
    pub fn wants_submit(&self, ledger: &Ledger, now: Instant) -> bool {
        let waiting = match &self.batch {
            Some(batch) => !batch.submitted && batch.applied.is_none(),
            None => !self.collecting.is_empty() && !self.lingers(now),
        };
        waiting && self.known.is_some() && self.jump.is_none() && self.store.accepts(ledger, now)
    }

    /// Whether the store answers and the index is known: /readyz.
    pub fn is_ready(&self, now: Instant) -> bool {
        self.known.is_some() && self.store.is_ready(now)
    }

    /// The index the store last reported durable.
    pub fn committed_index(&self) -> u64 {
        self.known.unwrap_or(0)
    }

    /// The index once every step taken so far is applied on it.
    pub fn pending_index(&self) -> u64 {
        let in_flight = self.batch.iter().flat_map(|b| b.ops.iter());
        in_flight
            .chain(self.collecting.iter())
            .filter(|(ticket, _)| self.waiting.contains_key(ticket))
            .fold(self.committed_index(), |index, &(ticket, op)| match op {
                Op::Step(step) => apply(index, step, self.max_index),
                Op::Read => index,
                Op::Relay => self.relays.get(&ticket).map_or(index, |relay| {
                    relay
                        .steps
                        .iter()
                        .fold(index, |i, &step| apply(i, step, self.max_index))
                }),
            })
    }

    /// Whether every request taken so far is answered. With a shared store, a batch whose outcome stays unknown (etcd out of
    /// reach) holds no one's reply once its requests' waits are over, so it
    /// does not hold a graceful stop either.
    pub fn is_settled(&self) -> bool {
        (self.batch.is_none() || !self.store.is_exclusive())
            && self.waiting.is_empty()
            && self.store.is_settled()
    }

    /// Cursor moves too long for the loop, run on the compute worker.
    pub fn jumps(&self) -> u64 {
        self.jumps
    }

    /// etcd's counters, when the index is there.
    pub fn etcd_stats(&self, now: Instant) -> Option<EtcdStats> {
        self.store.etcd_stats(now)
    }

    fn join(&mut self, ticket: Ticket, op: Op) {
        self.waiting.insert(ticket, false);
        self.collecting.push_back((ticket, op));
    }

    /// The requests still waiting, in arrival order, as a new batch.
    fn take_batch(&mut self) -> Option<Batch> {
        let mut ops = Vec::new();
        take_waiting(&mut self.collecting, &mut self.waiting, &mut ops);
        (!ops.is_empty()).then_some(Batch {
            ops,
            submitted: false,
            sent_before: false,
            applied: None,
        })
    }

    fn apply(&mut self, outcome: IndexOutcome, settle: &mut impl FnMut(Ticket, StepReply)) {
        match outcome {
            IndexOutcome::Applied {
                base,
                then,
                revision,
            } => {
                if let Some(batch) = &mut self.batch {
                    batch.submitted = false;
                    batch.applied = Some(Applied {
                        base,
                        then,
                        revision,
                    });
                    self.render_applied(settle);
                } else {
                    self.learn(then);
                }
            }
            IndexOutcome::Moved { current, fenced } => {
                if let Some(batch) = &mut self.batch {
                    batch.submitted = false;
                    drop_relays(
                        batch,
                        &mut self.relays,
                        &mut self.waiting,
                        settle,
                        |_, relay| {
                            fenced
                                .contains(&relay.node)
                                .then_some(StepReply::RelayFenced)
                        },
                    );
                }
                self.learn(current);
            }
            IndexOutcome::Deposed { current }
            | IndexOutcome::Retry {
                current: Some(current),
            } => {
                if let Some(batch) = &mut self.batch {
                    batch.submitted = false;
                }
                self.learn(current);
            }
            IndexOutcome::Retry { current: None } => {
                if let Some(batch) = &mut self.batch {
                    batch.submitted = false;
                }
            }
            IndexOutcome::Learned { current } => self.learn(current),
            IndexOutcome::Failed => {
                for (ticket, _) in self.batch.take().map(|b| b.ops).unwrap_or_default() {
                    self.relays.remove(&ticket);
                    if self.waiting.remove(&ticket).is_some() {
                        settle(ticket, StepReply::Withdrawn);
                    }
                }
            }
        }
    }

    /// Renders the applied batch, once the cursor is at the index it was
    /// applied on: each request's reply from the index its step made.
    fn render_applied(&mut self, settle: &mut impl FnMut(Ticket, StepReply)) {
        let Some(Applied {
            base,
            then,
            revision,
        }) = self.batch.as_ref().and_then(|b| b.applied)
        else {
            return;
        };
        if self.jump.is_some() || !self.move_cursor(base) {
            return; // a jump runs; `jumped` comes back here
        }
        let (Some(batch), Some(mut cursor)) = (self.batch.take(), self.cursor.take()) else {
            return;
        };
        if !self.store.is_exclusive() {
            self.answered_last = Some(batch.ops.len());
        }
        // A read right after a step shows the same value: render it once.
        let mut last: Option<(u64, Value)> = None;
        for (ticket, op) in batch.ops {
            let moved = match op {
                Op::Step(Step::Next) if cursor.index() >= self.max_index => {
                    if self.waiting.remove(&ticket).is_some() {
                        let max_index = self.max_index;
                        settle(ticket, StepReply::AtCeiling { max_index });
                    }
                    continue;
                }
                Op::Step(Step::Next) => {
                    cursor.forward();
                    true
                }
                Op::Step(Step::Previous) => cursor.back(),
                Op::Read => false,
                Op::Relay => {
                    let relayed_on = cursor.index();
                    let steps = self.relays.remove(&ticket).map(|r| r.steps);
                    for step in steps.unwrap_or_default() {
                        match step {
                            Step::Next if cursor.index() >= self.max_index => {}
                            Step::Next => cursor.forward(),
                            Step::Previous => {
                                cursor.back();
                            }
                        }
                    }
                    last = None;
                    if self.waiting.remove(&ticket).is_some() {
                        let reply = StepReply::Relayed {
                            base: relayed_on,
                            then,
                            revision,
                        };
                        settle(ticket, reply);
                    }
                    continue;
                }
            };
            if moved {
                last = None;
            }
            if self.waiting.remove(&ticket).is_none() {
                continue; // expired, or its client left: nobody to tell
            }
            let value = match &last {
                Some((index, value)) if *index == cursor.index() => value.clone(),
                _ => {
                    let value = Value::at_cursor(&cursor);
                    last = Some((cursor.index(), value.clone()));
                    value
                }
            };
            let index = cursor.index();
            settle(ticket, StepReply::Index { index, value });
        }
        self.known = Some(cursor.index());
        self.value = match last {
            Some((index, value)) if index == cursor.index() => value,
            _ => Value::at_cursor(&cursor),
        };
        self.cursor = Some(cursor);
        if then != self.committed_index() {
            self.learn(then);
        }
    }

    /// The store holds `index`: remember it and move the cursor there.
    fn learn(&mut self, index: u64) {
        self.known = Some(index);
        if self.move_cursor(index)
            && let Some(cursor) = &self.cursor
        {
            self.value = Value::at_cursor(cursor);
        }
    }

    /// Steps the cursor to `index` when that is cheap (true), or asks for a
    /// jump (false).
    fn move_cursor(&mut self, index: u64) -> bool {
        let cost = match &self.cursor {
            Some(c) if c.index() == index => return true,
            None if index <= BUILD_ON_LOOP_MAX => {
                self.cursor = Some(Cursor::at(index));
                return true;
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
            self.jump_retry_at = None;
            return false;
        }
        if let Some(cursor) = &mut self.cursor {
            while cursor.index() < index {
                cursor.forward();
            }
            while cursor.index() > index {
                cursor.back();
            }
        }
        true
    }
}

/// Moves the requests still waiting from `collecting` into `ops`, in
/// arrival order, up to a batch's size; they count as handed to the store.
fn take_waiting(
    collecting: &mut VecDeque<(Ticket, Op)>,
    waiting: &mut HashMap<Ticket, bool>,
    ops: &mut Vec<(Ticket, Op)>,
) {
    let mut relays = ops.iter().filter(|(_, op)| *op == Op::Relay).count();
    while ops.len() < BATCH_OPS_MAX {
        if relays >= RELAYS_PER_BATCH_MAX
            && collecting.front().is_some_and(|(_, op)| *op == Op::Relay)
        {
            return;
        }
        let Some((ticket, op)) = collecting.pop_front() else {
            return;
        };
        relays += usize::from(op == Op::Relay);
        if let Some(sent) = waiting.get_mut(&ticket) {
            *sent = true;
            ops.push((ticket, op));
        }
    }
}

/// The index after one step from `index`: /next stops at the ceiling,
/// /previous at 0. The cursor walk in `render_applied` follows the same rule.
fn apply(index: u64, step: Step, max_index: u64) -> u64 {
    match step {
        Step::Next if index >= max_index => index,
        Step::Next => index + 1,
        Step::Previous => index.saturating_sub(1),
    }
}

/// What a batch does, worked out before it goes to the store.
struct Plan {
    /// The index after every op.
    target: u64,
    /// Whether any op moves the index.
    moves: bool,
    /// Steps, relayed ones included.
    steps: u64,
    /// This node's own steps, in order.
    sequence: Vec<Step>,
    /// Each relay's writer put, with the index it is applied on.
    relays: Vec<WriterPut>,
}

/// Where `ops` take the index from `base`.
fn plan(base: u64, ops: &[(Ticket, Op)], relays: &HashMap<Ticket, Relay>, max_index: u64) -> Plan {
    let mut planned = Plan {
        target: base,
        moves: false,
        steps: 0,
        sequence: Vec::new(),
        relays: Vec::new(),
    };
    let step = |planned: &mut Plan, step| {
        planned.steps += 1;
        let next = apply(planned.target, step, max_index);
        planned.moves |= next != planned.target;
        planned.target = next;
    };
    for &(ticket, op) in ops {
        match op {
            Op::Step(s) => {
                planned.sequence.push(s);
                step(&mut planned, s);
            }
            Op::Read => {}
            Op::Relay => {
                let Some(relay) = relays.get(&ticket) else {
                    continue;
                };
                planned.relays.push(WriterPut {
                    node: relay.node.clone(),
                    fence: relay.fence,
                    tag: relay.tag.clone(),
                    base: planned.target,
                });
                for &s in &relay.steps {
                    step(&mut planned, s);
                }
            }
        }
    }
    planned
}

/// Takes out of `batch` the relays `why` gives a reply for, and answers them.
fn drop_relays(
    batch: &mut Batch,
    relays: &mut HashMap<Ticket, Relay>,
    waiting: &mut HashMap<Ticket, bool>,
    settle: &mut impl FnMut(Ticket, StepReply),
    why: impl Fn(Ticket, &Relay) -> Option<StepReply>,
) {
    batch.ops.retain(|&(ticket, op)| {
        let reply = match (op, relays.get(&ticket)) {
            (Op::Relay, Some(relay)) => why(ticket, relay),
            _ => None,
        };
        let Some(reply) = reply else {
            return true;
        };
        relays.remove(&ticket);
        if waiting.remove(&ticket).is_some() {
            settle(ticket, reply);
        }
        false
    });
}

/// A node sends a relay only once the one before is settled, so of two
/// relays of one node in a batch the older is one it gave up on (and two
/// writes of one key in a transaction are refused).
fn drop_superseded(
    batch: &mut Batch,
    relays: &mut HashMap<Ticket, Relay>,
    waiting: &mut HashMap<Ticket, bool>,
    settle: &mut impl FnMut(Ticket, StepReply),
) {
    let mut newest: HashMap<&str, Ticket> = HashMap::new();
    for &(ticket, op) in &batch.ops {
        if let (Op::Relay, Some(relay)) = (op, relays.get(&ticket)) {
            newest.insert(&relay.node, ticket);
        }
    }
    if newest.len() == batch.ops.iter().filter(|(_, op)| *op == Op::Relay).count() {
        return; // one relay per node, as nearly always
    }
    let newest: HashMap<String, Ticket> = newest
        .into_iter()
        .map(|(node, ticket)| (node.to_owned(), ticket))
        .collect();
    drop_relays(batch, relays, waiting, settle, |ticket, relay| {
        (newest.get(&relay.node) != Some(&ticket)).then_some(StepReply::RelayFenced)
    });
}

#[cfg(test)]
mod tests;
