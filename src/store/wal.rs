//! The write-ahead log: what makes a batch durable at one device flush.
//! Each batch is one checksummed frame, written into a file whose blocks
//! were all written once when it was made, then `fdatasync`ed: the file's
//! size and block map never change, so the flush carries data only, and a
//! batch is durable the moment it returns. LMDB (`store::lmdb`) gets the
//! same writes later, at checkpoints (`store::journal`); the log is only
//! read back at start-up, to replay what the last checkpoint missed.
//!
//! # Frames
//! A frame starts on a 4 KiB boundary, so the pages of an acknowledged
//! frame are never written again until a checkpoint has put its content in
//! LMDB: a torn or failed write can only hit the frame being written.
//! Header (little-endian): magic, payload length (u32), sequence number
//! (u64), then a SipHash-1-3 of those and the payload (u64). The log is
//! reused from its start after each checkpoint, so what lies beyond the
//! last frame is older frames or zeros; recovery reads frames while each is
//! intact and carries the next sequence number, and stops at the first
//! that does not. The codec is sans-IO; [`Wal`] is the file.

use std::fs::{File, OpenOptions};
use std::hash::Hasher;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use siphasher::sip::SipHasher13;

use super::lmdb::{RecordKey, RecordWrite};

const FILE_NAME: &str = "fibd.wal";
const MAGIC: u32 = 0x6c61_7766; // "fwal"
const HEADER_BYTES: usize = 24;
/// Frames start on this boundary: one page of the page cache and the disk.
pub const FRAME_ALIGN: usize = 4096;
/// How much the log holds before a checkpoint must empty it: 2,048 small
/// batches, or about 200,000 task records; made once, reused forever.
pub const LOG_BYTES: usize = 8 << 20;
/// A fixed key: the checksum guards against torn and stale frames, not an
/// adversary.
const SUM_KEY: [u8; 16] = *b"fibd-wal-frame-1";

const TAG_PUT: u8 = 1;
const TAG_DELETE: u8 = 2;

/// One batch as the log holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    /// The stepper's index after the batch, when it carries one.
    pub index: Option<u64>,
    pub records: Vec<RecordWrite>,
}

