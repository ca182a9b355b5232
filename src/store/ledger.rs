//! Group commit in front of the LMDB store: every write that arrives while a
//! commit is in flight joins the next batch, and one batch at a time goes to
//! the commit thread as one transaction. The primes tasks' records always
//! ride here; with `--store lmdb` so does the stepper's index, in the same
//! transaction (`store::IndexStore` puts it in).
//!
//! # One flush per batch, and when a batch is durable
//! A transaction is durable once the flush *after* its own has completed
//! (`store::lmdb`: the meta page rides the next flush). So a batch goes
//! through three stages: *writing* (handed to the commit thread),
//! *written* (its commit returned: data flushed, meta page not), and
//! *durable*. Whatever collected meanwhile is the next batch: writing it is
//! the flush that makes the written one durable, so under load every batch
//! costs one flush. When nothing collected, the loop asks for a flush alone
//! ([`CommitCommand::Flush`]), so a step that arrives alone waits for two
//! flushes, as it did when LMDB flushed twice per commit. Batches become
//! durable strictly in order, and nothing waiting on a batch is released
//! before it is durable ([`CommitEffect::Released`]).
//!
//! A failed write or flush withdraws every batch not known durable: the one
//! written, the one writing and the one collected on top of them. (After a
//! failed flush a later one proves nothing about the pages it lost.)
//!
//! Sans-IO: the ledger numbers batches and knows which stage each is in;
//! the commit thread (`store::committer`) does the I/O, and the loop carries
//! commands and outcomes between the two. A reply that must wait for its
//! write to be durable names the batch ([`BatchId`]); the outcome says
//! which batches are now durable ([`CommitEffect`]).

use std::time::Duration;

use super::lmdb::{RecordWrite, StoreError};

/// Batches are numbered in commit order; 0 stands for the state recovered at
/// start-up, so it is durable from the first moment.
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

/// What the loop asks of the commit thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitCommand {
    /// Write this batch (one flush, which also makes the written one
    /// durable).
    Write(CommitRequest),
    /// Nothing else collected: flush, so the written batch is durable.
    Flush,
}

/// What the commit thread reports, in order.
#[derive(Debug)]
pub enum CommitOutcome {
    /// The batch's commit returned: its data is flushed, its meta page is
    /// not yet.
    Written { batch: BatchId },
    /// The batch is durable, `took` after its write began.
    Durable { batch: BatchId, took: Duration },
    /// Writing or flushing failed at this batch: no batch after the last
    /// durable one is known durable.
    Failed { batch: BatchId, error: StoreError },
}

/// What a commit outcome means for the writes waiting on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitEffect {
    /// The batch is written, not yet durable: nothing may be released, but
    /// the next batch may be built on it.
    Written(BatchId),
    /// Writes of batches up to this one are durable.
    Released(BatchId),
    /// Writing or flushing failed: writes of batches after `committed` and
    /// up to `through` (written, writing, and collected on top of them)
    /// were not made durable, and are given up.
    Failed {
        committed: BatchId,
        through: BatchId,
    },
}

/// An outcome the ledger applied.
#[derive(Debug)]
pub struct Committed {
    pub effect: CommitEffect,
    /// The batch written or released carried the index (`--store lmdb`);
    /// on a failure, whether any batch given up did.
    pub carried_index: bool,
    /// How long the released batch took to become durable, or why the
    /// commit failed; `Ok(None)` for a batch only written.
    pub result: Result<Option<Duration>, StoreError>,
    /// Writes in the released batch, for the batch-size histogram.
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
    /// Handed to the commit thread, its commit not returned yet.
    writing: Option<InFlight>,
    /// Written, durable at the next flush.
    written: Option<InFlight>,
    /// A flush alone was asked for and has not been reported.
    flushing: bool,
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
            writing: None,
            written: None,
            flushing: false,
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

    /// Whether a batch handed over now leaves at once: nothing is being
    /// written or flushed (a batch written and waiting for its flush does
    /// not stop the next one: writing it is that flush).
    pub fn is_idle(&self) -> bool {
        self.writing.is_none() && !self.flushing
    }

