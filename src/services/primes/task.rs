//! A task's identity, its state, and its record in the store.
//!
//! Ids are 128 bits from the OS CSPRNG, written as 22 characters of URL-safe
//! base64 without padding, so one client cannot enumerate another's tasks.
//! A record holds what the task is, whose it is, the idempotency key it was
//! posted under and how it ended, never its result: the result is derived
//! from the prime table.

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::callback::{self, Callback};

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

/// Who posted a task, as stored: an API key by a hash of its name (stable
/// across restarts and key-file reloads, unlike the key's own hash), else
/// the client's address. Fair shares, cancellation and idempotency keys are
/// scoped by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner([u8; OWNER_BYTES]);

/// A tag byte (0 unknown, 1 key, 2 address) and 16 bytes.
pub const OWNER_BYTES: usize = 17;

impl Owner {
    /// Tasks stored by a version that did not record owners.
    pub const UNKNOWN: Owner = Owner([0; OWNER_BYTES]);

    /// An API key by [`crate::access::name_digest`] of its name.
    pub fn key(name_digest: [u8; 16]) -> Owner {
        let mut bytes = [0u8; OWNER_BYTES];
        bytes[0] = 1;
        bytes[1..].copy_from_slice(&name_digest);
        Owner(bytes)
    }

    /// IPv4 and its IPv4-mapped IPv6 form are one client.
    pub fn addr(addr: IpAddr) -> Owner {
        let v6 = match addr {
            IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6, |v4| v4.to_ipv6_mapped()),
        };
        let mut bytes = [0u8; OWNER_BYTES];
        bytes[0] = 2;
        bytes[1..].copy_from_slice(&v6.octets());
        Owner(bytes)
    }

    pub fn bytes(&self) -> [u8; OWNER_BYTES] {
        self.0
    }

    /// An owner as [`Owner::bytes`] gave it (a forwarded task's).
    pub fn from_bytes(bytes: &[u8]) -> Option<Owner> {
        Some(Owner(bytes.try_into().ok()?))
    }

    /// Whether this owner is an API key (then only it may cancel).
    pub fn is_key(&self) -> bool {
        self.0[0] == 1
    }
}

/// An `Idempotency-Key` as stored: SHA-256 over its owner and the key,
/// truncated to 128 bits. Collision resistance matters: a client that
/// could make its key collide with another's would learn that task's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey([u8; 16]);

/// The longest `Idempotency-Key` taken (a UUID is 36 characters).
pub const IDEMPOTENCY_KEY_MAX: usize = 255;

impl IdempotencyKey {
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }

    /// A key as [`IdempotencyKey::bytes`] gave it (a forwarded task's).
    pub fn from_bytes(bytes: &[u8]) -> Option<IdempotencyKey> {
        Some(IdempotencyKey(bytes.try_into().ok()?))
    }

    /// None unless `key` is 1 to 255 visible ASCII characters.
    pub fn new(owner: Owner, key: &[u8]) -> Option<IdempotencyKey> {
        let visible = key.iter().all(|b| (0x21..=0x7e).contains(b));
        if key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX || !visible {
            return None;
        }
        let mut hash = Sha256::new();
        hash.update(owner.0);
        hash.update(key);
        let digest = hash.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Some(IdempotencyKey(bytes))
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
    /// Its client cancelled it before a sieve took it up.
    Cancelled,
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
    pub owner: Owner,
    /// The `Idempotency-Key` it was posted under, if any: kept exactly as
    /// long as the task, and committed in the same record.
    pub idempotency: Option<IdempotencyKey>,
}

/// Version 1 (42 bytes) had no owner and no idempotency key; it still reads.
const RECORD_V1: u8 = 1;
const RECORD_V1_BYTES: usize = 42;
/// A task without a callback.
const RECORD_V2: u8 = 2;
/// A task with a callback: version 2's fields, then the callback's.
const RECORD_V3: u8 = 3;
/// version, state, id, n, created, settled, owner, idempotency key (zero
/// when none): 1 + 1 + 16 + 8 + 8 + 8 + 17 + 16 bytes.
pub const RECORD_BYTES: usize = 75;
/// The longest record: one with a callback of the longest URL.
pub const RECORD_BYTES_MAX: usize = RECORD_BYTES + callback::RECORD_BYTES_MAX;

impl Task {
    /// The record's value (its key is `seq`), with the task's callback.
    pub fn encode(&self, id: TaskId, callback: Option<&Callback>) -> Vec<u8> {
        let (state, settled_ms) = match self.settled {
            None => (0u8, 0),
            Some((Outcome::Done, at)) => (1, at),
            Some((Outcome::Failed(Failure::AboveMax), at)) => (2, at),
            Some((Outcome::Cancelled, at)) => (3, at),
        };
        let mut out = Vec::with_capacity(RECORD_BYTES + callback.map_or(0, |c| 8 + c.url.len()));
        let version = if callback.is_some() {
            RECORD_V3
        } else {
            RECORD_V2
        };
        out.extend_from_slice(&[version, state]);
        out.extend_from_slice(&id.bytes());
        out.extend_from_slice(&self.n.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&settled_ms.to_be_bytes());
        out.extend_from_slice(&self.owner.0);
        out.extend_from_slice(&self.idempotency.map_or([0; 16], |key| key.0));
        if let Some(callback) = callback {
            callback.encode(&mut out);
        }
        out
    }

