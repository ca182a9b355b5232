//! fibd's outbound HTTP/1.1 client, inside the event loop: non-blocking
//! connect, write and read, a bounded pool of keep-alive connections, and a
//! deadline on every call. No thread per call, no runtime. It knows no
//! caller: each call carries an opaque tag of the caller's (in fibd,
//! /api/smart's attempts, the trace exporter's batches and the etcd index's
//! calls); where a call goes is a [`Target`], resolved at start-up.
//!
//! # Interface
//! A caller sends an [`Outbound`] request (encoded once, shared by every
//! attempt) with a deadline and a tag of its own, and later takes a
//! [`Completion`]: the tag, and a [`Response`] or a typed [`CallError`].
//! Any status is a response; what a 500 means is the caller's business. A
//! call can be cancelled at any time: its socket is closed at once.
//!
//! # How the loop drives it
//! The client owns its sockets (`mio::net::TcpStream`, like `conn` owns the
//! client sockets) but never sees the `Poll`: `server.rs` stays the only code
//! that knows it. The server reserves a range of tokens for the client
//! ([`ClientConfig::token_base`] on), hands readiness on those tokens to
//! [`Client::on_ready`], and once a loop pass calls [`Client::drive`] with a
//! [`Registrar`], the one thing a new socket needs from the poller. Closing
//! a socket takes it out of the epoll set, so nothing is ever deregistered.
//! [`Client::send`] itself does no I/O (it is called from request handling,
//! which has no poller): it reserves a pooled connection or a slot for a new
//! one, and `drive` connects and writes in the same loop pass. Time is an
//! argument; [`Client::next_deadline`] and [`Client::has_work`] tell the loop
//! how long it may sleep.
//!
//! # Pool
//! At most `conns_max` connections are open or being opened, idle ones
//! included (an idle one to another address is closed to make room); a send
//! past that fails at once ([`SendError::Saturated`]) rather than queueing. Idle connections are reused most recent first and closed
//! after `idle_timeout`. A reused connection that fails before any byte of
//! the answer arrives (the upstream closed it while it sat idle) is retried
//! once on a fresh connection, and that is not the call's failure.

mod call;
mod conn;
mod target;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use crate::base::deadlines::Deadlines;
use crate::base::slab::Slab;

pub use crate::http::upstream::{Response, ResponseError, ResponseLimits};
pub use call::{CallError, CallId, Outbound};
use conn::{Event, UpConn};
pub use target::{HttpUrl, Target};

/// What the client needs from the poller: registering a new socket, for
/// readiness in both directions, under the token numbered `token`.
pub trait Registrar {
    fn register(&mut self, stream: &mut TcpStream, token: usize) -> io::Result<()>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Connections open or opening at most, idle ones included.
    pub conns_max: usize,
    /// A pooled connection unused this long is closed.
    pub idle_timeout: Duration,
    pub limits: ResponseLimits,
    /// The first token of the range the server reserved for these sockets;
    /// `conns_max` tokens from here on are the client's.
    pub token_base: usize,
}

#[cfg(test)]
impl ClientConfig {
    /// A client that may open no connection: every send is refused.
    pub fn unused() -> ClientConfig {
        ClientConfig {
            conns_max: 0,
            idle_timeout: Duration::ZERO,
            limits: ResponseLimits::default(),
            token_base: 0,
        }
    }
}

/// Why a call was not sent at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// Every connection the pool may open is in use.
    Saturated,
}

/// A finished call.
#[derive(Debug)]
pub struct Completion<T> {
    pub call: CallId,
    pub tag: T,
    pub result: Result<Response, CallError>,
    /// From the send to the outcome.
    pub elapsed: Duration,
}

#[derive(Debug)]
struct Call<T> {
    tag: T,
    request: Outbound,
    started: Instant,
    /// The connection serving it; `None` while it waits for a new one.
    slot: Option<usize>,
    /// Already retried after a reused connection failed: no second retry.
    retried: bool,
}

/// Pool counters for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub open: usize,
    pub idle: usize,
    /// Calls served on a connection kept from an earlier call.
    pub reused: u64,
    /// Calls retried on a fresh connection after a pooled one had been closed.
    pub retried: u64,
}

pub struct Client<T> {
    config: ClientConfig,
    /// Connections open or opening, by slot (the token is `token_base` + slot).
    slots: Slab<UpConn>,
    /// Idle connections, least recently used first.
    idle: VecDeque<usize>,
    calls: HashMap<CallId, Call<T>>,
    next_call: u64,
    /// Calls waiting for a new connection, opened by the next `drive`.
    pending: VecDeque<CallId>,
    /// Reused connections with a request to write in the next `drive`.
    kick: Vec<usize>,
    deadlines: Deadlines<CallId>,
    completed: VecDeque<Completion<T>>,
    reused: u64,
    retried: u64,
}