/// Encodes a frame, padded to whole [`FRAME_ALIGN`] pages, into `out`
/// (cleared first, reused across batches).
pub fn encode(seq: u64, index: Option<u64>, records: &[RecordWrite], out: &mut Vec<u8>) {
    out.clear();
    out.resize(HEADER_BYTES, 0);
    match index {
        Some(index) => {
            out.push(1);
            out.extend_from_slice(&index.to_le_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for write in records {
        match write {
            RecordWrite::Put { key, value } => {
                out.push(TAG_PUT);
                out.extend_from_slice(&key.to_le_bytes());
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            RecordWrite::Delete { key } => {
                out.push(TAG_DELETE);
                out.extend_from_slice(&key.to_le_bytes());
            }
        }
    }
    let len = (out.len() - HEADER_BYTES) as u32;
    out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..8].copy_from_slice(&len.to_le_bytes());
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    let sum = checksum(&out[4..16], &out[HEADER_BYTES..]);
    out[16..24].copy_from_slice(&sum.to_le_bytes());
    out.resize(out.len().next_multiple_of(FRAME_ALIGN), 0);
}

fn checksum(header: &[u8], payload: &[u8]) -> u64 {
    let mut hasher = SipHasher13::new_with_key(&SUM_KEY);
    hasher.write(header);
    hasher.write(payload);
    hasher.finish()
}

/// The intact frames at the start of `log` numbered `first`, `first + 1`,
/// …: the batches written since the checkpoint that recorded `first - 1`.
pub fn decode(log: &[u8], first: u64) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((frame, len)) = decode_one(&log[at..], first + frames.len() as u64) {
        frames.push(frame);
        at += len.next_multiple_of(FRAME_ALIGN);
        if at >= log.len() {
            break;
        }
    }
    frames
}

/// The frame at the start of `bytes` if it is intact and numbered `seq`,
/// and its length.
fn decode_one(bytes: &[u8], seq: u64) -> Option<(Frame, usize)> {
    let header = bytes.get(..HEADER_BYTES)?;
    if u32::from_le_bytes(header[0..4].try_into().ok()?) != MAGIC
        || u64::from_le_bytes(header[8..16].try_into().ok()?) != seq
    {
        return None;
    }
    let len = u32::from_le_bytes(header[4..8].try_into().ok()?) as usize;
    let payload = bytes.get(HEADER_BYTES..HEADER_BYTES.checked_add(len)?)?;
    let sum = u64::from_le_bytes(header[16..24].try_into().ok()?);
    if checksum(&header[4..16], payload) != sum {
        return None;
    }
    let mut reader = Reader(payload);
    let index = match reader.u8()? {
        0 => None,
        _ => Some(reader.u64()?),
    };
    let count = reader.u32()?;
    // Bounded by the payload, whatever the count says.
    let mut records = Vec::with_capacity((count as usize).min(len / 9));
    for _ in 0..count {
        let tag = reader.u8()?;
        let key: RecordKey = reader.u64()?;
        records.push(match tag {
            TAG_PUT => {
                let value_len = reader.u32()? as usize;
                RecordWrite::Put {
                    key,
                    value: reader.take(value_len)?.to_vec(),
                }
            }
            TAG_DELETE => RecordWrite::Delete { key },
            _ => return None,
        });
    }
    let frame = Frame {
        seq,
        index,
        records,
    };
    Some((frame, HEADER_BYTES + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }
}

/// The log file, [`LOG_BYTES`] long, every block written once.
pub struct Wal {
    file: File,
}

impl Wal {
    /// Opens the data directory's log, making it first if it is missing or
    /// short: zeros written and flushed (real writes, so no block is left
    /// unwritten for a later flush to record), then the directory flushed.
    pub fn open(dir: &Path) -> io::Result<Wal> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let len = file.metadata()?.len();
        if len < LOG_BYTES as u64 {
            let zeros = vec![0u8; 1 << 20];
            let mut at = len - len % FRAME_ALIGN as u64;
            while at < LOG_BYTES as u64 {
                let n = zeros.len().min(LOG_BYTES - at as usize);
                file.write_all_at(&zeros[..n], at)?;
                at += n as u64;
            }
            file.sync_all()?;
            File::open(dir)?.sync_all()?;
        }
        Ok(Wal { file })
    }

    /// The whole log, for recovery.
    pub fn read_all(&self) -> io::Result<Vec<u8>> {
        let mut log = vec![0; LOG_BYTES];
        self.file.read_exact_at(&mut log, 0)?;
        Ok(log)
    }

    /// Writes an encoded frame at `offset` (a page boundary, the frame
    /// inside the log), without a flush.
    pub fn write(&self, frame: &[u8], offset: usize) -> io::Result<()> {
        debug_assert!(offset.is_multiple_of(FRAME_ALIGN) && offset + frame.len() <= LOG_BYTES);
        self.file.write_all_at(frame, offset as u64)
    }

    /// One device flush: every frame written is durable on return.
    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Unmakes the frame at `offset` (a batch that failed): its header is
    /// zeroed, so no reader of the log takes it for a batch. Not flushed.
    pub fn erase(&self, offset: usize) -> io::Result<()> {
        self.file.write_all_at(&[0; HEADER_BYTES], offset as u64)
    }
}

/// The log of a data directory another process may be writing, read
/// without opening it for writing (a backup's source); `None` when there
/// is no log. What it returns may be torn where a frame was being written:
/// [`decode`] stops there.
pub fn read_log(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match File::open(dir.join(FILE_NAME)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut log = Vec::with_capacity(LOG_BYTES);
    file.take(LOG_BYTES as u64).read_to_end(&mut log)?;
    Ok(Some(log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: RecordKey, value: &[u8]) -> RecordWrite {
        RecordWrite::Put {
            key,
            value: value.to_vec(),
        }
    }

    /// A log holding `frames` from its start, then zeros.
    fn log_of(frames: &[Frame]) -> Vec<u8> {
        let mut log = Vec::new();
        let mut frame = Vec::new();
        for f in frames {
            encode(f.seq, f.index, &f.records, &mut frame);
            log.extend_from_slice(&frame);
        }
        log.resize(log.len() + 3 * FRAME_ALIGN, 0);
        log
    }

    fn frame(seq: u64, index: Option<u64>, records: Vec<RecordWrite>) -> Frame {
        Frame {
            seq,
            index,
            records,
        }
    }

    #[test]
    fn frames_round_trip_each_on_its_own_pages() {
        let frames = [
            frame(5, Some(12), vec![]),
            frame(
                6,
                None,
                vec![put(1, b"task"), RecordWrite::Delete { key: 0 }],
            ),
            frame(7, Some(13), vec![put(2, &[7; 5000])]),
        ];
        let log = log_of(&frames);
        assert_eq!(decode(&log, 5), frames);
        let mut one = Vec::new();
        encode(7, None, &[put(2, &[7; 5000])], &mut one);
        assert_eq!(one.len(), 2 * FRAME_ALIGN, "padded to whole pages");
    }

    #[test]
    fn decoding_starts_only_at_the_number_after_the_checkpoint() {
        let log = log_of(&[frame(5, Some(1), vec![]), frame(6, Some(2), vec![])]);
        assert_eq!(decode(&log, 6), [], "frame 5 is older than the checkpoint");
        assert_eq!(decode(&log, 4), [], "frame 4 is missing");
        assert_eq!(decode(&[0; FRAME_ALIGN], 1), [], "a new log is zeros");
    }

    #[test]
    fn a_torn_or_altered_frame_ends_the_log() {
        let mut log = log_of(&[
            frame(1, Some(1), vec![]),
            frame(2, Some(2), vec![put(9, b"abc")]),
            frame(3, Some(3), vec![]),
        ]);
        // Frame 2 on its page: flip one byte of its payload.
        log[FRAME_ALIGN + HEADER_BYTES + 3] ^= 1;
        assert_eq!(decode(&log, 1), [frame(1, Some(1), vec![])]);
    }

    #[test]
    fn a_new_round_ends_where_the_older_frames_begin() {
        // The last round wrote frames 1 to 3; after a checkpoint at 3 the
        // log is reused from its start, and only frame 4 was written.
        let older = log_of(&[
            frame(1, Some(1), vec![]),
            frame(2, Some(2), vec![]),
            frame(3, Some(3), vec![]),
        ]);
        let newer = log_of(&[frame(4, Some(4), vec![])]);
        let mut log = older.clone();
        log[..FRAME_ALIGN].copy_from_slice(&newer[..FRAME_ALIGN]);
        assert_eq!(decode(&log, 4), [frame(4, Some(4), vec![])]);
    }

    #[test]
    fn a_header_that_claims_more_than_the_log_holds_is_not_a_frame() {
        let mut log = log_of(&[frame(1, Some(1), vec![])]);
        log[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&log, 1), []);
        let mut short = Vec::new();
        encode(1, Some(1), &[], &mut short);
        assert_eq!(decode(&short[..HEADER_BYTES - 1], 1), []);
    }
}
