//! Shared helpers for the integration tests: start the real `fibd` binary on a
//! free port with a fresh data directory, talk raw HTTP/1.1 to it, kill it.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod etcd;
pub mod journald;
pub mod linearizability;
pub mod load;
pub mod nginx;
pub mod otlp;
pub mod partition;
pub mod receiver;
pub mod upstream;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// A caller's trace context for the tracing tests (traces.rs, traces_otlp.rs).
pub const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
pub const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// The requests the tracing tests send and then look for as spans:
/// `currents` GET /current, a POST /next, a GET of an unknown path (404),
/// and /api/smart with X-Request-Id smart-1 continuing the caller's trace.
pub fn send_traced_mix(client: &mut Client, currents: usize) {
    for _ in 0..currents {
        assert_eq!(client.request("GET", "/current", &[]).status, 200);
    }
    assert_eq!(client.request("POST", "/next", &[]).status, 200);
    assert_eq!(client.request("GET", "/nope", &[]).status, 404);
    let caller = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let smart = client.request(
        "GET",
        "/api/smart?timeout=5000",
        &[("traceparent", &caller), ("X-Request-Id", "smart-1")],
    );
    assert_eq!(smart.status, 200, "{}", smart.text());
}

/// No span dropped, and at least the `seen` spans a collector took counted
/// as exported in /metrics.
pub fn assert_spans_exported(client: &mut Client, seen: usize) {
    assert_eq!(metric(client, "fibd_trace_spans_dropped_total"), 0.0);
    let exported = metric(client, "fibd_trace_spans_exported_total");
    assert!(exported >= seen as f64, "{exported} < {seen}");
}

/// A data directory removed when the test ends.
pub struct DataDir(PathBuf);

impl DataDir {
    pub fn new(tag: &str) -> DataDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fibd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DataDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running fibd process.
pub struct Fibd {
    child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when the start line names one.
    pub admin: Option<SocketAddr>,
    /// Log lines after the start line, for tests that check them.
    pub log: mpsc::Receiver<String>,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_fibd")
}

impl Fibd {
    /// Starts fibd on 127.0.0.1 with an OS-chosen port and waits until it listens.
    pub fn start(data: &DataDir, extra: &[&str]) -> Fibd {
        Fibd::start_with(data, extra, &[])
    }

    pub fn start_with(data: &DataDir, extra: &[&str], env: &[(&str, &str)]) -> Fibd {
        Fibd::spawn(Command::new(binary()), data, extra, env)
    }

