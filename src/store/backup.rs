//! `fibd backup`: a hot, consistent copy of the local store, made by a
//! second process beside the running daemon (or none), into a new data
//! directory that fibd starts on.
//!
//! # What the copy holds
//! A batch is durable once its frame of the write-ahead log is flushed
//! (`store::journal`); LMDB gets it only at the next checkpoint. So the
//! copy is LMDB's hot copy of one read transaction (`lmdb::Source`), which
//! holds every batch up to the checkpoint it saw, plus the log's frames
//! that follow that checkpoint, replayed into the copy as start-up would
//! replay them. The daemon rewrites its log from the start after each
//! checkpoint, and a frame whose flush failed is erased or written over,
//! so the frames are the ones two reads of the live log agree on, one
//! before the copy and one after ([`settle`]):
//!
//! - every batch acknowledged before the backup began is in it: its frame
//!   was in the log then, and stays there until a checkpoint that the copy
//!   either saw (then LMDB has it) or did not (then the log still had it
//!   at the second read, or the attempt is made again);
//! - the frames are a run from the copy's checkpoint, each one the same in
//!   both reads, so the copy is the state after some acknowledged batch:
//!   never a torn or mixed one. The last may be a batch whose flush was
//!   still running; it is acknowledged when that flush returns (should the
//!   flush fail after the second read, the copy holds a step answered 503,
//!   as a power cut at that moment may leave the store itself).
//!
//! Nothing waits on the daemon and the daemon waits on nothing: LMDB's copy
//! is a reader, and the log is read with plain reads. The source is only
//! read (LMDB's reader slot in `lock.mdb` aside); the copy is made under a
//! temporary name beside the target, flushed, and renamed into place.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::journal;
use super::lmdb::{self, Source, Store, StoreError};
use super::wal::{self, Frame, Wal};

/// Copies made before giving up when the daemon checkpoints during each:
/// a checkpoint comes once per 2,048 batches, a copy takes a fraction of
/// that for any store the map allows.
const ATTEMPTS_MAX: u32 = 5;

/// What `fibd backup` was asked for (`config` reads it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupConfig {
    /// The live data directory, as `--data-dir` names it for serving.
    pub data_dir: PathBuf,
    /// `--to`: a new (or empty) directory, written whole or not at all.
    pub to: PathBuf,
    /// `--compact`: only the pages in use, renumbered (slower, smaller).
    pub compact: bool,
    /// `--store etcd`: the index is in etcd, which this does not copy.
    pub etcd: bool,
}

/// A finished backup.
#[derive(Debug)]
pub struct Backup {
    /// The stepper's index the copy holds.
    pub index: u64,
    /// Primes task records it holds.
    pub records: usize,
    /// Log frames replayed into the copy (batches since the checkpoint).
    pub replayed: usize,
    /// Size of the copy's LMDB file.
    pub bytes: u64,
}

/// Why no backup was made; nothing is left at the target.
#[derive(Debug)]
pub enum BackupError {
    /// Cluster mode: the state is etcd's.
    Etcd,
    NoStore {
        dir: PathBuf,
    },
    TargetNotEmpty {
        to: PathBuf,
    },
    TargetInsideDataDir {
        to: PathBuf,
        dir: PathBuf,
    },
    /// A path that names no new directory (`/`, `..`).
    BadTarget {
        to: PathBuf,
    },
    /// The daemon checkpointed during every attempt.
    Busy {
        attempts: u32,
    },
    Store(StoreError),
    Io {
        what: String,
        source: io::Error,
    },
}

impl BackupError {
    /// Whether the command was refused (the request cannot be met as
    /// given), rather than failed.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            BackupError::Etcd
                | BackupError::NoStore { .. }
                | BackupError::TargetNotEmpty { .. }
                | BackupError::TargetInsideDataDir { .. }
                | BackupError::BadTarget { .. }
        )
    }
}

impl fmt::Display for BackupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackupError::Etcd => write!(
                f,
                "the index and the task records are in etcd (--store etcd): back them up with \
                 `etcdctl snapshot save FILE` against a member of the cluster; fibd backup \
                 copies only the local LMDB store"
            ),
            BackupError::NoStore { dir } => write!(
                f,
                "no fibd store in {} (no data.mdb): name the data directory with --data-dir \
                 (or FIBD_DATA_DIR)",
                dir.display()
            ),
            BackupError::TargetNotEmpty { to } => write!(
                f,
                "{} exists and is not empty: a backup goes to a new directory, never over one",
                to.display()
            ),
            BackupError::TargetInsideDataDir { to, dir } => write!(
                f,
                "{} is inside the data directory {}: put the backup somewhere else",
                to.display(),
                dir.display()
            ),
            BackupError::BadTarget { to } => write!(
                f,
                "{} cannot be a backup: give a path ending in a new directory's name",
                to.display()
            ),
            BackupError::Busy { attempts } => write!(
                f,
                "the store was checkpointed during each of {attempts} copies; run fibd backup \
                 again"
            ),
            BackupError::Store(e) => write!(f, "{e}"),
            BackupError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for BackupError {}

