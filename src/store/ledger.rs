//! Group commit in front of the durable store: every write that arrives
//! while a commit is in flight joins the next batch, and one batch at a time
//! goes to the commit thread, made durable at one device flush (one frame of
//! the write-ahead log, `store::journal`). The primes tasks' records always
//! ride here; with `--store lmdb` so does the stepper's index, in the same
//! transaction (`store::IndexStore` puts it in).
//!
//! Sans-IO: the ledger numbers batches and knows which is collecting, which
//! is in flight and which is committed; the commit thread
//! (`store::committer`) does the I/O, and the loop carries requests and
//! outcomes between the two. A reply
//! that must wait for its write to be durable names the batch
//! ([`BatchId`]); the outcome says which batches are now durable
//! ([`CommitEffect`]).

use std::time::Duration;

use super::lmdb::{RecordWrite, StoreError};

/// Batches are numbered in commit order; 0 stands for the state recovered at
/// start-up, so it is committed from the first moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

impl BatchId {
    fn next(self) -> BatchId {
        BatchId(self.0 + 1)
    }

    /// Lets other modules' tests name batches without a ledger.
    #[cfg(test)]
    pub(crate) const fn for_tests(n: u64) -> BatchId {
        BatchId(n)
    }
}

/// One group commit, as the commit thread takes it: the index after every
/// step in the batch (with `--store lmdb`), and the record writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRequest {
    pub batch: BatchId,
    pub index: Option<u64>,
    pub records: Vec<RecordWrite>,
}

/// A batch made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durable {
    /// From the start of its write to its flush's return.
    pub took: Duration,
    /// Device flushes it took (one; more when a checkpoint went first).
    pub flushes: u32,
}

/// What the store said about a batch.
#[derive(Debug)]
pub struct CommitOutcome {
    pub batch: BatchId,
    pub result: Result<Durable, StoreError>,
}

/// What a commit outcome means for the writes waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitEffect {
    /// Writes of batches up to this one are durable.
    Released(BatchId),
    /// The commit failed: writes of batches after `committed` and up to
    /// `through` (the batch in flight, and the one collected on top of it)
    /// were not made.
    Failed {
        committed: BatchId,
        through: BatchId,
    },
}

/// A commit the thread reported.
#[derive(Debug)]
pub struct Committed {
    pub effect: CommitEffect,
    /// The batch carried the index (`--store lmdb`).
    pub carried_index: bool,
    /// How long the commit took and its flushes, or why it failed.
    pub result: Result<Durable, StoreError>,
    /// Writes in the batch, for the batch-size histogram.
    pub writes: u64,
}

#[derive(Debug)]
struct InFlight {
    batch: BatchId,
    carried_index: bool,
    writes: u64,
}