    /// The task, its id and its callback from a record; None for one this
    /// version cannot read.
    pub fn decode(seq: u64, record: &[u8]) -> Option<(TaskId, Task, Option<Callback>)> {
        let (state, rest, callback) = match record {
            [RECORD_V1, state, rest @ ..] if record.len() == RECORD_V1_BYTES => {
                (*state, rest, None)
            }
            [RECORD_V2, state, rest @ ..] if record.len() == RECORD_BYTES => (*state, rest, None),
            [RECORD_V3, ..] if record.len() > RECORD_BYTES => {
                let (fixed, tail) = record.split_at(RECORD_BYTES);
                (fixed[1], &fixed[2..], Some(Callback::decode(tail)?))
            }
            _ => return None,
        };
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
            3 => Some((Outcome::Cancelled, settled_ms)),
            _ => return None,
        };
        let (owner, idempotency) = match rest.get(24..) {
            Some([]) => (Owner::UNKNOWN, None),
            Some(tail) => {
                let (owner, key) = tail.split_at(OWNER_BYTES);
                let key: [u8; 16] = key.try_into().ok()?;
                let key = (key != [0; 16]).then_some(IdempotencyKey(key));
                (Owner(owner.try_into().ok()?), key)
            }
            None => return None,
        };
        Some((
            id,
            Task {
                seq,
                n,
                created_ms,
                settled,
                owner,
                idempotency,
            },
            callback,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::name_digest;

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
        let owner = Owner::key(name_digest("alice"));
        for (settled, idempotency) in [
            (None, None),
            (
                Some((Outcome::Done, 7)),
                IdempotencyKey::new(owner, b"retry-1"),
            ),
            (Some((Outcome::Failed(Failure::AboveMax), 9)), None),
            (Some((Outcome::Cancelled, 11)), None),
        ] {
            let task = Task {
                seq: 42,
                n: 1_000_000,
                created_ms: 1_700_000_000_000,
                settled,
                owner,
                idempotency,
            };
            let id = TaskId::from_bytes([7; ID_BYTES]);
            let record = task.encode(id, None);
            assert_eq!(record.len(), RECORD_BYTES);
            assert_eq!(Task::decode(42, &record), Some((id, task, None)));
            let callback = Callback {
                addr: None,
                ..Callback::new("http://127.0.0.1:9/hook", "127.0.0.1:9".parse().unwrap())
            };
            let record = task.encode(id, Some(&callback));
            assert!(record.len() > RECORD_BYTES && record.len() <= RECORD_BYTES_MAX);
            assert_eq!(Task::decode(42, &record), Some((id, task, Some(callback))));
            assert_eq!(
                Task::decode(42, &record[..RECORD_BYTES + 3]),
                None,
                "a cut callback"
            );
        }
        let mut unknown_state = [2; RECORD_BYTES];
        unknown_state[1] = 9;
        assert_eq!(Task::decode(1, &unknown_state), None);
        assert_eq!(Task::decode(1, &[2; RECORD_BYTES - 1]), None);
        assert_eq!(Task::decode(1, &[9; RECORD_BYTES]), None);
        assert_eq!(Task::decode(1, &[1, 0, 1]), None);
    }

    #[test]
    fn version_1_records_still_read_without_owner_or_key() {
        let mut record = vec![1, 1];
        record.extend_from_slice(&[5; ID_BYTES]);
        for word in [100u64, 2_000, 3_000] {
            record.extend_from_slice(&word.to_be_bytes());
        }
        let (id, task, callback) = Task::decode(3, &record).unwrap();
        assert_eq!(callback, None);
        assert_eq!(id, TaskId::from_bytes([5; ID_BYTES]));
        assert_eq!((task.n, task.settled), (100, Some((Outcome::Done, 3_000))));
        assert_eq!((task.owner, task.idempotency), (Owner::UNKNOWN, None));
    }

    #[test]
    fn owners_and_idempotency_keys_are_scoped_and_bounded() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Owner::addr(v4), Owner::addr(mapped));
        assert_ne!(Owner::addr(v4), Owner::key(name_digest("192.0.2.7")));
        assert!(Owner::key(name_digest("a")).is_key() && !Owner::addr(v4).is_key());
        let (a, b) = (Owner::key(name_digest("a")), Owner::key(name_digest("b")));
        assert_eq!(IdempotencyKey::new(a, b"k"), IdempotencyKey::new(a, b"k"));
        assert_ne!(IdempotencyKey::new(a, b"k"), IdempotencyKey::new(b, b"k"));
        assert!(IdempotencyKey::new(a, &[b'x'; IDEMPOTENCY_KEY_MAX]).is_some());
        for bad in [
            &b""[..],
            &[b'x'; IDEMPOTENCY_KEY_MAX + 1],
            b"two words",
            b"caf\xc3\xa9",
        ] {
            assert_eq!(IdempotencyKey::new(a, bad), None);
        }
    }
}
