//! A real OTLP/HTTP JSON reader for tests: `otlp_collector.py` beside this
//! file, run with the venv `scripts/otlp-venv` makes (PyPI's
//! opentelemetry-proto, pinned). Every POST is parsed by protobuf into an
//! `ExportTraceServiceRequest`; what it took comes back as protobuf's own
//! reading of it, what it refused as a rejection.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::STARTUP_TIMEOUT;

/// How long a test waits for spans it expects.
const SPANS_TIMEOUT: Duration = Duration::from_secs(10);

pub struct OtlpCollector {
    child: Child,
    /// Held for `--hold-first`: a line written here releases the held answer.
    stdin: Option<ChildStdin>,
    pub port: u16,
    /// Every record after the first line, in order.
    records: Arc<Mutex<Vec<Value>>>,
}

/// The venv's python3, made by `scripts/otlp-venv` if it is not there yet.
fn python() -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/otlp-venv");
    let out = Command::new(script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run scripts/otlp-venv");
    assert!(out.status.success(), "scripts/otlp-venv failed");
    String::from_utf8(out.stdout)
        .expect("a path")
        .trim()
        .to_owned()
}

impl OtlpCollector {
    /// A collector that answers every request it can parse 200, the others 400.
    pub fn start() -> OtlpCollector {
        OtlpCollector::spawn(false)
    }

    /// Like [`OtlpCollector::start`], but the first request it takes is
    /// answered only on [`OtlpCollector::release`].
    pub fn holding_first() -> OtlpCollector {
        OtlpCollector::spawn(true)
    }

    fn spawn(hold_first: bool) -> OtlpCollector {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/otlp_collector.py"
        );
        let mut command = Command::new(python());
        command.arg(script);
        if hold_first {
            command.arg("--hold-first");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start otlp_collector.py");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
        let first: Value = lines
            .next()
            .and_then(Result::ok)
            .and_then(|line| serde_json::from_str(&line).ok())
            .expect("otlp_collector.py says where it listens");
        assert_eq!(first["event"], "listening", "{first}");
        let port = first["port"].as_u64().expect("a port") as u16;
        let records = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&records);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let record = serde_json::from_str(&line).expect("a JSON line");
                sink.lock().unwrap().push(record);
            }
        });
        OtlpCollector {
            child,
            stdin,
            port,
            records,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.port)
    }

    /// Answers the held first request.
    pub fn release(&mut self) {
        let mut stdin = self
            .stdin
            .take()
            .expect("a collector holding its first request");
        stdin.write_all(b"release\n").expect("tell the collector");
    }

    /// What the collector refused (400), with its reasons.
    pub fn rejected(&self) -> Vec<String> {
        self.with_event("rejected")
            .iter()
            .map(|r| r["why"].to_string())
            .collect()
    }

    /// Every request the collector took, as protobuf read it.
    pub fn requests(&self) -> Vec<Value> {
        self.with_event("accepted")
            .into_iter()
            .map(|r| r["request"].clone())
            .collect()
    }

    fn with_event(&self, event: &str) -> Vec<Value> {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .filter(|r| r["event"] == event)
            .cloned()
            .collect()
    }

    /// Every span of every request taken.
    pub fn spans(&self) -> Vec<Value> {
        self.requests().iter().flat_map(spans_of).collect()
    }

    /// Waits (bounded) until the spans taken satisfy `done`; all of them.
    /// Panics at once on a refused request.
    pub fn wait_for_spans(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + SPANS_TIMEOUT;
        loop {
            let rejected = self.rejected();
            assert!(rejected.is_empty(), "the collector refused: {rejected:#?}");
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "spans never arrived: {spans:#?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until `count` requests were taken.
    pub fn wait_for_requests(&self, count: usize) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while self.requests().len() < count {
            assert!(Instant::now() < deadline, "{count} requests never came");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The spans of one `ExportTraceServiceRequest`.
pub fn spans_of(request: &Value) -> Vec<Value> {
    let mut spans = Vec::new();
    for resource in request["resourceSpans"].as_array().into_iter().flatten() {
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            spans.extend(scope["spans"].as_array().into_iter().flatten().cloned());
        }
    }
    spans
}

/// A span's attribute, by key: its one typed value (`{"stringValue": …}`).
pub fn attribute<'v>(span: &'v Value, key: &str) -> Option<&'v Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