    /// Starts fibd the way systemd's socket activation does: `sockets` become
    /// fds 3, 4, ... of the process, with LISTEN_FDS, LISTEN_PID (its own
    /// pid: a shell sets it and execs fibd) and LISTEN_FDNAMES (`names`).
    pub fn start_activated(
        data: &DataDir,
        sockets: &[&std::net::TcpListener],
        names: &str,
        extra: &[&str],
    ) -> Fibd {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        const SOCKETS_MAX: usize = 4;
        assert!(
            sockets.len() <= SOCKETS_MAX,
            "at most {SOCKETS_MAX} sockets"
        );
        let mut sources = [-1; SOCKETS_MAX];
        for (source, socket) in sources.iter_mut().zip(sockets) {
            *source = socket.as_raw_fd();
        }
        let count = sockets.len();
        let mut command = Command::new("sh");
        command
            .args(["-c", "export LISTEN_PID=$$; exec \"$0\" \"$@\""])
            .arg(binary())
            .env("LISTEN_FDS", count.to_string())
            .env("LISTEN_FDNAMES", names);
        // SAFETY: between fork and exec only fcntl and dup2, which are
        // async-signal-safe, on fds this process owns, and no allocation;
        // the sources are first copied above every target, so no dup2
        // overwrites a source it still needs.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                const ABOVE_TARGETS: i32 = 64;
                let mut high = [-1; SOCKETS_MAX];
                for i in 0..count {
                    high[i] = libc::fcntl(sources[i], libc::F_DUPFD_CLOEXEC, ABOVE_TARGETS);
                    if high[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, &fd) in high[..count].iter().enumerate() {
                    // dup2's copy is not close-on-exec: fibd inherits it.
                    if libc::dup2(fd, 3 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Fibd::spawn(command, data, extra, &[])
    }

    /// Starts fibd as `uid` (through `setpriv`, as root), its data
    /// directory made and handed to that uid first: a process a test can
    /// cut off the network alone (`partition`).
    pub fn start_as(uid: u32, data: &DataDir, extra: &[&str]) -> Fibd {
        std::fs::create_dir_all(data.path()).expect("make the data directory");
        std::os::unix::fs::chown(data.path(), Some(uid), Some(uid)).expect("chown (root?)");
        let mut command = Command::new("setpriv");
        let id = uid.to_string();
        command
            .args(["--reuid", &id, "--regid", &id, "--clear-groups", "--"])
            .arg(binary());
        Fibd::spawn(command, data, extra, &[])
    }

    fn spawn(mut command: Command, data: &DataDir, extra: &[&str], env: &[(&str, &str)]) -> Fibd {
        command
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("FIBD_LISTEN")
            .env_remove("FIBD_DATA_DIR")
            .env_remove("STATE_DIRECTORY")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn fibd");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    panic!("fibd did not report listening: {:?}", child.wait());
                }
            };
            if let Some(addr) = listening_addr(&line) {
                return Fibd {
                    child,
                    addr,
                    admin: addr_after(&line, "admin endpoints on "),
                    log: rx,
                };
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// kill -9: no chance to flush or clean up.
    pub fn kill9(mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    /// SIGTERM, then the exit status (within the timeout).
    pub fn terminate(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_timeout(&mut self.child, Duration::from_secs(20)).expect("fibd exits after SIGTERM")
    }

    /// Waits for the process to exit by itself; its status and remaining log.
    pub fn wait_exit(mut self) -> (ExitStatus, Vec<String>) {
        let status = wait_timeout(&mut self.child, Duration::from_secs(20)).expect("fibd exits");
        let mut lines = Vec::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        (status, lines)
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    /// Waits for a log line containing `needle` (after the start line);
    /// panics with the lines seen if none comes within the timeout.
    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no log line with {needle:?}; saw {seen:#?}"),
            }
        }
    }

    /// One request on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        self.connect().request("GET", path, &[])
    }

    pub fn post(&self, path: &str) -> Response {
        self.connect().request("POST", path, &[])
    }

    /// POST with a JSON body on a fresh connection.
    pub fn post_json(&self, path: &str, body: &str) -> Response {
        self.connect().post_json(path, body)
    }

    /// One sample from /metrics: the line `name value` (labels included in `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text();
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

impl Drop for Fibd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    addr_after(line, "listening on ")
}

fn addr_after(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.split(prefix).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// Runs fibd to completion (for start-up failures) and returns its status and stderr.
pub fn run_to_exit(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(binary())
        .args(args)
        .env_remove("FIBD_LISTEN")
        .env_remove("FIBD_DATA_DIR")
        .env_remove("STATE_DIRECTORY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fibd");
    let status = wait_timeout(&mut child, Duration::from_secs(30)).expect("fibd exits");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .ok();
    (status, stderr)
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("utf-8 body")
    }

    /// The stepper's `X-Fib-Index`.
    pub fn index(&self) -> u64 {
        self.header("X-Fib-Index")
            .expect("X-Fib-Index header")
            .parse()
            .expect("numeric index")
    }
}

/// One keep-alive connection that reads responses by their framing.
pub struct Client {
    stream: TcpStream,
    buffered: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).expect("connect to fibd")
    }

    /// A connection, or the error (for tests whose servers may be down).
    pub fn try_connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buffered: Vec::new(),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    pub fn post_json(&mut self, path: &str, body: &str) -> Response {
        self.send(&json_request(path, body));
        self.read_response(false)
    }

    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        self.send(&request_bytes(method, path, headers));
        self.read_response(method == "HEAD")
    }

    /// Reads one response; `head_only` for replies to HEAD (no body despite Content-Length).
    pub fn read_response(&mut self, head_only: bool) -> Response {
        self.try_read_response(head_only)
            .expect("a complete response")
    }

