//! One client connection's request stream, sans-IO: bytes in, the parser,
//! the route's [`Respond`], and the replies queued in request order
//! (`reply::Output`). No socket: the connection shell (`net::conn`) reads
//! into it and writes what its output offers, and the unit tests here drive
//! it with plain byte strings.
//!
//! It owns the HTTP/1.1 framing of a stream of requests: pipelining (every
//! complete request in a read is answered before the next read), bodies
//! read for routes that take one and skipped for those that do not,
//! `100 Continue`, backpressure (no new request is taken while the unsent
//! replies or the kept input pass their bounds), a request that must wait
//! for a later reply ([`Reply::Wait`]: the requests behind it wait too), and
//! the timeouts of a slow or idle client. It knows nothing of the routes'
//! errors: its own are [`ConnError`], which the routes answer.

use std::borrow::Cow;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::http::chunked::{ChunkError, ChunkProgress, ChunkedDecoder};
use crate::http::parse::{self, BodyFraming, Limits, ParseError, Parsed, Request};
use crate::reply::output::{IDLE_CAPACITY_MAX, Output};
use crate::reply::park::{ConnId, Ticket};

/// Unanswered request bytes a connection may keep before it stops reading.
pub const INPUT_KEPT_BYTES_MAX: usize = 64 * 1024;
/// Stop taking new requests from a connection whose unsent output is this
/// large: a client that pipelines without reading must not grow our memory.
const OUTPUT_PAUSE_BYTES: usize = 64 * 1024;
/// Replies queued on a connection (segments of its output) at most; past
/// it no new request is taken until some have left.
const SEGMENTS_MAX: usize = 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Who sent a request: the connection, the peer's address
/// (`crate::access` decides who the client is), and the listener it came in
/// through (the route table decides what each one serves).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub conn: ConnId,
    pub addr: IpAddr,
    pub listener: Listener,
}

/// The listening socket a connection was accepted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    /// `--listen`: the API, and everything when there is no admin listener.
    Public,
    /// `--admin-listen`: the operator's endpoints and the probes only.
    Admin,
}

/// What the routes do with requests; implemented by `routes::App`.
pub trait Respond {
    /// The most body bytes the route of `request` reads; `None` if it takes
    /// no body (then the body is skipped, unread). A larger body gets 413.
    fn body_limit(&self, request: &Request<'_>) -> Option<usize>;
    /// Appends the reply to `request` to `out`, or the slot of a reply to
    /// come. `body` is the whole request body for a route with a
    /// [`Respond::body_limit`], else empty.
    fn respond(
        &mut self,
        from: Peer,
        request: &Request<'_>,
        body: &[u8],
        out: &mut Output,
    ) -> Reply;
    /// Appends the answer to what the connection itself refuses: a request
    /// that could not be framed, or that took too long to arrive. The
    /// connection closes after it.
    fn reject(&mut self, error: ConnError, out: &mut Output);
}

/// What became of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answered, or its slot kept; the connection takes the next request.
    KeepAlive,
    /// Answered, or its slot kept; the connection closes after it.
    Close,
    /// Its reply comes later in the slot of this ticket, and the requests
    /// behind it wait for it (work off the loop, one per connection).
    Wait(Ticket),
}

/// Why the connection itself refuses a request; the routes give each its
/// status and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// The head could not be parsed (or its body is over the route's limit).
    Parse(ParseError),
    /// A chunked body could not be decoded.
    Chunk(ChunkError),
    /// The request began and did not finish within the request timeout.
    RequestTimeout,
}

impl From<ParseError> for ConnError {
    fn from(e: ParseError) -> Self {
        ConnError::Parse(e)
    }
}

impl From<ChunkError> for ConnError {
    fn from(e: ChunkError) -> Self {
        ConnError::Chunk(e)
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
    /// Waiting for the reply of `ticket`; the request's body is skipped
    /// afterwards.
    Waiting {
        ticket: Ticket,
        body: BodyFraming,
        close: bool,
    },
    /// The last reply is queued; close once it is written.
    Closing,
}

enum BodySkip {
    Length(u64),
    Chunked(ChunkedDecoder),
}

pub struct Session {
    /// Request bytes kept between reads: a partial request, or requests not
    /// yet answered because of backpressure. Usually empty: reads land in the
    /// loop's shared scratch buffer and are answered from there.
    input: Vec<u8>,
    output: Output,
    phase: Phase,
    peer_closed: bool,
    last_activity: Instant,
    /// Since when a request has been only partly received (slowloris guard).
    incomplete_since: Option<Instant>,
}

impl Session {
    pub fn new(now: Instant) -> Session {
        Session {
            input: Vec::new(),
            output: Output::default(),
            phase: Phase::Head,
            peer_closed: false,
            last_activity: now,
            incomplete_since: None,
        }
    }

