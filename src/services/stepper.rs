//! The global Fibonacci index that /current, /next and /previous walk, and the
//! group-commit bookkeeping that makes every acknowledged step durable.
//!
//! Sans-IO: the event loop applies steps here, asks for a batch to hand to the
//! commit thread, and reports the outcome back. Two indices are kept: the
//! *committed* one (on disk; what a plain /current answers, so a read never
//! waits behind an fsync and never shows a step a crash could take back) and
//! the *pending* one (every step applied so far). A reply that reveals pending
//! state carries the batch it must wait for (`durable_after`); the connection
//! holds its bytes until that batch is committed.

pub use crate::services::fib::Value;
use crate::services::fib::cursor::Cursor;
use crate::store::committer::CommitRequest;

/// Batches are numbered in commit order; 0 stands for the state recovered at
/// start-up, so it is committed from the first moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(u64);

impl BatchId {
    fn next(self) -> BatchId {
        BatchId(self.0 + 1)
    }

    /// Lets other modules' tests name batches without running a stepper.
    #[cfg(test)]
    pub(crate) const fn for_tests(n: u64) -> BatchId {
        BatchId(n)
    }
}

/// What a reply shows: an index, its value, and the batch whose commit must
/// come before the reply may leave (None: it shows committed state only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reading {
    pub index: u64,
    pub value: Value,
    pub durable_after: Option<BatchId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Next,
    Previous,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepError {
    /// /next at the configured ceiling; the index stays where it is.
    AtCeiling { max_index: u64 },
}

/// What a commit outcome means for held replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitEffect {
    /// Replies held for batches up to this one may leave.
    Released(BatchId),
    /// The commit failed: replies held for batches after `committed` and up
    /// to `through` must be withdrawn; the pending index is back at the
    /// committed one.
    Failed {
        committed: BatchId,
        through: BatchId,
    },
}

#[derive(Debug)]
struct InFlight {
    batch: BatchId,
    index: u64,
    value: Value,
}

#[derive(Debug)]
pub struct Stepper {
    max_index: u64,
    committed_index: u64,
    committed_value: Value,
    committed_batch: BatchId,
    /// Always at the pending index.
    cursor: Cursor,
    pending_value: Value,
    collecting: BatchId,
    collecting_steps: u64,
    in_flight: Option<InFlight>,
}

impl Stepper {
    /// Builds the stepper at the recovered index. Building the cursor there
    /// is the one super-linear computation (about 0.1 s near 10^7), done once.
    pub fn new(recovered_index: u64, max_index: u64) -> Stepper {
        let cursor = Cursor::at(recovered_index);
        let value = Value::at_cursor(&cursor);
        Stepper {
            max_index,
            committed_index: recovered_index,
            committed_value: value.clone(),
            committed_batch: BatchId(0),
            cursor,
            pending_value: value,
            collecting: BatchId(1),
            collecting_steps: 0,
            in_flight: None,
        }
    }

    pub fn committed_index(&self) -> u64 {
        self.committed_index
    }

    pub fn pending_index(&self) -> u64 {
        self.cursor.index()
    }

    /// Whether every step applied so far is on disk.
    pub fn is_settled(&self) -> bool {
        self.in_flight.is_none() && self.collecting_steps == 0
    }

    /// Whether replies held for `batch` may leave.
    pub fn is_released(&self, batch: BatchId) -> bool {
        batch <= self.committed_batch
    }

    /// /current: the committed state, answerable at once.
    pub fn current(&self) -> Reading {
        Reading {
            index: self.committed_index,
            value: self.committed_value.clone(),
            durable_after: None,
        }
    }

    /// /current on a connection whose earlier steps are still held: it shows
    /// the pending state (read-your-writes) and is held as long as they are.
    pub fn current_after_own_steps(&self) -> Reading {
        self.pending_reading(self.latest_unfinished())
    }

