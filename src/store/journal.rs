//! One device flush per batch: the journal writes each batch as one frame
//! of the write-ahead log (`store::wal`) and flushes it once; when that
//! flush returns, the batch survives a power cut. The tables in LMDB
//! (`store::lmdb`) take the log's writes only at a checkpoint, when the log
//! is full: one transaction with everything the log holds, durable on
//! return, that records the last frame's sequence number. The log is then
//! written again from its start. Until a checkpoint the journal keeps the
//! log's writes in memory (at most the log's size).
//!
//! At start-up [`recover`] replays into LMDB the frames newer than its last
//! checkpoint, so what LMDB then holds is everything ever acknowledged.
//!
//! After a failed write or flush nothing moves: the next batch goes to the
//! same place under the same number, so a frame that failed can never be
//! followed, in the log, by one written after it. The failed frame is
//! erased meanwhile, so a reader of the live log (`store::backup`) never
//! takes it for a batch.

use std::path::Path;
#[cfg(any(debug_assertions, feature = "test-hooks"))]
use std::path::PathBuf;

use super::lmdb::{IndexTable, RecordKey, RecordWrite, StoreError};
use super::wal::{self, Frame, LOG_BYTES, Wal};

/// Test hook (debug builds, or the `test-hooks` feature): while a file of
/// this name exists in the data directory, every batch fails before it is
/// written, as on a full or failing disk. The end-to-end alert test uses it.
pub const FAIL_COMMITS_FILE: &str = "fail-commits";
/// Test hook, likewise: while it exists, a batch's frame is written but its
/// flush fails, so it is never known durable: the case that decides whether
/// replies wait for the flush.
pub const FAIL_SYNCS_FILE: &str = "fail-syncs";
/// Test hook, likewise: while it exists, a batch's frame is written and its
/// flush waits: a commit in progress, for as long as a test needs one (the
/// backup tests copy the store meanwhile).
pub const HOLD_SYNCS_FILE: &str = "hold-syncs";

/// Device flushes of one LMDB transaction with the default flags.
const CHECKPOINT_FLUSHES: u32 = 2;

/// What start-up finds: the state every acknowledged batch left.
#[derive(Debug)]
pub struct Recovered {
    pub index: u64,
    pub records: Vec<(RecordKey, Vec<u8>)>,
    /// Log frames replayed into LMDB (batches after the last checkpoint).
    pub replayed: usize,
}

/// Replays the log's frames newer than LMDB's last checkpoint into LMDB, in
/// one checkpoint, and reads what LMDB then holds.
pub fn recover(table: &IndexTable<'_>, wal: &Wal) -> Result<Recovered, StoreError> {
    let checkpointed = table.read_log_seq()?;
    let log = wal.read_all().map_err(StoreError::Log)?;
    let frames = wal::decode(&log, checkpointed + 1);
    drop(log);
    replay(table, &frames)
}

/// Writes `frames` (the ones that follow LMDB's last checkpoint, in order)
/// into LMDB as one checkpoint, and reads what LMDB then holds.
pub fn replay(table: &IndexTable<'_>, frames: &[Frame]) -> Result<Recovered, StoreError> {
    if let Some(last) = frames.last() {
        let index = frames.iter().rev().find_map(|f| f.index);
        let records = frames.iter().flat_map(|f| &f.records);
        table.write(index, records, Some(last.seq))?;
    }
    Ok(Recovered {
        index: table.read_index()?,
        records: table.read_records()?,
        replayed: frames.len(),
    })
}

/// The log's writes since the last checkpoint, for the next one.
#[derive(Default)]
struct Pending {
    index: Option<u64>,
    records: Vec<RecordWrite>,
}

/// The commit thread's side of the store.
pub struct Journal<'e> {
    table: IndexTable<'e>,
    wal: Wal,
    /// Where the next frame goes (a page boundary), and its number.
    offset: usize,
    next_seq: u64,
    pending: Pending,
    /// The frame being written, reused from batch to batch.
    frame: Vec<u8>,
    faults: Faults,
}

