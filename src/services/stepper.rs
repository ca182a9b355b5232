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

use crate::net::upstream::{CallError, Response};
use crate::reply::park::Ticket;
use crate::services::fib::Value;
use crate::services::fib::cursor::Cursor;
use crate::store::etcd::EtcdStats;
use crate::store::ledger::{Committed, Ledger};
use crate::store::{IndexBatch, IndexOutcome, IndexStore, StoreCall};

/// Limb operations the loop may spend moving the cursor in one go (a limb
/// add is about a nanosecond, so this stays well under a millisecond).
const STEP_BUDGET_LIMB_OPS: u64 = 200_000;
/// Indices up to here are built on the loop: F(5000) has 1,045 digits.
const BUILD_ON_LOOP_MAX: u64 = 5_000;
/// Requests taken into one batch at most; more wait for the next.
const BATCH_OPS_MAX: usize = 8_192;
/// A jump the compute queue refused is asked for again after this long.
const JUMP_RETRY: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    Previous,
}

/// A request waiting in a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Step(Step),
    /// /current, answered at its place in the batch.
    Read,
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
    /// Applied on `.0` (the store holds `.1` now), waiting for the cursor
    /// to get there before its replies are rendered.
    applied: Option<(u64, u64)>,
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
    batch: Option<Batch>,
    jumps: u64,
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
            batch: None,
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

    /// The request's wait is over: its reply now, if it still waited.
    pub fn expire(&mut self, ticket: Ticket) -> Option<StepReply> {
        let sent = self.waiting.remove(&ticket)?;
        Some(if sent && self.store.may_apply() {
            StepReply::OutcomeUnknown
        } else {
            StepReply::Unavailable
        })
    }

    /// The request's client left: a step already handed to the store still
    /// happens; one that was not is dropped.
    pub fn abandon(&mut self, ticket: Ticket) {
        self.waiting.remove(&ticket);
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
                let waiting = &self.waiting;
                batch.ops.retain(|(ticket, _)| waiting.contains_key(ticket));
                take_waiting(&mut self.collecting, &mut self.waiting, &mut batch.ops);
            }
            if batch.ops.is_empty() {
                self.batch = None;
                continue;
            }
            let (target, moves, steps) = simulate(base, &batch.ops, self.max_index);
            if self.store.is_exclusive() && !moves {
                batch.applied = Some((base, base));
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
                    target,
                    steps,
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

    /// The store's next outbound call, for the loop to send.
    pub fn next_call(&mut self, now: Instant) -> Option<StoreCall> {
        self.store.next_call(now)
    }

    /// The store's call was answered, or failed.
    pub fn call_done(
        &mut self,
        result: Result<Response, CallError>,
        now: Instant,
        settle: &mut impl FnMut(Ticket, StepReply),
    ) {
        if let Some(outcome) = self.store.call_done(result, now) {
            self.apply(outcome, settle);
        }
    }

    /// The store's call could not be handed to the outbound client.
    pub fn call_not_sent(&mut self, now: Instant, settle: &mut impl FnMut(Ticket, StepReply)) {
        if let Some(outcome) = self.store.call_not_sent(now) {
            self.apply(outcome, settle);
        }
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
    }

    /// When the loop should wake for the stepper (a back-off or a jump retry).
    pub fn next_timer(&self) -> Option<Instant> {
        let jump = self.jump_retry_at.filter(|_| self.jump.is_some());
        self.store.next_timer().into_iter().chain(jump).min()
    }

    /// Whether a call is due now: the loop must not sleep.
    pub fn has_work(&self, now: Instant) -> bool {
        self.store.has_work(now)
    }

    /// Whether [`Stepper::submit`] would hand a batch over now.
    pub fn wants_submit(&self, ledger: &Ledger, now: Instant) -> bool {
        let waiting = match &self.batch {
            Some(batch) => !batch.submitted && batch.applied.is_none(),
            None => !self.collecting.is_empty(),
        };
        waiting && self.known.is_some() && self.jump.is_none() && self.store.accepts(ledger, now)
    }

    /// Whether the store answers and the index is known: /readyz.
    pub fn is_ready(&self) -> bool {
        self.known.is_some() && self.store.is_ready()
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
            .fold(self.committed_index(), |index, &(_, op)| match op {
                Op::Step(step) => apply(index, step, self.max_index),
                Op::Read => index,
            })
    }

    /// Whether every request taken so far is answered.
    pub fn is_settled(&self) -> bool {
        self.batch.is_none() && self.waiting.is_empty()
    }

    /// Cursor moves too long for the loop, run on the compute worker.
    pub fn jumps(&self) -> u64 {
        self.jumps
    }

    /// etcd's counters, when the index is there.
    pub fn etcd_stats(&self) -> Option<EtcdStats> {
        self.store.etcd_stats()
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
            IndexOutcome::Applied { base, then } => {
                if let Some(batch) = &mut self.batch {
                    batch.submitted = false;
                    batch.applied = Some((base, then));
                    self.render_applied(settle);
                } else {
                    self.learn(then);
                }
            }
            IndexOutcome::Moved { current } => {
                if let Some(batch) = &mut self.batch {
                    batch.submitted = false;
                }
                self.learn(current);
            }
            IndexOutcome::Retry => {
                if let Some(batch) = &mut self.batch {
                    batch.submitted = false;
                }
            }
            IndexOutcome::Learned { current } => self.learn(current),
            IndexOutcome::Failed => {
                for (ticket, _) in self.batch.take().map(|b| b.ops).unwrap_or_default() {
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
        let Some((base, then)) = self.batch.as_ref().and_then(|b| b.applied) else {
            return;
        };
        if self.jump.is_some() || !self.move_cursor(base) {
            return; // a jump runs; `jumped` comes back here
        }
        let (Some(batch), Some(mut cursor)) = (self.batch.take(), self.cursor.take()) else {
            return;
        };
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
    while ops.len() < BATCH_OPS_MAX {
        let Some((ticket, op)) = collecting.pop_front() else {
            return;
        };
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

/// Where `ops` take the index from `base`: the index after them, whether
/// any of them moves it, and how many steps there are.
fn simulate(base: u64, ops: &[(Ticket, Op)], max_index: u64) -> (u64, bool, u64) {
    let mut index = base;
    let (mut moves, mut steps) = (false, 0);
    for &(_, op) in ops {
        if let Op::Step(step) = op {
            steps += 1;
            let next = apply(index, step, max_index);
            moves |= next != index;
            index = next;
        }
    }
    (index, moves, steps)
}

#[cfg(test)]
mod tests;
