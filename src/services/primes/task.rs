//! A task's identity, its state, and its record in the store.
//!
//! Ids are 128 bits from the OS CSPRNG, written as 22 characters of URL-safe
//! base64 without padding, so one client cannot enumerate another's tasks.
//! A record holds what the task is and how it ended, never its result: the
//! result is derived from the prime table.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const ID_BYTES: usize = 16;
/// Characters of an id in a URL.
pub const ID_TEXT_LEN: usize = 22;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId([u8; ID_BYTES]);

impl TaskId {
    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> TaskId {
        TaskId(bytes)
    }

    pub fn bytes(&self) -> [u8; ID_BYTES] {
        self.0
    }

    /// Parses the URL form; None unless it is exactly the canonical
    /// 22-character encoding of 16 bytes.
    pub fn parse(text: &[u8]) -> Option<TaskId> {
        if text.len() != ID_TEXT_LEN {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES];
        match URL_SAFE_NO_PAD.decode_slice(text, &mut bytes) {
            Ok(ID_BYTES) => Some(TaskId(bytes)),
            _ => None,
        }
    }

    /// Appends the URL form.
    pub fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + ID_TEXT_LEN, 0);
        // Cannot fail: the slice is exactly the encoded length.
        let _ = URL_SAFE_NO_PAD.encode_slice(self.0, &mut out[start..]);
    }
}

/// Why a task failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The server was restarted with a smaller `--primes-max-n`.
    AboveMax,
}

impl Failure {
    pub fn message(self) -> &'static str {
        match self {
            Failure::AboveMax => {
                "n is above this server's --primes-max-n (it was lowered after the task was accepted)"
            }
        }
    }
}

/// How a settled task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Failed(Failure),
}

/// A task as stored. Times are Unix milliseconds, so retention survives restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Task {
    /// The record's key in the store: acceptance order.
    pub seq: u64,
    pub n: u64,
    pub created_ms: u64,
    /// How it ended and when; None while it waits for the sieve.
    pub settled: Option<(Outcome, u64)>,
}

const RECORD_VERSION: u8 = 1;
/// version, state, id, n, created, settled: 1 + 1 + 16 + 8 + 8 + 8 bytes.
pub const RECORD_BYTES: usize = 42;

impl Task {
    /// The record's value (its key is `seq`).
    pub fn encode(&self, id: TaskId) -> Vec<u8> {
        let (state, settled_ms) = match self.settled {
            None => (0u8, 0),
            Some((Outcome::Done, at)) => (1, at),
            Some((Outcome::Failed(Failure::AboveMax), at)) => (2, at),
        };
        let mut out = Vec::with_capacity(RECORD_BYTES);
        out.extend_from_slice(&[RECORD_VERSION, state]);
        out.extend_from_slice(&id.bytes());
        out.extend_from_slice(&self.n.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&settled_ms.to_be_bytes());
        out
    }

    /// The task and its id from a record; None for one this version cannot read.
    pub fn decode(seq: u64, record: &[u8]) -> Option<(TaskId, Task)> {
        let [RECORD_VERSION, state, rest @ ..] = record else {
            return None;
        };
        if rest.len() != RECORD_BYTES - 2 {
            return None;
        }
        let (id, rest) = rest.split_at(ID_BYTES);
        let id = TaskId(id.try_into().ok()?);
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_be_bytes(
                rest.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        let (n, created_ms, settled_ms) = (word(0)?, word(1)?, word(2)?);
        let settled = match state {
            0 => None,
            1 => Some((Outcome::Done, settled_ms)),
            2 => Some((Outcome::Failed(Failure::AboveMax), settled_ms)),
            _ => return None,
        };
        Some((
            id,
            Task {
                seq,
                n,
                created_ms,
                settled,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_only_canonical_text_parses() {
        let id = TaskId::from_bytes([0xfb; ID_BYTES]);
        let mut text = Vec::new();
        id.write(&mut text);
        assert_eq!(text.len(), ID_TEXT_LEN);
        assert!(
            text.iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(b))
        );
        assert_eq!(TaskId::parse(&text), Some(id));
        let mut padded = text.clone();
        padded.extend_from_slice(b"==");
        for bad in [
            &b""[..],
            b"abc",
            &text[..21],
            &padded,
            b"++++++++++++++++++++++",
        ] {
            assert_eq!(TaskId::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        // The last character carries 2 spare bits; non-zero ones are refused.
        let mut sloppy = text.clone();
        *sloppy.last_mut().unwrap() = b'_';
        assert_eq!(TaskId::parse(&sloppy), None);
    }

    #[test]
    fn records_round_trip() {
        for settled in [
            None,
            Some((Outcome::Done, 7)),
            Some((Outcome::Failed(Failure::AboveMax), 9)),
        ] {
            let task = Task {
                seq: 42,
                n: 1_000_000,
                created_ms: 1_700_000_000_000,
                settled,
            };
            let id = TaskId::from_bytes([7; ID_BYTES]);
            let record = task.encode(id);
            assert_eq!(record.len(), RECORD_BYTES);
            assert_eq!(Task::decode(42, &record), Some((id, task)));
        }
        assert_eq!(Task::decode(1, &[2; RECORD_BYTES]), None);
        assert_eq!(Task::decode(1, &[1, 0, 1]), None);
    }
}
