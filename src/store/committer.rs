//! The commit thread: takes the ledger's commands from the event loop
//! (`store::ledger`), writes each batch to the store with one device flush
//! (a fraction of a millisecond to a few), and wakes the loop with each
//! outcome (the loop hands in a `wake` closure; this file knows nothing of
//! mio). The loop keeps serving reads meanwhile and collects the next batch,
//! so throughput scales with the batch, not with the flush.
//!
//! A batch's own commit leaves its meta page unflushed (`store::lmdb`), so
//! the thread reports it *written*, and *durable* only once the next flush
//! has completed: the next batch's write, or a flush the loop asks for when
//! nothing else collected. After a failure nothing written since the last
//! durable batch is reported durable.

use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use super::ledger::{BatchId, CommitCommand, CommitOutcome};
use super::lmdb::{IndexTable, Store};

pub struct Committer {
    commands: Option<Sender<CommitCommand>>,
    outcomes: Receiver<CommitOutcome>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    /// Starts the thread; it owns the store from now on.
    pub fn spawn(store: Store, wake: impl Fn() + Send + 'static) -> std::io::Result<Committer> {
        let (command_tx, command_rx) = mpsc::channel::<CommitCommand>();
        let (outcome_tx, outcome_rx) = mpsc::channel::<CommitOutcome>();
        let thread = thread::Builder::new()
            .name("fibd-commit".into())
            .spawn(move || run(&store, &command_rx, &outcome_tx, &wake))?;
        Ok(Committer {
            commands: Some(command_tx),
            outcomes: outcome_rx,
            thread: Some(thread),
        })
    }

