//! The compute threads: every computation too long for the event loop runs
//! here, whichever service asked for it: a large F(n) for /v1/fib, a prime
//! table for the primes tasks.
//!
//! F(10^7) takes about 0.1 s with the decimal engine and the first million
//! primes tens of milliseconds, far over the loop's ~1 ms budget, so the loop
//! queues a [`Job`] here and picks the [`Computed`] result up after a
//! wake-up. This file owns the threads, their one bounded job queue and their
//! priority; it knows nothing of HTTP, caching or mio (the loop hands in a
//! `wake` closure). Deciding what is worth queueing is the caller's.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::services::fib;
use crate::services::fib::cursor::Cursor;
use crate::services::primes::sieve::{self, PrimeTable};

/// Jobs preallocated in the queue; a larger `queue_max` grows on demand, so a
/// generous limit costs no memory until it is used.
const QUEUE_PREALLOCATED_JOBS: usize = 1024;

/// The nice value of the compute threads: the lowest priority there is, so
/// on a one-CPU machine the event loop always wins the CPU.
const COMPUTE_NICE: i32 = 19;

/// A computation the loop hands over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Job {
    /// The decimal digits of F(n).
    Fib(u64),
    /// The first n primes, with their JSON rendering.
    Primes(u64),
    /// The stepper's cursor at an index too far to step to on the loop
    /// (cluster mode, after another node moved the shared index).
    Cursor(u64),
    /// A large buffer nobody reads any more, to be freed here: giving
    /// megabytes back to the OS takes milliseconds the loop does not have.
    /// Produces no result.
    Release(Arc<[u8]>),
}

/// What a job produced.
#[derive(Debug)]
pub enum Output {
    Fib {
        n: u64,
        /// Decimal digits of F(n), ASCII.
        digits: Vec<u8>,
    },
    Primes(PrimeTable),
    Cursor(Box<Cursor>),
}

/// A finished job.
#[derive(Debug)]
pub struct Computed {
    pub output: Output,
    /// Time spent computing and rendering, for logs and metrics.
    pub elapsed: Duration,
}

impl Job {
    fn run(self) -> Option<Output> {
        match self {
            Job::Fib(n) => Some(Output::Fib {
                n,
                digits: fib::decimal(n).into_bytes(),
            }),
            Job::Primes(n) => Some(Output::Primes(sieve::first_primes(n))),
            Job::Cursor(index) => Some(Output::Cursor(Box::new(Cursor::at(index)))),
            Job::Release(buffer) => {
                drop(buffer);
                None
            }
        }
    }
}

/// The queue was at `queue_max`; the caller answers 503 with Retry-After.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

struct Jobs {
    waiting: VecDeque<Job>,
    /// Set once by `Drop`; threads stop taking jobs.
    closed: bool,
}

/// The job queue shared by the event loop and the compute threads. A mutex
/// and condvar rather than a channel, so `queued()` is exact and the bound
/// counts jobs not yet started.
struct Queue {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

impl Queue {
    /// The lock, even if a thread panicked while holding it: the queue is a
    /// plain `VecDeque` and a flag, valid after any interrupted operation.
    fn lock(&self) -> MutexGuard<'_, Jobs> {
        self.jobs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Blocks until a job is waiting (`Some`) or the queue is closed (`None`).
    fn next(&self) -> Option<Job> {
        let mut jobs = self.lock();
        loop {
            if jobs.closed {
                return None;
            }
            if let Some(job) = jobs.waiting.pop_front() {
                return Some(job);
            }
            jobs = self
                .ready
                .wait(jobs)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

pub struct ComputeWorker {
    queue: Arc<Queue>,
    queue_max: usize,
    results: Receiver<Computed>,
    threads: Vec<JoinHandle<()>>,
}

impl ComputeWorker {
    /// Starts `threads` compute threads, named `fibd-compute-<i>`, at the lowest
    /// CPU priority.
    ///
    /// `wake` runs on a compute thread after each result is queued, so the
    /// loop can sleep in `poll` instead of checking for results. `threads`
    /// and `queue_max` must be at least 1 (`InvalidInput` otherwise): with
    /// none of either, no job could ever run.
    pub fn spawn(
        threads: usize,
        queue_max: usize,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> std::io::Result<ComputeWorker> {
        if threads == 0 || queue_max == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the compute worker needs at least one thread and a queue of at least one job",
            ));
        }
        let queue = Arc::new(Queue {
            jobs: Mutex::new(Jobs {
                waiting: VecDeque::with_capacity(queue_max.min(QUEUE_PREALLOCATED_JOBS)),
                closed: false,
            }),
            ready: Condvar::new(),
        });
        let (result_tx, results) = mpsc::channel();
        let wake: Arc<dyn Fn() + Send + Sync> = Arc::new(wake);
        // Built first so that if a later thread fails to start, dropping it
        // stops the ones already running.
        let mut worker = ComputeWorker {
            queue,
            queue_max,
            results,
            threads: Vec::with_capacity(threads),
        };
        for i in 0..threads {
            let queue = Arc::clone(&worker.queue);
            let result_tx = result_tx.clone();
            let wake = Arc::clone(&wake);
            let thread = thread::Builder::new()
                .name(format!("fibd-compute-{i}"))
                .spawn(move || run(&queue, &result_tx, &*wake))?;
            worker.threads.push(thread);
        }
        Ok(worker)
    }

    /// Queues a job; refused when `queue_max` jobs are already waiting, so
    /// a burst cannot queue hours of work.
    ///
    /// The job's n must already be bounded (`max_n`, `primes_max_n`): it is
    /// computed whatever its size, and running out of memory aborts the process.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        let mut jobs = self.queue.lock();
        if jobs.waiting.len() >= self.queue_max {
            return Err(QueueFull);
        }
        jobs.waiting.push_back(job);
        drop(jobs);
        self.queue.ready.notify_one();
        Ok(())
    }