    /// Whether new request bytes are wanted (not closing, not paused by
    /// backpressure).
    pub fn wants_input(&self) -> bool {
        !self.peer_closed
            && !matches!(self.phase, Phase::Closing)
            && self.output.backlog_bytes() < OUTPUT_PAUSE_BYTES
            && self.input.len() < INPUT_KEPT_BYTES_MAX
    }

    /// Answers requests kept from earlier reads (after backpressure eased,
    /// or a waited-for reply came); whether anything happened.
    pub fn answer_kept(&mut self, from: Peer, app: &mut impl Respond, limits: &Limits) -> bool {
        if self.input.is_empty() || !self.answering() {
            return false;
        }
        let input = std::mem::take(&mut self.input);
        let (used, progress) = self.answer(from, &input, app, limits);
        self.input = input;
        self.input.drain(..used);
        if self.input.is_empty() && self.input.capacity() > IDLE_CAPACITY_MAX {
            self.input = Vec::new();
        }
        progress
    }

    /// Bytes just read: answered from where they lie, and only what is left
    /// unanswered is kept.
    pub fn on_bytes(&mut self, fresh: &[u8], from: Peer, app: &mut impl Respond, limits: &Limits) {
        if self.input.is_empty() {
            let (used, _) = self.answer(from, fresh, app, limits);
            self.input.extend_from_slice(&fresh[used..]);
        } else {
            self.input.extend_from_slice(fresh);
            self.answer_kept(from, app, limits);
        }
    }

    /// The peer closed its side: no more requests come.
    pub fn on_eof(&mut self) {
        self.peer_closed = true;
        if !self.input.is_empty() && matches!(self.phase, Phase::Head | Phase::AwaitBody) {
            // The client stopped mid-request; nothing to answer.
            self.input.clear();
        }
    }

    /// The replies queued, for the shell to write.
    pub fn output(&self) -> &Output {
        &self.output
    }

    pub fn output_mut(&mut self) -> &mut Output {
        &mut self.output
    }

    /// Whether the connection is done: its output is written and it is
    /// closing, or the peer left and nothing more happened. A peer that
    /// left while a request waits for work off the loop gives it up (its
    /// ticket is abandoned as the connection closes); replies waiting for a
    /// commit are still written, as a half-closed client may read them.
    pub fn is_finished(&self, progress: bool) -> bool {
        let left = self.peer_closed && !progress;
        let closing = matches!(self.phase, Phase::Closing);
        let waiting = matches!(self.phase, Phase::Waiting { .. });
        (self.output.is_empty() && (closing || left))
            || (left && waiting && !self.output.has_writable())
    }

    /// What the allocator holds for this connection (input and output).
    pub fn kept_bytes(&self) -> usize {
        self.input.capacity() + self.output.capacity()
    }

    /// Whether it keeps next to nothing: such a connection may still read a
    /// little while the shared budget is spent (a new client gets in).
    pub fn is_lean(&self) -> bool {
        self.input.capacity() == 0 && self.output.capacity() <= IDLE_CAPACITY_MAX
    }

    /// The tickets of the replies still to come: its client gives them up
    /// when the connection closes.
    pub fn open_slots(&self) -> impl Iterator<Item = Ticket> + '_ {
        self.output.open_slots()
    }

    /// Writes the reply of `ticket` into its slot (`withdraw`: drops the
    /// slot and everything after it first, and closes after the reply).
    /// Returns the tickets dropped with a withdrawn slot, or None when the
    /// slot is gone.
    pub fn deliver(
        &mut self,
        ticket: Ticket,
        withdraw: bool,
        limits: &Limits,
        render: impl FnOnce(&mut Output) -> Reply,
    ) -> Option<Vec<Ticket>> {
        if withdraw {
            let dropped = self.output.withdraw(ticket)?;
            render(&mut self.output);
            self.phase = Phase::Closing;
            return Some(dropped);
        }
        let reply = self.output.fill(ticket, render)?;
        if let Phase::Waiting {
            ticket: waited,
            body,
            close,
        } = self.phase
            && waited == ticket
        {
            self.phase = next_phase(reply == Reply::Close || close, body, limits);
        }
        Some(Vec::new())
    }

    /// Stops taking requests (shutdown): the connection closes once its
    /// queued replies, a waited-for one included, are written.
    pub fn finish(&mut self) {
        match &mut self.phase {
            Phase::Waiting { close, .. } => *close = true,
            _ => self.phase = Phase::Closing,
        }
    }

