//! Replies queued on one connection, in request order, and the places kept
//! for replies that are answered later.
//!
//! Plain bytes go into one buffer. Shared bodies (large values, bytes in the
//! binary) are kept as segments between plain runs, never copied. A *slot*
//! ([`Output::reserve`]) is the place of a reply not known yet, named by its
//! parking ticket: nothing after it leaves before it is filled
//! ([`Output::fill`]) or withdrawn ([`Output::withdraw`]). Replies behind a
//! slot can still be queued, which is how pipelined steps keep joining one
//! batch while the first of them waits for its commit. With no segment
//! queued, a flush is a single `write` of the buffer.
//!
//! Sans-IO: the connection hands [`Output::writable`]'s slices to its socket
//! and reports back with [`Output::advance`].

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;

use super::park::Ticket;

/// A written prefix of the buffer this large is reclaimed.
const COMPACT_BYTES_MIN: usize = 16 * 1024;
/// A connection that has drained a buffer keeps at most this much of its
/// capacity: thousands of connections that once pipelined a lot must not
/// each sit on a large, empty buffer.
pub const IDLE_CAPACITY_MAX: usize = 16 * 1024;
/// Slices handed to one vectored write at most.
pub const IOVECS_MAX: usize = 64;

#[derive(Default)]
pub struct Output {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    /// `buf` bytes from here on come after every segment.
    tail_start: usize,
    segments: VecDeque<Segment>,
}

enum Segment {
    /// `buf` bytes up to `end`.
    Plain { end: usize },
    /// `body[offset..end]`.
    Shared {
        body: SharedBytes,
        offset: usize,
        end: usize,
    },
    /// A reply to come: nothing after it leaves before it is filled; `at` is
    /// where `buf` stood, so withdrawing it can cut off what followed.
    Slot { ticket: Ticket, at: usize },
}

/// A body shared between replies: `Rc` for what the loop built, `Arc` for
/// what a compute thread built whole (so its allocation, copy and page
/// faults, milliseconds for megabytes, happen there and not on the loop),
/// a static slice for what the binary carries.
#[derive(Clone, Debug)]
pub enum SharedBytes {
    Local(Rc<[u8]>),
    Built(Arc<[u8]>),
    /// Bytes in the binary (/openapi.json, /docs, /dashboard): never copied.
    Static(&'static [u8]),
}

impl Deref for SharedBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            SharedBytes::Local(bytes) => bytes,
            SharedBytes::Built(bytes) => bytes,
            SharedBytes::Static(bytes) => bytes,
        }
    }
}

impl From<Rc<[u8]>> for SharedBytes {
    fn from(bytes: Rc<[u8]>) -> Self {
        SharedBytes::Local(bytes)
    }
}

impl From<Arc<[u8]>> for SharedBytes {
    fn from(bytes: Arc<[u8]>) -> Self {
        SharedBytes::Built(bytes)
    }
}

impl From<&'static [u8]> for SharedBytes {
    fn from(bytes: &'static [u8]) -> Self {
        SharedBytes::Static(bytes)
    }
}