impl<T: Copy> Client<T> {
    pub fn new(config: ClientConfig) -> Client<T> {
        Client {
            config,
            slots: Slab::default(),
            idle: VecDeque::new(),
            calls: HashMap::new(),
            next_call: 0,
            pending: VecDeque::new(),
            kick: Vec::new(),
            deadlines: Deadlines::default(),
            completed: VecDeque::new(),
            reused: 0,
            retried: 0,
        }
    }

    /// Whether the token numbered `token` names one of the client's sockets.
    pub fn owns(&self, token: usize) -> bool {
        token >= self.config.token_base && token - self.config.token_base < self.slots.capacity()
    }

    /// Starts a call: reserves a pooled connection to `request`'s address or
    /// room for a new one; the next [`Client::drive`] sends it.
    pub fn send(
        &mut self,
        tag: T,
        request: &Outbound,
        deadline: Instant,
        now: Instant,
    ) -> Result<CallId, SendError> {
        let idle = self.take_idle(request.addr);
        if idle.is_none() && self.slots.len() + self.pending.len() >= self.config.conns_max {
            // Room held by an idle connection to another address is given up.
            match self.idle.front() {
                Some(&lru) => self.close(lru),
                None => return Err(SendError::Saturated),
            }
        }
        self.next_call += 1;
        let id = CallId(self.next_call);
        self.calls.insert(
            id,
            Call {
                tag,
                request: request.clone(),
                started: now,
                slot: None,
                retried: false,
            },
        );
        let calls = &self.calls;
        self.deadlines
            .push(deadline, id, calls.len(), |id| calls.contains_key(id));
        match idle {
            Some(slot) => self.assign(id, slot),
            None => self.pending.push_back(id),
        }
        Ok(id)
    }

    /// Drops a call; its connection, if it has one, is closed at once (a
    /// half-read answer cannot be left on a connection to be reused).
    pub fn cancel(&mut self, call: CallId) {
        let Some(c) = self.calls.remove(&call) else {
            return;
        };
        match c.slot {
            Some(slot) => self.close(slot),
            None => self.pending.retain(|&p| p != call),
        }
    }

    /// The next finished call, if any.
    pub fn completed(&mut self) -> Option<Completion<T>> {
        self.completed.pop_front()
    }