    /// Whether the commit thread should be given something now: a batch, or
    /// a flush for the written one.
    pub fn is_due(&self) -> bool {
        self.is_idle() && (self.collecting_writes > 0 || self.written.is_some())
    }

    /// Whether every write joined so far is durable.
    pub fn is_settled(&self) -> bool {
        self.writing.is_none()
            && self.written.is_none()
            && !self.flushing
            && self.collecting_writes == 0
    }

    pub fn is_released(&self, batch: BatchId) -> bool {
        batch <= self.committed
    }

    /// What to hand the commit thread now, if anything: the collected batch
    /// (the caller adds the records that ride in it), or, when nothing
    /// collected and a batch waits for its flush, a flush.
    pub fn take(&mut self) -> Option<CommitCommand> {
        if !self.is_idle() {
            return None;
        }
        if self.collecting_writes == 0 {
            if self.written.is_some() {
                self.flushing = true;
                return Some(CommitCommand::Flush);
            }
            return None;
        }
        let batch = self.collecting;
        let index = self.index.take();
        self.writing = Some(InFlight {
            batch,
            carried_index: index.is_some(),
            writes: self.collecting_writes,
        });
        self.collecting = batch.next();
        self.collecting_writes = 0;
        Some(CommitCommand::Write(CommitRequest {
            batch,
            index,
            records: Vec::new(),
        }))
    }

