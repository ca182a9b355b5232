//! scripted-upstream: the upstream of /api/smart's hedging rows in bench/run.
//!
//! A thread per connection, HTTP/1.1 keep-alive, std only. It reads request
//! heads (GET; a Content-Length body is read and ignored) and answers every
//! path but the two below as `--mode` says:
//!
//! - `fast`: 200 `{"value": 42}` at once;
//! - `fail`: 500 with a small JSON body at once;
//! - `slow`: 200 `{"value": 42}` after `--slow-ms` (default 450);
//! - `mix`: per request, drawn from a seeded splitmix64 sequence (`--seed`,
//!   default 1): 70% fast, 20% slow (after `--slow-ms`), 10% fail.
//!
//! `GET /__count` answers `{"requests": N}`: the requests taken so far, each
//! counted when its head is read (before any sleep, so an attempt its client
//! cancelled mid-sleep counts: it was sent), neither /__count nor /__reset
//! included. `GET /__reset` sets the count to 0.
//!
//! Every answer has a Content-Length. `Connection: close` (or HTTP/1.0
//! without keep-alive) closes after the answer. A client that hangs up
//! during a slow answer's sleep is noticed at the write, and the thread ends.
//!
//! Usage: scripted-upstream --listen 127.0.0.1:PORT --mode fast|fail|slow|mix
//!        [--slow-ms MS] [--seed N]

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

const USAGE: &str = "usage: scripted-upstream --listen 127.0.0.1:PORT --mode fast|fail|slow|mix [--slow-ms MS] [--seed N]";
const OK_BODY: &[u8] = b"{\"value\": 42}";
const FAIL_BODY: &[u8] = b"{\"error\": \"scripted failure\"}";
/// A request head larger than this closes the connection.
const HEAD_MAX: usize = 64 * 1024;

/// Requests taken, /__count and /__reset excepted.
static TAKEN: AtomicU64 = AtomicU64::new(0);
/// Draws from the mix's sequence so far.
static DRAWN: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Fast,
    Fail,
    Slow,
    Mix,
}

#[derive(Clone, Copy, Debug)]
struct Config {
    mode: Mode,
    slow: Duration,
    seed: u64,
}

/// What one request gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Answer {
    Fast,
    Fail,
    Slow,
}