impl Output {
    /// The buffer to append plain reply bytes to.
    pub fn buf(&mut self) -> &mut Vec<u8> {
        self.compact();
        &mut self.buf
    }

    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf().extend_from_slice(bytes);
    }

    /// Queues a body shared with other replies, without copying it.
    pub fn push_shared(&mut self, body: Rc<[u8]>) {
        let end = body.len();
        self.push_shared_prefix(body, end);
    }

    /// Queues the first `len` bytes of a shared body (all of it if shorter).
    pub fn push_shared_prefix(&mut self, body: impl Into<SharedBytes>, len: usize) {
        let body = body.into();
        self.close_plain_run();
        let end = len.min(body.len());
        if end > 0 {
            self.segments.push_back(Segment::Shared {
                body,
                offset: 0,
                end,
            });
        }
    }

    /// Keeps the place of the reply `ticket` names: whatever is queued after
    /// it waits until it is filled or withdrawn.
    pub fn reserve(&mut self, ticket: Ticket) {
        self.close_plain_run();
        let at = self.buf.len();
        self.segments.push_back(Segment::Slot { ticket, at });
    }

    /// Whether a reply is still to come.
    pub fn has_open_slot(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Slot { .. }))
    }

    /// The tickets of the replies still to come, in order.
    pub fn open_slots(&self) -> impl Iterator<Item = Ticket> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Slot { ticket, .. } => Some(*ticket),
            _ => None,
        })
    }

    /// Writes the reply `ticket` stands for into its place; false if it has
    /// none (it was withdrawn). `render` may write nothing: the bytes queued
    /// after the slot were the reply, and only their release was awaited.
    pub fn fill<R>(&mut self, ticket: Ticket, render: impl FnOnce(&mut Output) -> R) -> Option<R> {
        let i = self.slot_position(ticket)?;
        let Some(&Segment::Slot { at, .. }) = self.segments.get(i) else {
            return None;
        };
        if i + 1 == self.segments.len() && at == self.buf.len() {
            // The common case: nothing queued behind it, so the reply is
            // written in place, as if it were answered now.
            self.segments.pop_back();
            self.tail_start = at;
            return Some(render(self));
        }
        // Replies wait behind it: render apart, then splice the result in.
        let mut part = Output::default();
        let result = render(&mut part);
        self.segments.remove(i);
        let mut spliced = part.into_segments();
        let mut j = i;
        while let Some(segment) = spliced.pop_front() {
            self.segments.insert(j, segment);
            j += 1;
        }
        Some(result)
    }

    /// Drops the slot of `ticket` and everything queued after it; the caller
    /// then writes what replaces them, and the connection closes (the
    /// dropped replies cannot be sent out of order). Returns the tickets of
    /// the later slots dropped with it, or None if there was no such slot.
    pub fn withdraw(&mut self, ticket: Ticket) -> Option<Vec<Ticket>> {
        let i = self.slot_position(ticket)?;
        let Some(&Segment::Slot { at, .. }) = self.segments.get(i) else {
            return None;
        };
        let dropped = self
            .segments
            .iter()
            .skip(i + 1)
            .filter_map(|s| match s {
                Segment::Slot { ticket, .. } => Some(*ticket),
                _ => None,
            })
            .collect();
        self.buf.truncate(at);
        self.tail_start = at;
        self.segments.truncate(i);
        Some(dropped)
    }

    /// Nothing is left to write, and no reply is still to come.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.sent == self.buf.len()
    }

    /// Whether bytes may be written now (some come before the first slot).
    pub fn has_writable(&self) -> bool {
        let mut plain_from = self.sent;
        for segment in &self.segments {
            match segment {
                Segment::Plain { end } if plain_from < *end => return true,
                Segment::Plain { end } => plain_from = *end,
                Segment::Shared { .. } => return true,
                Segment::Slot { .. } => return false,
            }
        }
        self.plain_tail_start() < self.buf.len()
    }

    /// Plain bytes not yet written; shared bodies cost nothing per connection.
    pub fn backlog_bytes(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Segments queued: bounded per connection by its caller.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// What the allocator holds for this output, for the shared budget.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// An idle connection gives back a buffer a large reply grew.
    pub fn release_memory(&mut self) {
        if self.buf.capacity() > IDLE_CAPACITY_MAX {
            self.buf = Vec::new();
        }
    }

    /// Fills `slices` with what may be written now: everything up to the
    /// first slot; returns how many.
    pub fn writable<'a>(&'a self, slices: &mut [IoSlice<'a>; IOVECS_MAX]) -> usize {
        let mut count = 0;
        let mut plain_from = self.sent;
        for segment in &self.segments {
            if count == IOVECS_MAX {
                return count;
            }
            match segment {
                Segment::Plain { end } => {
                    if plain_from < *end {
                        slices[count] = IoSlice::new(&self.buf[plain_from..*end]);
                        count += 1;
                    }
                    plain_from = *end;
                }
                Segment::Shared { body, offset, end } => {
                    slices[count] = IoSlice::new(&body[*offset..*end]);
                    count += 1;
                }
                Segment::Slot { .. } => return count,
            }
        }
        let tail_from = self.plain_tail_start();
        if count < IOVECS_MAX && tail_from < self.buf.len() {
            slices[count] = IoSlice::new(&self.buf[tail_from..]);
            count += 1;
        }
        count
    }

    /// Marks `n` bytes as written (only bytes [`Output::writable`] offered:
    /// never past a slot).
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            match self.segments.front_mut() {
                Some(Segment::Plain { end }) => {
                    let take = n.min(*end - self.sent);
                    self.sent += take;
                    n -= take;
                    if self.sent == *end {
                        self.segments.pop_front();
                    }
                }
                Some(Segment::Shared { offset, end, .. }) => {
                    let take = n.min(*end - *offset);
                    *offset += take;
                    n -= take;
                    if *offset == *end {
                        self.segments.pop_front();
                    }
                }
                Some(Segment::Slot { .. }) => return,
                None => {
                    self.sent += n;
                    n = 0;
                }
            }
        }
        while matches!(self.segments.front(), Some(Segment::Plain { end }) if *end == self.sent) {
            self.segments.pop_front();
        }
        if self.segments.is_empty() && self.sent == self.buf.len() {
            self.buf.clear();
            self.sent = 0;
            self.tail_start = 0;
        }
    }

    fn slot_position(&self, ticket: Ticket) -> Option<usize> {
        self.segments
            .iter()
            .position(|s| matches!(s, Segment::Slot { ticket: t, .. } if *t == ticket))
    }

    fn close_plain_run(&mut self) {
        let plain_start = self.plain_tail_start();
        if self.buf.len() > plain_start {
            let end = self.buf.len();
            self.segments.push_back(Segment::Plain { end });
        }
        self.tail_start = self.buf.len();
    }

    /// Where the plain bytes that follow every segment begin.
    fn plain_tail_start(&self) -> usize {
        if self.segments.is_empty() {
            self.sent
        } else {
            self.tail_start
        }
    }

    /// This output's queued bytes as free-standing segments (its plain
    /// bytes moved into one shared buffer), to be spliced into another.
    fn into_segments(mut self) -> VecDeque<Segment> {
        self.close_plain_run();
        let plain: Rc<[u8]> = Rc::from(std::mem::take(&mut self.buf));
        let mut from = self.sent;
        self.segments
            .into_iter()
            .map(|segment| match segment {
                Segment::Plain { end } => {
                    let run = Segment::Shared {
                        body: SharedBytes::Local(plain.clone()),
                        offset: from,
                        end,
                    };
                    from = end;
                    run
                }
                other => other,
            })
            .collect()
    }

    /// Reclaims the written prefix of a buffer a slow reader keeps non-empty.
    fn compact(&mut self) {
        if self.sent < COMPACT_BYTES_MIN || self.sent * 2 < self.buf.len() {
            return;
        }
        let sent = self.sent;
        self.buf.drain(..sent);
        for segment in &mut self.segments {
            match segment {
                Segment::Plain { end } => *end -= sent,
                Segment::Slot { at, .. } => *at = at.saturating_sub(sent),
                Segment::Shared { .. } => {}
            }
        }
        self.tail_start = self.tail_start.saturating_sub(sent);
        self.sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::park::Ticket;

    /// Writes what `Output` offers, `chunk` bytes at most per "write", as a
    /// socket with a small buffer would take it.
    pub(crate) fn drain(out: &mut Output, chunk: usize) -> Vec<u8> {
        let mut sent = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
            let count = out.writable(&mut slices);
            if count == 0 {
                return sent;
            }
            let mut taken = 0;
            for slice in &slices[..count] {
                let n = slice.len().min(chunk - taken);
                sent.extend_from_slice(&slice[..n]);
                taken += n;
                if taken == chunk {
                    break;
                }
            }
            out.advance(taken);
        }
    }

    fn ticket(n: u64) -> Ticket {
        Ticket::for_tests(n)
    }

    #[test]
    fn plain_and_shared_bytes_leave_in_order_under_partial_writes() {
        for chunk in [1, 3, 7, 64, 4096] {
            let mut out = Output::default();
            out.extend(b"head1|");
            out.push_shared(Rc::from(&b"SHARED"[..]));
            out.extend(b"|tail1|");
            out.push_shared(Rc::from(&b"second"[..]));
            out.push_shared(Rc::from(&b"third"[..]));
            out.push_shared_prefix(Arc::<[u8]>::from(&b"[1, 2, 3"[..]), 4);
            out.extend(b"]|");
            out.push_shared_prefix(&b"static"[..], usize::MAX);
            out.extend(b"|end");
            assert_eq!(
                drain(&mut out, chunk),
                b"head1|SHARED|tail1|secondthird[1, ]|static|end"
            );
            assert!(out.is_empty());
            assert_eq!(out.buf.len(), 0, "a flushed buffer is reset");
        }
    }

    #[test]
    fn nothing_after_a_slot_leaves_before_it_is_filled() {
        let (t1, t2) = (ticket(1), ticket(2));
        let mut out = Output::default();
        out.extend(b"before|");
        out.reserve(t1);
        out.extend(b"step1|");
        out.reserve(t2);
        out.extend(b"step2");
        assert_eq!(drain(&mut out, 5), b"before|");
        assert!(out.has_open_slot());
        assert_eq!(out.fill(t1, |_| ()), Some(()), "released: nothing to add");
        assert_eq!(drain(&mut out, 5), b"step1|");
        out.fill(t2, |_| ());
        assert_eq!(drain(&mut out, 5), b"step2");
        assert!(out.is_empty());
    }

    #[test]
    fn a_withdrawn_slot_takes_everything_after_it() {
        let (t1, t2) = (ticket(1), ticket(2));
        let mut out = Output::default();
        out.extend(b"ok|");
        out.reserve(t1);
        out.extend(b"one|");
        out.reserve(t2);
        out.extend(b"two|");
        out.fill(t1, |_| ());
        assert_eq!(out.withdraw(t2), Some(vec![]));
        out.extend(b"error");
        assert_eq!(drain(&mut out, 100), b"ok|one|error");
        assert_eq!(out.withdraw(t2), None, "only once");
        let mut out = Output::default();
        out.reserve(t1);
        out.extend(b"x");
        out.reserve(t2);
        assert_eq!(
            out.withdraw(t1),
            Some(vec![t2]),
            "the later slot went with it"
        );
        assert_eq!(out.fill(t2, |_| ()), None);
    }

    #[test]
    fn a_slot_filled_behind_others_is_spliced_in_order() {
        for chunk in [1, 4, 4096] {
            let (t1, t2, t3) = (ticket(1), ticket(2), ticket(3));
            let mut out = Output::default();
            out.extend(b"a|");
            out.reserve(t1);
            out.reserve(t2);
            out.extend(b"now|");
            out.reserve(t3);
            // Filled out of their order, each with plain and shared bytes.
            out.fill(t2, |o| {
                o.extend(b"two(");
                o.push_shared(Rc::from(&b"2"[..]));
                o.extend(b")|");
            });
            assert_eq!(drain(&mut out, chunk), b"a|", "t1 still holds the rest");
            out.fill(t3, |o| o.extend(b"three"));
            out.fill(t1, |o| o.extend(b"one|"));
            assert_eq!(drain(&mut out, chunk), b"one|two(2)|now|three");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn a_slot_at_the_tail_is_filled_in_place() {
        let t = ticket(1);
        let mut out = Output::default();
        out.extend(b"x|");
        out.reserve(t);
        out.fill(t, |o| o.extend(b"late"));
        assert!(
            out.segments
                .iter()
                .all(|s| matches!(s, Segment::Plain { .. })),
            "written in place: plain bytes only"
        );
        assert_eq!(drain(&mut out, 100), b"x|late");
    }

    #[test]
    fn a_slow_readers_written_prefix_is_reclaimed() {
        let mut out = Output::default();
        out.extend(&vec![b'a'; 40 * 1024]);
        let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
        out.writable(&mut slices);
        out.advance(30 * 1024);
        out.extend(b"b");
        assert_eq!(out.buf.len(), 10 * 1024 + 1, "the sent prefix was dropped");
        let rest = drain(&mut out, 4096);
        assert_eq!(rest.len(), 10 * 1024 + 1);
        assert_eq!(rest.last(), Some(&b'b'));
    }
}
