//! A scripted fake upstream in the test process: a loopback listener whose
//! every request is answered as a script says (delay, status, framing,
//! silence, a dropped connection), counting and keeping what it saw (heads,
//! and bodies by their Content-Length). It also stands in for a Zipkin
//! collector.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How to answer one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub delay: Duration,
    pub kind: Kind,
    /// Close the connection after answering (without saying so in a header).
    pub close_after: bool,
}

#[derive(Clone, Debug)]
pub enum Kind {
    /// 200 with this body and a Content-Length.
    Json(String),
    /// 200 with this body, chunked in pieces of 7 bytes.
    Chunked(String),
    /// This status, with a small JSON body.
    Status(u16),
    /// These bytes as they are.
    Raw(Vec<u8>),
    /// Never answer; keep the connection until the peer closes it.
    Silent,
    /// Close the connection without a byte.
    Drop,
}

impl Answer {
    pub fn json(delay_ms: u64, body: &str) -> Answer {
        Answer::new(delay_ms, Kind::Json(body.to_owned()))
    }

    pub fn status(delay_ms: u64, status: u16) -> Answer {
        Answer::new(delay_ms, Kind::Status(status))
    }

    pub fn silent() -> Answer {
        Answer::new(0, Kind::Silent)
    }

    pub fn new(delay_ms: u64, kind: Kind) -> Answer {
        Answer {
            delay: Duration::from_millis(delay_ms),
            kind,
            close_after: false,
        }
    }

    pub fn then_close(mut self) -> Answer {
        self.close_after = true;
        self
    }
}

/// Which request the script is asked about.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    /// Across all connections, from 0, in arrival order.
    pub index: usize,
    /// On its connection, from 0.
    pub on_connection: usize,
}

type Script = dyn Fn(Seen) -> Answer + Send + Sync;

/// A request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    /// The request line.
    pub line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn parse(head: &[u8]) -> Received {
        let head = String::from_utf8_lossy(head);
        let mut lines = head.split("\r\n");
        let line = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        Received {
            line,
            headers,
            body: Vec::new(),
        }
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    requests: AtomicUsize,
    /// Connections the peer (fibd) closed while we held them.
    peer_closed: AtomicUsize,
    stop: AtomicBool,
    received: Mutex<Vec<Received>>,
}

pub struct FakeUpstream {
    pub addr: SocketAddr,
    counters: Arc<Counters>,
}

impl FakeUpstream {
    pub fn start(script: impl Fn(Seen) -> Answer + Send + Sync + 'static) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fake upstream");
        let addr = listener.local_addr().unwrap();
        let counters = Arc::new(Counters::default());
        let script: Arc<Script> = Arc::new(script);
        let shared = counters.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let (script, counters) = (script.clone(), shared.clone());
                thread::spawn(move || serve(stream, &*script, &counters));
            }
        });
        FakeUpstream { addr, counters }
    }

    /// The URL to give fibd's --upstream.
    pub fn url(&self) -> String {
        format!("http://{}/api/data", self.addr)
    }

    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn peer_closed(&self) -> usize {
        self.counters.peer_closed.load(Ordering::SeqCst)
    }

    /// Every request so far (whole: head and body), in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.counters
            .received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits (bounded) until `check` holds; false if it never did.
    pub fn wait_until(&self, timeout: Duration, check: impl Fn(&FakeUpstream) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            thread::sleep(Duration::from_millis(2));
        }
        check(self)
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.counters.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(mut stream: TcpStream, script: &Script, counters: &Counters) {
    let mut buffered = Vec::new();
    for on_connection in 0.. {
        let head_end = loop {
            if let Some(i) = super::find(&buffered, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut stream, &mut buffered) {
                counters.peer_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        };
        let mut request = Received::parse(&buffered[..head_end - 4]);
        buffered.drain(..head_end);
        let length: usize = request
            .header("Content-Length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffered.len() < length {
            if !fill(&mut stream, &mut buffered) {
                counters.peer_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        request.body = buffered.drain(..length).collect();
        if counters.stop.load(Ordering::SeqCst) {
            return;
        }
        counters
            .received
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(request);
        let index = counters.requests.fetch_add(1, Ordering::SeqCst);
        let answer = script(Seen {
            index,
            on_connection,
        });
        if !answer.delay.is_zero() && peer_closes_within(&mut stream, answer.delay) {
            counters.peer_closed.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let bytes = match answer.kind {
            Kind::Silent => {
                wait_for_close(&mut stream);
                counters.peer_closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Kind::Drop => return,
            Kind::Json(body) => with_length(200, "OK", &body),
            Kind::Status(status) => with_length(status, "Error", "{\"detail\": \"scripted\"}"),
            Kind::Chunked(body) => chunked(&body),
            Kind::Raw(bytes) => bytes,
        };
        if stream.write_all(&bytes).is_err() || answer.close_after {
            return;
        }
    }
}

/// Reads more into `buffered`; false once the peer closed.
pub fn fill(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffered.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn with_length(status: u16, reason: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn chunked(body: &str) -> Vec<u8> {
    let mut out =
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in body.as_bytes().chunks(7) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Waits `delay` for the peer to close; true if it did.
fn peer_closes_within(stream: &mut TcpStream, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                stream.set_read_timeout(None).unwrap();
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Blocks until the peer closes (bounded: a minute at most).
fn wait_for_close(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut chunk = [0u8; 1024];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            return;
        }
    }
}