#[derive(Debug)]
pub struct Ledger {
    committed: BatchId,
    collecting: BatchId,
    /// Writes joined to the collecting batch (a step batch counts its steps).
    collecting_writes: u64,
    /// The index the collecting batch writes, when it carries one.
    index: Option<u64>,
    in_flight: Option<InFlight>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::new()
    }
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            committed: BatchId(0),
            collecting: BatchId(1),
            collecting_writes: 0,
            index: None,
            in_flight: None,
        }
    }

    /// A write joins the batch being collected: a reply that reveals it
    /// waits for the returned batch to be durable.
    pub fn join(&mut self) -> BatchId {
        self.collecting_writes += 1;
        self.collecting
    }

    /// The stepper's index after `steps` steps joins the collecting batch.
    pub fn put_index(&mut self, index: u64, steps: u64) -> BatchId {
        self.index = Some(index);
        self.collecting_writes += steps.max(1);
        self.collecting
    }

    /// Whether no commit is in flight: a batch handed over now leaves at once.
    pub fn is_idle(&self) -> bool {
        self.in_flight.is_none()
    }

    /// Whether a batch is ready to go to the commit thread now.
    pub fn is_due(&self) -> bool {
        self.in_flight.is_none() && self.collecting_writes > 0
    }

    /// Whether every write joined so far is durable.
    pub fn is_settled(&self) -> bool {
        self.in_flight.is_none() && self.collecting_writes == 0
    }

    pub fn is_released(&self, batch: BatchId) -> bool {
        batch <= self.committed
    }

    /// The batch to commit next, if nothing is in flight and writes have
    /// collected; the caller adds the records that ride in it and hands
    /// the request to the commit thread.
    pub fn take(&mut self) -> Option<CommitRequest> {
        if self.in_flight.is_some() || self.collecting_writes == 0 {
            return None;
        }
        let batch = self.collecting;
        let index = self.index.take();
        self.in_flight = Some(InFlight {
            batch,
            carried_index: index.is_some(),
            writes: self.collecting_writes,
        });
        self.collecting = batch.next();
        self.collecting_writes = 0;
        Some(CommitRequest {
            batch,
            index,
            records: Vec::new(),
        })
    }

    /// Applies the commit thread's outcome for the batch in flight.
    pub fn on_outcome(&mut self, outcome: CommitOutcome) -> Option<Committed> {
        // Not ours (cannot happen with one batch in flight): change nothing.
        let in_flight = self.in_flight.take_if(|f| f.batch == outcome.batch)?;
        let effect = if outcome.result.is_ok() {
            self.committed = in_flight.batch;
            CommitEffect::Released(in_flight.batch)
        } else {
            // The collecting batch was joined on top of the failed one, so it
            // goes too: nothing acknowledged may rest on a write not on disk.
            let through = if self.collecting_writes > 0 {
                self.collecting
            } else {
                in_flight.batch
            };
            self.collecting = self.collecting.next();
            self.collecting_writes = 0;
            self.index = None;
            CommitEffect::Failed {
                committed: self.committed,
                through,
            }
        };
        Some(Committed {
            effect,
            carried_index: in_flight.carried_index,
            result: outcome.result,
            writes: in_flight.writes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(batch: BatchId, ok: bool) -> CommitOutcome {
        CommitOutcome {
            batch,
            result: if ok {
                Ok(Durable {
                    took: Duration::from_millis(1),
                    flushes: 1,
                })
            } else {
                Err(StoreError::InjectedFault("test"))
            },
        }
    }

    #[test]
    fn writes_wait_for_their_batch_and_one_batch_is_in_flight() {
        let mut ledger = Ledger::new();
        let a = ledger.put_index(2, 2);
        assert_eq!(a, BatchId(1));
        assert!(!ledger.is_released(a));
        let request = ledger.take().unwrap();
        assert_eq!(
            request,
            CommitRequest {
                batch: BatchId(1),
                index: Some(2),
                records: Vec::new(),
            }
        );
        assert_eq!(ledger.take(), None, "one batch in flight at a time");
        assert_eq!(ledger.join(), BatchId(2));
        let done = ledger.on_outcome(outcome(BatchId(1), true)).unwrap();
        assert_eq!(done.effect, CommitEffect::Released(BatchId(1)));
        assert!(done.carried_index);
        assert_eq!(done.writes, 2);
        assert!(ledger.is_released(a));
        let next = ledger.take().unwrap();
        assert_eq!((next.batch, next.index), (BatchId(2), None));
    }

    #[test]
    fn a_failed_commit_fails_the_batch_collected_on_top_of_it() {
        let mut ledger = Ledger::new();
        ledger.join();
        ledger.take().unwrap();
        ledger.join();
        ledger.join();
        let failed = ledger.on_outcome(outcome(BatchId(1), false)).unwrap();
        assert_eq!(
            failed.effect,
            CommitEffect::Failed {
                committed: BatchId(0),
                through: BatchId(2)
            }
        );
        assert_eq!(
            ledger.take(),
            None,
            "withdrawn writes are not committed later"
        );
        assert!(ledger.is_settled());
        assert_eq!(ledger.join(), BatchId(3));
    }

    #[test]
    fn an_outcome_for_another_batch_changes_nothing() {
        let mut ledger = Ledger::new();
        ledger.join();
        ledger.take().unwrap();
        assert!(ledger.on_outcome(outcome(BatchId(7), true)).is_none());
        assert!(!ledger.is_idle());
    }
}
