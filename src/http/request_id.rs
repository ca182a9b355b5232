//! Request ids: the caller's `X-Request-Id` when it is acceptable, else one
//! made here. Every answer echoes it, the access log and every warning about
//! a request carry it, and every JSON error body names it, so one id finds a
//! request in the client's logs, fibd's journal and a trace.
//!
//! A made id is a per-process random prefix and a counter (`k3q9xm-1f`): short,
//! unique within a process run and, with 30 random bits, across runs in
//! practice. Making one costs a counter increment and a few byte stores into
//! a fixed array: no allocation, no clock, no system call.

use std::fmt;

/// The longest id accepted from a caller (and the array every id lives in).
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// The response (and request) header.
pub const HEADER: &str = "X-Request-Id";

/// One request's id, kept inline: copying it is copying 65 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestId {
    len: u8,
    bytes: [u8; REQUEST_ID_BYTES_MAX],
}

impl RequestId {
    /// Visible ASCII only (`!` to `~`), 1 to 64 bytes: safe in a header, a
    /// log line and a JSON string, and bounded. None otherwise.
    pub fn from_caller(value: &[u8]) -> Option<RequestId> {
        let acceptable = !value.is_empty()
            && value.len() <= REQUEST_ID_BYTES_MAX
            && value.iter().all(|&b| b.is_ascii_graphic());
        if !acceptable {
            return None;
        }
        let mut id = RequestId::EMPTY;
        id.bytes[..value.len()].copy_from_slice(value);
        id.len = value.len() as u8;
        Some(id)
    }

    const EMPTY: RequestId = RequestId {
        len: 0,
        bytes: [0; REQUEST_ID_BYTES_MAX],
    };

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn as_str(&self) -> &str {
        // Only visible ASCII is ever stored.
        std::str::from_utf8(self.as_bytes()).unwrap_or("-")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_str())
    }
}

/// Random prefix characters: 6 of base 32 is 30 bits.
const PREFIX_LEN: usize = 6;
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Makes ids for one process run; owned by the event loop.
#[derive(Debug)]
pub struct RequestIds {
    /// `prefix-` followed by room for the counter.
    template: RequestId,
    counter: u64,
}

impl RequestIds {
    /// `seed` comes from the OS CSPRNG at start-up.
    pub fn new(seed: u64) -> RequestIds {
        let mut template = RequestId::EMPTY;
        for (i, slot) in template.bytes[..PREFIX_LEN].iter_mut().enumerate() {
            *slot = BASE32[((seed >> (5 * i)) & 31) as usize];
        }
        template.bytes[PREFIX_LEN] = b'-';
        template.len = (PREFIX_LEN + 1) as u8;
        RequestIds {
            template,
            counter: 0,
        }
    }

    /// The caller's id if acceptable, else a fresh one.
    pub fn for_request(&mut self, from_caller: Option<&[u8]>) -> RequestId {
        from_caller
            .and_then(RequestId::from_caller)
            .unwrap_or_else(|| self.fresh())
    }

    /// `prefix-counter`, the counter in lowercase hex.
    pub fn fresh(&mut self) -> RequestId {
        self.counter = self.counter.wrapping_add(1);
        let mut id = self.template;
        let digits = (16 - self.counter.leading_zeros() as usize / 4).max(1);
        let start = PREFIX_LEN + 1;
        for i in 0..digits {
            let nibble = (self.counter >> (4 * (digits - 1 - i))) & 0xf;
            id.bytes[start + i] = HEX[nibble as usize];
        }
        id.len = (start + digits) as u8;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_visible_ascii_id_of_at_most_64_bytes_is_kept() {
        let mut ids = RequestIds::new(7);
        for good in [&b"a"[..], b"req-42", b"!~{}[]\"\\", &[b'x'; 64]] {
            assert_eq!(ids.for_request(Some(good)).as_bytes(), good);
        }
    }

    #[test]
    fn anything_else_is_replaced_by_a_fresh_id() {
        let mut ids = RequestIds::new(7);
        let too_long = [b'x'; 65];
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            b"\x7f",
            b"caf\xc3\xa9",
            &too_long,
        ] {
            let id = ids.for_request(Some(bad));
            assert_ne!(id.as_bytes(), bad);
            assert!(id.as_str().starts_with(ids.template.as_str()), "{id}");
        }
        assert!(
            ids.for_request(None)
                .as_str()
                .starts_with(ids.template.as_str())
        );
    }

    #[test]
    fn fresh_ids_are_short_distinct_and_count_in_hex() {
        let mut ids = RequestIds::new(0x1234_5678_9abc);
        let prefix = ids.template.as_str().to_owned();
        assert_eq!(prefix.len(), 7);
        assert!(prefix.ends_with('-'));
        assert!(
            prefix[..6]
                .bytes()
                .all(|b| BASE32.contains(&b) && b.is_ascii_graphic())
        );
        let mut seen = std::collections::HashSet::new();
        for n in 1..=5000u64 {
            let id = ids.fresh();
            assert_eq!(id.as_str(), format!("{prefix}{n:x}"));
            assert!(seen.insert(id.as_str().to_owned()));
        }
        ids.counter = u64::MAX - 1;
        let longest = ids.fresh();
        assert_eq!(longest.as_str(), format!("{prefix}ffffffffffffffff"));
        assert!(RequestId::from_caller(longest.as_bytes()).is_some());
    }

    #[test]
    fn different_seeds_give_different_prefixes() {
        let a = RequestIds::new(1).fresh();
        let b = RequestIds::new(2).fresh();
        assert_ne!(a, b);
    }
}
