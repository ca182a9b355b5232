//! One client connection's socket: the only code that reads or writes a
//! client socket. It shuttles bytes between the socket and the sans-IO
//! [`Session`] (parsing, answering, the replies in order), and counts what it
//! keeps against the budget all connections share.
//!
//! Sockets are registered once, edge triggered, for both directions;
//! readiness is remembered here (`readable`/`writable`) and cleared on
//! `WouldBlock`, so no per-request `epoll_ctl` is needed and a connection
//! paused by backpressure resumes without waiting for a new edge. (rustls's
//! mio example derives interest from state and re-registers after every
//! event; for a request/response server that is a system call per request.)

use std::io::{self, IoSlice, Read, Write};
use std::net::IpAddr;
use std::time::Instant;

use mio::net::TcpStream;

use super::session::{Expiry, Listener, Peer, Reply, Respond, Session, Timeouts};
use crate::http::parse::Limits;
use crate::reply::output::{IOVECS_MAX, Output};
use crate::reply::park::{ConnId, Ticket};

/// What a connection that keeps nothing may read while the shared budget is
/// spent: room for a normal request, not for a flood.
const LEAN_READ_BYTES: usize = 2048;

/// The outcome of driving a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drive {
    Open,
    Closed,
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

pub struct Conn {
    stream: TcpStream,
    peer: Peer,
    session: Session,
    readable: bool,
    writable: bool,
    starved: bool,
    /// Bytes last counted against `Shared::kept_bytes` for this connection.
    accounted_bytes: usize,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        id: ConnId,
        addr: IpAddr,
        listener: Listener,
        now: Instant,
    ) -> Conn {
        Conn {
            stream,
            peer: Peer {
                conn: id,
                addr,
                listener,
            },
            session: Session::new(now),
            readable: true,
            writable: true,
            starved: false,
            accounted_bytes: 0,
        }
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn id(&self) -> ConnId {
        self.peer.conn
    }

    /// The listener it was accepted from, whose cap it counts against.
    pub fn listener(&self) -> Listener {
        self.peer.listener
    }

    pub fn set_ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// The tickets of the replies still to come (given up at a close).
    pub fn open_slots(&self) -> impl Iterator<Item = Ticket> + '_ {
        self.session.open_slots()
    }

    /// Writes a later reply into its slot; see [`Session::deliver`]. The
    /// caller drives the connection next.
    pub fn deliver(
        &mut self,
        ticket: Ticket,
        withdraw: bool,
        limits: &Limits,
        render: impl FnOnce(&mut Output) -> Reply,
    ) -> Option<Vec<Ticket>> {
        self.session.deliver(ticket, withdraw, limits, render)
    }

    /// Stops taking requests (shutdown).
    pub fn finish(&mut self) {
        self.session.finish();
    }

    pub fn expired(&self, now: Instant, timeouts: &Timeouts) -> Option<Expiry> {
        self.session.expired(now, timeouts)
    }

    pub fn time_out(&mut self, app: &mut impl Respond) {
        self.session.time_out(app);
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

    /// Reads, answers and writes as far as readiness and backpressure allow.
    pub fn drive(
        &mut self,
        now: Instant,
        shared: &mut Shared,
        app: &mut impl Respond,
        limits: &Limits,
    ) -> Drive {
        let (drive, moved) = self.drive_until_stuck(shared, app, limits);
        // Capacity, not length: what the allocator really holds for us.
        let kept = self.session.kept_bytes();
        shared.kept_bytes = shared.kept_bytes - self.accounted_bytes + kept;
        self.accounted_bytes = kept;
        self.session.stamp(now, moved);
        drive
    }

    fn drive_until_stuck(
        &mut self,
        shared: &mut Shared,
        app: &mut impl Respond,
        limits: &Limits,
    ) -> (Drive, bool) {
        let mut moved = false;
        loop {
            let mut progress = self.session.answer_kept(self.peer, app, limits);
            // Over budget, a connection that keeps nothing may still read a
            // little (a new client's request gets in); one that keeps bytes waits.
            let read_max = if shared.kept_bytes < shared.kept_bytes_max {
                shared.scratch.len()
            } else if self.session.is_lean() {
                LEAN_READ_BYTES
            } else {
                0
            };
            let wants = self.session.wants_input();
            self.starved = self.readable && wants && read_max == 0;
            if wants && self.readable && read_max > 0 {
                match self.read_and_answer(&mut shared.scratch[..read_max], app, limits) {
                    Ok(read) => progress |= read,
                    Err(e) => return (fail(&e), moved),
                }
            }
            match self.flush() {
                Ok(wrote) => progress |= wrote,
                Err(e) => return (fail(&e), moved),
            }
            moved |= progress;
            if self.session.is_finished(progress) {
                return (Drive::Closed, moved);
            }
            if self.session.output().is_empty() {
                self.session.release_memory();
            }
            if !progress {
                return (Drive::Open, moved);
            }
        }
    }

    /// One read into the scratch buffer, answered from there.
    fn read_and_answer(
        &mut self,
        scratch: &mut [u8],
        app: &mut impl Respond,
        limits: &Limits,
    ) -> io::Result<bool> {
        let n = loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.session.on_eof();
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
        self.session.on_bytes(&scratch[..n], self.peer, app, limits);
        Ok(true)
    }

    /// Writes what may be written: everything up to the first reply still
    /// to come.
    fn flush(&mut self) -> io::Result<bool> {
        let mut wrote = false;
        while self.writable {
            let output = self.session.output_mut();
            let mut slices = [IoSlice::new(&[]); IOVECS_MAX];
            let count = output.writable(&mut slices);
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
                    output.advance(n);
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