    /// Records activity and whether a request is half-received, for the timeouts.
    pub fn stamp(&mut self, now: Instant, moved: bool) {
        if moved {
            self.last_activity = now;
        }
        let incomplete = match self.phase {
            Phase::Body(_) | Phase::AwaitBody => true,
            Phase::Head => {
                !self.input.is_empty() && self.output.backlog_bytes() < OUTPUT_PAUSE_BYTES
            }
            Phase::Waiting { .. } | Phase::Closing => false,
        };
        self.incomplete_since = match (incomplete, self.incomplete_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
    }

    /// Which timeout, if any, this connection has run into at `now`. A
    /// connection waiting on the server (a commit, a computation) never does.
    pub fn expired(&self, now: Instant, timeouts: &Timeouts) -> Option<Expiry> {
        if matches!(self.phase, Phase::Waiting { .. }) || self.output.has_open_slot() {
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
        app.reject(ConnError::RequestTimeout, &mut self.output);
        self.phase = Phase::Closing;
    }

    /// An idle connection gives back the buffers a large reply grew.
    pub fn release_memory(&mut self) {
        self.output.release_memory();
    }

    fn answering(&self) -> bool {
        !matches!(self.phase, Phase::Closing | Phase::Waiting { .. })
    }

    /// Answers every complete request in `buffered`, in order, until it runs
    /// out, the connection must close or wait, or backpressure says stop.
    /// Returns the bytes used and whether anything happened.
    fn answer(
        &mut self,
        from: Peer,
        buffered: &[u8],
        app: &mut impl Respond,
        limits: &Limits,
    ) -> (usize, bool) {
        let mut used = 0;
        while self.output.backlog_bytes() < OUTPUT_PAUSE_BYTES
            && self.output.segment_count() < SEGMENTS_MAX
        {
            let rest = &buffered[used..];
            match &mut self.phase {
                Phase::Closing | Phase::Waiting { .. } => break,
                Phase::Body(skip) => match skip_body(skip, rest) {
                    Ok((n, done)) => {
                        used += n;
                        if !done {
                            break;
                        }
                        self.phase = Phase::Head;
                    }
                    Err(e) => return (buffered.len(), self.reject(app, e)),
                },
                Phase::Head | Phase::AwaitBody => match parse::parse(rest, limits) {
                    Ok(Parsed::Partial) => break,
                    Ok(Parsed::Complete { request, head_len }) => {
                        let continue_sent = matches!(self.phase, Phase::AwaitBody);
                        let mut framing = request.body;
                        let mut body = Cow::Borrowed(&[][..]);
                        let mut body_len = 0;
                        if let Some(limit) = app.body_limit(&request) {
                            match collect_body(framing, &rest[head_len..], limit) {
                                Ok(Some((bytes, len))) => (body, body_len) = (bytes, len),
                                Ok(None) => {
                                    if request.expect_continue && !continue_sent {
                                        self.output.extend(CONTINUE);
                                    }
                                    self.phase = Phase::AwaitBody;
                                    break;
                                }
                                Err(e) => return (buffered.len(), self.reject(app, e)),
                            }
                            framing = BodyFraming::None;
                        } else if request.expect_continue && framing != BodyFraming::None {
                            self.output.extend(CONTINUE);
                        }
                        used += head_len + body_len;
                        self.phase = match app.respond(from, &request, &body, &mut self.output) {
                            Reply::Wait(ticket) => Phase::Waiting {
                                ticket,
                                body: framing,
                                close: false,
                            },
                            reply => next_phase(reply == Reply::Close, framing, limits),
                        };
                    }
                    Err(e) => return (buffered.len(), self.reject(app, e.into())),
                },
            }
        }
        (used, used > 0)
    }

    fn reject(&mut self, app: &mut impl Respond, error: ConnError) -> bool {
        app.reject(error, &mut self.output);
        self.phase = Phase::Closing;
        true
    }
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

/// A request's whole body, and the bytes of the buffer it took.
type Collected<'a> = (Cow<'a, [u8]>, usize);

/// The whole body of a request whose route reads it, and the bytes of
/// `buffered` it took; `None` while it is incomplete.
fn collect_body(
    framing: BodyFraming,
    buffered: &[u8],
    limit: usize,
) -> Result<Option<Collected<'_>>, ConnError> {
    match framing {
        BodyFraming::None => Ok(Some((Cow::Borrowed(&[][..]), 0))),
        BodyFraming::Length(n) => {
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= limit)
                .ok_or(ConnError::Parse(ParseError::BodyTooLarge))?;
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
fn skip_body(skip: &mut BodySkip, buffered: &[u8]) -> Result<(usize, bool), ConnError> {
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

#[cfg(test)]
mod tests;
