//! The primes tasks: which exist, where each stands, whose they are, the
//! largest prime table computed so far, who waits for which task, and the
//! record writes the next group commit must carry. Sans-IO and sans-clock:
//! the loop passes the time (Unix milliseconds, because retention outlives
//! a restart), hands in the sieve's results and the commit outcomes, and
//! writes the replies.
//!
//! Durability: a task is accepted into the collecting group-commit batch
//! (its 202 is parked behind that batch as a reply slot); its record goes to
//! the store in that batch's one transaction, and the 202 leaves only once
//! the batch is durable. A cancellation's 200 and an idempotent replay's
//! 202 wait the same way. Settling, expiry and eviction are written in
//! whatever batch comes next. If a commit fails, the tasks whose acceptance
//! it carried (and the batch collected on top of it) are dropped and their
//! 202s withdrawn, cancellations it carried are undone, and other writes are
//! retried in the next batch.
//!
//! Bounds: unsettled tasks are promises and are never dropped; they are
//! bounded by `pending_max`, and each owner's share of them by
//! `pending_per_client`. Settled tasks are a record of what happened (a
//! result is recomputed from n): kept for `retention`, and when the store
//! is at `tasks_max` the oldest settled one makes room for a new task.
//!
//! Callbacks (`callback`): a task may name a URL that its settlement is
//! POSTed to. The callback is part of the task's record. Its first attempt
//! is due once the settled state is durable (a delivery never announces a
//! cancellation that a failed commit undoes), and a settled task whose
//! delivery is not final yet is a promise like an unsettled one: neither
//! retention nor eviction takes it.
//!
//! Reuse: one table, the largest so far, rendered once as JSON. A task for
//! n at or below its size is done on arrival; above it, the pending tasks
//! share one sieve for the largest n among them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::PrimesLimits;
use super::callback::{Attempt, AttemptEnd, AttemptError, Callback, CallbackCounts, Deliveries};
use super::sieve::{self, PrimeTable};
use super::task::{Failure, IdempotencyKey, Outcome, Owner, Task, TaskId};
use crate::reply::park::Ticket;
use crate::services::compute::{ComputeWorker, Job};
use crate::store::ledger::{BatchId, CommitEffect};
use crate::store::lmdb::RecordWrite;

/// Settled tasks deleted per housekeeping pass at most, so a backlog of
/// expired records costs several small commits, not one long one.
const EXPIRE_BATCH: usize = 1000;

/// A GET parked until its task settles (`?wait`), or until the table covers
/// a task done before a restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrimesWaiter {
    pub ticket: Ticket,
    pub id: TaskId,
}

/// Why a task was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `tasks_max` tasks are stored and none is settled, so none can make
    /// room (possible when `pending_max` is not below `tasks_max`).
    StoreFull,
    /// `pending_max` tasks wait already, or the compute queue is full.
    QueueFull,
    /// This owner holds `pending_per_client` unsettled tasks already.
    ClientShare,
    /// `--callback-pending` tasks wait for their callback's delivery already.
    CallbackBacklog,
}

/// Why a cancellation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelRefused {
    NotFound,
    /// The task was posted with another API key.
    NotOwner,
    /// A sieve that covers it is queued or running: it will be done shortly.
    Running,
    /// It is done already.
    Done,
    /// It failed already.
    Failed,
}

/// What a DELETE that may proceed does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// The task is pending: it becomes cancelled.
    Takes,
    /// The task is cancelled already: the answer repeats it.
    Repeats,
}

/// A task a POST asks for, once its room is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask<'u> {
    pub id: TaskId,
    pub n: u64,
    pub owner: Owner,
    pub idempotency: Option<IdempotencyKey>,
    /// Its `callback_url`, and where the allow-list resolved it.
    pub callback: Option<(&'u str, SocketAddr)>,
}

/// The task an `Idempotency-Key` was first posted for, with what the
/// first POST asked, to compare a retry with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Posted<'t> {
    pub id: TaskId,
    pub n: u64,
    pub callback_url: Option<&'t str>,
}

/// Where a task stands, as a client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pending,
    /// A sieve that will cover it is queued or running.
    Processing,
    Done {
        elapsed_ms: u64,
    },
    Failed(Failure),
    Cancelled,
}

impl Status {
    /// A task's status; `processing`: a sieve covering it runs.
    pub fn of(task: &Task, processing: bool) -> Status {
        match task.settled {
            Some((Outcome::Done, at)) => Status::Done {
                elapsed_ms: at.saturating_sub(task.created_ms),
            },
            Some((Outcome::Failed(failure), _)) => Status::Failed(failure),
            Some((Outcome::Cancelled, _)) => Status::Cancelled,
            None if processing => Status::Processing,
            None => Status::Pending,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Done { .. } => "done",
            Status::Failed(_) => "failed",
            Status::Cancelled => "cancelled",
        }
    }
}

/// A task's state with, once done, its result: the first `result_len`
/// bytes of the shared table text (a closing bracket completes it).
#[derive(Clone, Debug)]
pub struct TaskView {
    pub n: u64,
    pub status: Status,
    pub result: Option<(Arc<[u8]>, usize)>,
}

impl TaskView {
    /// Nothing more will change for this reader: failed, cancelled, or done
    /// with its result.
    pub fn is_final(&self) -> bool {
        matches!(self.status, Status::Failed(_) | Status::Cancelled) || self.result.is_some()
    }

    /// Done, but the table was lost with a restart and is being rebuilt.
    pub fn awaits_table(&self) -> bool {
        matches!(self.status, Status::Done { .. }) && self.result.is_none()
    }
}

/// What a finished sieve settled.
#[derive(Debug, Default)]
pub struct Sieved {
    /// Parked readers whose task is now final, to be answered.
    pub ready: Vec<PrimesWaiter>,
    /// Acceptance-to-done time of each task it completed.
    pub durations_ms: Vec<u64>,
}

/// What a commit outcome decided for a parked reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// The change it answers is durable: the written reply may leave.
    Durable,
    /// The change was not made durable: the reply is withdrawn.
    Withdrawn,
    /// A reader's task became final (a durable cancellation): answer it.
    TaskFinal,
}

/// Counters for /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimesCounts {
    pub accepted: u64,
    pub done: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub expired: u64,
    /// Settled tasks deleted early to make room for a new one.
    pub evicted: u64,
    /// POSTs answered with an earlier task's 202 (`Idempotency-Key`).
    pub replayed: u64,
    /// Tasks answered from the table on arrival.
    pub table_hits: u64,
    /// Sieves run.
    pub computations: u64,
    pub refused_store_full: u64,
    pub refused_queue_full: u64,
    pub refused_client_share: u64,
    pub refused_callback_backlog: u64,
}

/// What a parked reply waits for, and what its batch's failure undoes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// A 202 for a new task: a failure drops the task.
    Creates,
    /// A reply that repeats a change (a replayed 202, a repeated DELETE):
    /// it leaves once everything before it is durable.
    Confirms,
    /// A cancellation's 200: a failure returns the task to pending.
    Cancels,
}

#[derive(Clone, Copy, Debug)]
struct Awaiting {
    batch: BatchId,
    id: TaskId,
    ticket: Ticket,
    effect: Effect,
}

/// The writes a batch in flight carries.
#[derive(Debug)]
struct InFlight {
    batch: BatchId,
    records: Vec<(u64, TaskId)>,
    /// Tasks it writes as settled with a callback not delivered yet: their
    /// first attempt is due once the batch is durable.
    callbacks_due: Vec<TaskId>,
}

