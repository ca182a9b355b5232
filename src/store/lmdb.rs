//! The durable store: one LMDB environment (through heed) holding the stepper's
//! index and the records of other services (the primes tasks), keyed by a
//! sequence number so new records land at the B-tree's right edge (a commit
//! of many records dirties a page or two, not one page per record). This is
//! the only file that knows LMDB, and opening its map is the store's one
//! `unsafe`. It does not know about threads, batching or the log:
//! `committer` runs the store off the event loop, `ledger` groups the
//! writes, `journal` decides when LMDB takes them, and the services decide
//! what to write.
//!
//! # Checkpoints
//! A batch is made durable by the write-ahead log (`store::wal`), at one
//! device flush; LMDB takes the log's writes at checkpoints
//! (`store::journal`), each one transaction with the default flags, so it
//! is durable when `commit` returns (two flushes: the data pages, then the
//! meta page). Each checkpoint records the sequence number of the last log
//! frame it holds ([`IndexTable::read_log_seq`]), so recovery knows which
//! frames are newer.
//!
//! # Hot copies
//! `fibd backup` reads a running daemon's store from another process
//! ([`Source`]): LMDB lets processes share an environment, each reader
//! with its slot in `lock.mdb`, and its hot copy (`mdb_env_copy2`) writes
//! one read transaction's snapshot. The daemon's log is not LMDB's, so a
//! copy alone may miss what was written since its last checkpoint: the
//! backup (`store::backup`) adds those frames.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, U64};
use heed::{CommitOrAbort, CompactionOption, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

const INDEX_KEY: &[u8] = b"index";
/// The sequence number of the last log frame a checkpoint holds.
const LOG_SEQ_KEY: &[u8] = b"log-seq";
const RECORDS_DB: &str = "tasks";
/// The map's room beside the records: the index, the log's sequence
/// number, LMDB's own pages.
const MAP_BASE_BYTES: usize = 64 << 20;
/// LMDB's cost of a record beyond its value: the 8-byte key, the node
/// header and page slack.
const RECORD_OVERHEAD_BYTES: usize = 64;
const LOCK_FILE: &str = "fibd.lock";
/// LMDB's own files in a data directory: the pages, and the reader table.
const DATA_FILE: &str = "data.mdb";
const LMDB_LOCK_FILE: &str = "lock.mdb";

type IndexDb<'e> = Database<'e, Bytes, U64<BigEndian>>;
type RecordsDb<'e> = Database<'e, Bytes, Bytes>;

/// The key of a record: its sequence number, in insertion order.
pub type RecordKey = u64;

/// One change to the records, carried by a commit batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordWrite {
    Put { key: RecordKey, value: Vec<u8> },
    Delete { key: RecordKey },
}