/// The `n`th output of splitmix64 started at `seed`.
fn splitmix64(seed: u64, n: u64) -> u64 {
    let mut z = seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn answer_for(cfg: &Config) -> Answer {
    match cfg.mode {
        Mode::Fast => Answer::Fast,
        Mode::Fail => Answer::Fail,
        Mode::Slow => Answer::Slow,
        Mode::Mix => {
            let n = DRAWN.fetch_add(1, Ordering::Relaxed);
            // The top bits, scaled to 0..100 (no modulo bias worth naming).
            let r = ((splitmix64(cfg.seed, n) >> 32) * 100) >> 32;
            match r {
                0..70 => Answer::Fast,
                70..90 => Answer::Slow,
                _ => Answer::Fail,
            }
        }
    }
}

fn main() {
    let mut listen = String::from("127.0.0.1:9000");
    let mut mode = None;
    let mut slow_ms = 450u64;
    let mut seed = 1u64;
    let mut args = std::env::args().skip(1);
    let usage = |why: &str| -> ! {
        eprintln!("scripted-upstream: {why}\n{USAGE}");
        std::process::exit(2)
    };
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--listen" => listen = value(),
            "--mode" => {
                mode = Some(match value().as_str() {
                    "fast" => Mode::Fast,
                    "fail" => Mode::Fail,
                    "slow" => Mode::Slow,
                    "mix" => Mode::Mix,
                    other => usage(&format!("unknown mode {other}")),
                })
            }
            "--slow-ms" => {
                slow_ms = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--slow-ms takes milliseconds"))
            }
            "--seed" => {
                seed = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--seed takes an unsigned integer"))
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let Some(mode) = mode else {
        usage("--mode is required")
    };
    let cfg = Config {
        mode,
        slow: Duration::from_millis(slow_ms),
        seed,
    };
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| {
        eprintln!("scripted-upstream: cannot listen on {listen}: {e}");
        std::process::exit(1)
    });
    eprintln!(
        "scripted-upstream: listening on {listen}, mode {mode:?}, slow {slow_ms} ms, seed {seed}"
    );
    for conn in listener.incoming() {
        match conn {
            Ok(sock) => {
                // A thread that cannot be spawned drops its socket: the client sees a close.
                let _ = thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || serve(sock, &cfg));
            }
            Err(e) => {
                eprintln!("scripted-upstream: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One request head, as far as this server cares.
struct Request<'a> {
    head_only: bool,
    path: &'a [u8],
    close: bool,
    body_len: usize,
}

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

/// Parses a head (request line and fields, up to and including the blank
/// line); `None` for anything malformed.
fn parse(head: &[u8]) -> Option<Request<'_>> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let mut parts = lines
        .next()?
        .split(|&b| b == b' ')
        .filter(|p| !p.is_empty());
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    let http10 = match version {
        b"HTTP/1.1" => false,
        b"HTTP/1.0" => true,
        _ => return None,
    };
    let path = target.split(|&b| b == b'?').next().unwrap_or(target);
    let mut close = http10;
    let mut body_len = 0usize;
    for line in lines {
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    close = false;
                }
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            body_len = std::str::from_utf8(value).ok()?.parse().ok()?;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return None; // GET only: no chunked bodies here
        }
    }
    Some(Request {
        head_only: method == b"HEAD",
        path,
        close,
        body_len,
    })
}

fn reply(out: &mut Vec<u8>, status: &str, body: &[u8], close: bool, head_only: bool) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// Reads more into `buf`; false when the connection is over.
fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8]) -> bool {
    loop {
        match sock.read(chunk) {
            Ok(0) => return false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return true;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
}

fn serve(mut sock: TcpStream, cfg: &Config) {
    let _ = sock.set_nodelay(true);
    // An idle connection holds a thread; past two minutes it is let go.
    let _ = sock.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut scanned = 0;
    loop {
        let end = loop {
            if let Some(end) = find_head_end(&buf, scanned) {
                break end;
            }
            scanned = buf.len();
            if buf.len() > HEAD_MAX || !fill(&mut sock, &mut buf, &mut chunk) {
                return;
            }
        };
        let Some(req) = parse(&buf[..end]) else {
            reply(
                &mut out,
                "400 Bad Request",
                b"{\"error\": \"bad request\"}",
                true,
                false,
            );
            let _ = sock.write_all(&out);
            return;
        };
        let (close, head_only, body_len) = (req.close, req.head_only, req.body_len);
        match req.path {
            b"/__count" => {
                let body = format!("{{\"requests\": {}}}", TAKEN.load(Ordering::SeqCst));
                reply(&mut out, "200 OK", body.as_bytes(), close, head_only);
            }
            b"/__reset" => {
                TAKEN.store(0, Ordering::SeqCst);
                reply(&mut out, "200 OK", b"{\"requests\": 0}", close, head_only);
            }
            _ => {
                TAKEN.fetch_add(1, Ordering::SeqCst);
                match answer_for(cfg) {
                    Answer::Fast => reply(&mut out, "200 OK", OK_BODY, close, head_only),
                    Answer::Fail => reply(
                        &mut out,
                        "500 Internal Server Error",
                        FAIL_BODY,
                        close,
                        head_only,
                    ),
                    Answer::Slow => {
                        thread::sleep(cfg.slow);
                        reply(&mut out, "200 OK", OK_BODY, close, head_only);
                    }
                }
            }
        }
        // The request is answered: drop its head and skip its body, if any.
        buf.drain(..end);
        let mut skip = body_len;
        while skip > 0 {
            if buf.is_empty() && !fill(&mut sock, &mut buf, &mut chunk) {
                return;
            }
            let n = skip.min(buf.len());
            buf.drain(..n);
            skip -= n;
        }
        scanned = 0;
        if sock.write_all(&out).is_err() || close {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_seventy_twenty_ten() {
        let cfg = Config {
            mode: Mode::Mix,
            slow: Duration::ZERO,
            seed: 1,
        };
        let (mut fast, mut slow, mut fail) = (0, 0, 0);
        for _ in 0..100_000 {
            match answer_for(&cfg) {
                Answer::Fast => fast += 1,
                Answer::Slow => slow += 1,
                Answer::Fail => fail += 1,
            }
        }
        assert!((69_000..71_000).contains(&fast), "{fast}");
        assert!((19_000..21_000).contains(&slow), "{slow}");
        assert!((9_500..10_500).contains(&fail), "{fail}");
    }

    #[test]
    fn heads_parse() {
        let r =
            parse(b"GET /api/data?x=1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").unwrap();
        assert_eq!(r.path, b"/api/data");
        assert!(r.close);
        let r = parse(b"GET /__count HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!r.close);
        assert!(parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().close);
        assert!(parse(b"garbage\r\n\r\n").is_none());
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nGET", 0), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r", 0), None);
    }
}