impl From<StoreError> for BackupError {
    fn from(e: StoreError) -> Self {
        BackupError::Store(e)
    }
}

/// An I/O failure, saying what was being done.
fn io_error(what: String) -> impl FnOnce(io::Error) -> BackupError {
    move |source| BackupError::Io { what, source }
}

/// Makes the backup `config` asks for.
pub fn run(config: &BackupConfig) -> Result<Backup, BackupError> {
    if config.etcd {
        return Err(BackupError::Etcd);
    }
    let dir = &config.data_dir;
    let source = Source::open(dir)?.ok_or_else(|| BackupError::NoStore { dir: dir.clone() })?;
    let staging = Staging::beside(&config.to, dir)?;
    let read_log = || {
        wal::read_log(dir)
            .map(Option::unwrap_or_default)
            .map_err(io_error(format!(
                "cannot read the log in {}",
                dir.display()
            )))
    };
    for _ in 0..ATTEMPTS_MAX {
        let before = read_log()?;
        source.copy_to(&staging.path, config.compact)?;
        let copy = Store::open(&staging.path, source.map_bytes())?;
        let copied = copy.with_table(|table| table.read_log_seq())??;
        let after = read_log()?;
        let live = source.read_log_seq()?;
        let Some(frames) = settle(&before, &after, copied, live) else {
            drop(copy);
            staging.clear()?;
            continue;
        };
        drop((before, after));
        let made = format!("cannot make the log in {}", staging.path.display());
        drop(Wal::open(&staging.path).map_err(io_error(made))?);
        let recovered = copy.with_table(|table| journal::replay(&table, &frames))??;
        drop(copy);
        let bytes = staging.finish(&config.to)?;
        return Ok(Backup {
            index: recovered.index,
            records: recovered.records.len(),
            replayed: recovered.replayed,
            bytes,
        });
    }
    Err(BackupError::Busy {
        attempts: ATTEMPTS_MAX,
    })
}

/// The log frames a copy of the store takes: those after the copy's
/// checkpoint `copied` that the log read `before` the copy and the log read
/// `after` it agree on. `live` is the source's checkpoint once `after` was
/// read. `None`: a checkpoint since the copy may have rewritten frames the
/// copy needs, so it must be made again.
pub fn settle(before: &[u8], after: &[u8], copied: u64, live: u64) -> Option<Vec<Frame>> {
    let first = wal::decode(before, copied + 1);
    let mut second = wal::decode(after, copied + 1);
    let agreed = first
        .iter()
        .zip(&second)
        .take_while(|(a, b)| a == b)
        .count();
    // Each of the first read's frames is confirmed, or all but its last,
    // which failed (erased, or written over by the next batch) while no
    // checkpoint ran: a frame with a successor is never written again
    // before a checkpoint.
    let complete = agreed == first.len() || (agreed + 1 == first.len() && live == copied);
    complete.then(|| {
        second.truncate(agreed);
        second
    })
}

/// The copy in the making: a directory beside the target, removed unless
/// it is renamed into place.
struct Staging {
    path: PathBuf,
    done: bool,
}

impl Staging {
    /// Checks the target and makes an empty directory beside it.
    fn beside(to: &Path, data_dir: &Path) -> Result<Staging, BackupError> {
        let bad = || BackupError::BadTarget {
            to: to.to_path_buf(),
        };
        let name = to.file_name().ok_or_else(bad)?;
        match fs::read_dir(to).map(|mut entries| entries.next().is_none()) {
            Ok(true) => {}
            Ok(false) => {
                return Err(BackupError::TargetNotEmpty {
                    to: to.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Err(BackupError::TargetNotEmpty {
                    to: to.to_path_buf(),
                });
            }
            Err(e) => return Err(io_error(format!("cannot read {}", to.display()))(e)),
        }
        let parent = parent_dir(to);
        fs::create_dir_all(parent)
            .map_err(io_error(format!("cannot make {}", parent.display())))?;
        let canonical = |p: &Path| {
            p.canonicalize()
                .map_err(io_error(format!("cannot resolve {}", p.display())))
        };
        if canonical(parent)?.starts_with(canonical(data_dir)?) {
            return Err(BackupError::TargetInsideDataDir {
                to: to.to_path_buf(),
                dir: data_dir.to_path_buf(),
            });
        }
        let mut staged = name.to_os_string();
        staged.push(format!(".partial-{}", std::process::id()));
        let staging = Staging {
            path: parent.join(staged),
            done: false,
        };
        staging.clear()?;
        Ok(staging)
    }

    /// Empties the directory (for another attempt), or makes it.
    fn clear(&self) -> Result<(), BackupError> {
        match fs::remove_dir_all(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io_error(format!("cannot remove {}", self.path.display()))(
                    e,
                ));
            }
            _ => {}
        }
        // Owner only, as the daemon's own directory is under its unit.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&self.path)
            .map_err(io_error(format!("cannot make {}", self.path.display())))
    }

