//! The durable store: one LMDB environment (through heed) holding the stepper's
//! index and the records of other services (the primes tasks), keyed by a
//! sequence number so new records land at the B-tree's right edge (a commit
//! of many records dirties a page or two, not one page per record). This is
//! the only file that knows LMDB, and opening its map is the store's one
//! `unsafe`. It does not know about threads or batching: `committer` runs it
//! off the event loop, `ledger` groups the writes, and the services decide
//! what to write. A batch, the
//! index and every record write in it, is one transaction.
//!
//! # One device flush per batch
//! The environment is opened with `MDB_NOMETASYNC`: a commit writes the data
//! pages, flushes the file once (`fdatasync`), then writes the meta page
//! that makes the transaction visible *without* a flush of its own. So when
//! [`IndexTable::write_batch`] returns, its own transaction is not yet known
//! to survive a power cut (its meta page may still be in the page cache),
//! but the one before it is: this commit's flush carried that one's meta
//! page. A transaction is durable once the *next* flush of the file has
//! completed: the next `write_batch`'s, or an explicit [`IndexTable::sync`].
//! LMDB keeps its integrity either way (two meta pages; a lost meta write
//! only undoes the last transaction). The committer builds its promise on
//! exactly this: no batch counts as durable before a later flush.

use std::fmt;
use std::fs::{self, File, TryLockError};
use std::path::{Path, PathBuf};

use heed::byteorder::BigEndian;
use heed::types::{Bytes, U64};
use heed::{CommitOrAbort, Database, Env, EnvFlags, EnvOpenOptions, WithoutTls};

const INDEX_KEY: &[u8] = b"index";
const RECORDS_DB: &str = "tasks";
/// The file is sparse; the map only bounds its growth. 100,000 task records
/// (the default cap) take about 6 MB of B-tree pages, so this leaves room
/// for ten times that and the copy-on-write pages of a commit.
const MAP_SIZE_BYTES: usize = 64 << 20;
const LOCK_FILE: &str = "fibd.lock";
/// Test hook (debug builds, or the `test-hooks` feature): while a file of
/// this name exists in the data directory, every commit and every flush
/// fails, as on a full or failing disk. The end-to-end alert test uses it.
#[cfg(any(debug_assertions, feature = "test-hooks"))]
pub const FAIL_COMMITS_FILE: &str = "fail-commits";
/// Test hook, likewise: while it exists, only the explicit flush
/// ([`IndexTable::sync`]) fails: a transaction is then written but never
/// made durable, the case that decides whether replies wait for a later
/// flush.
#[cfg(any(debug_assertions, feature = "test-hooks"))]
pub const FAIL_SYNCS_FILE: &str = "fail-syncs";

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
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    InjectedFault(&'static str),
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
            #[cfg(any(debug_assertions, feature = "test-hooks"))]
            StoreError::InjectedFault(file) => write!(f, "{file} exists (test hook)"),
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
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    dir: PathBuf,
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let mut options = EnvOpenOptions::new().read_txn_without_tls();
        options.map_size(MAP_SIZE_BYTES).max_dbs(2);
        // SAFETY: the memory map is only unsound if the files are changed
        // behind LMDB's back. This process holds the directory's lock file,
        // so no other fibd writes them; LMDB's own locking covers readers.
        // NO_META_SYNC keeps LMDB's integrity (it only defers the meta
        // page's flush to the next one, see the module docs); the data
        // flush stays, and no NO_SYNC.
        #[allow(unsafe_code)]
        let env = unsafe {
            options.flags(EnvFlags::NO_META_SYNC);
            options.open(dir)?
        };
        // A process killed mid-read leaves its slot in the reader table;
        // cleared now so it cannot pin old pages forever.
        let cleared = env.clear_stale_readers()?;
        if cleared > 0 {
            log::info!("cleared {cleared} stale LMDB reader slot(s) left by a crash");
        }
        Ok(Store {
            env,
            _lock: lock,
            #[cfg(any(debug_assertions, feature = "test-hooks"))]
            dir: dir.to_path_buf(),
        })
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
            #[cfg(any(debug_assertions, feature = "test-hooks"))]
            dir: &self.dir,
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

/// The stepper's one key, and the records.
pub struct IndexTable<'e> {
    env: &'e Env<WithoutTls>,
    db: IndexDb<'e>,
    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    dir: &'e Path,
    records: RecordsDb<'e>,
}

impl IndexTable<'_> {
    /// The last committed index; 0 for a new store.
    pub fn read_index(&self) -> Result<u64, StoreError> {
        let rtxn = self.env.read_txn()?;
        Ok(self.db.get(&rtxn, INDEX_KEY)?.unwrap_or(0))
    }

    /// Writes the index in one transaction and flushes again, so the value
    /// survives a power cut on return (two flushes: for callers that wait
    /// for each write alone).
    pub fn write_index(&self, index: u64) -> Result<(), StoreError> {
        self.write_batch(Some(index), &[])?;
        self.sync()
    }

    /// Writes the index (when given: with `--store lmdb`; with etcd it
    /// lives elsewhere) and `records` in one transaction, all or (on an
    /// error) none, with one flush. On return the *previous* transaction is
    /// durable and this one is written; the next flush makes it durable.
    pub fn write_batch(
        &self,
        index: Option<u64>,
        records: &[RecordWrite],
    ) -> Result<(), StoreError> {
        #[cfg(any(debug_assertions, feature = "test-hooks"))]
        self.injected_fault(&[FAIL_COMMITS_FILE])?;
        let mut wtxn = self.env.write_txn()?;
        if let Some(index) = index {
            self.db.put(&mut wtxn, INDEX_KEY, &index)?;
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

    /// Flushes the file: the last transaction written is durable on return.
    pub fn sync(&self) -> Result<(), StoreError> {
        #[cfg(any(debug_assertions, feature = "test-hooks"))]
        self.injected_fault(&[FAIL_COMMITS_FILE, FAIL_SYNCS_FILE])?;
        self.env.force_sync()?;
        Ok(())
    }

    #[cfg(any(debug_assertions, feature = "test-hooks"))]
    fn injected_fault(&self, files: &[&'static str]) -> Result<(), StoreError> {
        match files.iter().find(|file| self.dir.join(file).exists()) {
            Some(file) => Err(StoreError::InjectedFault(file)),
            None => Ok(()),
        }
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