/// Record writes owed to the store, by batch.
#[derive(Debug, Default)]
struct Writes {
    /// Records (sequence number, task) whose current state, or absence,
    /// the next batch must write.
    dirty: Vec<(u64, TaskId)>,
    /// Dirty tasks that no caller has joined a batch for yet.
    unjoined: bool,
    in_flight: Option<InFlight>,
    /// Replies parked behind a batch, oldest batch first.
    awaiting: VecDeque<Awaiting>,
}

pub struct PrimesService {
    limits: PrimesLimits,
    worker: Rc<ComputeWorker>,
    tasks: HashMap<TaskId, Task>,
    /// Unsettled tasks by n, so a table settles a prefix of them.
    pending: BTreeSet<(u64, TaskId)>,
    /// Unsettled tasks per owner, for fair shares; owners with none are absent.
    pending_by_owner: HashMap<Owner, usize>,
    /// Settled tasks whose callback (if any) is final, by when they
    /// settled: retention and eviction take the oldest first.
    expiry: BTreeSet<(u64, TaskId)>,
    /// The tasks' callbacks and the schedule of their deliveries.
    deliveries: Deliveries<TaskId, Owner>,
    /// The task each stored idempotency key was posted for.
    by_idempotency: HashMap<IdempotencyKey, TaskId>,
    /// `[2, 3, …` for the first `table_len` primes; shared by every reply.
    table: Arc<[u8]>,
    table_len: u64,
    /// The n of the sieve queued or running, if any.
    sieving: Option<u64>,
    /// The table size that tasks settled before a restart need.
    table_wanted: u64,
    waiters: HashMap<TaskId, Vec<PrimesWaiter>>,
    /// Each parked reader's task and its place in that task's list, so a
    /// wait that ends takes O(1) however many readers share the task.
    waiting_for: HashMap<Ticket, (TaskId, usize)>,
    writes: Writes,
    /// The record key of the next accepted task.
    next_seq: u64,
    counts: PrimesCounts,
}

impl PrimesService {
    /// Starts from the records in the store: pending tasks are resumed at
    /// once, settled ones get their table rebuilt, tasks above a lowered
    /// `max_n` fail, and the callbacks of settled tasks that are not
    /// delivered yet are due now (each resolved again by the caller: one
    /// without an address fails).
    pub fn new(
        limits: PrimesLimits,
        deliveries: Deliveries<TaskId, Owner>,
        worker: Rc<ComputeWorker>,
        records: Vec<(TaskId, Task, Option<Callback>)>,
        now_ms: u64,
        now: Instant,
    ) -> PrimesService {
        let mut service =
            PrimesService::from_records(limits, deliveries, worker, records, now_ms, now);
        service.kick();
        service
    }

    /// The service of [`PrimesService::new`], no sieve started yet.
    fn from_records(
        limits: PrimesLimits,
        deliveries: Deliveries<TaskId, Owner>,
        worker: Rc<ComputeWorker>,
        records: Vec<(TaskId, Task, Option<Callback>)>,
        now_ms: u64,
        now: Instant,
    ) -> PrimesService {
        let mut service = PrimesService {
            limits,
            worker,
            tasks: HashMap::with_capacity(records.len()),
            pending: BTreeSet::new(),
            pending_by_owner: HashMap::new(),
            expiry: BTreeSet::new(),
            deliveries,
            by_idempotency: HashMap::new(),
            table: Arc::from(&b"["[..]),
            table_len: 0,
            sieving: None,
            table_wanted: 0,
            waiters: HashMap::new(),
            waiting_for: HashMap::new(),
            writes: Writes::default(),
            next_seq: records.iter().map(|(_, t, _)| t.seq + 1).max().unwrap_or(1),
            counts: PrimesCounts::default(),
        };
        for (id, mut task, callback) in records {
            // Above a lowered max_n a result cannot be rebuilt: done or not, it fails.
            let ended = matches!(
                task.settled,
                Some((Outcome::Failed(_) | Outcome::Cancelled, _))
            );
            if task.n > limits.max_n && !ended {
                task.settled = Some((Outcome::Failed(Failure::AboveMax), now_ms));
                service.counts.failed += 1;
                service.mark_dirty(task.seq, id);
            }
            if let Some(key) = task.idempotency {
                service.by_idempotency.insert(key, id);
            }
            if let Some(callback) = callback {
                service.deliveries.add(id, callback, task.owner);
            }
            match task.settled {
                None => service.add_pending(&task, id),
                Some((outcome, at)) => {
                    if outcome == Outcome::Done {
                        service.table_wanted = service.table_wanted.max(task.n);
                    }
                    if service.deliveries.ready(id, now) {
                        service.mark_dirty(task.seq, id);
                    }
                    service.settled_at(at, id);
                }
            }
            service.tasks.insert(id, task);
        }
        service
    }

    /// Cluster mode: this node's tasks become `records` (the cluster's, as
    /// a new term loaded them, or none once the term is lost). The table,
    /// the sieve under way and the counters stay. Replies parked behind a
    /// batch are withdrawn (their writes belong to a term that is over);
    /// the parked readers are returned, for the caller to answer.
    pub fn replace_tasks(
        &mut self,
        records: Vec<(TaskId, Task, Option<Callback>)>,
        now_ms: u64,
        now: Instant,
        settle: &mut impl FnMut(Ticket, Settle),
    ) -> Vec<PrimesWaiter> {
        let fresh = PrimesService::from_records(
            self.limits,
            self.deliveries.emptied(),
            self.worker.clone(),
            records,
            now_ms,
            now,
        );
        let mut old = std::mem::replace(self, fresh);
        self.table = old.table.clone();
        self.table_len = old.table_len;
        self.sieving = old.sieving;
        self.counts = old.counts;
        self.kick();
        for awaiting in old.writes.awaiting.drain(..) {
            settle(awaiting.ticket, Settle::Withdrawn);
        }
        old.waiters.into_values().flatten().collect()
    }

    /// Cluster mode, a follower: the table should cover `n`, so a task the
    /// leader holds can be answered here with its result.
    pub fn want_table(&mut self, n: u64) {
        self.table_wanted = self.table_wanted.max(n.min(self.limits.max_n));
        self.kick();
    }

    /// The first `n` primes as a prefix of the shared table, if it covers them.
    pub fn result(&self, n: u64) -> Option<(Arc<[u8]>, usize)> {
        (n <= self.table_len).then(|| (self.table.clone(), sieve::prefix_len(n)))
    }

    /// A task's record as stored, with its sequence number, and whether a
    /// sieve covering it runs (for a follower that asked).
    pub fn record(&self, id: TaskId) -> Option<(u64, Vec<u8>, bool)> {
        let task = self.tasks.get(&id)?;
        let processing = self.status(task) == Status::Processing;
        Some((
            task.seq,
            task.encode(id, self.deliveries.get(id)),
            processing,
        ))
    }

    /// Tasks that may wait for a sieve (`--primes-queue`).
    pub fn pending_max(&self) -> usize {
        self.limits.pending_max
    }

    pub fn max_n(&self) -> u64 {
        self.limits.max_n
    }

    /// Whether a task for `n` would be answered from the table.
    pub fn is_table_hit(&self, n: u64) -> bool {
        n <= self.table_len
    }

    pub fn contains(&self, id: TaskId) -> bool {
        self.tasks.contains_key(&id)
    }