    /// Whether [`Self::submit`] would take a job now.
    pub fn has_room(&self) -> bool {
        self.queue.lock().waiting.len() < self.queue_max
    }

    /// A finished result, if one is ready; never blocks.
    pub fn try_result(&self) -> Option<Computed> {
        self.results.try_recv().ok()
    }

    /// Jobs waiting for a thread (not counting those being computed).
    pub fn queued(&self) -> usize {
        self.queue.lock().waiting.len()
    }

    /// Jobs that may wait at most; more are refused.
    pub fn queue_max(&self) -> usize {
        self.queue_max
    }
}

impl Drop for ComputeWorker {
    /// Drops the jobs not yet started and waits for those in progress (up to
    /// a few seconds at n = 10^7): the process is stopping, so nobody wants
    /// the queued ones, and joining leaves no thread running past the owner.
    fn drop(&mut self) {
        {
            let mut jobs = self.queue.lock();
            jobs.closed = true;
            jobs.waiting.clear();
        }
        self.queue.ready.notify_all();
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                log::error!("a compute thread panicked");
            }
        }
    }
}

fn run(queue: &Queue, results: &Sender<Computed>, wake: &(dyn Fn() + Send + Sync)) {
    if let Err(e) = lower_priority() {
        log::warn!(
            "cannot lower the priority of {}; computations will compete with the event loop: {e}",
            thread::current().name().unwrap_or("a compute thread"),
        );
    }
    while let Some(job) = queue.next() {
        let started = Instant::now();
        let Some(output) = job.run() else {
            continue;
        };
        let computed = Computed {
            output,
            elapsed: started.elapsed(),
        };
        if results.send(computed).is_err() {
            return;
        }
        wake();
    }
}

