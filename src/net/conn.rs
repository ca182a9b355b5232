//! One client connection: the only code that reads or writes a socket.
//!
//! It shuttles bytes between the socket and the sans-IO parser, hands each
//! complete request to a [`Respond`] implementation (the routes), and writes
//! the replies back in request order. Sockets are registered once, edge
//! triggered, for both directions; readiness is remembered here
//! (`readable`/`writable`) and cleared on `WouldBlock`, so no per-request
//! `epoll_ctl` is needed and a connection paused by backpressure resumes
//! without waiting for a new edge.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Token;
use mio::net::TcpStream;

use crate::error::ApiError;
use crate::http::chunked::{ChunkProgress, ChunkedDecoder};
use crate::http::parse::{self, BodyFraming, Limits, Parsed, Request};
use crate::http::request_id::RequestId;
use crate::services::stepper::BatchId;

/// What a connection that keeps nothing may read while the shared budget is
/// spent: room for a normal request, not for a flood.
const LEAN_READ_BYTES: usize = 2048;
/// Unanswered request bytes a connection may keep before it stops reading.
const INPUT_KEPT_BYTES_MAX: usize = 64 * 1024;
/// A written prefix of the output buffer this large is reclaimed.
const COMPACT_BYTES_MIN: usize = 16 * 1024;
/// A connection that has drained a buffer keeps at most this much of its
/// capacity: thousands of connections that once pipelined a lot must not
/// each sit on a large, empty buffer.
const IDLE_CAPACITY_MAX: usize = 16 * 1024;
/// Stop taking new requests from a connection whose unsent output is this
/// large: a client that pipelines without reading must not grow our memory.
const OUTPUT_PAUSE_BYTES: usize = 64 * 1024;
/// Replies waiting on a commit, per connection.
const SEGMENTS_MAX: usize = 1024;
const IOVECS_MAX: usize = 64;

/// Names a connection across loop passes: tokens are reused after a close,
/// so a reply that arrives later checks the serial too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRef {
    pub token: Token,
    pub serial: u64,
    /// The peer's address; `crate::access` decides who the client is.
    pub peer: IpAddr,
}

/// What the routes do with requests; implemented by `routes::App`.
pub trait Respond {
    /// The most body bytes the route of `request` reads; `None` if it takes
    /// no body (then the body is skipped, unread). A larger body gets 413.
    fn body_limit(&self, request: &Request<'_>) -> Option<usize>;
    /// Appends the reply to `request` to `out`, or promises it later
    /// ([`Reply::Deferred`], delivered through [`Conn::resume`]). `body` is
    /// the whole request body for a route with a [`Respond::body_limit`],
    /// else empty.
    fn respond(
        &mut self,
        conn: ConnRef,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
    ) -> Reply;
    /// Appends the answer to a request that could not be framed or whose
    /// held replies were withdrawn (then `request_id` is the first of them).
    fn reject(&mut self, error: ApiError, request_id: Option<RequestId>, out: &mut Output);
    /// Whether replies held for `batch` may be written.
    fn is_released(&self, batch: BatchId) -> bool;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    KeepAlive,
    Close,
    /// The answer needs work off the loop; requests behind it wait, so
    /// replies stay in request order.
    Deferred,
}

/// Where the connection is in its request stream.
enum Phase {
    /// Waiting for or parsing the next request head.
    Head,
    /// The head is in, and its route reads the body, which is not complete
    /// yet; the whole request is parsed again when more bytes arrive (both
    /// are small and bounded). A 100 Continue was sent if asked for.
    AwaitBody,
    /// Discarding a request body the route does not read before the next head.
    Body(BodySkip),
    /// Waiting for a deferred reply; the request's body is skipped afterwards.
    Deferred { body: BodyFraming, close: bool },
    /// The last reply is queued; close once it is written.
    Closing,
}

enum BodySkip {
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// The outcome of driving a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    Open,
    Closed,
}

pub struct Conn {
    stream: TcpStream,
    serial: u64,
    peer: IpAddr,
    /// Request bytes kept between reads: a partial request, or requests not
    /// yet answered because of backpressure. Usually empty: reads land in the
    /// loop's shared scratch buffer and are answered from there.
    input: Vec<u8>,
    output: Output,
    phase: Phase,
    readable: bool,
    writable: bool,
    peer_closed: bool,
    last_activity: Instant,
    /// Since when a request has been only partly received (slowloris guard).
    incomplete_since: Option<Instant>,
    starved: bool,
    /// Bytes last counted against `Shared::kept_bytes` for this connection.
    accounted_bytes: usize,
}

/// What every connection shares: the buffer reads land in, and a budget for
/// the bytes connections keep (unanswered input, unsent output), so many
/// greedy clients together cannot grow memory past a bound either.
pub struct Shared {
    pub scratch: Vec<u8>,
    pub kept_bytes: usize,
    pub kept_bytes_max: usize,
}

impl Shared {
    pub fn new(scratch_bytes: usize, kept_bytes_max: usize) -> Shared {
        Shared {
            scratch: vec![0; scratch_bytes],
            kept_bytes: 0,
            kept_bytes_max,
        }
    }

