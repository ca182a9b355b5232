//! A webhook receiver in the test process: a loopback HTTP/1.1 listener that
//! answers each request as a script says (a status, or hang: read the request
//! and never answer), 200 once the script is used up, and keeps every request
//! with the time it arrived and the answer it got. Connections are kept alive
//! (fibd's outbound client pools them), so one connection may carry many
//! deliveries. Tests wait on what it received with a bounded deadline; the
//! wait wakes on each arrival (a Condvar), not on a poll.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use super::upstream::fill;

/// How to answer one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// This status with a small body and a Content-Length; the connection stays open.
    Status(u16),
    /// Read the request, never answer, hold the connection until the peer
    /// closes it or the receiver is dropped.
    Hang,
}

impl Behaviour {
    pub fn is_2xx(self) -> bool {
        matches!(self, Behaviour::Status(s) if (200..300).contains(&s))
    }
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub method: String,
    /// The request target: path and query.
    pub path: String,
    /// Field names lowercased, values trimmed, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// When the whole request was in.
    pub at: Instant,
    pub wall: SystemTime,
    /// Which accepted connection it came on, from 0.
    pub connection: usize,
    /// What the script answered.
    pub answer: Behaviour,
}

impl Delivery {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct State {
    script: VecDeque<Behaviour>,
    default: Behaviour,
    received: Vec<Delivery>,
    /// A handle on every connection still served, to end them on drop.
    streams: Vec<(usize, TcpStream)>,
    accepted: usize,
    stopped: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Notified on every arrival and every connection's end.
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits on every change until `ready` holds (Ok) or `timeout` passes
    /// (Err); either way with the state locked.
    fn wait(
        &self,
        timeout: Duration,
        ready: impl Fn(&State) -> bool,
    ) -> Result<MutexGuard<'_, State>, MutexGuard<'_, State>> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !ready(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(state);
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        Ok(state)
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Receiver {
    /// A receiver that answers 200 to everything.
    pub fn start() -> Receiver {
        Receiver::scripted([], Behaviour::Status(200))
    }

    /// A receiver that answers with `script` in arrival order, then `default`.
    pub fn scripted(script: impl IntoIterator<Item = Behaviour>, default: Behaviour) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                script: script.into_iter().collect(),
                default,
                received: Vec::new(),
                streams: Vec::new(),
                accepted: 0,
                stopped: false,
            }),
            changed: Condvar::new(),
        });
        let acceptor = shared.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let connection = {
                    let mut state = acceptor.lock();
                    if state.stopped {
                        return;
                    }
                    let connection = state.accepted;
                    state.accepted += 1;
                    if let Ok(handle) = stream.try_clone() {
                        state.streams.push((connection, handle));
                    }
                    connection
                };
                let shared = acceptor.clone();
                thread::spawn(move || {
                    serve(stream, connection, &shared);
                    shared.lock().streams.retain(|(c, _)| *c != connection);
                    shared.changed.notify_all();
                });
            }
        });
        Receiver { addr, shared }
    }

    /// A callback URL for `path_and_query` (starting with '/') on this receiver.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// Appends to the script.
    pub fn push(&self, behaviour: Behaviour) {
        self.shared.lock().script.push_back(behaviour);
    }

    /// The answer once the script is used up, from the next request on.
    pub fn set_default(&self, behaviour: Behaviour) {
        self.shared.lock().default = behaviour;
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Delivery> {
        self.shared.lock().received.clone()
    }

    /// Connections open now (hung ones included).
    pub fn open_connections(&self) -> usize {
        self.shared.lock().streams.len()
    }

    /// Waits until at least `count` requests arrived; all of them.
    pub fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Delivery> {
        self.wait_until(timeout, &format!("{count} requests"), |received| {
            received.len() >= count
        })
    }

    /// Waits until `done` holds for what arrived; panics with what did
    /// arrive if it does not hold within `timeout` (which only bounds a hang).
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        match self.shared.wait(timeout, |state| done(&state.received)) {
            Ok(state) => state.received.clone(),
            Err(state) => panic!(
                "the receiver did not see {what} within {timeout:?}; it saw {:#?}",
                summary(&state.received)
            ),
        }
    }

    /// Waits until every connection has ended (after the peer was killed,
    /// so that nothing it sent is still on its way in).
    pub fn wait_idle(&self, timeout: Duration) {
        if let Err(state) = self.shared.wait(timeout, |state| state.streams.is_empty()) {
            panic!(
                "{} receiver connections still open after {timeout:?}",
                state.streams.len()
            );
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let streams = {
            let mut state = self.shared.lock();
            state.stopped = true;
            std::mem::take(&mut state.streams)
        };
        for (_, stream) in streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        // Wakes the acceptor so that it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// One line per request for a failure message.
fn summary(received: &[Delivery]) -> Vec<String> {
    received
        .iter()
        .map(|d| {
            format!(
                "conn {} {} {} attempt {:?} -> {:?}: {}",
                d.connection,
                d.method,
                d.path,
                d.header("fibd-delivery-attempt"),
                d.answer,
                d.body_text()
            )
        })
        .collect()
}

/// Serves one connection's requests in turn until the peer closes it.
fn serve(mut stream: TcpStream, connection: usize, shared: &Shared) {
    let mut buffered = Vec::new();
    loop {
        let head_end = loop {
            if let Some(i) = super::find(&buffered, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut stream, &mut buffered) {
                return;
            }
        };
        let head = String::from_utf8_lossy(&buffered[..head_end - 4]).into_owned();
        buffered.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_owned();
        let path = request_line.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let field = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.to_ascii_lowercase())
        };
        if field("expect").as_deref() == Some("100-continue")
            && stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").is_err()
        {
            return;
        }
        let chunked = field("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let close = field("connection").is_some_and(|v| v.contains("close"));
        let body = if chunked {
            match read_chunked(&mut stream, &mut buffered) {
                Some(body) => body,
                None => return,
            }
        } else {
            let length: usize = field("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buffered.len() < length {
                if !fill(&mut stream, &mut buffered) {
                    return;
                }
            }
            buffered.drain(..length).collect()
        };
        let answer = {
            let mut state = shared.lock();
            if state.stopped {
                return;
            }
            let answer = state.script.pop_front().unwrap_or(state.default);
            state.received.push(Delivery {
                method,
                path,
                headers,
                body,
                at: Instant::now(),
                wall: SystemTime::now(),
                connection,
                answer,
            });
            answer
        };
        shared.changed.notify_all();
        match answer {
            Behaviour::Hang => {
                // Holds the socket: reads (and drops) until the peer closes
                // it or the receiver's drop shuts it down.
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
            Behaviour::Status(status) => {
                let body = format!("{{\"scripted\": {status}}}");
                let reply = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    if status == 200 { "OK" } else { "Scripted" },
                    body.len()
                );
                if stream.write_all(reply.as_bytes()).is_err() || close {
                    return;
                }
            }
        }
    }
}

/// A chunked body (trailers skipped); None if the peer closed first.
fn read_chunked(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = next_crlf(stream, buffered)?;
        let line = String::from_utf8_lossy(&buffered[..line_end]).into_owned();
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        buffered.drain(..line_end + 2);
        if size == 0 {
            // Trailer fields up to the empty line.
            loop {
                let end = next_crlf(stream, buffered)?;
                buffered.drain(..end + 2);
                if end == 0 {
                    return Some(body);
                }
            }
        }
        while buffered.len() < size + 2 {
            if !fill(stream, buffered) {
                return None;
            }
        }
        body.extend_from_slice(&buffered[..size]);
        buffered.drain(..size + 2);
    }
}

/// Where the next CRLF is in `buffered`, reading until one arrives; None if
/// the peer closed first.
fn next_crlf(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(i) = super::find(buffered, b"\r\n") {
            return Some(i);
        }
        if !fill(stream, buffered) {
            return None;
        }
    }
}