    /// Hands a command over; the ledger keeps at most one outstanding.
    pub fn submit(&self, command: CommitCommand) {
        if let Some(tx) = &self.commands {
            // A send only fails if the thread died, which `try_outcome` reports.
            let _ = tx.send(command);
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

    /// Waits for every command handed over (a batch still only written is
    /// flushed), then stops the thread.
    pub fn shutdown(mut self) -> Vec<CommitOutcome> {
        self.commands = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.outcomes.try_iter().collect()
    }
}

/// The commit thread ended (it panicked or its store failed to open).
#[derive(Debug, Clone, Copy)]
pub struct CommitterGone;

/// The batch written and not yet durable, and when its write began.
struct Unflushed {
    batch: BatchId,
    began: Instant,
}

fn run(
    store: &Store,
    commands: &Receiver<CommitCommand>,
    outcomes: &Sender<CommitOutcome>,
    wake: &dyn Fn(),
) {
    let opened = store.with_table(|table| {
        let mut unflushed: Option<Unflushed> = None;
        for command in commands.iter() {
            for outcome in execute(&table, command, &mut unflushed) {
                if outcomes.send(outcome).is_err() {
                    return;
                }
            }
            wake();
        }
        // The loop stopped: whatever is only written is flushed now.
        for outcome in execute(&table, CommitCommand::Flush, &mut unflushed) {
            let _ = outcomes.send(outcome);
        }
    });
    if let Err(e) = opened {
        log::error!("commit thread cannot open the index table: {e}");
        wake();
    }
}

/// One command against the table; `unflushed` is the batch written and not
/// yet durable. The outcomes come in the order the loop must apply them.
fn execute(
    table: &IndexTable<'_>,
    command: CommitCommand,
    unflushed: &mut Option<Unflushed>,
) -> Vec<CommitOutcome> {
    match command {
        CommitCommand::Write(request) => {
            let began = Instant::now();
            match table.write_batch(request.index, &request.records) {
                Ok(()) => {
                    // This commit's flush carried the previous one's meta page.
                    let durable = unflushed.replace(Unflushed {
                        batch: request.batch,
                        began,
                    });
                    let mut out: Vec<CommitOutcome> = durable
                        .map(|d| CommitOutcome::Durable {
                            batch: d.batch,
                            took: d.began.elapsed(),
                        })
                        .into_iter()
                        .collect();
                    out.push(CommitOutcome::Written {
                        batch: request.batch,
                    });
                    out
                }
                Err(error) => {
                    match request.index {
                        Some(index) => log::error!("commit of index {index} failed: {error}"),
                        None => log::error!(
                            "commit of {} task record write(s) failed: {error}",
                            request.records.len()
                        ),
                    }
                    *unflushed = None;
                    vec![CommitOutcome::Failed {
                        batch: request.batch,
                        error,
                    }]
                }
            }
        }
        CommitCommand::Flush => {
            let Some(written) = unflushed.take() else {
                return Vec::new();
            };
            match table.sync() {
                Ok(()) => vec![CommitOutcome::Durable {
                    batch: written.batch,
                    took: written.began.elapsed(),
                }],
                Err(error) => {
                    log::error!("flush after commit failed: {error}");
                    vec![CommitOutcome::Failed {
                        batch: written.batch,
                        error,
                    }]
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::store::ledger::CommitRequest;
    use crate::store::lmdb::{FAIL_COMMITS_FILE, FAIL_SYNCS_FILE};

    /// A fresh data directory for one test, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("fibd-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            Dir(dir)
        }

        fn fail(&self, file: &str) {
            std::fs::write(self.0.join(file), b"").unwrap();
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn request(batch: u64, index: u64) -> CommitCommand {
        CommitCommand::Write(CommitRequest {
            batch: BatchId::for_tests(batch),
            index: Some(index),
            records: Vec::new(),
        })
    }

    /// Runs `commands` through `execute` on a real LMDB store, feeding every
    /// outcome to a ledger as the loop does, and says which batches it
    /// released.
    fn released_by(dir: &Dir, steps: &[&dyn Fn(&Dir) -> CommitCommand]) -> Vec<BatchId> {
        let store = Store::open(&dir.0).unwrap();
        let mut released = Vec::new();
        store
            .with_table(|table| {
                let mut unflushed = None;
                for step in steps {
                    for outcome in execute(&table, step(dir), &mut unflushed) {
                        if let CommitOutcome::Durable { batch, .. } = outcome {
                            released.push(batch);
                        }
                    }
                }
            })
            .unwrap();
        released
    }

    #[test]
    fn a_batch_is_durable_only_after_the_next_flush() {
        let dir = Dir::new("commit-next-flush");
        let released = released_by(
            &dir,
            &[&|_| request(1, 1), &|_| request(2, 2), &|_| {
                CommitCommand::Flush
            }],
        );
        assert_eq!(
            released,
            [BatchId::for_tests(1), BatchId::for_tests(2)],
            "1 by batch 2's flush, 2 by the flush"
        );
        let store = Store::open(&dir.0).unwrap();
        assert_eq!(store.with_table(|t| t.read_index().unwrap()).unwrap(), 2);
    }

    /// The deciding case: batch 1's meta page is flushed only by batch 2's
    /// write, and that write fails. A commit path that released batch 1 at
    /// its own commit (as LMDB's NOMETASYNC commit returns) would release it
    /// here, before anything made it durable.
    #[test]
    fn when_the_next_flush_fails_the_written_batch_is_never_released() {
        let dir = Dir::new("commit-next-fails");
        let released = released_by(
            &dir,
            &[
                &|_| request(1, 1),
                &|dir| {
                    dir.fail(FAIL_COMMITS_FILE);
                    request(2, 2)
                },
                &|_| CommitCommand::Flush,
            ],
        );
        assert_eq!(released, Vec::<BatchId>::new());
    }

    /// Likewise when the flush asked for alone fails.
    #[test]
    fn when_the_flush_alone_fails_the_written_batch_is_never_released() {
        let dir = Dir::new("commit-flush-fails");
        let released = released_by(
            &dir,
            &[&|_| request(1, 1), &|dir| {
                dir.fail(FAIL_SYNCS_FILE);
                CommitCommand::Flush
            }],
        );
        assert_eq!(released, Vec::<BatchId>::new());
    }

    #[test]
    fn the_thread_reports_in_order_and_flushes_at_shutdown() {
        let dir = Dir::new("commit-thread");
        let committer = Committer::spawn(Store::open(&dir.0).unwrap(), || {}).unwrap();
        committer.submit(request(1, 5));
        committer.submit(request(2, 6));
        let outcomes: Vec<String> = committer
            .shutdown()
            .iter()
            .map(|o| match o {
                CommitOutcome::Written { batch } => format!("written {batch:?}"),
                CommitOutcome::Durable { batch, .. } => format!("durable {batch:?}"),
                CommitOutcome::Failed { batch, .. } => format!("failed {batch:?}"),
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                "written BatchId(1)",
                "durable BatchId(1)",
                "written BatchId(2)",
                "durable BatchId(2)"
            ]
        );
    }
}