    /// None if the connection closed before a complete response.
    pub fn try_read_response(&mut self, head_only: bool) -> Option<Response> {
        let head_end = loop {
            if let Some(i) = find(&self.buffered, b"\r\n\r\n") {
                break i + 4;
            }
            if !self.fill() {
                return None;
            }
        };
        let head = String::from_utf8(self.buffered[..head_end].to_vec()).expect("ascii head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        let status: u16 = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length: usize = if head_only || status == 304 || status / 100 == 1 {
            0
        } else {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().expect("numeric Content-Length"))
                .expect("every response carries Content-Length")
        };
        while self.buffered.len() < head_end + length {
            if !self.fill() {
                return None;
            }
        }
        let body = self.buffered[head_end..head_end + length].to_vec();
        self.buffered.drain(..head_end + length);
        Some(Response {
            status,
            headers,
            body,
        })
    }

    /// True if the server closes the connection (with nothing more to read)
    /// within half a second; a server that keeps it open makes this false.
    pub fn is_closed_by_server(&mut self) -> bool {
        if !self.buffered.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(CLOSE_WAIT)).unwrap();
        let mut byte = [0u8; 1];
        let result = self.stream.read(&mut byte);
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match result {
            Ok(0) => true,
            Ok(_) => {
                self.buffered.push(byte[0]);
                false
            }
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 64 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buffered.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }
}

/// A sample's value in /metrics, read on `client`'s connection.
pub fn metric(client: &mut Client, name: &str) -> f64 {
    let page = client.request("GET", "/metrics", &[]).text();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: fibd.test\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST"
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        out.push_str("Content-Length: 0\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A POST of `body` as application/json with its Content-Length.
pub fn json_request(path: &str, body: &str) -> Vec<u8> {
    json_request_with(path, body, &[])
}

/// A POST of `body` as application/json with more header fields.
pub fn json_request_with(path: &str, body: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("POST {path} HTTP/1.1\r\nHost: fibd.test\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    out.into_bytes()
}

/// Occupies fibd's one compute thread (the default) with `count` large
/// F(n) from `n` up, each on its own connection and queued behind the one
/// before, so a primes sieve queued after them waits for all of them.
/// Returns once every one is queued; each handle yields its status.
pub fn occupy_compute(fibd: &Fibd, count: u64, n: u64) -> Vec<std::thread::JoinHandle<u16>> {
    let misses = fibd.metric("fibd_fib_cache_misses_total");
    let blockers = (0..count)
        .map(|k| {
            let addr = fibd.addr;
            std::thread::spawn(move || {
                Client::connect(addr)
                    .request("GET", &format!("/v1/fib?n={}", n + k), &[])
                    .status
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while fibd.metric("fibd_fib_cache_misses_total") < misses + count as f64 {
        assert!(Instant::now() < deadline, "the F(n) blockers never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    blockers
}

/// An `--api-keys` file beside a test's data directory, removed with it.
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn new(data: &DataDir, text: &str) -> KeyFile {
        let path = data.path().with_extension("keys");
        let file = KeyFile { path };
        file.write(text);
        file
    }

    pub fn write(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write the key file");
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// F(n) by the plain iterative sum on decimal strings: slow, obviously right,
/// and independent of the daemon's big-integer code.
pub fn fib_decimal(n: u64) -> String {
    let (mut a, mut b) = (vec![0u8], vec![1u8]); // little-endian decimal digits
    for _ in 0..n {
        let mut sum = Vec::with_capacity(b.len() + 1);
        let mut carry = 0;
        for (i, digit) in b.iter().enumerate() {
            let d = digit + a.get(i).copied().unwrap_or(0) + carry;
            sum.push(d % 10);
            carry = d / 10;
        }
        if carry > 0 {
            sum.push(carry);
        }
        a = std::mem::replace(&mut b, sum);
    }
    a.iter().rev().map(|d| char::from(b'0' + d)).collect()
}

/// The median time of `count` GET /current on `client`, each a 200: how fast
/// the loop answers while the test keeps it busy with something else.
pub fn median_current_latency(client: &mut Client, count: usize) -> Duration {
    let mut samples: Vec<Duration> = (0..count)
        .map(|_| {
            let started = Instant::now();
            assert_eq!(client.request("GET", "/current", &[]).status, 200);
            started.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}