    /// Work the loop must not sleep on: sends to start, completions to take.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || !self.kick.is_empty() || !self.completed.is_empty()
    }

    /// The earliest call deadline or idle expiry, for the loop's sleep.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        let calls = &self.calls;
        let call = self.deadlines.next(|id| calls.contains_key(id));
        let idle = self.idle.front().and_then(|&slot| {
            let since = self.slots.get(slot)?.idle_since()?;
            Some(since + self.config.idle_timeout)
        });
        call.into_iter().chain(idle).min()
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            open: self.slots.len(),
            idle: self.idle.len(),
            reused: self.reused,
            retried: self.retried,
        }
    }

    /// Readiness on one of the client's tokens.
    pub fn on_ready(&mut self, token: usize, readable: bool, writable: bool, now: Instant) {
        let slot = token.wrapping_sub(self.config.token_base);
        if let Some(conn) = self.slots.get_mut(slot) {
            conn.set_ready(readable, writable);
            self.drive_conn(slot, now);
        }
    }

    /// Opens connections for waiting calls, writes requests on reused ones,
    /// and expires deadlines and idle connections.
    pub fn drive(&mut self, now: Instant, registrar: &mut impl Registrar) {
        while let Some(id) = self.pending.pop_front() {
            self.connect(id, now, registrar);
        }
        for slot in std::mem::take(&mut self.kick) {
            self.drive_conn(slot, now);
        }
        self.expire(now);
    }

    fn connect(&mut self, id: CallId, now: Instant, registrar: &mut impl Registrar) {
        let Some(call) = self.calls.get(&id) else {
            return;
        };
        let addr = call.request.addr;
        let stream = match TcpStream::connect(addr) {
            Ok(stream) => stream,
            Err(e) => return self.finish(id, Err(CallError::Connect(e.kind())), now),
        };
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("upstream: set TCP_NODELAY: {e}");
        }
        let slot = self.slots.insert(UpConn::connecting(stream, addr));
        let token = self.config.token_base + slot;
        let registered = match self.slots.get_mut(slot) {
            Some(conn) => registrar.register(conn.stream_mut(), token),
            None => return,
        };
        if let Err(e) = registered {
            self.slots.remove(slot);
            return self.finish(id, Err(CallError::Connect(e.kind())), now);
        }
        self.assign(id, slot);
    }

    /// Gives `slot` the call's request; a reused connection is written at
    /// the next `drive`, a new one once it is connected.
    fn assign(&mut self, id: CallId, slot: usize) {
        let (Some(call), Some(conn)) = (self.calls.get_mut(&id), self.slots.get_mut(slot)) else {
            return;
        };
        call.slot = Some(slot);
        let reused = conn.start(id, &call.request, self.config.limits);
        if reused {
            self.reused += 1;
            self.kick.push(slot);
        }
    }

    /// The most recently used idle connection to `addr`.
    fn take_idle(&mut self, addr: SocketAddr) -> Option<usize> {
        let slots = &self.slots;
        let i = self
            .idle
            .iter()
            .rposition(|&slot| slots.get(slot).is_some_and(|c| c.addr() == addr))?;
        self.idle.remove(i)
    }

    fn drive_conn(&mut self, slot: usize, now: Instant) {
        let Some(conn) = self.slots.get_mut(slot) else {
            return;
        };
        match conn.drive() {
            Event::Nothing => {}
            Event::Answered(response) => {
                let call = conn.call();
                if response.keep_alive && conn.park_idle(now) {
                    self.idle.push_back(slot);
                } else {
                    self.close(slot);
                }
                if let Some(id) = call {
                    self.finish(id, Ok(response), now);
                }
            }
            Event::Failed { error, retryable } => {
                let call = conn.call();
                self.close(slot);
                let Some(id) = call else { return };
                match self.calls.get_mut(&id) {
                    Some(c) if retryable && !c.retried => {
                        c.retried = true;
                        c.slot = None;
                        self.retried += 1;
                        self.pending.push_back(id);
                    }
                    _ => self.finish(id, Err(error), now),
                }
            }
            Event::IdleClosed => self.close(slot),
        }
    }

    fn finish(&mut self, id: CallId, result: Result<Response, CallError>, now: Instant) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        self.completed.push_back(Completion {
            call: id,
            tag: call.tag,
            result,
            elapsed: now.saturating_duration_since(call.started),
        });
    }

    /// Closes a connection (dropping the socket); its call, if any, keeps
    /// going elsewhere or is finished by the caller of this.
    fn close(&mut self, slot: usize) {
        let Some(conn) = self.slots.remove(slot) else {
            return;
        };
        if conn.is_idle() {
            self.idle.retain(|&s| s != slot);
        }
        if let Some(id) = conn.call()
            && let Some(call) = self.calls.get_mut(&id)
        {
            call.slot = None;
        }
        self.kick.retain(|&s| s != slot);
    }

    fn expire(&mut self, now: Instant) {
        loop {
            let calls = &self.calls;
            let Some(id) = self.deadlines.pop_due(now, |id| calls.contains_key(id)) else {
                break;
            };
            let Some(slot) = self.calls.get(&id).map(|call| call.slot) else {
                continue;
            };
            match slot {
                Some(slot) => self.close(slot),
                None => self.pending.retain(|&p| p != id),
            }
            self.finish(id, Err(CallError::Timeout), now);
        }
        while let Some(&slot) = self.idle.front() {
            let since = self.slots.get(slot).and_then(UpConn::idle_since);
            match since {
                Some(since) if since + self.config.idle_timeout > now => break,
                _ => self.close(slot),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_encoded_once_with_host_fields_and_length() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let get = Outbound::new(
            "GET",
            addr,
            "h:9000",
            "/a?b=1",
            &[("Accept", "application/json")],
            b"",
        );
        assert_eq!(
            &*get.bytes,
            b"GET /a?b=1 HTTP/1.1\r\nHost: h:9000\r\nAccept: application/json\r\n\r\n"
        );
        assert!(!get.head_only);
        let post = Outbound::new(
            "POST",
            addr,
            "h",
            "/v3/kv/range",
            &[],
            b"{\"key\":\"Zm9v\"}",
        );
        assert_eq!(
            &*post.bytes,
            b"POST /v3/kv/range HTTP/1.1\r\nHost: h\r\nContent-Length: 14\r\n\r\n{\"key\":\"Zm9v\"}"
        );
        assert!(Outbound::new("HEAD", addr, "h", "/", &[], b"").head_only);
    }

    /// Registers with a real poller, as the server does.
    struct TestRegistrar<'r>(&'r mio::Registry);

    impl Registrar for TestRegistrar<'_> {
        fn register(&mut self, stream: &mut TcpStream, token: usize) -> io::Result<()> {
            self.0.register(
                stream,
                mio::Token(token),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
        }
    }

    /// A loopback upstream answering `answers` requests per connection with
    /// a fixed JSON body, then closing; it reports each accepted connection.
    fn upstream(answers: usize) -> (SocketAddr, std::sync::mpsc::Receiver<()>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(8) {
                let Ok(mut stream) = stream else { return };
                let _ = tx.send(());
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    for _ in 0..answers {
                        match stream.read(&mut buf) {
                            Ok(n) if n > 0 => {}
                            _ => return,
                        }
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
                        if stream.write_all(answer).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, rx)
    }

    /// Polls and drives `client` until a call completes (bounded).
    fn run_until_done(client: &mut Client<u8>, poll: &mut mio::Poll) -> Completion<u8> {
        let mut events = mio::Events::with_capacity(64);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < deadline, "no completion");
            let registry = poll.registry().try_clone().unwrap();
            client.drive(Instant::now(), &mut TestRegistrar(&registry));
            if let Some(done) = client.completed() {
                return done;
            }
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            for event in &events {
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                let writable = event.is_writable() || event.is_write_closed() || event.is_error();
                client.on_ready(event.token().0, readable, writable, Instant::now());
            }
        }
    }

    fn config(conns_max: usize) -> ClientConfig {
        ClientConfig {
            conns_max,
            idle_timeout: Duration::from_secs(10),
            limits: ResponseLimits::default(),
            token_base: 1000,
        }
    }

    #[test]
    fn calls_reuse_pooled_connections_and_retry_a_closed_one_once() {
        let (addr, accepted) = upstream(2);
        let mut poll = mio::Poll::new().unwrap();
        let mut client: Client<u8> = Client::new(config(4));
        let request = Outbound::new("GET", addr, "up", "/", &[], b"");
        let later = Instant::now() + Duration::from_secs(5);
        for tag in 0..3u8 {
            let call = client.send(tag, &request, later, Instant::now()).unwrap();
            let done = run_until_done(&mut client, &mut poll);
            assert_eq!((done.call, done.tag), (call, tag));
            assert_eq!(done.result.unwrap().body, b"{}");
        }
        // Two answers per connection: the third call found its pooled
        // connection closed and went to a fresh one, not as a failure.
        assert_eq!(accepted.try_iter().count(), 2);
        let stats = client.stats();
        assert_eq!((stats.reused, stats.open, stats.idle), (2, 1, 1));
        assert_eq!(stats.retried, 1);
    }

    #[test]
    fn an_idle_connection_to_another_address_makes_room() {
        let (first, _) = upstream(10);
        let (second, accepted) = upstream(10);
        let mut poll = mio::Poll::new().unwrap();
        let mut client: Client<u8> = Client::new(config(1));
        let later = Instant::now() + Duration::from_secs(5);
        let to_first = Outbound::new("GET", first, "a", "/", &[], b"");
        client.send(1, &to_first, later, Instant::now()).unwrap();
        assert!(run_until_done(&mut client, &mut poll).result.is_ok());
        assert_eq!(client.stats().idle, 1);
        let to_second = Outbound::new("GET", second, "b", "/", &[], b"");
        client.send(2, &to_second, later, Instant::now()).unwrap();
        assert_eq!(
            client.send(3, &to_second, later, Instant::now()),
            Err(SendError::Saturated),
            "the one connection is taken"
        );
        assert!(run_until_done(&mut client, &mut poll).result.is_ok());
        assert_eq!(accepted.try_iter().count(), 1);
        assert_eq!(client.stats().open, 1);
    }

    #[test]
    fn a_deadline_and_a_refused_connect_are_typed_errors() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut client: Client<u8> = Client::new(config(4));
        let request = Outbound::new("GET", silent.local_addr().unwrap(), "s", "/", &[], b"");
        let soon = Instant::now() + Duration::from_millis(30);
        client.send(1, &request, soon, Instant::now()).unwrap();
        let done = run_until_done(&mut client, &mut poll);
        assert_eq!(done.result, Err(CallError::Timeout));
        assert!(done.elapsed >= Duration::from_millis(30));
        assert_eq!(client.stats().open, 0, "its socket was closed");
        let closed = silent.local_addr().unwrap();
        drop(silent);
        let request = Outbound::new("GET", closed, "s", "/", &[], b"");
        client
            .send(
                2,
                &request,
                Instant::now() + Duration::from_secs(5),
                Instant::now(),
            )
            .unwrap();
        let done = run_until_done(&mut client, &mut poll);
        assert_eq!(
            done.result,
            Err(CallError::Connect(io::ErrorKind::ConnectionRefused))
        );
    }

    #[test]
    fn a_client_without_connections_refuses_at_once() {
        let mut client: Client<u8> = Client::new(ClientConfig::unused());
        let request = Outbound::new("GET", "127.0.0.1:9".parse().unwrap(), "h", "/", &[], b"");
        let now = Instant::now();
        assert_eq!(
            client.send(1, &request, now, now),
            Err(SendError::Saturated)
        );
        assert!(!client.has_work());
        assert_eq!(client.next_deadline(), None);
        assert!(!client.owns(0));
    }
}