/// Why the store could not be opened, read or written.
#[derive(Debug)]
pub enum StoreError {
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    Locked {
        dir: PathBuf,
    },
    Lock {
        dir: PathBuf,
        source: std::io::Error,
    },
    Lmdb(heed::Error),
    /// The write-ahead log could not be made, read, written or flushed.
    Log(std::io::Error),
    /// A test hook's file exists (`store::journal`; never in a release
    /// build without the `test-hooks` feature).
    InjectedFault(&'static str),
    /// Cluster mode: etcd did not take the task records (`store::etcd::records`).
    Cluster(String),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::CreateDir { dir, source } => {
                write!(
                    f,
                    "cannot create data directory {}: {source}",
                    dir.display()
                )
            }
            StoreError::Locked { dir } => write!(
                f,
                "data directory {} is in use by another fibd process",
                dir.display()
            ),
            StoreError::Lock { dir, source } => {
                write!(f, "cannot lock data directory {}: {source}", dir.display())
            }
            StoreError::Lmdb(e) => write!(f, "LMDB: {e}"),
            StoreError::Log(e) => write!(f, "write-ahead log: {e}"),
            StoreError::InjectedFault(file) => write!(f, "{file} exists (test hook)"),
            StoreError::Cluster(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<heed::Error> for StoreError {
    fn from(e: heed::Error) -> Self {
        StoreError::Lmdb(e)
    }
}

/// An open LMDB environment in a data directory that this process alone
/// writes (an advisory lock file keeps a second fibd out).
pub struct Store {
    env: Env<WithoutTls>,
    _lock: File,
}

/// The map size that holds `records_max` records of up to `record_bytes_max`
/// bytes each. The map is address space, not memory: the file grows only
/// as pages are used. A full map fails every commit until restart, so the
/// bound leaves each record room for its copy-on-write twin (a checkpoint
/// writes a new page before it frees the old one).
pub fn map_bytes_for(records_max: usize, record_bytes_max: usize) -> usize {
    const PAGE: usize = 4096;
    let per_record = (record_bytes_max + RECORD_OVERHEAD_BYTES).saturating_mul(2);
    let bytes = MAP_BASE_BYTES.saturating_add(records_max.saturating_mul(per_record));
    bytes.div_ceil(PAGE).saturating_mul(PAGE)
}

impl Store {
    /// Opens (creating if need be) the store in `dir` with a map of
    /// `map_bytes` (see [`map_bytes_for`]).
    pub fn open(dir: &Path, map_bytes: usize) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(map_bytes).max_dbs(2);
        // SAFETY: the memory map is only unsound if the files are changed
        // behind LMDB's back. This process holds the directory's lock file,
        // so no other fibd writes them; LMDB's own locking covers readers.
        // The default flags keep both flushes (no NO_SYNC, no
        // NO_META_SYNC): a checkpoint is on disk when `commit` returns.
        #[allow(unsafe_code)]
        let env = unsafe { options.open(dir)? };
        // A process killed mid-read leaves its slot in the reader table;
        // cleared now so it cannot pin old pages forever.
        let cleared = env.clear_stale_readers()?;
        if cleared > 0 {
            log::info!("cleared {cleared} stale LMDB reader slot(s) left by a crash");
        }
        Ok(Store { env, _lock: lock })
    }

    /// Runs `f` with the tables; they borrow the environment, so the commit
    /// thread keeps them for its whole life inside this call.
    pub fn with_table<R>(&self, f: impl FnOnce(IndexTable<'_>) -> R) -> Result<R, StoreError> {
        let wtxn = self.env.write_txn()?;
        let (db, records) = self
            .env
            .create_databases_and_commit(wtxn, |opener, wtxn| {
                let db: IndexDb<'_> = opener.create_database(wtxn, None)?;
                let records: RecordsDb<'_> = opener.create_database(wtxn, Some(RECORDS_DB))?;
                Ok::<_, heed::Error>(CommitOrAbort::<_, ()>::Commit((db, records)))
            })?
            .unwrap_commit();
        Ok(f(IndexTable {
            env: &self.env,
            db,
            records,
        }))
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Lock {
            dir: dir.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            dir: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(source)) => Err(StoreError::Lock {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// A store another process (a running fibd, or none) owns, opened to be
/// copied: read only, without the data directory's lock file, so neither
/// the daemon nor its lock is disturbed. Its one write is LMDB's own: a
/// reader slot in `lock.mdb` while a read transaction runs.
pub struct Source {
    env: Env<WithoutTls>,
}

impl Source {
    /// Opens the store in `dir`; `None` when there is none.
    pub fn open(dir: &Path) -> Result<Option<Source>, StoreError> {
        if !dir.join(DATA_FILE).is_file() {
            return Ok(None);
        }
        // No map size: LMDB takes the one the daemon last wrote in the
        // meta page, which covers every page the daemon has used.
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.max_dbs(2);
        // SAFETY: as in `Store::open`, the map is unsound only if the files
        // change behind LMDB's back. The daemon changes them only through
        // LMDB, whose lock file coordinates it with this reader, and this
        // process maps them read only and never writes them.
        #[allow(unsafe_code)]
        let env = unsafe {
            options.flags(EnvFlags::READ_ONLY);
            options.open(dir)?
        };
        // A backup killed mid-copy leaves its reader slot, which would pin
        // the daemon's old pages until its next start.
        env.clear_stale_readers()?;
        Ok(Some(Source { env }))
    }

    /// The map size the store was last written with, for opening a copy.
    pub fn map_bytes(&self) -> usize {
        self.env.info().map_size
    }

    /// Writes one read transaction's snapshot of the store into `dir` (a
    /// new directory) as its `data.mdb`, flushed; with `compact`, only the
    /// pages in use, renumbered (LMDB's `MDB_CP_COMPACT`). The daemon's
    /// commits never wait for it, but for the two meta pages LMDB copies
    /// under the writer's lock.
    pub fn copy_to(&self, dir: &Path, compact: bool) -> Result<(), StoreError> {
        let compaction = if compact {
            CompactionOption::Enabled
        } else {
            CompactionOption::Disabled
        };
        let file = self.env.copy_to_path(dir.join(DATA_FILE), compaction)?;
        file.sync_all().map_err(heed::Error::Io)?;
        Ok(())
    }

    /// The sequence number of the last log frame the store holds now.
    pub fn read_log_seq(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        let db: Option<IndexDb<'_>> = self
            .env
            .open_databases_and_commit(rtxn, |opener, rtxn| {
                opener
                    .open_database(rtxn, None)
                    .map(CommitOrAbort::<_, ()>::Commit)
            })?
            .unwrap_commit();
        let Some(db) = db else { return Ok(0) };
        let rtxn = self.env.read_txn()?;
        Ok(db.get(&rtxn, LOG_SEQ_KEY)?.unwrap_or(0))
    }
}

/// Removes LMDB's reader table and fibd's lock file from a data directory
/// no process uses (a finished backup): both are made again at need.
pub fn remove_lock_files(dir: &Path) -> std::io::Result<()> {
    for file in [LMDB_LOCK_FILE, LOCK_FILE] {
        match fs::remove_file(dir.join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// The stepper's one key, and the records.
pub struct IndexTable<'e> {
    env: &'e Env<WithoutTls>,
    db: IndexDb<'e>,
    records: RecordsDb<'e>,
}

impl IndexTable<'_> {
    /// The last committed index; 0 for a new store.
    pub fn read_index(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.db.get(&rtxn, INDEX_KEY)?.unwrap_or(0))
    }

    /// The sequence number of the last log frame the tables hold; 0 for a
    /// new store.
    pub fn read_log_seq(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.db.get(&rtxn, LOG_SEQ_KEY)?.unwrap_or(0))
    }

    /// Writes the index alone, durable on return (for callers without a
    /// log, like the bench's baseline).
    pub fn write_index(&self, index: u64) -> Result<(), StoreError> {
        self.write(Some(index), [], None)
    }

    /// Writes the index (when given: with `--store etcd` the index lives
    /// elsewhere), `records` in order, and the log's sequence number (a
    /// checkpoint) in one transaction, durable on return: all of them, or
    /// (on an error) none.
    pub fn write<'r>(
        &self,
        index: Option<u64>,
        records: impl IntoIterator<Item = &'r RecordWrite>,
        log_seq: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut wtxn = self.env.write_txn()?;
        if let Some(index) = index {
            self.db.put(&mut wtxn, INDEX_KEY, &index)?;
        }
        if let Some(seq) = log_seq {
            self.db.put(&mut wtxn, LOG_SEQ_KEY, &seq)?;
        }
        for write in records {
            match write {
                RecordWrite::Put { key, value } => {
                    self.records.put(&mut wtxn, &key.to_be_bytes(), value)?;
                }
                RecordWrite::Delete { key } => {
                    self.records.delete(&mut wtxn, &key.to_be_bytes())?;
                }
            }
        }
        wtxn.commit()?;
        Ok(())
    }

    /// Every record in key order, for start-up; keys that are not 8 bytes
    /// are skipped.
    pub fn read_records(&self) -> Result<Vec<(RecordKey, Vec<u8>)>, StoreError> {
        let rtxn = self.env.read_txn()?;
        let mut out = Vec::new();
        for entry in self.records.iter(&rtxn)? {
            let (key, value) = entry?;
            if let Ok(key) = <[u8; 8]>::try_from(key) {
                out.push((RecordKey::from_be_bytes(key), value.to_vec()));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh data directory, removed at the end.
    struct Dir(PathBuf);

    impl Dir {
        fn new(name: &str) -> Dir {
            let dir = std::env::temp_dir().join(format!("fibd-lmdb-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            Dir(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The largest task record is about this long (one with a callback URL
    /// of 1024 bytes).
    const RECORD: usize = 1200;
    const RECORDS: usize = 60_000;

    /// Writes `RECORDS` records of `RECORD` bytes in checkpoint-sized
    /// transactions, then replaces the older half (eviction making room).
    fn fill(table: &IndexTable<'_>) -> Result<(), StoreError> {
        let value = vec![7u8; RECORD];
        let put = |key| RecordWrite::Put {
            key,
            value: value.clone(),
        };
        for chunk in (0..RECORDS as u64).collect::<Vec<_>>().chunks(5000) {
            let writes: Vec<RecordWrite> = chunk.iter().map(|&k| put(k)).collect();
            table.write(None, &writes, Some(chunk[0]))?;
        }
        for chunk in (0..RECORDS as u64 / 2).collect::<Vec<_>>().chunks(5000) {
            let mut writes: Vec<RecordWrite> = chunk
                .iter()
                .map(|&key| RecordWrite::Delete { key })
                .collect();
            writes.extend(chunk.iter().map(|&k| put(k + RECORDS as u64)));
            table.write(None, &writes, None)?;
        }
        Ok(())
    }

    #[test]
    fn a_map_sized_for_the_bound_holds_it_and_the_base_alone_does_not() {
        let dir = Dir::new("bound");
        let store = Store::open(&dir.0, map_bytes_for(RECORDS, RECORD)).unwrap();
        store.with_table(|table| fill(&table)).unwrap().unwrap();
        let count = store
            .with_table(|table| table.read_records().unwrap().len())
            .unwrap();
        assert_eq!(count, RECORDS);
        drop(store);
        // The map the store had before it was sized by its bound: full.
        let small = Dir::new("base");
        let store = Store::open(&small.0, map_bytes_for(0, 0)).unwrap();
        let result = store.with_table(|table| fill(&table)).unwrap();
        assert!(
            matches!(
                result,
                Err(StoreError::Lmdb(heed::Error::Mdb(heed::MdbError::MapFull)))
            ),
            "{result:?}"
        );
    }
}