    pub fn step(&mut self, step: Step) -> Result<Reading, StepError> {
        let moved = match step {
            Step::Next => {
                if self.cursor.index() >= self.max_index {
                    return Err(StepError::AtCeiling {
                        max_index: self.max_index,
                    });
                }
                self.cursor.forward();
                true
            }
            Step::Previous => self.cursor.back(),
        };
        if !moved {
            // /previous at 0: nothing to write, but the answer still depends
            // on whatever pending steps put the index at 0.
            return Ok(self.pending_reading(self.latest_unfinished()));
        }
        self.pending_value = Value::at_cursor(&self.cursor);
        self.collecting_steps += 1;
        Ok(self.pending_reading(Some(self.collecting)))
    }

    /// Another service's write joins the batch being collected (counted as
    /// one mutation): its reply is held for the returned batch, and the
    /// server adds the service's records to it when it is taken.
    pub fn join_batch(&mut self) -> BatchId {
        self.collecting_steps += 1;
        self.collecting
    }

    /// The batch to commit next, if nothing is in flight and steps have
    /// collected since the last one.
    pub fn take_batch(&mut self) -> Option<CommitRequest> {
        if self.in_flight.is_some() || self.collecting_steps == 0 {
            return None;
        }
        let batch = self.collecting;
        let index = self.cursor.index();
        self.in_flight = Some(InFlight {
            batch,
            index,
            value: self.pending_value.clone(),
        });
        let steps = self.collecting_steps;
        self.collecting = batch.next();
        self.collecting_steps = 0;
        Some(CommitRequest {
            batch,
            index,
            steps,
            records: Vec::new(),
        })
    }

    /// Applies the commit thread's answer for the batch in flight.
    pub fn on_commit(&mut self, batch: BatchId, succeeded: bool) -> CommitEffect {
        let Some(in_flight) = self.in_flight.take_if(|f| f.batch == batch) else {
            // Not ours (cannot happen with one batch in flight); change nothing.
            return CommitEffect::Released(self.committed_batch);
        };
        if succeeded {
            self.committed_index = in_flight.index;
            self.committed_value = in_flight.value;
            self.committed_batch = in_flight.batch;
            return CommitEffect::Released(self.committed_batch);
        }
        // The collecting batch was built on top of the failed one, so it goes
        // too: nothing acknowledged may rest on a step that is not on disk.
        let through = if self.collecting_steps > 0 {
            self.collecting
        } else {
            in_flight.batch
        };
        self.collecting = self.collecting.next();
        self.collecting_steps = 0;
        self.rewind_to_committed();
        CommitEffect::Failed {
            committed: self.committed_batch,
            through,
        }
    }

    fn rewind_to_committed(&mut self) {
        while self.cursor.index() > self.committed_index {
            self.cursor.back();
        }
        while self.cursor.index() < self.committed_index {
            self.cursor.forward();
        }
        self.pending_value = self.committed_value.clone();
    }

    /// The newest batch holding steps not yet on disk.
    fn latest_unfinished(&self) -> Option<BatchId> {
        if self.collecting_steps > 0 {
            Some(self.collecting)
        } else {
            self.in_flight.as_ref().map(|f| f.batch)
        }
    }

