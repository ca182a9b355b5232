//! The primes tasks: which exist, where each stands, the largest prime table
//! computed so far, who waits for which task, and the record writes the next
//! group commit must carry. Sans-IO and sans-clock: the loop passes the time
//! (Unix milliseconds, because retention outlives a restart), hands in the
//! sieve's results and the commit outcomes, and writes the replies.
//!
//! Durability: a task is accepted into the collecting group-commit batch
//! (its 202 is parked behind that batch as a reply slot); its record goes to
//! the store in that batch's one transaction, and the 202 leaves only once
//! the batch is durable. Settling and expiry are written the same
//! way, in whatever batch comes next. If a commit fails, the tasks whose
//! acceptance it carried (and the batch collected on top of it) are dropped,
//! as their 202s were withdrawn; other writes are retried in the next batch.
//!
//! Reuse: one table, the largest so far, rendered once as JSON. A task for
//! n at or below its size is done on arrival; above it, the pending tasks
//! share one sieve for the largest n among them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use super::PrimesLimits;
use super::sieve::{self, PrimeTable};
use super::task::{Failure, Outcome, Task, TaskId};
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

/// Why a task was not accepted (503 with Retry-After).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `tasks_max` tasks are stored; older ones must expire first.
    StoreFull,
    /// `pending_max` tasks wait already, or the compute queue is full.
    QueueFull,
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
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Done { .. } => "done",
            Status::Failed(_) => "failed",
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
    /// Nothing more will change for this reader: failed, or done with its result.
    pub fn is_final(&self) -> bool {
        matches!(self.status, Status::Failed(_)) || self.result.is_some()
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

/// Counters for /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrimesCounts {
    pub accepted: u64,
    pub done: u64,
    pub failed: u64,
    pub expired: u64,
    /// Tasks answered from the table on arrival.
    pub table_hits: u64,
    /// Sieves run.
    pub computations: u64,
}

/// Record writes owed to the store, by batch.
#[derive(Debug, Default)]
struct Writes {
    /// Records (sequence number, task) whose current state, or absence,
    /// the next batch must write.
    dirty: Vec<(u64, TaskId)>,
    /// Dirty tasks that no caller has joined a batch for yet.
    unjoined: bool,
    in_flight: Option<(BatchId, Vec<(u64, TaskId)>)>,
    /// Accepted tasks whose 202 (parked under the ticket) waits for this
    /// batch, oldest first.
    unacknowledged: VecDeque<(BatchId, TaskId, Ticket)>,
}