    /// Whether starved connections may be driven again.
    pub fn has_room(&self) -> bool {
        self.kept_bytes < self.kept_bytes_max / 2
    }
}

/// How long a client may take; from `Config`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To send a whole request (head and body) once it has begun.
    pub request: Duration,
    /// With no bytes moving in either direction.
    pub idle: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A request began but did not finish in time: 408, then close.
    Request,
    /// Nothing moved for too long: close quietly.
    Idle,
}

impl Conn {
    pub fn new(stream: TcpStream, peer: IpAddr, serial: u64, now: Instant) -> Conn {
        Conn {
            peer,
            last_activity: now,
            incomplete_since: None,
            starved: false,
            accounted_bytes: 0,
            stream,
            serial,
            input: Vec::new(),
            output: Output::default(),
            phase: Phase::Head,
            readable: true,
            writable: true,
            peer_closed: false,
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// Whether a reply on this connection is waiting for a commit.
    pub fn is_holding(&self, app: &impl Respond) -> bool {
        self.output.has_unreleased_hold(|b| app.is_released(b))
    }

    /// Replaces replies that wait on failed batches with one error, then closes.
    pub fn withdraw_held(&mut self, app: &mut impl Respond) {
        if let Some(first) = self.output.withdraw_unreleased(|b| app.is_released(b)) {
            app.reject(ApiError::CommitFailed, Some(first), &mut self.output);
            self.phase = Phase::Closing;
        }
    }

    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// Stops taking requests (shutdown): the connection closes once its
    /// queued replies, a deferred one included, are written.
    pub fn finish(&mut self) {
        match &mut self.phase {
            Phase::Deferred { close, .. } => *close = true,
            _ => self.phase = Phase::Closing,
        }
    }

    /// Delivers a deferred reply; the caller drives the connection next.
    pub fn resume(&mut self, limits: &Limits, reply: impl FnOnce(&mut Output) -> Reply) {
        let Phase::Deferred { body, close } = self.phase else {
            return;
        };
        let answer = reply(&mut self.output);
        self.phase = next_phase(answer == Reply::Close || close, body, limits);
    }

    /// Reads, answers and writes as far as readiness and backpressure allow.
    pub fn drive(
        &mut self,
        token: Token,
        now: Instant,
        shared: &mut Shared,
        app: &mut impl Respond,
        limits: &Limits,
    ) -> Drive {
        let conn = ConnRef {
            token,
            serial: self.serial,
            peer: self.peer,
        };
        let drive = self.drive_until_stuck(conn, shared, app, limits);
        // Capacity, not length: what the allocator really holds for us.
        let kept = self.input.capacity() + self.output.buf.capacity();
        shared.kept_bytes = shared.kept_bytes - self.accounted_bytes + kept;
        self.accounted_bytes = kept;
        self.stamp(now, drive.1);
        drive.0
    }

    /// What this connection counts against the shared budget; the server
    /// gives it back when the connection closes.
    pub fn accounted_bytes(&self) -> usize {
        self.accounted_bytes
    }

    /// It has bytes to read but stopped because the shared budget is spent;
    /// it must be driven again once the budget frees up (no new edge will come).
    pub fn is_starved(&self) -> bool {
        self.starved
    }

    fn drive_until_stuck(
        &mut self,
        conn: ConnRef,
        shared: &mut Shared,
        app: &mut impl Respond,
        limits: &Limits,
    ) -> (Drive, bool) {
        let mut moved = false;
        loop {
            let mut progress = self.answer_kept(conn, app, limits);
            // Over budget, a connection that keeps nothing may still read a
            // little (a new client's request gets in); one that keeps bytes waits.
            let read_max = if shared.kept_bytes < shared.kept_bytes_max {
                shared.scratch.len()
            } else if self.input.capacity() == 0 && self.output.buf.capacity() <= IDLE_CAPACITY_MAX
            {
                LEAN_READ_BYTES
            } else {
                0
            };
            self.starved = self.readable && self.wants_input() && read_max == 0;
            if self.wants_input() && self.readable && read_max > 0 {
                match self.read_and_answer(conn, &mut shared.scratch[..read_max], app, limits) {
                    Ok(read) => progress |= read,
                    Err(e) => return (fail(&e), moved),
                }
            }
            match self.flush(app) {
                Ok(wrote) => progress |= wrote,
                Err(e) => return (fail(&e), moved),
            }
            moved |= progress;
            if self.output.is_empty() {
                if matches!(self.phase, Phase::Closing) || (self.peer_closed && !progress) {
                    return (Drive::Closed, moved);
                }
                self.output.release_memory();
            }
            if !progress {
                return (Drive::Open, moved);
            }
        }
    }

    /// Records activity and whether a request is half-received, for the timeouts.
    fn stamp(&mut self, now: Instant, moved: bool) {
        if moved {
            self.last_activity = now;
        }
        let incomplete = match self.phase {
            Phase::Body(_) | Phase::AwaitBody => true,
            Phase::Head => {
                !self.input.is_empty() && self.output.backlog_bytes() < OUTPUT_PAUSE_BYTES
            }
            Phase::Deferred { .. } | Phase::Closing => false,
        };
        self.incomplete_since = match (incomplete, self.incomplete_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
    }

    /// Which timeout, if any, this connection has run into at `now`. A
    /// connection waiting on the server (a commit, a computation) never does.
    pub fn expired(&self, now: Instant, timeouts: &Timeouts, app: &impl Respond) -> Option<Expiry> {
        if matches!(self.phase, Phase::Deferred { .. }) || self.is_holding(app) {
            return None;
        }
        if self
            .incomplete_since
            .is_some_and(|since| now.saturating_duration_since(since) >= timeouts.request)
        {
            return Some(Expiry::Request);
        }
        (now.saturating_duration_since(self.last_activity) >= timeouts.idle).then_some(Expiry::Idle)
    }

    /// Answers a request that took too long to arrive with 408, then closes.
    pub fn time_out(&mut self, app: &mut impl Respond) {
        self.input.clear();
        app.reject(ApiError::RequestTimeout, None, &mut self.output);
        self.phase = Phase::Closing;
    }

    fn wants_input(&self) -> bool {
        !self.peer_closed
            && !matches!(self.phase, Phase::Closing)
            && self.output.backlog_bytes() < OUTPUT_PAUSE_BYTES
            && self.input.len() < INPUT_KEPT_BYTES_MAX
    }

    /// Answers requests kept from earlier reads (after backpressure eased).
    fn answer_kept(&mut self, conn: ConnRef, app: &mut impl Respond, limits: &Limits) -> bool {
        if self.input.is_empty() || matches!(self.phase, Phase::Closing | Phase::Deferred { .. }) {
            return false;
        }
        let input = std::mem::take(&mut self.input);
        let (used, progress) = answer(conn, &mut self.phase, &mut self.output, &input, app, limits);
        self.input = input;
        self.input.drain(..used);
        if self.input.is_empty() && self.input.capacity() > IDLE_CAPACITY_MAX {
            self.input = Vec::new();
        }
        progress
    }

    /// One read into the scratch buffer, answered from there; only what is
    /// left unanswered is copied into the connection.
    fn read_and_answer(
        &mut self,
        conn: ConnRef,
        scratch: &mut [u8],
        app: &mut impl Respond,
        limits: &Limits,
    ) -> io::Result<bool> {
        let n = loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.peer_closed = true;
                    if !self.input.is_empty()
                        && matches!(self.phase, Phase::Head | Phase::AwaitBody)
                    {
                        // The client stopped mid-request; nothing to answer.
                        self.input.clear();
                    }
                    return Ok(true);
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
        };
        // A short read drained the socket: the next byte raises a new edge,
        // so the extra read that would only say WouldBlock is skipped.
        if n < scratch.len() {
            self.readable = false;
        }
        let fresh = &scratch[..n];
        if self.input.is_empty() {
            let (used, _) = answer(conn, &mut self.phase, &mut self.output, fresh, app, limits);
            self.input.extend_from_slice(&fresh[used..]);
        } else {
            self.input.extend_from_slice(fresh);
            self.answer_kept(conn, app, limits);
        }
        Ok(true)
    }

    /// Writes what may be written: everything up to the first reply still
    /// waiting for its commit.
    fn flush(&mut self, app: &impl Respond) -> io::Result<bool> {
        let mut wrote = false;
        while self.writable {
            let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
            let count = self.output.writable(&mut slices, |b| app.is_released(b));
            if count == 0 {
                break;
            }
            let result = if count == 1 {
                self.stream.write(&slices[0])
            } else {
                self.stream.write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.output.advance(n);
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) => return Err(e),
            }
        }
        Ok(wrote)
    }
}

fn fail(e: &io::Error) -> Drive {
    log::debug!("connection closed on error: {e}");
    Drive::Closed
}

/// Answers every complete request in `buffered`, in order, until it runs out,
/// the connection must close, or backpressure says stop. Returns the bytes
/// used and whether anything happened.
fn answer(
    conn: ConnRef,
    phase: &mut Phase,
    output: &mut Output,
    buffered: &[u8],
    app: &mut impl Respond,
    limits: &Limits,
) -> (usize, bool) {
    let mut used = 0;
    while output.backlog_bytes() < OUTPUT_PAUSE_BYTES && output.segments.len() < SEGMENTS_MAX {
        let rest = &buffered[used..];
        match phase {
            Phase::Closing | Phase::Deferred { .. } => break,
            Phase::Body(skip) => match skip_body(skip, rest) {
                Ok((n, done)) => {
                    used += n;
                    if !done {
                        break;
                    }
                    *phase = Phase::Head;
                }
                Err(e) => return (buffered.len(), reject(phase, output, app, e)),
            },
            Phase::Head | Phase::AwaitBody => match parse::parse(rest, limits) {
                Ok(Parsed::Partial) => break,
                Ok(Parsed::Complete { request, head_len }) => {
                    let continue_sent = matches!(phase, Phase::AwaitBody);
                    let mut framing = request.body;
                    let mut body = Cow::Borrowed(&[][..]);
                    let mut body_len = 0;
                    if let Some(limit) = app.body_limit(&request) {
                        match collect_body(framing, &rest[head_len..], limit) {
                            Ok(Some((bytes, len))) => (body, body_len) = (bytes, len),
                            Ok(None) => {
                                if request.expect_continue && !continue_sent {
                                    output.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
                                }
                                *phase = Phase::AwaitBody;
                                break;
                            }
                            Err(e) => return (buffered.len(), reject(phase, output, app, e)),
                        }
                        framing = BodyFraming::None;
                    } else if request.expect_continue && framing != BodyFraming::None {
                        output.extend(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    used += head_len + body_len;
                    *phase = match app.respond(conn, &request, &body, output) {
                        Reply::Deferred => Phase::Deferred {
                            body: framing,
                            close: false,
                        },
                        reply => next_phase(reply == Reply::Close, framing, limits),
                    };
                }
                Err(e) => return (buffered.len(), reject(phase, output, app, e.into())),
            },
        }
    }
    (used, used > 0)
}

/// After a reply: close, skip the request's body, or read the next head.
fn next_phase(close: bool, body: BodyFraming, limits: &Limits) -> Phase {
    match (close, body) {
        (true, _) => Phase::Closing,
        (false, BodyFraming::None | BodyFraming::Length(0)) => Phase::Head,
        (false, BodyFraming::Length(n)) => Phase::Body(BodySkip::Length(n)),
        (false, BodyFraming::Chunked) => Phase::Body(BodySkip::Chunked(ChunkedDecoder::new(
            limits.body_bytes_max,
        ))),
    }
}

fn reject(phase: &mut Phase, output: &mut Output, app: &mut impl Respond, error: ApiError) -> bool {
    app.reject(error, None, output);
    *phase = Phase::Closing;
    true
}

/// A request's whole body, and the bytes of the buffer it took.
type Collected<'a> = (Cow<'a, [u8]>, usize);

/// The whole body of a request whose route reads it, and the bytes of
/// `buffered` it took; `None` while it is incomplete.
fn collect_body(
    framing: BodyFraming,
    buffered: &[u8],
    limit: usize,
) -> Result<Option<Collected<'_>>, ApiError> {
    match framing {
        BodyFraming::None => Ok(Some((Cow::Borrowed(&[][..]), 0))),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= limit)
                .ok_or(ApiError::Parse(parse::ParseError::BodyTooLarge))?;
            Ok(buffered.get(..n).map(|body| (Cow::Borrowed(body), n)))
        }
        BodyFraming::Chunked => {
            let mut decoder = ChunkedDecoder::new(limit as u64);
            let mut data = Vec::new();
            match decoder.feed_into(buffered, &mut data)? {
                ChunkProgress::NeedMore { .. } => Ok(None),
                ChunkProgress::Done { consumed } => Ok(Some((Cow::Owned(data), consumed))),
            }
        }
    }
}