    /// Flushes the finished copy (its files were flushed as they were
    /// written) and renames it to `to`; the size of its LMDB file.
    fn finish(mut self, to: &Path) -> Result<u64, BackupError> {
        let failed = |what: &str| io_error(format!("{what} {}", self.path.display()));
        lmdb::remove_lock_files(&self.path).map_err(failed("cannot tidy"))?;
        let bytes = fs::metadata(self.path.join("data.mdb"))
            .map_err(failed("cannot read"))?
            .len();
        sync_dir(&self.path).map_err(failed("cannot flush"))?;
        let rename = format!("cannot rename {} to {}", self.path.display(), to.display());
        fs::rename(&self.path, to).map_err(io_error(rename))?;
        self.done = true;
        let parent = parent_dir(to);
        sync_dir(parent).map_err(io_error(format!("cannot flush {}", parent.display())))?;
        Ok(bytes)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// The directory `to` is made in: its parent, or `.` for a bare name.
fn parent_dir(to: &Path) -> &Path {
    match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::lmdb::RecordWrite;
    use crate::store::wal::FRAME_ALIGN;

    fn frame(seq: u64, index: u64) -> Frame {
        Frame {
            seq,
            index: Some(index),
            records: vec![RecordWrite::Put {
                key: seq,
                value: b"task".to_vec(),
            }],
        }
    }

    /// A log with `frames` from its start, one page each, then zeros.
    fn log(frames: &[Frame]) -> Vec<u8> {
        let mut log = Vec::new();
        let mut page = Vec::new();
        for f in frames {
            wal::encode(f.seq, f.index, &f.records, &mut page);
            assert_eq!(page.len(), FRAME_ALIGN);
            log.extend_from_slice(&page);
        }
        log.resize(log.len() + 2 * FRAME_ALIGN, 0);
        log
    }

    /// `log` with the frame on page `at` erased, as a failed batch is.
    fn erased(mut log: Vec<u8>, at: usize) -> Vec<u8> {
        log[at * FRAME_ALIGN..at * FRAME_ALIGN + 24].fill(0);
        log
    }

    #[test]
    fn the_frames_both_reads_hold_after_the_copys_checkpoint_are_taken() {
        let before = log(&[frame(1, 1), frame(2, 2), frame(3, 3)]);
        let after = log(&[frame(1, 1), frame(2, 2), frame(3, 3), frame(4, 4)]);
        assert_eq!(
            settle(&before, &after, 0, 0),
            Some(vec![frame(1, 1), frame(2, 2), frame(3, 3)]),
            "not frame 4, newer than the first read"
        );
        assert_eq!(
            settle(&before, &before, 3, 3),
            Some(vec![]),
            "the copy holds them all"
        );
    }

    #[test]
    fn a_frame_whose_flush_failed_after_the_first_read_is_left_out() {
        let before = log(&[frame(1, 1), frame(2, 2), frame(3, 3)]);
        let after = erased(before.clone(), 2);
        assert_eq!(
            settle(&before, &after, 0, 0),
            Some(vec![frame(1, 1), frame(2, 2)])
        );
        // Written over by the batch after it, under the same number.
        let after = log(&[frame(1, 1), frame(2, 2), frame(3, 7), frame(4, 8)]);
        assert_eq!(
            settle(&before, &after, 0, 0),
            Some(vec![frame(1, 1), frame(2, 2)])
        );
    }

    #[test]
    fn a_checkpoint_since_the_copy_that_rewrote_the_log_means_copying_again() {
        let before = log(&[frame(1, 1), frame(2, 2), frame(3, 3)]);
        // Checkpoint 3, then the log written again from its start.
        let after = log(&[frame(4, 4)]);
        assert_eq!(settle(&before, &after, 0, 3), None);
        // A last frame gone with a checkpoint since: failed, or checkpointed
        // and written over; the copy cannot tell.
        let after = erased(before.clone(), 2);
        assert_eq!(settle(&before, &after, 0, 3), None);
    }

    #[test]
    fn a_checkpoint_between_the_first_read_and_the_copy_leaves_those_frames_to_lmdb() {
        let before = log(&[frame(1, 1), frame(2, 2), frame(3, 3)]);
        let after = log(&[frame(4, 4), frame(5, 5)]);
        assert_eq!(
            settle(&before, &after, 3, 3),
            Some(vec![]),
            "the copy holds 1 to 3; 4 and 5 came after the first read"
        );
    }

    #[test]
    fn reads_that_disagree_before_their_last_frame_are_never_mixed() {
        // The first read saw frame 2 before it failed; the batch after it
        // took its place and frame 3 followed.
        let before = log(&[frame(1, 1), frame(2, 2), frame(3, 3)]);
        let after = log(&[frame(1, 1), frame(2, 9), frame(3, 10)]);
        assert_eq!(settle(&before, &after, 0, 0), None);
    }
}