    fn pending_reading(&self, durable_after: Option<BatchId>) -> Reading {
        Reading {
            index: self.cursor.index(),
            value: self.pending_value.clone(),
            durable_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::fib;

    fn digits(value: &Value) -> String {
        match value {
            Value::Small(v) => v.to_string(),
            Value::Big(d) => String::from_utf8(d.to_vec()).unwrap(),
        }
    }

    #[test]
    fn steps_are_pending_until_their_batch_commits() {
        let mut s = Stepper::new(0, 100);
        let a = s.step(Step::Next).unwrap();
        let b = s.step(Step::Next).unwrap();
        assert_eq!((a.index, b.index), (1, 2));
        assert_eq!(a.durable_after, Some(BatchId(1)));
        assert_eq!(s.current().index, 0, "reads show committed state only");
        assert!(!s.is_released(BatchId(1)));

        let request = s.take_batch().unwrap();
        assert_eq!(
            request,
            CommitRequest {
                batch: BatchId(1),
                index: 2,
                steps: 2,
                records: Vec::new(),
            }
        );
        assert_eq!(s.take_batch(), None, "one batch in flight at a time");

        let c = s.step(Step::Next).unwrap();
        assert_eq!((c.index, c.durable_after), (3, Some(BatchId(2))));
        assert_eq!(
            s.on_commit(BatchId(1), true),
            CommitEffect::Released(BatchId(1))
        );
        assert!(s.is_released(BatchId(1)));
        assert_eq!(s.current().index, 2);
        assert_eq!(digits(&s.current().value), "1");
        assert_eq!(s.take_batch().unwrap().index, 3);
    }

    #[test]
    fn previous_at_zero_writes_nothing() {
        let mut s = Stepper::new(0, 100);
        let r = s.step(Step::Previous).unwrap();
        assert_eq!((r.index, r.durable_after), (0, None));
        assert_eq!(s.take_batch(), None);
    }

    #[test]
    fn previous_at_zero_behind_pending_steps_waits_for_them() {
        let mut s = Stepper::new(1, 100);
        s.step(Step::Previous).unwrap();
        let r = s.step(Step::Previous).unwrap();
        assert_eq!((r.index, r.durable_after), (0, Some(BatchId(1))));
    }

    #[test]
    fn next_at_the_ceiling_is_refused_and_moves_nothing() {
        let mut s = Stepper::new(5, 5);
        assert_eq!(
            s.step(Step::Next),
            Err(StepError::AtCeiling { max_index: 5 })
        );
        assert_eq!(s.pending_index(), 5);
        assert_eq!(s.take_batch(), None);
    }

    #[test]
    fn a_failed_commit_withdraws_both_batches_and_rewinds() {
        let mut s = Stepper::new(10, 100);
        s.step(Step::Next).unwrap();
        s.take_batch().unwrap();
        s.step(Step::Next).unwrap();
        s.step(Step::Next).unwrap();
        assert_eq!(
            s.on_commit(BatchId(1), false),
            CommitEffect::Failed {
                committed: BatchId(0),
                through: BatchId(2)
            }
        );
        assert_eq!(s.pending_index(), 10);
        assert_eq!(
            s.take_batch(),
            None,
            "withdrawn steps are not committed later"
        );
        let r = s.step(Step::Next).unwrap();
        assert_eq!((r.index, r.durable_after), (11, Some(BatchId(3))));
        assert_eq!(digits(&r.value), "89");
    }

    #[test]
    fn a_joined_write_makes_a_batch_without_moving_the_index() {
        let mut s = Stepper::new(7, 100);
        assert_eq!(s.join_batch(), BatchId(1));
        assert!(!s.is_settled());
        let request = s.take_batch().unwrap();
        assert_eq!(
            (request.batch, request.index, request.steps),
            (BatchId(1), 7, 1)
        );
        assert_eq!(s.join_batch(), BatchId(2));
        assert_eq!(
            s.on_commit(BatchId(1), false),
            CommitEffect::Failed {
                committed: BatchId(0),
                through: BatchId(2)
            }
        );
        assert_eq!(s.current().index, 7);
    }

    #[test]
    fn own_steps_are_visible_to_a_held_current() {
        let mut s = Stepper::new(0, 100);
        s.step(Step::Next).unwrap();
        let r = s.current_after_own_steps();
        assert_eq!((r.index, r.durable_after), (1, Some(BatchId(1))));
    }

    #[test]
    fn values_past_u128_are_exact_and_shared() {
        let mut s = Stepper::new(185, 1000);
        for expected in 186..=200 {
            let r = s.step(Step::Next).unwrap();
            assert_eq!(r.index, expected);
            assert_eq!(digits(&r.value), fib::decimal(expected));
            assert_eq!(r.value.decimal_len(), fib::decimal(expected).len());
        }
        for expected in (180..200).rev() {
            let r = s.step(Step::Previous).unwrap();
            assert_eq!(digits(&r.value), fib::decimal(expected));
        }
    }
}