/// Consumes body bytes; returns (bytes used, body finished).
fn skip_body(skip: &mut BodySkip, buffered: &[u8]) -> Result<(usize, bool), ApiError> {
    match skip {
        BodySkip::Length(remaining) => {
            let used = buffered
                .len()
                .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
            *remaining -= used as u64;
            Ok((used, *remaining == 0))
        }
        BodySkip::Chunked(decoder) => match decoder.feed(buffered)? {
            ChunkProgress::NeedMore { consumed } => Ok((consumed, false)),
            ChunkProgress::Done { consumed } => Ok((consumed, true)),
        },
    }
}

/// Replies queued on a connection, in request order.
///
/// Plain bytes go into one buffer. Shared bodies (large values) and holds
/// (a reply that must wait for a commit) are kept as segments between plain
/// runs; with neither queued, `segments` is empty and a flush is a single
/// `write` of the buffer.
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
    /// Nothing after this leaves before `batch` is committed; `at` is where
    /// `buf` stood, so a failed batch's replies can be cut off, and the held
    /// request's id names the error that replaces them.
    Hold {
        batch: BatchId,
        at: usize,
        request_id: RequestId,
    },
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

    /// Everything queued after this waits until `batch` is committed.
    pub fn push_hold(&mut self, batch: BatchId, request_id: RequestId) {
        self.close_plain_run();
        let at = self.buf.len();
        self.segments.push_back(Segment::Hold {
            batch,
            at,
            request_id,
        });
    }

    pub fn has_unreleased_hold(&self, released: impl Fn(BatchId) -> bool) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Hold { batch, .. } if !released(*batch)))
    }

    fn is_empty(&self) -> bool {
        self.segments.is_empty() && self.sent == self.buf.len()
    }

    /// Plain bytes not yet written; shared bodies cost nothing per connection.
    fn backlog_bytes(&self) -> usize {
        self.buf.len() - self.sent
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

    /// An idle connection gives back a buffer a large reply grew.
    fn release_memory(&mut self) {
        if self.buf.capacity() > IDLE_CAPACITY_MAX {
            self.buf = Vec::new();
        }
    }

    /// Drops the first unreleased hold and everything after it; the held
    /// request's id if one was found.
    fn withdraw_unreleased(&mut self, released: impl Fn(BatchId) -> bool) -> Option<RequestId> {
        let i = self
            .segments
            .iter()
            .position(|s| matches!(s, Segment::Hold { batch, .. } if !released(*batch)))?;
        let Some(&Segment::Hold { at, request_id, .. }) = self.segments.get(i) else {
            return None;
        };
        self.buf.truncate(at);
        self.tail_start = at;
        self.segments.truncate(i);
        Some(request_id)
    }

    /// Fills `slices` with what may be written now; returns how many.
    fn writable<'a>(
        &'a mut self,
        slices: &mut [IoSlice<'a>; IOVECS_MAX],
        released: impl Fn(BatchId) -> bool,
    ) -> usize {
        while let Some(Segment::Hold { batch, .. }) = self.segments.front() {
            if !released(*batch) {
                return 0;
            }
            self.segments.pop_front();
        }
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
                Segment::Hold { batch, .. } => {
                    if !released(*batch) {
                        return count;
                    }
                }
            }
        }
        let tail_from = self.plain_tail_start();
        if count < IOVECS_MAX && tail_from < self.buf.len() {
            slices[count] = IoSlice::new(&self.buf[tail_from..]);
            count += 1;
        }
        count
    }

    /// Marks `n` bytes as written.
    fn advance(&mut self, mut n: usize) {
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
                Some(Segment::Hold { .. }) => {
                    // Only released holds precede written bytes.
                    self.segments.pop_front();
                }
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
                Segment::Hold { at, .. } => *at = at.saturating_sub(sent),
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

    /// Writes what `Output` offers, `chunk` bytes at most per "write", as a
    /// socket with a small buffer would take it.
    fn drain(out: &mut Output, chunk: usize, released: impl Fn(BatchId) -> bool + Copy) -> Vec<u8> {
        let mut sent = Vec::new();
        loop {
            let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
            let count = out.writable(&mut slices, released);
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

    fn batch(n: u64) -> BatchId {
        BatchId::for_tests(n)
    }

    fn id(n: u8) -> RequestId {
        RequestId::from_caller(&[b'0' + n]).unwrap()
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
                drain(&mut out, chunk, |_| true),
                b"head1|SHARED|tail1|secondthird[1, ]|static|end"
            );
            assert!(out.is_empty());
            assert_eq!(out.buf.len(), 0, "a flushed buffer is reset");
        }
    }

    #[test]
    fn nothing_after_a_hold_leaves_before_its_batch_commits() {
        let (b1, b2) = (batch(1), batch(2));
        let mut out = Output::default();
        out.extend(b"before|");
        out.push_hold(b1, id(1));
        out.extend(b"step1|");
        out.push_hold(b2, id(2));
        out.extend(b"step2");
        assert_eq!(drain(&mut out, 5, |_| false), b"before|");
        assert!(out.has_unreleased_hold(|_| false));
        assert_eq!(drain(&mut out, 5, |b| b == b1), b"step1|");
        assert_eq!(drain(&mut out, 5, |_| true), b"step2");
        assert!(out.is_empty());
    }

    #[test]
    fn a_failed_batch_withdraws_its_replies_and_everything_after() {
        let (b1, b2) = (batch(1), batch(2));
        let mut out = Output::default();
        out.extend(b"ok|");
        out.push_hold(b1, id(1));
        out.extend(b"one|");
        out.push_hold(b2, id(2));
        out.extend(b"two|");
        assert_eq!(out.withdraw_unreleased(|b| b == b1), Some(id(2)));
        out.extend(b"error");
        assert_eq!(drain(&mut out, 100, |b| b == b1), b"ok|one|error");
        assert_eq!(out.withdraw_unreleased(|_| true), None);
    }

    #[test]
    fn a_slow_readers_written_prefix_is_reclaimed() {
        let mut out = Output::default();
        out.extend(&vec![b'a'; 40 * 1024]);
        let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
        out.writable(&mut slices, |_| true);
        out.advance(30 * 1024);
        out.extend(b"b");
        assert_eq!(out.buf.len(), 10 * 1024 + 1, "the sent prefix was dropped");
        let rest = drain(&mut out, 4096, |_| true);
        assert_eq!(rest.len(), 10 * 1024 + 1);
        assert_eq!(rest.last(), Some(&b'b'));
    }
}