impl<'e> Journal<'e> {
    /// Starts after [`recover`]: LMDB holds every frame the log has, so the
    /// log is written from its start.
    pub fn new(table: IndexTable<'e>, wal: Wal, dir: &Path) -> Result<Journal<'e>, StoreError> {
        let next_seq = table.read_log_seq()? + 1;
        Ok(Journal {
            table,
            wal,
            offset: 0,
            next_seq,
            pending: Pending::default(),
            frame: Vec::new(),
            faults: Faults::new(dir),
        })
    }

    /// Makes one batch durable: the index (when given) and `records`, in
    /// order. On `Ok` it survives a power cut; returns the device flushes
    /// it took (one, or three when the log was full and a checkpoint went
    /// first). On `Err` nothing of it is known durable, and nothing moved.
    pub fn write_batch(
        &mut self,
        index: Option<u64>,
        records: Vec<RecordWrite>,
    ) -> Result<u32, StoreError> {
        self.faults.check(&[FAIL_COMMITS_FILE])?;
        let seq = self.next_seq;
        wal::encode(seq, index, &records, &mut self.frame);
        if self.frame.len() > LOG_BYTES {
            // Larger than the log: straight into LMDB, with what the log
            // holds, as a checkpoint of its own.
            let index = index.or(self.pending.index);
            let all = self.pending.records.iter().chain(&records);
            self.table.write(index, all, Some(seq))?;
            self.checkpointed(seq);
            return Ok(CHECKPOINT_FLUSHES);
        }
        let mut flushes = 1;
        if self.offset + self.frame.len() > LOG_BYTES {
            self.checkpoint()?;
            flushes += CHECKPOINT_FLUSHES;
        }
        let durable = self
            .wal
            .write(&self.frame, self.offset)
            .map_err(StoreError::Log)
            .and_then(|()| self.faults.check(&[FAIL_COMMITS_FILE, FAIL_SYNCS_FILE]))
            .and_then(|()| {
                self.faults.hold(HOLD_SYNCS_FILE);
                self.wal.flush().map_err(StoreError::Log)
            });
        if let Err(e) = durable {
            // Best effort: the failure that counts is the one returned.
            let _ = self.wal.erase(self.offset);
            return Err(e);
        }
        self.offset += self.frame.len();
        self.next_seq += 1;
        self.pending.index = index.or(self.pending.index);
        self.pending.records.extend(records);
        Ok(flushes)
    }

    /// Writes what the log holds to LMDB, so the log can start over.
    fn checkpoint(&mut self) -> Result<(), StoreError> {
        let last = self.next_seq - 1;
        self.table
            .write(self.pending.index, &self.pending.records, Some(last))?;
        self.checkpointed(last);
        Ok(())
    }

    fn checkpointed(&mut self, last: u64) {
        self.pending = Pending::default();
        self.offset = 0;
        self.next_seq = last + 1;
    }
}

/// The test hooks' files, looked for in the data directory before each
/// write and flush (debug builds, or the `test-hooks` feature; otherwise
/// nothing).
struct Faults {
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    dir: PathBuf,
}

impl Faults {
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    fn new(dir: &Path) -> Faults {
        Faults {
            dir: dir.to_path_buf(),
        }
    }

    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    fn check(&self, files: &[&'static str]) -> Result<(), StoreError> {
        match files.iter().find(|file| self.dir.join(file).exists()) {
            Some(file) => Err(StoreError::InjectedFault(file)),
            None => Ok(()),
        }
    }

    /// Waits while `file` exists (on the commit thread: the loop goes on).
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    fn hold(&self, file: &str) {
        if !self.dir.join(file).exists() {
            return;
        }
        log::warn!("holding a commit before its flush while {file} exists (test hook)");
        while self.dir.join(file).exists() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[cfg(not(any(debug_assertions, feature = "test-hooks")))]
    fn new(_: &Path) -> Faults {
        Faults {}
    }

    #[cfg(not(any(debug_assertions, feature = "test-hooks")))]
    fn check(&self, _: &[&'static str]) -> Result<(), StoreError> {
        Ok(())
    }

    #[cfg(not(any(debug_assertions, feature = "test-hooks")))]
    fn hold(&self, _: &str) {}
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::store::lmdb::{Store, map_bytes_for};

    /// A fresh data directory for one test, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("fibd-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        #[cfg(any(debug_assertions, feature = "test-hooks"))]
        fn set(&self, file: &str, present: bool) {
            let path = self.0.join(file);
            if present {
                std::fs::write(path, b"").unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }

        /// Opens the store as start-up does, runs `f` on the journal, and
        /// drops it all without a checkpoint, as a crash would.
        fn run<R>(&self, f: impl FnOnce(&mut Journal<'_>) -> R) -> R {
            let store = Store::open(&self.0, map_bytes_for(1000, 100)).unwrap();
            let wal = Wal::open(&self.0).unwrap();
            store
                .with_table(|table| {
                    recover(&table, &wal).unwrap();
                    f(&mut Journal::new(table, wal, &self.0).unwrap())
                })
                .unwrap()
        }

        fn recovered(&self) -> Recovered {
            let store = Store::open(&self.0, map_bytes_for(1000, 100)).unwrap();
            let wal = Wal::open(&self.0).unwrap();
            store
                .with_table(|table| recover(&table, &wal))
                .unwrap()
                .unwrap()
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn put(key: RecordKey, value: &[u8]) -> RecordWrite {
        RecordWrite::Put {
            key,
            value: value.to_vec(),
        }
    }

    #[test]
    fn a_batch_is_durable_at_one_flush_and_recovered_from_the_log() {
        let dir = Dir::new("journal-one-flush");
        let flushes = dir.run(|journal| {
            [
                journal.write_batch(Some(1), vec![put(1, b"a")]).unwrap(),
                journal.write_batch(Some(2), vec![]).unwrap(),
                journal
                    .write_batch(None, vec![put(2, b"b"), RecordWrite::Delete { key: 1 }])
                    .unwrap(),
            ]
        });
        assert_eq!(flushes, [1, 1, 1]);
        let recovered = dir.recovered();
        assert_eq!(
            recovered.replayed, 3,
            "LMDB had none of it: the log had all"
        );
        assert_eq!(recovered.index, 2);
        assert_eq!(recovered.records, [(2, b"b".to_vec())]);
        let again = dir.recovered();
        assert_eq!((again.replayed, again.index), (0, 2), "replayed once");
    }

    #[test]
    fn a_full_log_is_checkpointed_into_lmdb_and_written_again_from_its_start() {
        let dir = Dir::new("journal-wraps");
        // Each small batch takes one page of the log.
        let batches = (LOG_BYTES / wal::FRAME_ALIGN) as u64 + 10;
        let flushes: u32 = dir.run(|journal| {
            (1..=batches)
                .map(|i| journal.write_batch(Some(i), vec![put(i, b"x")]).unwrap())
                .sum()
        });
        assert_eq!(
            flushes,
            batches as u32 + CHECKPOINT_FLUSHES,
            "one flush a batch, and one checkpoint"
        );
        let recovered = dir.recovered();
        assert_eq!(recovered.replayed, 10, "the frames after the checkpoint");
        assert_eq!(recovered.index, batches);
        assert_eq!(recovered.records.len() as u64, batches);
    }

    #[test]
    fn a_batch_larger_than_the_log_goes_straight_into_lmdb() {
        let dir = Dir::new("journal-large");
        let big = vec![7u8; LOG_BYTES / 2];
        dir.run(|journal| {
            journal.write_batch(Some(1), vec![]).unwrap();
            let all = vec![put(1, &big), put(2, &big), put(3, &big)];
            assert_eq!(
                journal.write_batch(Some(2), all).unwrap(),
                CHECKPOINT_FLUSHES
            );
            journal.write_batch(Some(3), vec![]).unwrap();
        });
        let recovered = dir.recovered();
        assert_eq!((recovered.replayed, recovered.index), (1, 3));
        assert_eq!(recovered.records.len(), 3);
    }

    /// The deciding case: the frame is written, its flush fails. A commit
    /// path that answered once the write returned (or that did not wait
    /// for the flush's result) would acknowledge a batch a power cut can
    /// take back; the journal says it failed, and the next batch takes its
    /// place in the log.
    #[test]
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    fn a_batch_whose_flush_fails_is_not_durable_and_the_next_takes_its_place() {
        let dir = Dir::new("journal-flush-fails");
        dir.run(|journal| {
            journal.write_batch(Some(1), vec![put(1, b"a")]).unwrap();
            dir.set(FAIL_SYNCS_FILE, true);
            assert!(matches!(
                journal.write_batch(Some(2), vec![put(2, b"lost")]),
                Err(StoreError::InjectedFault(FAIL_SYNCS_FILE))
            ));
            dir.set(FAIL_SYNCS_FILE, false);
            journal.write_batch(Some(2), vec![put(3, b"c")]).unwrap();
        });
        let recovered = dir.recovered();
        assert_eq!(recovered.index, 2);
        assert_eq!(
            recovered.records,
            [(1, b"a".to_vec()), (3, b"c".to_vec())],
            "the failed frame was written over"
        );
    }

    /// The failed frame is erased, so a process that dies right after the
    /// failure (or a backup reading the log) does not take it for a batch.
    #[test]
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    fn a_batch_whose_flush_fails_is_erased_from_the_log() {
        let dir = Dir::new("journal-flush-fails-erased");
        dir.run(|journal| {
            journal.write_batch(Some(1), vec![put(1, b"a")]).unwrap();
            dir.set(FAIL_SYNCS_FILE, true);
            assert!(journal.write_batch(Some(2), vec![put(2, b"lost")]).is_err());
        });
        dir.set(FAIL_SYNCS_FILE, false);
        let recovered = dir.recovered();
        assert_eq!(
            (recovered.index, recovered.records),
            (1, vec![(1, b"a".to_vec())])
        );
    }

    #[test]
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    fn a_batch_that_cannot_be_written_changes_nothing() {
        let dir = Dir::new("journal-write-fails");
        dir.run(|journal| {
            journal.write_batch(Some(1), vec![]).unwrap();
            dir.set(FAIL_COMMITS_FILE, true);
            assert!(journal.write_batch(Some(2), vec![put(1, b"a")]).is_err());
            dir.set(FAIL_COMMITS_FILE, false);
        });
        let recovered = dir.recovered();
        assert_eq!((recovered.index, recovered.records.len()), (1, 0));
    }
}