    /// The stored task posted under `key`, and what it asked.
    pub fn idempotent(&self, key: IdempotencyKey) -> Option<Posted<'_>> {
        let id = *self.by_idempotency.get(&key)?;
        Some(Posted {
            id,
            n: self.tasks.get(&id)?.n,
            callback_url: self.deliveries.get(id).map(|c| &*c.url),
        })
    }

    /// Whether `owner` may post a task for `n` (with a callback or not)
    /// now; a refusal is counted.
    pub fn check_room(&mut self, n: u64, owner: Owner, callback: bool) -> Result<(), Refused> {
        let refused = self.refusal(n, owner, callback);
        match refused {
            Some(Refused::StoreFull) => self.counts.refused_store_full += 1,
            Some(Refused::QueueFull) => self.counts.refused_queue_full += 1,
            Some(Refused::ClientShare) => self.counts.refused_client_share += 1,
            Some(Refused::CallbackBacklog) => self.counts.refused_callback_backlog += 1,
            None => {}
        }
        refused.map_or(Ok(()), Err)
    }

    fn refusal(&self, n: u64, owner: Owner, callback: bool) -> Option<Refused> {
        if self.tasks.len() >= self.limits.tasks_max && self.expiry.is_empty() {
            return Some(Refused::StoreFull);
        }
        if callback && !self.deliveries.has_room() {
            return Some(Refused::CallbackBacklog);
        }
        // An undelivered callback is a promise too, held against the same share.
        if callback && self.deliveries.undelivered_of(owner) >= self.limits.pending_per_client {
            return Some(Refused::ClientShare);
        }
        if self.is_table_hit(n) {
            return None;
        }
        let must_queue = self.sieving.is_none() && !self.worker.has_room();
        if self.pending.len() >= self.limits.pending_max || must_queue {
            return Some(Refused::QueueFull);
        }
        let held = self.pending_by_owner.get(&owner).copied().unwrap_or(0);
        (held >= self.limits.pending_per_client).then_some(Refused::ClientShare)
    }

    /// Takes a task (after [`Self::check_room`]) whose record rides in
    /// `batch`, evicting the oldest settled task if the store is full; its
    /// 202, parked under `ticket`, is released or withdrawn with that batch
    /// ([`Self::on_commit`]).
    pub fn accept(
        &mut self,
        new: NewTask<'_>,
        now_ms: u64,
        batch: BatchId,
        ticket: Ticket,
    ) -> Status {
        self.make_room();
        let NewTask {
            id,
            n,
            owner,
            idempotency,
            callback,
        } = new;
        let hit = self.is_table_hit(n);
        let task = Task {
            seq: self.next_seq,
            n,
            created_ms: now_ms,
            settled: hit.then_some((Outcome::Done, now_ms)),
            owner,
            idempotency,
        };
        self.next_seq += 1;
        self.tasks.insert(id, task);
        if let Some(key) = idempotency {
            self.by_idempotency.insert(key, id);
        }
        if let Some((url, addr)) = callback {
            self.deliveries.add(id, Callback::new(url, addr), owner);
        }
        self.writes.dirty.push((task.seq, id));
        self.park_behind(batch, id, ticket, Effect::Creates);
        self.counts.accepted += 1;
        if hit {
            self.counts.table_hits += 1;
            self.counts.done += 1;
            self.settled_at(now_ms, id);
        } else {
            self.add_pending(&task, id);
            self.kick();
        }
        self.status(&task)
    }

    /// Parks the 202 of an idempotent replay of task `id` (see
    /// [`Self::confirm`]) and counts it.
    pub fn replay(&mut self, id: TaskId, batch: BatchId, ticket: Ticket) {
        self.counts.replayed += 1;
        self.confirm(id, batch, ticket);
    }

    /// Parks a reply that repeats what was answered for task `id` (a
    /// replayed 202, a repeated DELETE): it leaves once `batch`, and so
    /// every change to the task before it, is durable.
    pub fn confirm(&mut self, id: TaskId, batch: BatchId, ticket: Ticket) {
        self.park_behind(batch, id, ticket, Effect::Confirms);
    }

    /// Whether `by` may cancel task `id`, and what the DELETE does. Only
    /// the key that posted a task may cancel it; a task posted without a
    /// key may be cancelled by whoever holds its (unguessable) id.
    pub fn check_cancel(&self, id: TaskId, by: Owner) -> Result<Cancel, CancelRefused> {
        let task = self.tasks.get(&id).ok_or(CancelRefused::NotFound)?;
        if task.owner.is_key() && task.owner != by {
            return Err(CancelRefused::NotOwner);
        }
        match self.status(task) {
            Status::Pending => Ok(Cancel::Takes),
            Status::Cancelled => Ok(Cancel::Repeats),
            Status::Processing => Err(CancelRefused::Running),
            Status::Done { .. } => Err(CancelRefused::Done),
            Status::Failed(_) => Err(CancelRefused::Failed),
        }
    }

    /// Cancels a pending task (after [`Self::check_cancel`]); the 200,
    /// parked under `ticket`, leaves once `batch` is durable, and then the
    /// task's `?wait` readers are answered. A repeated DELETE only waits.
    pub fn cancel(&mut self, id: TaskId, now_ms: u64, batch: BatchId, ticket: Ticket) {
        let Some(task) = self.tasks.get(&id).copied() else {
            return;
        };
        if task.settled.is_some() {
            self.confirm(id, batch, ticket);
            return;
        }
        self.remove_pending(&task, id);
        if let Some(task) = self.tasks.get_mut(&id) {
            task.settled = Some((Outcome::Cancelled, now_ms));
        }
        self.settled_at(now_ms, id);
        self.counts.cancelled += 1;
        self.writes.dirty.push((task.seq, id));
        self.park_behind(batch, id, ticket, Effect::Cancels);
    }

    /// The task as a client sees it now.
    pub fn view(&self, id: TaskId) -> Option<TaskView> {
        let task = self.tasks.get(&id)?;
        let status = self.status(task);
        let result = (matches!(status, Status::Done { .. }) && task.n <= self.table_len)
            .then(|| (self.table.clone(), sieve::prefix_len(task.n)));
        Some(TaskView {
            n: task.n,
            status,
            result,
        })
    }

    /// Parks a reader until the task is final (see [`Self::sieved`]).
    pub fn wait(&mut self, waiter: PrimesWaiter) {
        if let Some(task) = self.tasks.get(&waiter.id)
            && matches!(task.settled, Some((Outcome::Done, _)))
        {
            self.table_wanted = self.table_wanted.max(task.n);
        }
        let list = self.waiters.entry(waiter.id).or_default();
        list.push(waiter);
        self.waiting_for
            .insert(waiter.ticket, (waiter.id, list.len() - 1));
        self.kick();
    }

    /// Takes back a parked reader whose wait ended.
    pub fn forget_waiter(&mut self, ticket: Ticket) -> Option<PrimesWaiter> {
        let (id, at) = self.waiting_for.remove(&ticket)?;
        let list = self.waiters.get_mut(&id)?;
        if list.get(at)?.ticket != ticket {
            return None;
        }
        let waiter = list.swap_remove(at);
        if let Some(moved) = list.get(at) {
            self.waiting_for.insert(moved.ticket, (id, at));
        }
        if list.is_empty() {
            self.waiters.remove(&id);
        }
        Some(waiter)
    }

    /// A sieve finished: keep the larger table, settle the tasks it covers,
    /// and start the next sieve if tasks above it wait.
    pub fn sieved(&mut self, table: PrimeTable, now_ms: u64) -> Sieved {
        self.sieving = None;
        if table.len() > self.table_len {
            self.table_len = table.len();
            let old = std::mem::replace(&mut self.table, table.into_json());
            if Arc::strong_count(&old) == 1 {
                // Freed on a compute thread (or here, if its queue is full).
                let _ = self.worker.submit(Job::Release(old));
            }
        }
        let mut sieved = Sieved::default();
        while let Some(&(n, id)) = self.pending.first()
            && n <= self.table_len
        {
            let Some(task) = self.tasks.get(&id).copied() else {
                self.pending.pop_first();
                continue;
            };
            self.remove_pending(&task, id);
            if let Some(task) = self.tasks.get_mut(&id) {
                task.settled = Some((Outcome::Done, now_ms));
            }
            sieved
                .durations_ms
                .push(now_ms.saturating_sub(task.created_ms));
            self.counts.done += 1;
            self.settled_at(now_ms, id);
            self.mark_dirty(task.seq, id);
        }
        let ready: Vec<TaskId> = self
            .waiters
            .keys()
            .copied()
            .filter(|id| self.view(*id).is_none_or(|v| v.is_final()))
            .collect();
        for id in ready {
            sieved.ready.extend(self.take_waiters(id));
        }
        self.kick();
        sieved
    }

    /// Starts a sieve if tasks wait for a larger table and none is under way;
    /// a full compute queue is retried at the next housekeeping.
    pub fn kick(&mut self) {
        let wanted = self.wanted_table();
        if wanted <= self.table_len || self.sieving.is_some() {
            return;
        }
        if self.worker.submit(Job::Primes(wanted)).is_ok() {
            self.sieving = Some(wanted);
            self.counts.computations += 1;
        }
    }

    /// Deletes up to a batch of tasks settled longer than the retention ago.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        let retention_ms = u64::try_from(self.limits.retention.as_millis()).unwrap_or(u64::MAX);
        let mut expired = 0;
        while expired < EXPIRE_BATCH
            && let Some(&(at, id)) = self.expiry.first()
            && at.saturating_add(retention_ms) <= now_ms
        {
            self.delete(id);
            expired += 1;
        }
        self.counts.expired += expired as u64;
        expired
    }

    /// Whether writes are owed that no batch was joined for yet.
    pub fn owes_writes(&self) -> bool {
        self.writes.unjoined
    }

    /// Whether writes are owed that no batch was joined for; the caller
    /// joins one (once) when this says so.
    pub fn take_join(&mut self) -> bool {
        std::mem::take(&mut self.writes.unjoined)
    }

    /// The record writes `batch` carries: each dirty task's current state,
    /// or its deletion if it is gone.
    pub fn take_writes(&mut self, batch: BatchId) -> Vec<RecordWrite> {
        let mut ids = std::mem::take(&mut self.writes.dirty);
        self.writes.unjoined = false;
        ids.sort_unstable();
        ids.dedup();
        let mut callbacks_due = Vec::new();
        let writes = ids
            .iter()
            .map(|&(seq, id)| match self.tasks.get(&id) {
                Some(task) if task.seq == seq => {
                    let callback = self.deliveries.get(id);
                    if task.settled.is_some() && callback.is_some_and(|c| !c.is_final()) {
                        callbacks_due.push(id);
                    }
                    RecordWrite::Put {
                        key: seq,
                        value: task.encode(id, callback),
                    }
                }
                _ => RecordWrite::Delete { key: seq },
            })
            .collect();
        self.writes.in_flight = (!ids.is_empty()).then_some(InFlight {
            batch,
            records: ids,
            callbacks_due,
        });
        writes
    }

    /// Applies a commit outcome to the replies parked behind batches: on
    /// success they leave (and readers of a task it cancelled are
    /// answered); on a failure they are withdrawn, what they changed is
    /// undone, and the other writes are owed again.
    pub fn on_commit(
        &mut self,
        effect: CommitEffect,
        now: Instant,
        settle: &mut impl FnMut(Ticket, Settle),
    ) {
        match effect {
            CommitEffect::Released(committed) => {
                if let Some(done) = self
                    .writes
                    .in_flight
                    .take_if(|in_flight| in_flight.batch <= committed)
                {
                    for id in done.callbacks_due {
                        self.callback_ready(id, now);
                    }
                }
                while let Some(&Awaiting {
                    batch,
                    id,
                    ticket,
                    effect,
                }) = self.writes.awaiting.front()
                    && batch <= committed
                {
                    self.writes.awaiting.pop_front();
                    settle(ticket, Settle::Durable);
                    if effect == Effect::Cancels {
                        for waiter in self.take_waiters(id) {
                            settle(waiter.ticket, Settle::TaskFinal);
                        }
                    }
                }
            }
            CommitEffect::Failed { through, .. } => {
                if let Some(in_flight) = self.writes.in_flight.take() {
                    self.writes.dirty.extend(in_flight.records);
                }
                while let Some(&Awaiting {
                    batch,
                    id,
                    ticket,
                    effect,
                }) = self.writes.awaiting.front()
                    && batch <= through
                {
                    self.writes.awaiting.pop_front();
                    match effect {
                        Effect::Creates => self.drop_task(id),
                        Effect::Cancels => self.uncancel(id),
                        Effect::Confirms => {}
                    }
                    settle(ticket, Settle::Withdrawn);
                }
                self.writes.unjoined = !self.writes.dirty.is_empty();
            }
        }
    }

    /// A task's callback, for its status document.
    pub fn callback(&self, id: TaskId) -> Option<&Callback> {
        self.deliveries.get(id)
    }

    /// The next callback attempt due at `now`, within the in-flight bound.
    pub fn next_attempt(&mut self, now: Instant) -> Option<Attempt<TaskId>> {
        self.deliveries.next_attempt(now)
    }

    /// How a callback attempt ended (see [`Deliveries::attempt_done`]); the
    /// new state rides the next batch, and a final one frees the task for
    /// retention and eviction.
    pub fn attempt_done(
        &mut self,
        id: TaskId,
        result: Result<(), AttemptError>,
        now: Instant,
        now_ms: u64,
        jitter: u64,
    ) -> Option<AttemptEnd> {
        let task = self.tasks.get(&id).copied()?;
        let (_, settled_ms) = task.settled?;
        let retry_ms = self.deliveries.limits().retry_for.as_millis();
        let give_up_ms = settled_ms.saturating_add(u64::try_from(retry_ms).unwrap_or(u64::MAX));
        let end = self
            .deliveries
            .attempt_done(id, result, now, now_ms, give_up_ms, jitter)?;
        self.mark_dirty(task.seq, id);
        if end != AttemptEnd::Retrying {
            self.expiry.insert((settled_ms, id));
        }
        Some(end)
    }

    /// One delivery attempt's deadline.
    pub fn callback_timeout(&self) -> std::time::Duration {
        self.deliveries.limits().attempt_timeout
    }

    /// The signature of a delivery's body at `unix_secs`.
    pub fn sign(&self, unix_secs: u64, body: &[u8]) -> Option<String> {
        self.deliveries.signature(unix_secs, body)
    }

    /// Whether a callback attempt is due now and may be sent.
    pub fn callback_due(&mut self, now: Instant) -> bool {
        self.deliveries.has_due(now)
    }

    /// When the next callback attempt is due, for the loop's sleep.
    pub fn next_callback(&mut self) -> Option<Instant> {
        self.deliveries.next_due()
    }

    pub fn callback_counts(&self) -> CallbackCounts {
        self.deliveries.counts()
    }

    /// Callbacks not delivered or failed yet.
    pub fn callbacks_undelivered(&self) -> usize {
        self.deliveries.undelivered()
    }

    pub fn callbacks_in_flight(&self) -> usize {
        self.deliveries.in_flight()
    }

    pub fn counts(&self) -> PrimesCounts {
        self.counts
    }

    pub fn stored(&self) -> usize {
        self.tasks.len()
    }

    /// Whether a sieve is wanted that did not start (the compute queue was
    /// full): housekeeping retries it.
    pub fn wants_sieve(&self) -> bool {
        self.sieving.is_none() && self.wanted_table() > self.table_len
    }

    /// The table size the pending tasks and the readers need.
    fn wanted_table(&self) -> u64 {
        let pending_max = self.pending.last().map_or(0, |&(n, _)| n);
        pending_max.max(self.table_wanted).min(self.limits.max_n)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn waiters(&self) -> usize {
        self.waiting_for.len()
    }

    pub fn table_len(&self) -> u64 {
        self.table_len
    }

    pub fn table_bytes(&self) -> usize {
        self.table.len()
    }

    fn status(&self, task: &Task) -> Status {
        Status::of(task, self.sieving.is_some_and(|s| s >= task.n))
    }

    fn park_behind(&mut self, batch: BatchId, id: TaskId, ticket: Ticket, effect: Effect) {
        self.writes.awaiting.push_back(Awaiting {
            batch,
            id,
            ticket,
            effect,
        });
    }

    fn add_pending(&mut self, task: &Task, id: TaskId) {
        self.pending.insert((task.n, id));
        *self.pending_by_owner.entry(task.owner).or_default() += 1;
    }

    fn remove_pending(&mut self, task: &Task, id: TaskId) {
        if !self.pending.remove(&(task.n, id)) {
            return;
        }
        if let Some(held) = self.pending_by_owner.get_mut(&task.owner) {
            *held -= 1;
            if *held == 0 {
                self.pending_by_owner.remove(&task.owner);
            }
        }
    }

    fn take_waiters(&mut self, id: TaskId) -> Vec<PrimesWaiter> {
        let waiters = self.waiters.remove(&id).unwrap_or_default();
        for waiter in &waiters {
            self.waiting_for.remove(&waiter.ticket);
        }
        waiters
    }

    /// Evicts the oldest settled tasks while the store is at its cap.
    fn make_room(&mut self) {
        while self.tasks.len() >= self.limits.tasks_max
            && let Some(&(_, id)) = self.expiry.first()
        {
            self.delete(id);
            self.counts.evicted += 1;
        }
    }

    /// Deletes a task now; its record's deletion rides the next batch.
    fn delete(&mut self, id: TaskId) {
        if let Some(task) = self.forget(id) {
            self.mark_dirty(task.seq, id);
        }
    }

    /// A cancellation whose batch failed: the task is pending again.
    fn uncancel(&mut self, id: TaskId) {
        let Some(task) = self.tasks.get_mut(&id) else {
            return;
        };
        let Some((Outcome::Cancelled, at)) = task.settled else {
            return;
        };
        self.counts.cancelled -= 1;
        if task.n <= self.table_len {
            // A sieve passed it meanwhile: it is done, as it would have been.
            task.settled = Some((Outcome::Done, at));
            let seq = task.seq;
            self.counts.done += 1;
            self.mark_dirty(seq, id);
            return;
        }
        task.settled = None;
        let task = *task;
        self.expiry.remove(&(at, id));
        self.add_pending(&task, id);
        self.kick();
    }

    /// Removes a task and every index of it.
    fn forget(&mut self, id: TaskId) -> Option<Task> {
        let task = self.tasks.remove(&id)?;
        self.deliveries.remove(id);
        self.remove_pending(&task, id);
        if let Some((_, at)) = task.settled {
            self.expiry.remove(&(at, id));
        }
        if let Some(key) = task.idempotency {
            self.by_idempotency.remove(&key);
        }
        Some(task)
    }

    /// A task settled at `at`: it may expire, or make room, once its
    /// callback (if any) is final.
    fn settled_at(&mut self, at: u64, id: TaskId) {
        if self.deliveries.is_settled(id) {
            self.expiry.insert((at, id));
        }
    }

    /// A task's settled state is durable: its callback's first attempt is due.
    fn callback_ready(&mut self, id: TaskId, now: Instant) {
        let Some(task) = self.tasks.get(&id).copied() else {
            return;
        };
        if self.deliveries.ready(id, now) {
            // It failed at once (no longer allowed): now it may expire.
            self.mark_dirty(task.seq, id);
            if let Some((_, at)) = task.settled {
                self.expiry.insert((at, id));
            }
        }
    }

    fn mark_dirty(&mut self, seq: u64, id: TaskId) {
        self.writes.dirty.push((seq, id));
        self.writes.unjoined = true;
    }

    fn drop_task(&mut self, id: TaskId) {
        if let Some(task) = self.forget(id) {
            self.writes.dirty.push((task.seq, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::name_digest;
    use crate::services::compute::Output;
    use crate::services::primes::callback::CallbackLimits;
    use std::sync::mpsc;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(60);

    fn service(
        records: Vec<(TaskId, Task)>,
        limits: PrimesLimits,
    ) -> (PrimesService, mpsc::Receiver<()>) {
        let records = records.into_iter().map(|(id, t)| (id, t, None)).collect();
        service_with(records, limits, CallbackLimits::default())
    }

    /// A service started from records that may carry callbacks; the
    /// receiver hears each finished computation.
    fn service_with(
        records: Vec<(TaskId, Task, Option<Callback>)>,
        limits: PrimesLimits,
        callbacks: CallbackLimits,
    ) -> (PrimesService, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let worker = ComputeWorker::spawn(1, 4, move || {
            let _ = tx.send(());
        })
        .unwrap();
        let deliveries = Deliveries::new(callbacks, Some(b"a test secret of 16+ bytes")).unwrap();
        let service = PrimesService::new(
            limits,
            deliveries,
            Rc::new(worker),
            records,
            1_000,
            Instant::now(),
        );
        (service, rx)
    }

    /// Waits for the sieve and hands its table to the service.
    fn finish_sieve(s: &mut PrimesService, woken: &mpsc::Receiver<()>, now_ms: u64) -> Sieved {
        woken.recv_timeout(DEADLINE).unwrap();
        match s.worker.try_result().unwrap().output {
            Output::Primes(table) => s.sieved(table, now_ms),
            Output::Fib { .. } | Output::Cursor(_) => panic!("a sieve was queued"),
        }
    }

    fn id(k: u8) -> TaskId {
        TaskId::from_bytes([k; 16])
    }

    /// A client's address: fair shares and idempotency keys are scoped by it.
    fn client(k: u8) -> Owner {
        Owner::addr(std::net::IpAddr::from([192, 0, 2, k]))
    }

    /// Task `k` for `n`, posted by client 1 without an idempotency key.
    fn posted(k: u8, n: u64) -> NewTask<'static> {
        NewTask {
            id: id(k),
            n,
            owner: client(1),
            idempotency: None,
            callback: None,
        }
    }

    fn batch(k: u64) -> BatchId {
        BatchId::for_tests(k)
    }

    fn ticket(parking: &mut crate::reply::park::Parking<()>) -> Ticket {
        let conn = crate::reply::park::ConnId { key: 0, serial: 0 };
        parking.park(conn, (), None).unwrap()
    }

    /// A GET parked on task `id`.
    fn reader_of(id: TaskId, parking: &mut crate::reply::park::Parking<()>) -> PrimesWaiter {
        PrimesWaiter {
            ticket: ticket(parking),
            id,
        }
    }

    /// The ticket of a POST's 202.
    fn post(k: u64) -> Ticket {
        Ticket::for_tests(k)
    }

    #[test]
    fn a_burst_shares_one_sieve_and_later_tasks_hit_the_table() {
        let (mut s, woken) = service(Vec::new(), PrimesLimits::default());
        assert_eq!(
            s.accept(posted(1, 100), 1_000, batch(1), post(1)),
            Status::Processing
        );
        // Queued behind the running sieve for 100: pending, one more sieve later.
        assert_eq!(
            s.accept(posted(2, 500), 1_001, batch(1), post(2)),
            Status::Pending
        );
        assert_eq!(
            s.accept(posted(3, 50), 1_001, batch(1), post(3)),
            Status::Processing
        );
        let first = finish_sieve(&mut s, &woken, 1_010);
        assert_eq!(first.durations_ms, [9, 10], "in order of n");
        assert_eq!(s.table_len(), 100);
        assert_eq!(s.view(id(2)).unwrap().status, Status::Processing);
        finish_sieve(&mut s, &woken, 1_020);
        let done = s.view(id(2)).unwrap();
        assert_eq!(done.status, Status::Done { elapsed_ms: 19 });
        let (table, len) = done.result.unwrap();
        assert!(table[..len].ends_with(b", 3571"), "the 500th prime");
        assert_eq!(
            s.accept(posted(4, 499), 1_030, batch(2), post(4)),
            Status::Done { elapsed_ms: 0 }
        );
        let counts = s.counts();
        assert_eq!(
            (counts.computations, counts.table_hits, counts.done),
            (2, 1, 4)
        );
    }

    #[test]
    fn writes_ride_batches_and_a_failed_batch_drops_its_tasks() {
        let (mut s, _woken) = service(Vec::new(), PrimesLimits::default());
        s.accept(posted(1, 10), 1_000, batch(1), post(1));
        assert!(!s.take_join(), "the accepting caller joined the batch");
        let writes = s.take_writes(batch(1));
        assert_eq!(writes.len(), 1);
        s.accept(posted(2, 10), 1_000, batch(2), post(2));
        let mut settled = Vec::new();
        s.on_commit(
            CommitEffect::Failed {
                committed: batch(0),
                through: batch(2),
            },
            Instant::now(),
            &mut |ticket, settle| settled.push((ticket, settle)),
        );
        assert_eq!(
            settled,
            [(post(1), Settle::Withdrawn), (post(2), Settle::Withdrawn)],
            "both 202s withdrawn"
        );
        assert!(!s.contains(id(1)) && !s.contains(id(2)));
        assert!(s.take_join(), "the deletions are owed");
        let writes = s.take_writes(batch(3));
        assert_eq!(
            writes,
            [
                RecordWrite::Delete { key: 1 },
                RecordWrite::Delete { key: 2 }
            ]
        );
        s.on_commit(
            CommitEffect::Released(batch(3)),
            Instant::now(),
            &mut |_, _| panic!("no 202 waited for batch 3"),
        );
        assert!(s.take_writes(batch(4)).is_empty());
    }

    #[test]
    fn recovery_resumes_pending_rebuilds_the_table_and_fails_above_max() {
        let task = |n, settled| Task {
            seq: n,
            n,
            created_ms: 500,
            settled,
            owner: client(1),
            idempotency: None,
        };
        let records = vec![
            (id(1), task(30, None)),
            (id(2), task(40, Some((Outcome::Done, 600)))),
            (id(3), task(2_000, Some((Outcome::Done, 600)))),
        ];
        let limits = PrimesLimits {
            max_n: 1_000,
            ..PrimesLimits::default()
        };
        let (mut s, woken) = service(records, limits);
        assert_eq!(s.view(id(1)).unwrap().status, Status::Processing);
        assert!(s.view(id(2)).unwrap().awaits_table());
        assert_eq!(
            s.view(id(3)).unwrap().status,
            Status::Failed(Failure::AboveMax)
        );
        assert!(s.take_join());
        let mut parking = crate::reply::park::Parking::new(4);
        let reader = reader_of(id(2), &mut parking);
        s.wait(reader);
        let sieved = finish_sieve(&mut s, &woken, 2_000);
        assert_eq!(sieved.ready, [reader]);
        assert_eq!(s.table_len(), 40);
        assert!(s.view(id(1)).unwrap().is_final());
    }

    #[test]
    fn readers_of_one_task_leave_in_any_order_and_the_rest_are_woken() {
        let (mut s, woken) = service(Vec::new(), PrimesLimits::default());
        assert_eq!(
            s.accept(posted(1, 100), 1_000, batch(1), post(1)),
            Status::Processing
        );
        let mut parking = crate::reply::park::Parking::new(16);
        let readers: Vec<PrimesWaiter> = (0..8).map(|_| reader_of(id(1), &mut parking)).collect();
        for &reader in &readers {
            s.wait(reader);
        }
        // The first, the last and a middle one: each leaves with its own record.
        for gone in [0, 7, 3, 1] {
            assert_eq!(s.forget_waiter(readers[gone].ticket), Some(readers[gone]));
            assert_eq!(s.forget_waiter(readers[gone].ticket), None, "only once");
        }
        let mut woken_readers = finish_sieve(&mut s, &woken, 1_010).ready;
        woken_readers.sort_by_key(|w| w.ticket);
        assert_eq!(
            woken_readers,
            [readers[2], readers[4], readers[5], readers[6]]
        );
        assert_eq!(s.forget_waiter(readers[5].ticket), None, "already woken");
    }

    #[test]
    fn retention_deletes_in_batches() {
        let limits = PrimesLimits {
            retention: Duration::from_secs(1),
            ..PrimesLimits::default()
        };
        let records = (0..=EXPIRE_BATCH as u32)
            .map(|k| {
                let mut bytes = [0u8; 16];
                bytes[..4].copy_from_slice(&k.to_be_bytes());
                let task = Task {
                    seq: u64::from(k) + 1,
                    n: 5,
                    created_ms: 0,
                    settled: Some((Outcome::Done, 10)),
                    owner: client(1),
                    idempotency: None,
                };
                (TaskId::from_bytes(bytes), task)
            })
            .collect();
        let (mut s, _woken) = service(records, limits);
        assert_eq!(s.expire(1_009), 0);
        assert_eq!(s.expire(1_010), EXPIRE_BATCH);
        assert_eq!(s.expire(1_010), 1);
        assert_eq!(s.stored(), 0);
        assert_eq!(s.take_writes(batch(1)).len(), EXPIRE_BATCH + 1);
    }

    fn failed(s: &mut PrimesService, committed: u64, through: u64) -> Vec<(Ticket, Settle)> {
        let mut settled = Vec::new();
        let effect = CommitEffect::Failed {
            committed: batch(committed),
            through: batch(through),
        };
        s.on_commit(effect, Instant::now(), &mut |t, settle| {
            settled.push((t, settle))
        });
        settled
    }

    fn released(s: &mut PrimesService, through: u64) -> Vec<(Ticket, Settle)> {
        let mut settled = Vec::new();
        s.on_commit(
            CommitEffect::Released(batch(through)),
            Instant::now(),
            &mut |t, settle| settled.push((t, settle)),
        );
        settled
    }

    #[test]
    fn a_full_store_evicts_the_oldest_settled_task_and_never_an_unsettled_one() {
        let limits = PrimesLimits {
            tasks_max: 3,
            ..PrimesLimits::default()
        };
        let (mut s, woken) = service(Vec::new(), limits);
        s.accept(posted(1, 10), 1_000, batch(1), post(1));
        finish_sieve(&mut s, &woken, 1_010);
        s.accept(posted(2, 5), 1_020, batch(1), post(2));
        assert_eq!(
            s.accept(posted(3, 100), 1_030, batch(1), post(3)),
            Status::Processing
        );
        assert_eq!((s.stored(), s.counts().evicted), (3, 0), "room: none go");
        s.take_writes(batch(1));
        for (k, evicted) in [(4, 1), (5, 2), (6, 4)] {
            assert_eq!(s.check_room(5, client(1), false), Ok(()));
            s.accept(posted(k, 5), 1_040, batch(2), post(u64::from(k)));
            assert!(!s.contains(id(evicted)), "task {evicted} went");
            assert!(s.contains(id(3)), "the unsettled task stays");
            assert_eq!(s.stored(), 3);
        }
        assert_eq!(s.counts().evicted, 3);
        let deletes: Vec<RecordWrite> = s
            .take_writes(batch(2))
            .into_iter()
            .filter(|w| matches!(w, RecordWrite::Delete { .. }))
            .collect();
        assert_eq!(
            deletes,
            [
                RecordWrite::Delete { key: 1 },
                RecordWrite::Delete { key: 2 },
                RecordWrite::Delete { key: 4 }
            ]
        );
        // Only unsettled tasks left: nothing can make room.
        let limits = PrimesLimits {
            tasks_max: 2,
            ..PrimesLimits::default()
        };
        let (mut s, _woken) = service(Vec::new(), limits);
        s.accept(posted(1, 100), 1_000, batch(1), post(1));
        s.accept(posted(2, 200), 1_000, batch(1), post(2));
        assert_eq!(s.check_room(300, client(2), false), Err(Refused::StoreFull));
        assert_eq!(s.counts().refused_store_full, 1);
    }

    #[test]
    fn a_client_past_its_share_is_refused_while_others_are_served() {
        let limits = PrimesLimits {
            pending_per_client: 2,
            ..PrimesLimits::default()
        };
        let (mut s, woken) = service(Vec::new(), limits);
        s.accept(posted(1, 100), 1_000, batch(1), post(1));
        s.accept(posted(2, 200), 1_000, batch(1), post(2));
        assert_eq!(
            s.check_room(300, client(1), false),
            Err(Refused::ClientShare)
        );
        assert_eq!(s.check_room(300, client(2), false), Ok(()));
        let other = NewTask {
            owner: client(2),
            ..posted(3, 300)
        };
        s.accept(other, 1_000, batch(1), post(3));
        finish_sieve(&mut s, &woken, 1_010);
        assert_eq!(
            s.check_room(300, client(1), false),
            Ok(()),
            "a settled task holds no share"
        );
        assert_eq!(s.counts().refused_client_share, 1);
    }

    #[test]
    fn an_idempotency_key_finds_its_task_as_long_as_the_task_lives() {
        let (mut s, _woken) = service(Vec::new(), PrimesLimits::default());
        let key = IdempotencyKey::new(client(1), b"retry-1").unwrap();
        let keyed = NewTask {
            idempotency: Some(key),
            ..posted(1, 100)
        };
        s.accept(keyed, 1_000, batch(1), post(1));
        let first = Posted {
            id: id(1),
            n: 100,
            callback_url: None,
        };
        assert_eq!(s.idempotent(key), Some(first));
        s.take_writes(batch(1));
        // A retry before the first 202 left waits behind a later batch.
        s.replay(id(1), batch(2), post(2));
        assert_eq!(released(&mut s, 1), [(post(1), Settle::Durable)]);
        assert_eq!(released(&mut s, 2), [(post(2), Settle::Durable)]);
        assert_eq!(s.counts().replayed, 1);
        // A task whose acceptance failed takes its key with it.
        let key2 = IdempotencyKey::new(client(1), b"retry-2").unwrap();
        let keyed = NewTask {
            idempotency: Some(key2),
            ..posted(2, 100)
        };
        s.accept(keyed, 1_000, batch(3), post(3));
        s.replay(id(2), batch(3), post(4));
        let settled = failed(&mut s, 2, 3);
        assert_eq!(
            settled,
            [(post(3), Settle::Withdrawn), (post(4), Settle::Withdrawn)]
        );
        assert_eq!(s.idempotent(key2), None);
        assert_eq!(s.idempotent(key), Some(first), "the durable one stays");
    }

    #[test]
    fn cancelling_answers_readers_once_durable_and_a_failed_commit_undoes_it() {
        let (mut s, woken) = service(Vec::new(), PrimesLimits::default());
        let by_key = NewTask {
            owner: Owner::key(name_digest("alice")),
            ..posted(2, 500)
        };
        s.accept(posted(1, 100), 1_000, batch(1), post(1));
        s.accept(by_key, 1_000, batch(1), post(2));
        s.accept(posted(3, 600), 1_000, batch(1), post(3));
        released(&mut s, 1);
        assert_eq!(
            s.check_cancel(id(1), client(1)),
            Err(CancelRefused::Running)
        );
        assert_eq!(
            s.check_cancel(id(2), Owner::key(name_digest("bob"))),
            Err(CancelRefused::NotOwner)
        );
        assert_eq!(
            s.check_cancel(id(2), Owner::key(name_digest("alice"))),
            Ok(Cancel::Takes)
        );
        assert_eq!(
            s.check_cancel(id(3), client(7)),
            Ok(Cancel::Takes),
            "no key: the id is enough"
        );
        assert_eq!(
            s.check_cancel(id(9), client(1)),
            Err(CancelRefused::NotFound)
        );
        let mut parking = crate::reply::park::Parking::new(4);
        let reader = reader_of(id(2), &mut parking);
        s.wait(reader);
        s.cancel(id(2), 1_005, batch(2), post(4));
        assert_eq!(s.view(id(2)).unwrap().status, Status::Cancelled);
        assert_eq!(
            s.check_cancel(id(2), Owner::key(name_digest("alice"))),
            Ok(Cancel::Repeats)
        );
        assert_eq!(
            released(&mut s, 2),
            [
                (post(4), Settle::Durable),
                (reader.ticket, Settle::TaskFinal)
            ]
        );
        // A cancellation whose commit fails is undone.
        s.cancel(id(3), 1_006, batch(3), post(5));
        let settled = failed(&mut s, 2, 3);
        assert_eq!(settled, [(post(5), Settle::Withdrawn)]);
        assert_eq!(s.view(id(3)).unwrap().status, Status::Pending);
        assert_eq!(s.counts().cancelled, 1);
        // The sieve takes no cancelled task; the done one refuses.
        finish_sieve(&mut s, &woken, 1_010);
        assert_eq!(s.check_cancel(id(1), client(1)), Err(CancelRefused::Done));
        finish_sieve(&mut s, &woken, 1_020);
        assert_eq!(s.view(id(2)).unwrap().status, Status::Cancelled);
        assert!(s.view(id(3)).unwrap().is_final());
    }

    /// Task `k` for `n` with a callback to a loopback receiver.
    fn with_callback(k: u8, n: u64) -> NewTask<'static> {
        NewTask {
            callback: Some(("http://127.0.0.1:9/hook", "127.0.0.1:9".parse().unwrap())),
            ..posted(k, n)
        }
    }

    #[test]
    fn a_callback_is_due_only_once_its_settled_record_is_durable() {
        let (mut s, woken) = service(Vec::new(), PrimesLimits::default());
        let t0 = Instant::now();
        s.accept(with_callback(1, 100), 1_000, batch(1), post(1));
        assert!(s.take_writes(batch(1)).len() == 1);
        released(&mut s, 1);
        assert_eq!(s.next_attempt(t0), None, "not settled yet");
        let sieved = finish_sieve(&mut s, &woken, 2_000);
        assert_eq!(sieved.durations_ms, [1_000]);
        assert_eq!(s.next_attempt(t0), None, "settled, but not durable yet");
        assert!(s.take_join());
        let writes = s.take_writes(batch(2));
        let RecordWrite::Put { value, .. } = &writes[0] else {
            panic!("a put");
        };
        let (_, task, callback) = Task::decode(1, value).unwrap();
        assert!(task.settled.is_some());
        assert_eq!(callback.unwrap().url.as_ref(), "http://127.0.0.1:9/hook");
        s.on_commit(CommitEffect::Released(batch(2)), t0, &mut |_, _| {});
        let attempt = s.next_attempt(t0).unwrap();
        assert_eq!((attempt.key, attempt.number), (id(1), 1));
        // Its delivery is not final: neither retention nor eviction takes it.
        assert_eq!(s.expire(u64::MAX), 0);
        assert_eq!(s.stored(), 1);
        let end = s.attempt_done(id(1), Ok(()), t0, 3_000, 0);
        assert!(matches!(end, Some(AttemptEnd::Delivered { .. })));
        assert!(s.owes_writes(), "the delivered state is written");
        assert_eq!(s.expire(u64::MAX), 1, "delivered: it may expire now");
    }

    #[test]
    fn a_failed_acceptance_takes_its_callback_and_a_restart_resumes_pending_ones() {
        let (mut s, _woken) = service(Vec::new(), PrimesLimits::default());
        s.accept(with_callback(1, 100), 1_000, batch(1), post(1));
        s.take_writes(batch(1));
        failed(&mut s, 0, 1);
        assert_eq!((s.callback(id(1)), s.callbacks_undelivered()), (None, 0));
        // A task done and durable before a crash, its callback undelivered.
        let task = Task {
            seq: 1,
            n: 5,
            created_ms: 1,
            settled: Some((Outcome::Done, 2)),
            owner: client(1),
            idempotency: None,
        };
        let stored = Callback::new("http://127.0.0.1:9/a", "127.0.0.1:9".parse().unwrap());
        let mut unresolved = stored.clone();
        unresolved.addr = None;
        let records = vec![
            (id(2), task, Some(stored)),
            (id(3), Task { seq: 2, ..task }, Some(unresolved)),
        ];
        let limits = PrimesLimits::default();
        let (mut s, _woken) = service_with(records, limits, CallbackLimits::default());
        let now = Instant::now();
        assert_eq!(s.next_attempt(now).map(|a| a.key), Some(id(2)));
        assert_eq!(s.next_attempt(now), None);
        let gone = s.callback(id(3)).unwrap();
        assert_eq!(gone.last_error, Some(AttemptError::NotAllowed));
        assert!(s.owes_writes(), "its failure is written");
    }

    #[test]
    fn callbacks_are_bounded_and_idempotent_retries_compare_them() {
        let limits = CallbackLimits {
            undelivered_max: 1,
            ..CallbackLimits::default()
        };
        let (mut s, _woken) = service_with(Vec::new(), PrimesLimits::default(), limits);
        let key = IdempotencyKey::new(client(1), b"k").unwrap();
        let keyed = NewTask {
            idempotency: Some(key),
            ..with_callback(1, 100)
        };
        assert_eq!(s.check_room(100, client(1), true), Ok(()));
        s.accept(keyed, 1, batch(1), post(1));
        assert_eq!(
            s.idempotent(key).map(|p| p.callback_url),
            Some(Some("http://127.0.0.1:9/hook"))
        );
        assert_eq!(
            s.check_room(100, client(1), true),
            Err(Refused::CallbackBacklog)
        );
        assert_eq!(s.check_room(100, client(1), false), Ok(()));
        assert_eq!(s.counts().refused_callback_backlog, 1);
    }

    #[test]
    fn undelivered_callbacks_count_against_their_clients_share() {
        let limits = PrimesLimits {
            pending_per_client: 1,
            ..PrimesLimits::default()
        };
        let (mut s, woken) = service(Vec::new(), limits);
        let t0 = Instant::now();
        s.accept(with_callback(1, 100), 1, batch(1), post(1));
        s.take_writes(batch(1));
        released(&mut s, 1);
        finish_sieve(&mut s, &woken, 2);
        // Settled, so it holds no pending share; its callback holds one.
        assert_eq!(s.check_room(100, client(1), false), Ok(()));
        assert_eq!(
            s.check_room(100, client(1), true),
            Err(Refused::ClientShare)
        );
        assert_eq!(
            s.check_room(100, client(2), true),
            Ok(()),
            "another client is served"
        );
        s.take_writes(batch(2));
        s.on_commit(CommitEffect::Released(batch(2)), t0, &mut |_, _| {});
        assert!(s.next_attempt(t0).is_some());
        s.attempt_done(id(1), Ok(()), t0, 3, 0);
        assert_eq!(
            s.check_room(100, client(1), true),
            Ok(()),
            "delivered: released"
        );
    }

    #[test]
    fn a_new_term_replaces_the_tasks_keeps_the_table_and_hands_back_the_readers() {
        let (mut s, woken) = service(Vec::new(), PrimesLimits::default());
        let mut parking = crate::reply::park::Parking::new(8);
        s.accept(posted(1, 100), 1_000, batch(1), post(1));
        s.take_writes(batch(1));
        released(&mut s, 1);
        finish_sieve(&mut s, &woken, 1_010);
        // A task accepted in the old term, its 202 still behind a batch,
        // and a reader of it.
        s.accept(posted(2, 50), 1_020, batch(2), post(2));
        let reader = reader_of(id(2), &mut parking);
        s.wait(reader);
        let record = Task {
            seq: 7,
            n: 80,
            created_ms: 900,
            settled: Some((Outcome::Done, 950)),
            owner: client(3),
            idempotency: IdempotencyKey::new(client(3), b"k"),
        };
        let mut settled = Vec::new();
        let readers = s.replace_tasks(
            vec![(id(9), record, None)],
            2_000,
            Instant::now(),
            &mut |t, how| {
                settled.push((t, how));
            },
        );
        assert_eq!(
            settled,
            [(post(2), Settle::Withdrawn)],
            "the old term's writes"
        );
        assert_eq!(readers, [reader]);
        assert!(s.view(id(1)).is_none() && s.view(id(2)).is_none());
        // The loaded task is answered from the table kept: no new sieve.
        let view = s.view(id(9)).unwrap();
        assert_eq!(view.status, Status::Done { elapsed_ms: 50 });
        assert!(view.result.is_some());
        assert!(!s.wants_sieve());
        assert_eq!(
            s.idempotent(IdempotencyKey::new(client(3), b"k").unwrap())
                .map(|p| p.id),
            Some(id(9))
        );
        assert_eq!(s.record(id(9)).map(|(seq, _, _)| seq), Some(7));
        // A follower's reader of a task done elsewhere wants a larger table.
        s.want_table(200);
        assert!(s.result(200).is_none());
        finish_sieve(&mut s, &woken, 2_010);
        assert!(s.result(200).is_some());
    }
}
