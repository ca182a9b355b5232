//! One outbound connection: the only code that reads or writes an upstream
//! socket. It connects, writes one request at a time, feeds what arrives to
//! the sans-IO response reader, and sits idle in the pool between calls.
//! Readiness is remembered (`readable`/`writable`) and cleared on
//! `WouldBlock`, as for client connections: sockets are registered once,
//! edge triggered.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use mio::net::TcpStream;

use super::call::{CallError, CallId, Outbound};
use crate::http::upstream::{Progress, Response, ResponseLimits, ResponseReader};

/// Bytes taken from the socket per read.
const READ_BYTES: usize = 16 * 1024;

/// What driving a connection produced.
#[derive(Debug)]
pub(super) enum Event {
    Nothing,
    Answered(Response),
    /// The call failed here; `retryable` when the connection was reused and
    /// the upstream had not begun to answer (it closed the idle connection).
    Failed {
        error: CallError,
        retryable: bool,
    },
    /// The upstream closed an idle connection (or sent bytes nobody asked for).
    IdleClosed,
}

#[derive(Debug)]
enum Phase {
    Connecting,
    Busy,
    Idle { since: Instant },
}

#[derive(Debug)]
pub(super) struct UpConn {
    stream: TcpStream,
    addr: SocketAddr,
    phase: Phase,
    call: Option<CallId>,
    request: Rc<[u8]>,
    written: usize,
    reader: ResponseReader,
    /// Received bytes the reader has not used yet (a partial head).
    input: Vec<u8>,
    /// The current request is not the connection's first.
    reused: bool,
    readable: bool,
    writable: bool,
}

impl UpConn {
    pub(super) fn connecting(stream: TcpStream, addr: SocketAddr) -> UpConn {
        UpConn {
            stream,
            addr,
            phase: Phase::Connecting,
            call: None,
            request: Rc::from(&b""[..]),
            written: 0,
            reader: ResponseReader::new(ResponseLimits::default(), false),
            input: Vec::new(),
            reused: false,
            readable: false,
            writable: false,
        }
    }

    pub(super) fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn call(&self) -> Option<CallId> {
        self.call
    }

    pub(super) fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Idle { .. })
    }

    /// When it became idle, while it is.
    pub(super) fn idle_since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Idle { since } => Some(since),
            _ => None,
        }
    }

    pub(super) fn set_ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// Takes a request; true if the connection is a reused one, ready to
    /// write now.
    pub(super) fn start(
        &mut self,
        call: CallId,
        request: &Outbound,
        limits: ResponseLimits,
    ) -> bool {
        self.call = Some(call);
        self.request = request.bytes.clone();
        self.written = 0;
        self.reader = ResponseReader::new(limits, request.head_only);
        self.input.clear();
        self.reused = self.is_idle();
        if self.reused {
            self.phase = Phase::Busy;
        }
        self.reused
    }

    /// Back to the pool after a whole answer; false if the connection
    /// cannot carry another request (unsent request bytes, extra bytes).
    pub(super) fn park_idle(&mut self, now: Instant) -> bool {
        if self.written < self.request.len() || !self.input.is_empty() {
            return false;
        }
        self.call = None;
        self.phase = Phase::Idle { since: now };
        true
    }

    pub(super) fn drive(&mut self) -> Event {
        match self.phase {
            Phase::Idle { .. } => return self.watch_idle(),
            Phase::Connecting => match self.finish_connect() {
                Ok(true) => self.phase = Phase::Busy,
                Ok(false) => return Event::Nothing,
                Err(e) => {
                    return Event::Failed {
                        error: CallError::Connect(e.kind()),
                        retryable: false,
                    };
                }
            },
            Phase::Busy => {}
        }
        if let Err(e) = self.write_request() {
            log::debug!("upstream {}: write: {e}", self.addr);
            return self.failed(CallError::Closed);
        }
        self.read_answer()
    }

    /// Whether a non-blocking connect has completed; an error if it failed.
    fn finish_connect(&mut self) -> io::Result<bool> {
        if !self.writable && !self.readable {
            return Ok(false);
        }
        if let Some(e) = self.stream.take_error()? {
            return Err(e);
        }
        match self.stream.peer_addr() {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                // A spurious wake-up: still connecting.
                self.writable = false;
                self.readable = false;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn write_request(&mut self) -> io::Result<()> {
        while self.writable && self.written < self.request.len() {
            match self
                .stream
                .write(self.request.get(self.written..).unwrap_or_default())
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read_answer(&mut self) -> Event {
        let mut buf = [0u8; READ_BYTES];
        while self.readable {
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return match self.reader.end_of_stream() {
                        Ok(response) => Event::Answered(response),
                        Err(_) => self.failed(CallError::Closed),
                    };
                }
                // No short-read shortcut: a close that arrived with the last
                // bytes raises no new edge, and it may end the body.
                Ok(n) => {
                    self.input
                        .extend_from_slice(buf.get(..n).unwrap_or_default());
                    match self.reader.feed(&self.input) {
                        Ok(Progress::NeedMore { consumed }) => {
                            self.input.drain(..consumed);
                        }
                        Ok(Progress::Done { consumed, response }) => {
                            self.input.drain(..consumed);
                            return Event::Answered(response);
                        }
                        Err(e) => {
                            return Event::Failed {
                                error: CallError::Response(e),
                                retryable: false,
                            };
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::debug!("upstream {}: read: {e}", self.addr);
                    return self.failed(CallError::Closed);
                }
            }
        }
        Event::Nothing
    }

    fn failed(&self, error: CallError) -> Event {
        Event::Failed {
            error,
            retryable: self.reused && self.input.is_empty() && !self.reader.has_begun(),
        }
    }

    /// An idle connection that becomes readable was closed by the upstream
    /// (or it sent bytes nobody asked for): either way it leaves the pool.
    fn watch_idle(&mut self) -> Event {
        if !self.readable {
            return Event::Nothing;
        }
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.readable = false;
                Event::Nothing
            }
            _ => Event::IdleClosed,
        }
    }
}