    /// Applies the commit thread's next outcome; None for one about a batch
    /// the ledger gave up already (it changes nothing).
    pub fn on_outcome(&mut self, outcome: CommitOutcome) -> Option<Committed> {
        match outcome {
            CommitOutcome::Written { batch } => {
                let written = self.writing.take_if(|w| w.batch == batch)?;
                let carried_index = written.carried_index;
                self.written = Some(written);
                Some(Committed {
                    effect: CommitEffect::Written(batch),
                    carried_index,
                    result: Ok(None),
                    writes: 0,
                })
            }
            CommitOutcome::Durable { batch, took } => {
                let durable = self.written.take_if(|w| w.batch == batch)?;
                self.flushing = false;
                self.committed = batch;
                Some(Committed {
                    effect: CommitEffect::Released(batch),
                    carried_index: durable.carried_index,
                    result: Ok(Some(took)),
                    writes: durable.writes,
                })
            }
            CommitOutcome::Failed { batch, error } => {
                if self.writing.is_none() && self.written.is_none() {
                    return None; // given up already
                }
                let given_up: Vec<InFlight> = self
                    .written
                    .take()
                    .into_iter()
                    .chain(self.writing.take())
                    .collect();
                let mut through = given_up.iter().map(|f| f.batch).max().unwrap_or(batch);
                // The collecting batch was joined on top of the failed ones,
                // so it goes too: nothing acknowledged may rest on a write
                // not on disk.
                let mut carried_index = given_up.iter().any(|f| f.carried_index);
                if self.collecting_writes > 0 {
                    through = self.collecting;
                    carried_index |= self.index.is_some();
                }
                self.collecting = self.collecting.next();
                self.collecting_writes = 0;
                self.index = None;
                self.flushing = false;
                Some(Committed {
                    effect: CommitEffect::Failed {
                        committed: self.committed,
                        through,
                    },
                    carried_index,
                    result: Err(error),
                    writes: 0,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(command: Option<CommitCommand>) -> CommitRequest {
        match command {
            Some(CommitCommand::Write(request)) => request,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn written(ledger: &mut Ledger, n: u64) -> Committed {
        let batch = BatchId(n);
        ledger.on_outcome(CommitOutcome::Written { batch }).unwrap()
    }

    fn durable(ledger: &mut Ledger, n: u64) -> Committed {
        let (batch, took) = (BatchId(n), Duration::from_millis(1));
        ledger
            .on_outcome(CommitOutcome::Durable { batch, took })
            .unwrap()
    }

    fn failed(n: u64) -> CommitOutcome {
        let error = StoreError::InjectedFault("test");
        CommitOutcome::Failed {
            batch: BatchId(n),
            error,
        }
    }

    #[test]
    fn a_batch_alone_is_written_then_flushed_and_only_then_released() {
        let mut ledger = Ledger::new();
        let a = ledger.put_index(2, 2);
        assert_eq!(a, BatchId(1));
        let request = write(ledger.take());
        assert_eq!(
            request,
            CommitRequest {
                batch: BatchId(1),
                index: Some(2),
                records: Vec::new(),
            }
        );
        assert_eq!(ledger.take(), None, "one batch being written at a time");
        let w = written(&mut ledger, 1);
        assert_eq!(w.effect, CommitEffect::Written(a));
        assert!(w.carried_index);
        assert!(!ledger.is_released(a), "written is not durable");
        assert!(ledger.is_due());
        assert_eq!(ledger.take(), Some(CommitCommand::Flush));
        assert_eq!(ledger.take(), None, "one flush asked for at a time");
        let d = durable(&mut ledger, 1);
        assert_eq!(d.effect, CommitEffect::Released(a));
        assert_eq!(d.writes, 2);
        assert!(ledger.is_released(a));
        assert!(ledger.is_settled());
        assert_eq!(ledger.take(), None);
    }

    #[test]
    fn under_load_the_next_batch_is_the_flush_that_makes_the_written_one_durable() {
        let mut ledger = Ledger::new();
        ledger.join();
        write(ledger.take());
        let b = ledger.join();
        assert_eq!(ledger.take(), None, "batch 1 is still being written");
        written(&mut ledger, 1);
        // Batch 2 collected: it is written next, and no flush goes alone.
        let next = write(ledger.take());
        assert_eq!(next.batch, b);
        assert!(!ledger.is_released(BatchId(1)));
        // The thread reports in order: 1 durable, then 2 written.
        assert_eq!(
            durable(&mut ledger, 1).effect,
            CommitEffect::Released(BatchId(1))
        );
        assert_eq!(written(&mut ledger, 2).effect, CommitEffect::Written(b));
        assert!(!ledger.is_released(b));
        assert_eq!(ledger.take(), Some(CommitCommand::Flush));
        durable(&mut ledger, 2);
        assert!(ledger.is_released(b) && ledger.is_settled());
    }

    #[test]
    fn a_failure_gives_up_the_written_the_writing_and_the_collected_batch() {
        let mut ledger = Ledger::new();
        ledger.put_index(1, 1);
        write(ledger.take());
        written(&mut ledger, 1);
        ledger.join();
        write(ledger.take());
        ledger.join();
        let given_up = ledger.on_outcome(failed(2)).unwrap();
        assert_eq!(
            given_up.effect,
            CommitEffect::Failed {
                committed: BatchId(0),
                through: BatchId(3)
            }
        );
        assert!(given_up.carried_index, "batch 1 carried the index");
        assert!(!ledger.is_released(BatchId(1)));
        assert_eq!(ledger.take(), None, "given-up writes are not written later");
        assert!(ledger.is_settled());
        assert_eq!(ledger.join(), BatchId(4));
    }

    #[test]
    fn a_failed_flush_withdraws_the_written_batch() {
        let mut ledger = Ledger::new();
        ledger.join();
        write(ledger.take());
        written(&mut ledger, 1);
        assert_eq!(ledger.take(), Some(CommitCommand::Flush));
        let given_up = ledger.on_outcome(failed(1)).unwrap();
        assert_eq!(
            given_up.effect,
            CommitEffect::Failed {
                committed: BatchId(0),
                through: BatchId(1)
            }
        );
        assert!(ledger.is_settled());
    }

    #[test]
    fn outcomes_for_batches_given_up_or_unknown_change_nothing() {
        let mut ledger = Ledger::new();
        ledger.join();
        write(ledger.take());
        assert!(
            ledger
                .on_outcome(CommitOutcome::Written { batch: BatchId(7) })
                .is_none()
        );
        assert!(!ledger.is_idle());
        ledger.on_outcome(failed(1)).unwrap();
        assert!(
            ledger
                .on_outcome(CommitOutcome::Written { batch: BatchId(1) })
                .is_none()
        );
        assert!(ledger.on_outcome(failed(1)).is_none());
        assert!(ledger.is_settled());
    }
}