/// Sets the calling thread's nice value to [`COMPUTE_NICE`] and its policy
/// to `SCHED_IDLE`.
///
/// On Linux, `PRIO_PROCESS` with a thread id changes that thread alone
/// (threads have their own nice values), which is what we want: the event
/// loop keeps its priority. Nice 19 alone still lets a computation hold the
/// CPU for a slice when the loop wakes (measured: /current's median rose
/// from 1 to 4 ms while sieves ran back to back on the loop's CPU);
/// `SCHED_IDLE` threads give way at once to any normal one. Lowering one's
/// own priority or policy needs no privilege.
#[cfg(target_os = "linux")]
fn lower_priority() -> std::io::Result<()> {
    #[allow(unsafe_code)]
    // SAFETY: gettid takes no arguments and cannot fail. setpriority takes
    // only integers and touches no memory of ours; sched_setscheduler reads
    // the `sched_param` we pass by reference, which lives across the call.
    // A bad argument is reported through the return value and errno, which
    // is read right after. The tid is positive, so the casts are lossless.
    let rc = unsafe {
        let tid = libc::gettid();
        let param = libc::sched_param { sched_priority: 0 };
        match libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, COMPUTE_NICE) {
            0 => libc::sched_setscheduler(tid as libc::pid_t, libc::SCHED_IDLE, &param),
            failed => failed,
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() -> std::io::Result<()> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "per-thread priority is only set on Linux",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const DEADLINE: Duration = Duration::from_secs(60);

    /// The calling thread's nice value and scheduling policy, read from
    /// procfs (fields 19 and 41 of `stat`; the name in field 2 may hold
    /// spaces, so count from its `)`).
    #[cfg(target_os = "linux")]
    fn own_nice() -> Option<(i32, i32)> {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
        let after_name = &stat[stat.rfind(')')? + 1..];
        let mut fields = after_name.split_whitespace();
        let nice = fields.nth(16)?.parse().ok()?;
        let policy = fields.nth(21)?.parse().ok()?;
        Some((nice, policy))
    }

    #[test]
    fn results_equal_decimal_and_wake_once_each() {
        struct Woken {
            thread_name: Option<String>,
            #[cfg(target_os = "linux")]
            nice: Option<(i32, i32)>,
        }
        let (woken_tx, woken) = mpsc::channel();
        let worker = ComputeWorker::spawn(2, 16, move || {
            let _ = woken_tx.send(Woken {
                thread_name: thread::current().name().map(str::to_owned),
                #[cfg(target_os = "linux")]
                nice: own_nice(),
            });
        })
        .unwrap();
        let ns = [0, 1, 2, 93, 186, 187, 1000, 50_000];
        for n in ns {
            worker.submit(Job::Fib(n)).unwrap();
        }
        worker
            .submit(Job::Release(Arc::from(&b"gone"[..])))
            .unwrap();
        worker.submit(Job::Primes(100)).unwrap();
        worker.submit(Job::Cursor(10_000)).unwrap();
        let mut results = Vec::new();
        let mut tables = Vec::new();
        let mut cursors = Vec::new();
        for _ in 0..ns.len() + 2 {
            let wake = woken.recv_timeout(DEADLINE).expect("a wake per result");
            let name = wake.thread_name.unwrap_or_default();
            assert!(name.starts_with("fibd-compute-"), "{name}");
            #[cfg(target_os = "linux")]
            assert_eq!(wake.nice, Some((COMPUTE_NICE, libc::SCHED_IDLE)));
            // The result is queued before its wake, so it is there now.
            match worker.try_result().expect("a result after a wake").output {
                Output::Fib { n, digits } => results.push((n, digits)),
                Output::Primes(table) => tables.push(table),
                Output::Cursor(cursor) => cursors.push(cursor),
            }
        }
        assert!(worker.try_result().is_none());
        assert!(woken.try_recv().is_err(), "one wake per result, no more");
        results.sort_by_key(|(n, _)| *n);
        for ((computed, digits), n) in results.iter().zip(ns) {
            assert_eq!(*computed, n);
            assert_eq!(*digits, fib::decimal(n).into_bytes(), "F({n})");
        }
        assert_eq!(tables.len(), 1);
        assert_eq!(tables[0].len(), 100);
        assert_eq!(cursors.len(), 1);
        let mut digits = Vec::new();
        cursors[0].write_decimal(&mut digits);
        assert_eq!(digits, fib::decimal(10_000).into_bytes());
        assert_eq!(worker.queued(), 0);
    }

    #[test]
    fn queue_max_is_enforced() {
        // The wake callback holds the only thread until the test opens the
        // gate, so "busy" is a fact, not a timing guess.
        let (entered_tx, entered) = mpsc::channel();
        let (gate_tx, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let worker = ComputeWorker::spawn(1, 1, move || {
            let _ = entered_tx.send(());
            if let Ok(gate) = gate.lock() {
                let _ = gate.recv();
            }
        })
        .unwrap();
        worker.submit(Job::Fib(10)).unwrap();
        entered.recv_timeout(DEADLINE).unwrap();
        assert_eq!(worker.queued(), 0);
        assert_eq!(worker.submit(Job::Fib(11)), Ok(()));
        assert_eq!(worker.queued(), 1);
        assert_eq!(worker.submit(Job::Fib(12)), Err(QueueFull));
        assert_eq!(worker.submit(Job::Primes(13)), Err(QueueFull));
        assert_eq!(worker.queued(), 1);
        // Open the gate for good; both accepted jobs finish, in order.
        drop(gate_tx);
        entered.recv_timeout(DEADLINE).unwrap();
        let done: Vec<u64> = (0..2)
            .filter_map(|_| worker.try_result())
            .filter_map(|c| match c.output {
                Output::Fib { n, .. } => Some(n),
                Output::Primes(_) | Output::Cursor(_) => None,
            })
            .collect();
        assert_eq!(done, [10, 11]);
        assert_eq!(worker.submit(Job::Fib(12)), Ok(()));
    }

    #[test]
    fn drop_joins_and_skips_queued_jobs() {
        let wakes = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&wakes);
        let worker = ComputeWorker::spawn(1, 16, move || {
            counter.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        for n in [200_000, 200_001, 200_002, 200_003] {
            worker.submit(Job::Fib(n)).unwrap();
        }
        drop(worker);
        // Joined: every thread, and with it the wake closure, is gone.
        assert_eq!(Arc::strong_count(&wakes), 1);
        // At most the job in progress finished; the queued ones were dropped.
        assert!(wakes.load(Ordering::SeqCst) <= 1);
    }

    #[test]
    fn refuses_zero_threads_or_queue() {
        for (threads, queue_max) in [(0, 1), (1, 0), (0, 0)] {
            let err = ComputeWorker::spawn(threads, queue_max, || {})
                .err()
                .unwrap();
            assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        }
    }
}