pub struct PrimesService {
    limits: PrimesLimits,
    worker: Rc<ComputeWorker>,
    tasks: HashMap<TaskId, Task>,
    /// Unsettled tasks by n, so a table settles a prefix of them.
    pending: BTreeSet<(u64, TaskId)>,
    /// Settled tasks by when they settled, for retention.
    expiry: BTreeSet<(u64, TaskId)>,
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
    /// once, settled ones get their table rebuilt, and tasks above a lowered
    /// `max_n` fail.
    pub fn new(
        limits: PrimesLimits,
        worker: Rc<ComputeWorker>,
        records: Vec<(TaskId, Task)>,
        now_ms: u64,
    ) -> PrimesService {
        let mut service = PrimesService {
            limits,
            worker,
            tasks: HashMap::with_capacity(records.len()),
            pending: BTreeSet::new(),
            expiry: BTreeSet::new(),
            table: Arc::from(&b"["[..]),
            table_len: 0,
            sieving: None,
            table_wanted: 0,
            waiters: HashMap::new(),
            waiting_for: HashMap::new(),
            writes: Writes::default(),
            next_seq: records.iter().map(|(_, t)| t.seq + 1).max().unwrap_or(1),
            counts: PrimesCounts::default(),
        };
        for (id, mut task) in records {
            let failed = matches!(task.settled, Some((Outcome::Failed(_), _)));
            if task.n > limits.max_n && !failed {
                task.settled = Some((Outcome::Failed(Failure::AboveMax), now_ms));
                service.counts.failed += 1;
                service.mark_dirty(task.seq, id);
            }
            match task.settled {
                None => {
                    service.pending.insert((task.n, id));
                }
                Some((outcome, at)) => {
                    if outcome == Outcome::Done {
                        service.table_wanted = service.table_wanted.max(task.n);
                    }
                    service.expiry.insert((at, id));
                }
            }
            service.tasks.insert(id, task);
        }
        service.kick();
        service
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

    /// Whether a task for `n` can be taken now.
    pub fn check_room(&self, n: u64) -> Result<(), Refused> {
        if self.tasks.len() >= self.limits.tasks_max {
            return Err(Refused::StoreFull);
        }
        if self.is_table_hit(n) {
            return Ok(());
        }
        let must_queue = self.sieving.is_none() && !self.worker.has_room();
        if self.pending.len() >= self.limits.pending_max || must_queue {
            return Err(Refused::QueueFull);
        }
        Ok(())
    }

    /// Takes a task (after [`Self::check_room`]) whose record rides in
    /// `batch`; its 202, parked under `ticket`, is released or withdrawn
    /// with that batch ([`Self::on_commit`]).
    pub fn accept(
        &mut self,
        id: TaskId,
        n: u64,
        now_ms: u64,
        batch: BatchId,
        ticket: Ticket,
    ) -> Status {
        let hit = self.is_table_hit(n);
        let task = Task {
            seq: self.next_seq,
            n,
            created_ms: now_ms,
            settled: hit.then_some((Outcome::Done, now_ms)),
        };
        self.next_seq += 1;
        self.tasks.insert(id, task);
        self.writes.dirty.push((task.seq, id));
        self.writes.unacknowledged.push_back((batch, id, ticket));
        self.counts.accepted += 1;
        if hit {
            self.counts.table_hits += 1;
            self.counts.done += 1;
            self.expiry.insert((now_ms, id));
        } else {
            self.pending.insert((n, id));
            self.kick();
        }
        self.status(&task)
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
            self.pending.pop_first();
            if let Some(task) = self.tasks.get_mut(&id) {
                task.settled = Some((Outcome::Done, now_ms));
                sieved
                    .durations_ms
                    .push(now_ms.saturating_sub(task.created_ms));
                self.counts.done += 1;
                self.expiry.insert((now_ms, id));
                let seq = task.seq;
                self.mark_dirty(seq, id);
            }
        }
        let ready: Vec<TaskId> = self
            .waiters
            .keys()
            .copied()
            .filter(|id| self.view(*id).is_none_or(|v| v.is_final()))
            .collect();
        for id in ready {
            for waiter in self.waiters.remove(&id).unwrap_or_default() {
                self.waiting_for.remove(&waiter.ticket);
                sieved.ready.push(waiter);
            }
        }
        self.kick();
        sieved
    }

    /// Starts a sieve if tasks wait for a larger table and none is under way;
    /// a full compute queue is retried at the next housekeeping.
    pub fn kick(&mut self) {
        let pending_max = self.pending.last().map_or(0, |&(n, _)| n);
        let wanted = pending_max.max(self.table_wanted).min(self.limits.max_n);
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
            self.expiry.pop_first();
            if let Some(task) = self.tasks.remove(&id) {
                self.mark_dirty(task.seq, id);
            }
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
        let writes = ids
            .iter()
            .map(|&(seq, id)| match self.tasks.get(&id) {
                Some(task) if task.seq == seq => RecordWrite::Put {
                    key: seq,
                    value: task.encode(id),
                },
                _ => RecordWrite::Delete { key: seq },
            })
            .collect();
        self.writes.in_flight = (!ids.is_empty()).then_some((batch, ids));
        writes
    }

