//! The commit thread: takes one batch at a time from the event loop (as the
//! ledger, `store::ledger`, forms them), makes it durable through the
//! journal (`store::journal`: one device flush, a fraction of a
//! millisecond), and wakes the loop with the outcome (the loop hands in a
//! `wake` closure; this file knows nothing of mio). The loop keeps serving
//! reads meanwhile and collects the next batch, so throughput scales with
//! the batch, not with the flush.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use super::journal::Journal;
use super::ledger::{CommitOutcome, CommitRequest, Durable};
use super::lmdb::Store;
use super::wal::Wal;

pub struct Committer {
    requests: Option<Sender<CommitRequest>>,
    outcomes: Receiver<CommitOutcome>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread; it owns the store and its log from now on (after
    /// `journal::recover`). `dir` is the data directory.
    pub fn spawn(
        store: Store,
        wal: Wal,
        dir: &Path,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Committer> {
        let (request_tx, request_rx) = mpsc::channel::<CommitRequest>();
        let (outcome_tx, outcome_rx) = mpsc::channel::<CommitOutcome>();
        let dir = dir.to_path_buf();
        let thread = thread::Builder::new()
            .name("fibd-commit".into())
            .spawn(move || run(&store, wal, &dir, &request_rx, &outcome_tx, &wake))?;
        Ok(Committer {
            requests: Some(request_tx),
            outcomes: outcome_rx,
            thread: Some(thread),
        })
    }

    /// Hands a batch over; the caller keeps at most one in flight.
    pub fn submit(&self, request: CommitRequest) {
        if let Some(tx) = &self.requests {
            // A send only fails if the thread died, which `try_outcome` reports.
            let _ = tx.send(request);
        }
    }

    /// The next outcome, if one is ready. A dead commit thread is reported as
    /// an outcome-less `Err` so the loop can stop acknowledging mutations.
    pub fn try_outcome(&self) -> Result<Option<CommitOutcome>, CommitterGone> {
        match self.outcomes.try_recv() {
            Ok(outcome) => Ok(Some(outcome)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(CommitterGone),
        }
    }

    /// Waits for every submitted batch, then stops the thread.
    pub fn shutdown(mut self) -> Vec<CommitOutcome> {
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.outcomes.try_iter().collect()
    }
}

/// The commit thread ended (it panicked or its store failed to open).
#[derive(Debug, Clone, Copy)]
pub struct CommitterGone;

fn run(
    store: &Store,
    wal: Wal,
    dir: &Path,
    requests: &Receiver<CommitRequest>,
    outcomes: &Sender<CommitOutcome>,
    wake: &dyn Fn(),
) {
    let opened = store.with_table(|table| {
        let mut journal = Journal::new(table, wal, dir)?;
        for request in requests.iter() {
            let outcome = commit(&mut journal, request);
            if outcomes.send(outcome).is_err() {
                break;
            }
            wake();
        }
        Ok(())
    });
    if let Err(e) = opened.and_then(|r| r) {
        log::error!("commit thread cannot open the index table: {e}");
        wake();
    }
}

/// One batch through the journal, timed.
fn commit(journal: &mut Journal<'_>, request: CommitRequest) -> CommitOutcome {
    let started = Instant::now();
    let (index, count) = (request.index, request.records.len());
    let result = journal
        .write_batch(request.index, request.records)
        .map(|flushes| Durable {
            took: started.elapsed(),
            flushes,
        });
    if let Err(e) = &result {
        match index {
            Some(index) => log::error!("commit of index {index} failed: {e}"),
            None => log::error!("commit of {count} task record write(s) failed: {e}"),
        }
    }
    CommitOutcome {
        batch: request.batch,
        result,
    }
}