    /// Applies a commit outcome: acknowledged tasks become durable and
    /// their 202s may leave (`settle(ticket, true)`); on a failure, tasks
    /// whose 202 is withdrawn (`settle(ticket, false)`) are dropped and the
    /// other writes are owed again.
    pub fn on_commit(&mut self, effect: CommitEffect, settle: &mut impl FnMut(Ticket, bool)) {
        match effect {
            CommitEffect::Released(committed) => {
                if self
                    .writes
                    .in_flight
                    .as_ref()
                    .is_some_and(|(batch, _)| *batch <= committed)
                {
                    self.writes.in_flight = None;
                }
                while let Some(&(batch, _, ticket)) = self.writes.unacknowledged.front()
                    && batch <= committed
                {
                    self.writes.unacknowledged.pop_front();
                    settle(ticket, true);
                }
            }
            CommitEffect::Failed { through, .. } => {
                if let Some((_, ids)) = self.writes.in_flight.take() {
                    self.writes.dirty.extend(ids);
                }
                while let Some(&(batch, id, ticket)) = self.writes.unacknowledged.front()
                    && batch <= through
                {
                    self.writes.unacknowledged.pop_front();
                    self.drop_task(id);
                    settle(ticket, false);
                }
                self.writes.unjoined = !self.writes.dirty.is_empty();
            }
        }
    }

    pub fn counts(&self) -> PrimesCounts {
        self.counts
    }

    pub fn stored(&self) -> usize {
        self.tasks.len()
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn table_len(&self) -> u64 {
        self.table_len
    }

    pub fn table_bytes(&self) -> usize {
        self.table.len()
    }

    fn status(&self, task: &Task) -> Status {
        match task.settled {
            Some((Outcome::Done, at)) => Status::Done {
                elapsed_ms: at.saturating_sub(task.created_ms),
            },
            Some((Outcome::Failed(failure), _)) => Status::Failed(failure),
            None if self.sieving.is_some_and(|s| s >= task.n) => Status::Processing,
            None => Status::Pending,
        }
    }

    fn mark_dirty(&mut self, seq: u64, id: TaskId) {
        self.writes.dirty.push((seq, id));
        self.writes.unjoined = true;
    }

    fn drop_task(&mut self, id: TaskId) {
        let Some(task) = self.tasks.remove(&id) else {
            return;
        };
        self.pending.remove(&(task.n, id));
        if let Some((_, at)) = task.settled {
            self.expiry.remove(&(at, id));
        }
        self.writes.dirty.push((task.seq, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::compute::Output;
    use std::sync::mpsc;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(60);

    fn service(
        records: Vec<(TaskId, Task)>,
        limits: PrimesLimits,
    ) -> (PrimesService, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let worker = ComputeWorker::spawn(1, 4, move || {
            let _ = tx.send(());
        })
        .unwrap();
        (
            PrimesService::new(limits, Rc::new(worker), records, 1_000),
            rx,
        )
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
            s.accept(id(1), 100, 1_000, batch(1), post(1)),
            Status::Processing
        );
        // Queued behind the running sieve for 100: pending, one more sieve later.
        assert_eq!(
            s.accept(id(2), 500, 1_001, batch(1), post(2)),
            Status::Pending
        );
        assert_eq!(
            s.accept(id(3), 50, 1_001, batch(1), post(3)),
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
            s.accept(id(4), 499, 1_030, batch(2), post(4)),
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
        s.accept(id(1), 10, 1_000, batch(1), post(1));
        assert!(!s.take_join(), "the accepting caller joined the batch");
        let writes = s.take_writes(batch(1));
        assert_eq!(writes.len(), 1);
        s.accept(id(2), 10, 1_000, batch(2), post(2));
        let mut settled = Vec::new();
        s.on_commit(
            CommitEffect::Failed {
                committed: batch(0),
                through: batch(2),
            },
            &mut |ticket, released| settled.push((ticket, released)),
        );
        assert_eq!(
            settled,
            [(post(1), false), (post(2), false)],
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
        s.on_commit(CommitEffect::Released(batch(3)), &mut |_, _| {
            panic!("no 202 waited for batch 3")
        });
        assert!(s.take_writes(batch(4)).is_empty());
    }

    #[test]
    fn recovery_resumes_pending_rebuilds_the_table_and_fails_above_max() {
        let task = |n, settled| Task {
            seq: n,
            n,
            created_ms: 500,
            settled,
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
            s.accept(id(1), 100, 1_000, batch(1), post(1)),
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
}
