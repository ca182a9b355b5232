//! Traces, sans-IO: W3C `traceparent` in, a span per sampled request, a
//! bounded buffer of finished spans, and one of two encodings out: Zipkin v2
//! JSON (Zipkin and Jaeger take it at `POST /api/v2/spans`) or OTLP/HTTP
//! JSON (`POST /v1/traces`: the OpenTelemetry Collector, Jaeger, Tempo).
//! The format decides only the body; buffer, batching and bounds are one.
//!
//! Off unless `--trace-zipkin URL` or `--trace-otlp URL` is given: the app
//! then holds no tracer and a request pays one `None` check. On, an unsampled request costs one
//! pseudo-random draw; a sampled one a few field copies and, when it ends, one
//! clock read and a push into a preallocated ring. Nothing here does I/O:
//! the loop hands batches to the outbound HTTP client through [`Post`] and
//! reports back with [`Tracer::export_finished`]. A batch is due when
//! [`BATCH_SPANS`] spans wait or the oldest has waited [`FLUSH_INTERVAL`], and
//! carries up to [`BATCH_SPANS_MAX`]; one batch is in flight at most, and while the collector is slow or down new
//! spans beyond [`TraceConfig::buffer_spans`] are dropped and counted. A
//! client that cannot take a batch (every outbound connection busy) is asked
//! again after [`FLUSH_INTERVAL`], not on every loop pass.
//!
//! A graceful stop ([`Tracer::begin_stop`]) makes what waits due at once;
//! once the rest of the stop is done the spans still buffered or in flight
//! get [`STOP_FLUSH_DEADLINE`] to be delivered ([`Tracer::stop_flushed`]),
//! and what is left then is counted dropped.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::http::request_id::RequestId;
use crate::net::upstream::{HttpUrl, Target};

/// A batch is due once this many spans wait.
pub const BATCH_SPANS: usize = 128;
/// Spans sent in one POST at most: with one batch in flight, a batch carries
/// what piled up meanwhile, so a busy loop (a pass can end hundreds of spans)
/// keeps up instead of dropping (OpenTelemetry's SDKs send up to 512 too).
pub const BATCH_SPANS_MAX: usize = 512;
/// A span waits at most this long before a batch is sent without filling.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The collector gets this long per batch; then the batch counts as failed.
pub const EXPORT_DEADLINE: Duration = Duration::from_secs(5);
pub const DEFAULT_SAMPLE_RATIO: f64 = 0.1;
pub const DEFAULT_BUFFER_SPANS: usize = 4096;
/// A graceful stop waits this long, once everything else is done, for the
/// spans still buffered or in flight to reach the collector.
pub const STOP_FLUSH_DEADLINE: Duration = Duration::from_secs(2);
const SERVICE_NAME: &str = "fibd";
const SERVICE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How batches are encoded; everything else about export is the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Zipkin v2 JSON (`--trace-zipkin`).
    Zipkin,
    /// OTLP/HTTP JSON, an `ExportTraceServiceRequest` (`--trace-otlp`).
    Otlp,
}

impl ExportFormat {
    /// For the start-up log.
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Zipkin => "Zipkin v2 JSON",
            ExportFormat::Otlp => "OTLP/HTTP JSON",
        }
    }
}

/// `--trace-zipkin` or `--trace-otlp`, and `--trace-sample`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceConfig {
    /// Where batches are POSTed, e.g. `http://127.0.0.1:9411/api/v2/spans`
    /// or `http://127.0.0.1:4318/v1/traces`, resolved at start-up.
    pub collector: Target,
    pub format: ExportFormat,
    /// Share of requests without a caller's decision that are traced, 0 to 1.
    pub sample_ratio: f64,
    pub buffer_spans: usize,
}

/// A trace context as `traceparent` carries it (W3C Trace Context, level 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// Parses `traceparent: VERSION-TRACEID-PARENTID-FLAGS`. Lowercase hex only,
/// no all-zero ids, version `ff` refused; a later version may append fields
/// after a `-`, version 00 may not. Anything invalid is ignored (a new trace
/// starts), as the specification asks.
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    let head = value.get(..55)?;
    let version = hex_byte(&head[0..2])?;
    let dashes = head[2] == b'-' && head[35] == b'-' && head[52] == b'-';
    let tail_ok = match value.get(55) {
        None => true,
        Some(&b'-') => version != 0,
        Some(_) => false,
    };
    if version == 0xff || !dashes || !tail_ok {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    for (i, byte) in trace_id.iter_mut().enumerate() {
        *byte = hex_byte(&head[3 + 2 * i..5 + 2 * i])?;
    }
    for (i, byte) in span_id.iter_mut().enumerate() {
        *byte = hex_byte(&head[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&head[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    Some(digit(*two.first()?)? << 4 | digit(*two.get(1)?)?)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

impl SpanContext {
    /// `traceparent` for a call made inside this span (the upstream requests
    /// of /api/smart): version 00, its trace and span ids, its flag.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        for b in self.trace_id {
            let _ = write!(out, "{b:02x}");
        }
        out.push('-');
        for b in self.span_id {
            let _ = write!(out, "{b:02x}");
        }
        out.push_str(if self.sampled { "-01" } else { "-00" });
        out
    }
}

/// Zipkin's span kinds that fibd records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    /// A request fibd answered.
    Server,
    /// A call fibd made (an upstream attempt of /api/smart).
    Client,
}

/// A span that has begun: what is known when the request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanStart {
    pub context: SpanContext,
    pub parent_id: Option<[u8; 8]>,
    pub kind: SpanKind,
    /// The route's path (or `other`), so names stay few; for client spans the call's name.
    pub name: &'static str,
    pub method: &'static str,
    pub started: Instant,
    /// Server spans: the request's path (`url.path`), when it fits.
    pub path: Option<SpanPath>,
    /// Client spans: the host called, an index into the tracer's peers.
    pub peer: Option<u8>,
}

impl SpanStart {
    /// With the request's path, for `url.path` (left out when longer than
    /// [`SPAN_PATH_BYTES_MAX`]: a span keeps no allocation of its own).
    pub fn with_path(self, path: &[u8]) -> SpanStart {
        SpanStart {
            path: SpanPath::new(path),
            ..self
        }
    }

    /// With the host called: the `index`th of the peers the tracer was
    /// made with (the `--upstream` hosts, in order).
    pub fn with_peer(self, index: usize) -> SpanStart {
        SpanStart {
            peer: u8::try_from(index).ok(),
            ..self
        }
    }
}

/// The longest request path a span carries.
pub const SPAN_PATH_BYTES_MAX: usize = 64;

/// A request path copied into the span, so a span stays `Copy` and the
/// ring of finished spans never allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanPath {
    bytes: [u8; SPAN_PATH_BYTES_MAX],
    len: u8,
}

impl SpanPath {
    fn new(path: &[u8]) -> Option<SpanPath> {
        let mut bytes = [0; SPAN_PATH_BYTES_MAX];
        bytes.get_mut(..path.len())?.copy_from_slice(path);
        Some(SpanPath {
            bytes,
            len: path.len() as u8,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A host client spans call (an `--upstream`), its attributes encoded once
/// at start-up: OTLP's `url.full`, `server.address` and `server.port`,
/// Zipkin's `remoteEndpoint` and `http.url` tag.
#[derive(Debug)]
struct Peer {
    otlp_attributes: Vec<u8>,
    zipkin_endpoint: Vec<u8>,
    zipkin_tags: Vec<u8>,
}

impl Peer {
    fn new(target: &Target) -> Peer {
        let url = format!("http://{}{}", target.host, target.target);
        // The one URL parser names the host without its port; the address
        // drops an IPv6 literal's brackets.
        let (host, port) = HttpUrl::parse(&url).map_or_else(
            |_| (target.host.clone(), target.addr.port()),
            |parsed| (parsed.host, parsed.port),
        );
        let address = host.trim_start_matches('[').trim_end_matches(']');
        let mut otlp_attributes = b",{\"key\":\"url.full\",\"value\":{\"stringValue\":\"".to_vec();
        crate::http::response::write_json_str(&mut otlp_attributes, url.as_bytes());
        otlp_attributes
            .extend_from_slice(b"\"}},{\"key\":\"server.address\",\"value\":{\"stringValue\":\"");
        crate::http::response::write_json_str(&mut otlp_attributes, address.as_bytes());
        let _ = write!(
            otlp_attributes,
            "\"}}}},{{\"key\":\"server.port\",\"value\":{{\"intValue\":\"{port}\"}}}}"
        );
        let ip = match target.addr.ip() {
            std::net::IpAddr::V4(ip) => format!("\"ipv4\":\"{ip}\""),
            std::net::IpAddr::V6(ip) => format!("\"ipv6\":\"{ip}\""),
        };
        let mut zipkin_tags = b",\"http.url\":\"".to_vec();
        crate::http::response::write_json_str(&mut zipkin_tags, url.as_bytes());
        zipkin_tags.push(b'"');
        Peer {
            otlp_attributes,
            zipkin_endpoint: format!(",\"remoteEndpoint\":{{{ip},\"port\":{port}}}").into_bytes(),
            zipkin_tags,
        }
    }
}

/// A finished span, as it waits for export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: SpanStart,
    pub timestamp_us: u64,
    pub duration_us: u64,
    /// The HTTP status answered (server) or received (client; 0 for none).
    pub status: u16,
    pub request_id: RequestId,
    /// Client spans: `won`, `cancelled` or `failed`.
    pub outcome: Option<&'static str>,
}

/// What happened to a batch handed to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportOutcome {
    /// The collector answered 2xx.
    Delivered,
    /// It answered with another status, the connection failed, or the deadline passed.
    Failed,
}

/// The seam to the outbound HTTP/1.1 client: POST these bytes to this
/// collector with a deadline; the outcome comes back later through
/// [`Tracer::export_finished`]. Nothing else is asked of the client.
pub trait Post {
    /// Starts the request; false if the client cannot take it now (the batch
    /// is then kept for a later try).
    fn post(
        &mut self,
        to: &Target,
        content_type: &'static str,
        body: &[u8],
        deadline: Instant,
    ) -> bool;
}

/// Counts for /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceCounts {
    pub recorded: u64,
    /// Dropped for a full buffer, or in a batch the collector did not take.
    pub dropped: u64,
    /// In batches the collector took (a 2xx).
    pub exported: u64,
}

/// splitmix64: ids and sampling draws need to be spread, not secret, and a
/// draw must cost nothing next to a request. Seeded from the OS CSPRNG.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Never all zero, as W3C requires of ids.
    fn span_id(&mut self) -> [u8; 8] {
        (self.next_u64() | 1).to_be_bytes()
    }
}

/// Where a graceful stop is, for the spans still to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StopFlush {
    Serving,
    /// The stop began: what waits is due at once.
    Stopping,
    /// The rest of the stop is done: spans are delivered until then.
    Until(Instant),
    /// The deadline passed; nothing more is sent.
    Over,
}

#[derive(Debug)]
pub struct Tracer {
    config: TraceConfig,
    /// The hosts client spans call, by [`SpanStart::peer`].
    peers: Vec<Peer>,
    /// Requests are sampled when a draw falls below this.
    threshold: u64,
    rng: Rng,
    /// Wall-clock microseconds at `epoch`: span timestamps from loop instants.
    epoch: Instant,
    epoch_unix_us: u64,
    spans: VecDeque<Span>,
    oldest_waiting_since: Option<Instant>,
    /// After the client refused a batch: not asked again before this.
    retry_at: Option<Instant>,
    in_flight: bool,
    /// Spans in the batch in flight, counted when its outcome arrives.
    in_flight_spans: u64,
    counts: TraceCounts,
    /// The JSON of the batch being handed over, reused batch after batch.
    body: Vec<u8>,
    /// The loop pass's start: spans ended during the pass end then, until
    /// [`Tracer::end_pass`] moves their end to the pass's end.
    pass_start: Instant,
    /// Spans from here on ended in this pass.
    pass_from: usize,
    stop: StopFlush,
}

impl Tracer {
    /// `peers`: the hosts client spans may call (the `--upstream` hosts, in
    /// the order [`SpanStart::with_peer`] counts them).
    pub fn new(
        config: TraceConfig,
        peers: &[Target],
        seed: u64,
        now: Instant,
        wall: SystemTime,
    ) -> Tracer {
        let threshold = if config.sample_ratio >= 1.0 {
            u64::MAX
        } else {
            (config.sample_ratio.max(0.0) * u64::MAX as f64) as u64
        };
        let epoch_unix_us = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        Tracer {
            spans: VecDeque::with_capacity(config.buffer_spans),
            config,
            peers: peers.iter().map(Peer::new).collect(),
            threshold,
            rng: Rng(seed),
            epoch: now,
            epoch_unix_us,
            oldest_waiting_since: None,
            retry_at: None,
            in_flight: false,
            in_flight_spans: 0,
            counts: TraceCounts::default(),
            body: Vec::new(),
            pass_start: now,
            pass_from: 0,
            stop: StopFlush::Serving,
        }
    }

    /// A loop pass begins at `now` (the loop reads the clock once a pass).
    pub fn begin_pass(&mut self, now: Instant) {
        self.pass_start = now;
        self.pass_from = self.spans.len();
    }

    /// The loop pass ended at `end`: the spans ended during it end then
    /// (the time their replies took to be queued).
    pub fn end_pass(&mut self, end: Instant) {
        let extra = end.saturating_duration_since(self.pass_start).as_micros() as u64;
        for span in self.spans.range_mut(self.pass_from.min(self.spans.len())..) {
            // Zipkin rounds durations below a microsecond up; so do we.
            span.duration_us = span.duration_us.saturating_add(extra).max(1);
        }
        self.pass_from = self.spans.len();
    }

    pub fn counts(&self) -> TraceCounts {
        self.counts
    }

    /// Where batches go.
    pub fn collector(&self) -> &Target {
        &self.config.collector
    }

    /// A server span for a request, or None when it is not sampled. A valid
    /// caller's `traceparent` decides (its trace continues under its span);
    /// otherwise `--trace-sample` does, for a new trace.
    pub fn start(
        &mut self,
        traceparent: Option<&[u8]>,
        name: &'static str,
        method: &'static str,
        now: Instant,
    ) -> Option<SpanStart> {
        let (trace_id, parent_id) = match traceparent.and_then(parse_traceparent) {
            Some(caller) if !caller.sampled => return None,
            Some(caller) => (caller.trace_id, Some(caller.span_id)),
            None if self.threshold == u64::MAX || self.rng.next_u64() < self.threshold => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
                trace_id[8..].copy_from_slice(&self.rng.span_id());
                (trace_id, None)
            }
            None => return None,
        };
        Some(SpanStart {
            context: SpanContext {
                trace_id,
                span_id: self.rng.span_id(),
                sampled: true,
            },
            parent_id,
            kind: SpanKind::Server,
            name,
            method,
            started: now,
            path: None,
            peer: None,
        })
    }

    /// A client span inside `parent` (one per upstream attempt); its context
    /// goes out in the attempt's `traceparent`.
    pub fn child(
        &mut self,
        parent: &SpanStart,
        name: &'static str,
        method: &'static str,
        now: Instant,
    ) -> SpanStart {
        SpanStart {
            context: SpanContext {
                span_id: self.rng.span_id(),
                ..parent.context
            },
            parent_id: Some(parent.context.span_id),
            kind: SpanKind::Client,
            name,
            method,
            started: now,
            path: None,
            peer: None,
        }
    }

    /// Ends a span in this loop pass and keeps it for export (its end is
    /// the pass's, see [`Tracer::end_pass`]); dropped (and counted) when the
    /// buffer is full.
    pub fn finish(
        &mut self,
        start: SpanStart,
        status: u16,
        request_id: RequestId,
        outcome: Option<&'static str>,
    ) {
        let now = self.pass_start;
        if self.spans.len() >= self.config.buffer_spans {
            self.counts.dropped += 1;
            return;
        }
        let since_epoch = start.started.saturating_duration_since(self.epoch);
        let duration_us = now.saturating_duration_since(start.started).as_micros() as u64;
        self.spans.push_back(Span {
            start,
            timestamp_us: self.epoch_unix_us + since_epoch.as_micros() as u64,
            duration_us,
            status,
            request_id,
            outcome,
        });
        self.counts.recorded += 1;
        self.oldest_waiting_since.get_or_insert(now);
    }

    /// When [`Tracer::export_due`] has a batch to hand over, for the loop's
    /// sleep; None while a batch is in flight or nothing waits (but while a
    /// stop's flush waits for a batch in flight, its deadline).
    pub fn next_export(&self) -> Option<Instant> {
        let stop_deadline = match self.stop {
            StopFlush::Over => return None,
            StopFlush::Until(deadline) => Some(deadline),
            StopFlush::Serving | StopFlush::Stopping => None,
        };
        if self.in_flight {
            // While stopping, the loop wakes at the deadline to give up.
            return stop_deadline;
        }
        let oldest = self.oldest_waiting_since?;
        // Only spans of passes that are over have their end (`end_pass`).
        let due = if self.pass_from >= BATCH_SPANS || self.stop != StopFlush::Serving {
            oldest
        } else {
            oldest + FLUSH_INTERVAL
        };
        let due = self.retry_at.map_or(due, |retry| retry.max(due));
        Some(stop_deadline.map_or(due, |deadline| deadline.min(due)))
    }

    /// Loop phase: hands a batch to `client` when one is due and none is in flight.
    pub fn export_due(&mut self, now: Instant, client: &mut impl Post) {
        if self.next_export().is_none_or(|due| due > now) {
            return;
        }
        let mut deadline = now + EXPORT_DEADLINE;
        if let StopFlush::Until(stop_deadline) = self.stop {
            if now >= stop_deadline {
                return;
            }
            deadline = deadline.min(stop_deadline);
        }
        // Spans ended in this pass get their end when it is over.
        let take = self.pass_from.min(BATCH_SPANS_MAX);
        if take == 0 {
            return;
        }
        self.body.clear();
        let batch = self.spans.range(..take);
        match self.config.format {
            ExportFormat::Zipkin => encode_zipkin(&mut self.body, batch, &self.peers),
            ExportFormat::Otlp => encode_otlp(&mut self.body, batch, &self.peers),
        }
        if client.post(
            &self.config.collector,
            "application/json",
            &self.body,
            deadline,
        ) {
            self.spans.drain(..take);
            self.pass_from -= take;
            self.in_flight = true;
            self.in_flight_spans = take as u64;
            self.oldest_waiting_since = (!self.spans.is_empty()).then_some(now);
            self.retry_at = None;
        } else {
            self.retry_at = Some(now + FLUSH_INTERVAL);
        }
    }

    /// The client's word on the batch in flight. A failed batch is dropped
    /// (and counted), not retried: the buffer is for spans still to come.
    pub fn export_finished(&mut self, outcome: ExportOutcome) {
        if !self.in_flight {
            return;
        }
        self.in_flight = false;
        match outcome {
            ExportOutcome::Delivered => self.counts.exported += self.in_flight_spans,
            ExportOutcome::Failed => self.counts.dropped += self.in_flight_spans,
        }
        self.in_flight_spans = 0;
    }

    /// A graceful stop begins: what waits goes at once, not after
    /// [`FLUSH_INTERVAL`].
    pub fn begin_stop(&mut self) {
        if self.stop == StopFlush::Serving {
            self.stop = StopFlush::Stopping;
        }
    }

    /// Asked while stopping, once everything else is done: Some(0) when
    /// every span is delivered (or failed, and counted), None while some are
    /// still on their way and [`STOP_FLUSH_DEADLINE`] (counted from the first
    /// ask) has not passed; after it, Some(the spans given up), counted
    /// dropped.
    pub fn stop_flushed(&mut self, now: Instant) -> Option<u64> {
        let deadline = match self.stop {
            StopFlush::Until(deadline) => deadline,
            // Nothing more is sent: what ended since is given up at once.
            StopFlush::Over => now,
            StopFlush::Serving | StopFlush::Stopping => {
                self.stop = StopFlush::Until(now + STOP_FLUSH_DEADLINE);
                now + STOP_FLUSH_DEADLINE
            }
        };
        if self.spans.is_empty() && !self.in_flight {
            return Some(0);
        }
        if now < deadline {
            return None;
        }
        self.stop = StopFlush::Over;
        let given_up = self.spans.len() as u64 + self.in_flight_spans;
        self.spans.clear();
        self.pass_from = 0;
        self.oldest_waiting_since = None;
        self.in_flight = false;
        self.in_flight_spans = 0;
        self.counts.dropped += given_up;
        Some(given_up)
    }
}

/// Opens a span's JSON object with its ids in lowercase hex, under the
/// format's names for the span's own id and its parent's.
fn write_ids(out: &mut Vec<u8>, start: &SpanStart, span_key: &str, parent_key: &str) {
    out.extend_from_slice(b"{\"traceId\":\"");
    write_hex(out, &start.context.trace_id);
    let _ = write!(out, "\",\"{span_key}\":\"");
    write_hex(out, &start.context.span_id);
    out.push(b'"');
    if let Some(parent) = start.parent_id {
        let _ = write!(out, ",\"{parent_key}\":\"");
        write_hex(out, &parent);
        out.push(b'"');
    }
}

/// Zipkin v2 JSON: an array of spans (zipkin-api's `zipkin2-api.yaml`):
/// lowercase hex ids, `timestamp` and `duration` in microseconds, `kind`,
/// `localEndpoint.serviceName`, and string `tags`.
fn encode_zipkin<'s>(out: &mut Vec<u8>, spans: impl IntoIterator<Item = &'s Span>, peers: &[Peer]) {
    out.push(b'[');
    for (i, span) in spans.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_span(out, span, peers);
    }
    out.push(b']');
}

fn encode_span(out: &mut Vec<u8>, span: &Span, peers: &[Peer]) {
    let start = &span.start;
    let peer = start.peer.and_then(|p| peers.get(usize::from(p)));
    write_ids(out, start, "id", "parentId");
    let kind = match start.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    // io::Write on the body itself: no String per span.
    let _ = write!(out, ",\"kind\":\"{kind}\",\"name\":\"");
    out.extend(start.method.bytes().map(|b| b.to_ascii_lowercase()));
    out.push(b' ');
    crate::http::response::write_json_str(out, start.name.as_bytes());
    let _ = write!(
        out,
        "\",\"timestamp\":{},\"duration\":{}",
        span.timestamp_us, span.duration_us
    );
    out.extend_from_slice(b",\"localEndpoint\":{\"serviceName\":\"");
    out.extend_from_slice(SERVICE_NAME.as_bytes());
    out.extend_from_slice(b"\"}");
    if let Some(peer) = peer {
        out.extend_from_slice(&peer.zipkin_endpoint);
    }
    out.extend_from_slice(b",\"tags\":{\"http.method\":\"");
    out.extend_from_slice(start.method.as_bytes());
    out.extend_from_slice(b"\",\"http.route\":\"");
    crate::http::response::write_json_str(out, start.name.as_bytes());
    out.push(b'"');
    if let Some(path) = &start.path {
        out.extend_from_slice(b",\"http.path\":\"");
        crate::http::response::write_json_str(out, path.as_bytes());
        out.push(b'"');
    }
    if let Some(peer) = peer {
        out.extend_from_slice(&peer.zipkin_tags);
    }
    if span.status != 0 {
        let _ = write!(out, ",\"http.status_code\":\"{}\"", span.status);
        if span.status >= 500 {
            let _ = write!(out, ",\"error\":\"{}\"", span.status);
        }
    }
    out.extend_from_slice(b",\"request_id\":\"");
    crate::http::response::write_json_str(out, span.request_id.as_bytes());
    out.push(b'"');
    if let Some(outcome) = span.outcome {
        out.extend_from_slice(b",\"fibd.attempt\":\"");
        out.extend_from_slice(outcome.as_bytes());
        out.push(b'"');
        if outcome == "failed" {
            out.extend_from_slice(b",\"error\":\"failed\"");
        }
    }
    out.extend_from_slice(b"}}");
}

/// OTLP/HTTP JSON: one `ExportTraceServiceRequest` (opentelemetry-proto's
/// `trace/v1/trace.proto` under the OTLP JSON rules: lowerCamelCase names,
/// enums as integers, 64-bit integers as decimal strings, ids as lowercase
/// hex). One resource (`service.name`, `service.version`) and one scope
/// hold every span; attributes follow the HTTP semantic conventions.
fn encode_otlp<'s>(out: &mut Vec<u8>, spans: impl IntoIterator<Item = &'s Span>, peers: &[Peer]) {
    let _ = write!(
        out,
        "{{\"resourceSpans\":[{{\"resource\":{{\"attributes\":[\
         {{\"key\":\"service.name\",\"value\":{{\"stringValue\":\"{SERVICE_NAME}\"}}}},\
         {{\"key\":\"service.version\",\"value\":{{\"stringValue\":\"{SERVICE_VERSION}\"}}}}]}},\
         \"scopeSpans\":[{{\"scope\":{{\"name\":\"{SERVICE_NAME}\",\"version\":\"{SERVICE_VERSION}\"}},\
         \"spans\":["
    );
    for (i, span) in spans.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_otlp_span(out, span, peers);
    }
    out.extend_from_slice(b"]}]}]}");
}

/// `Span.SpanKind`: SPAN_KIND_SERVER and SPAN_KIND_CLIENT.
const OTLP_KIND_SERVER: u8 = 2;
const OTLP_KIND_CLIENT: u8 = 3;
/// `Status.StatusCode.STATUS_CODE_ERROR`; fibd leaves others unset.
const OTLP_STATUS_ERROR: u8 = 2;

fn encode_otlp_span(out: &mut Vec<u8>, span: &Span, peers: &[Peer]) {
    let start = &span.start;
    write_ids(out, start, "spanId", "parentSpanId");
    // Semantic conventions: `{method} {route}` for a server span; a client
    // span is named after the call.
    out.extend_from_slice(b",\"name\":\"");
    out.extend_from_slice(start.method.as_bytes());
    out.push(b' ');
    crate::http::response::write_json_str(out, start.name.as_bytes());
    let (kind, failed) = match start.kind {
        SpanKind::Server => (OTLP_KIND_SERVER, span.status >= 500),
        SpanKind::Client => (OTLP_KIND_CLIENT, span.outcome == Some("failed")),
    };
    let start_ns = u128::from(span.timestamp_us) * 1000;
    let end_ns = start_ns + u128::from(span.duration_us) * 1000;
    let _ = write!(
        out,
        "\",\"kind\":{kind},\"startTimeUnixNano\":\"{start_ns}\",\"endTimeUnixNano\":\"{end_ns}\",\
         \"attributes\":[{{\"key\":\"http.request.method\",\"value\":{{\"stringValue\":\""
    );
    out.extend_from_slice(start.method.as_bytes());
    out.extend_from_slice(b"\"}}");
    if start.kind == SpanKind::Server {
        out.extend_from_slice(b",{\"key\":\"http.route\",\"value\":{\"stringValue\":\"");
        crate::http::response::write_json_str(out, start.name.as_bytes());
        // fibd serves plain HTTP (a TLS proxy in front says so itself).
        out.extend_from_slice(
            b"\"}},{\"key\":\"url.scheme\",\"value\":{\"stringValue\":\"http\"}}",
        );
        if let Some(path) = &start.path {
            out.extend_from_slice(b",{\"key\":\"url.path\",\"value\":{\"stringValue\":\"");
            crate::http::response::write_json_str(out, path.as_bytes());
            out.extend_from_slice(b"\"}}");
        }
    }
    if let Some(peer) = start.peer.and_then(|p| peers.get(usize::from(p))) {
        out.extend_from_slice(&peer.otlp_attributes);
    }
    if span.status != 0 {
        let _ = write!(
            out,
            ",{{\"key\":\"http.response.status_code\",\"value\":{{\"intValue\":\"{}\"}}}}",
            span.status
        );
    }
    out.extend_from_slice(b",{\"key\":\"fibd.request_id\",\"value\":{\"stringValue\":\"");
    crate::http::response::write_json_str(out, span.request_id.as_bytes());
    out.extend_from_slice(b"\"}}");
    if let Some(outcome) = span.outcome {
        out.extend_from_slice(b",{\"key\":\"fibd.attempt\",\"value\":{\"stringValue\":\"");
        out.extend_from_slice(outcome.as_bytes());
        out.extend_from_slice(b"\"}}");
    }
    out.push(b']');
    if failed {
        let _ = write!(out, ",\"status\":{{\"code\":{OTLP_STATUS_ERROR}}}");
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn config(ratio: f64, buffer_spans: usize, format: ExportFormat) -> TraceConfig {
        let url = match format {
            ExportFormat::Zipkin => "http://127.0.0.1:9411/api/v2/spans",
            ExportFormat::Otlp => "http://127.0.0.1:4318/v1/traces",
        };
        TraceConfig {
            collector: Target::resolve(url).unwrap(),
            format,
            sample_ratio: ratio,
            buffer_spans,
        }
    }

    fn tracer(ratio: f64, buffer_spans: usize) -> (Tracer, Instant) {
        tracer_for(ratio, buffer_spans, ExportFormat::Zipkin)
    }

    fn tracer_for(ratio: f64, buffer_spans: usize, format: ExportFormat) -> (Tracer, Instant) {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let config = config(ratio, buffer_spans, format);
        let peers = [Target::resolve("http://127.0.0.1:9000/api/data?city=x").unwrap()];
        (Tracer::new(config, &peers, 42, now, wall), now)
    }

    fn id() -> RequestId {
        RequestId::from_caller(b"req-1").unwrap()
    }

    #[test]
    fn a_valid_traceparent_gives_its_ids_and_sampled_flag() {
        let c = parse_traceparent(VALID).unwrap();
        assert_eq!(c.trace_id[..4], [0x4b, 0xf9, 0x2f, 0x35]);
        assert_eq!(c.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(c.sampled);
        let unsampled = parse_traceparent(&[&VALID[..53], b"00"].concat()).unwrap();
        assert!(!unsampled.sampled);
        let other_flags = parse_traceparent(&[&VALID[..53], b"03"].concat()).unwrap();
        assert!(other_flags.sampled, "only bit 0 means sampled");
        let future = [&b"01"[..], &VALID[2..], b"-what-comes-next"].concat();
        assert!(
            parse_traceparent(&future).is_some(),
            "later versions may add fields"
        );
        assert_eq!(c.traceparent().as_bytes(), VALID);
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let zero_trace = b"00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        let zero_parent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01";
        let upper = b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01";
        let version_ff = [&b"ff"[..], &VALID[2..]].concat();
        let v00_longer = [VALID, b"-extra"].concat();
        let short = &VALID[..54];
        let bad_dash = [&VALID[..35], b"_", &VALID[36..]].concat();
        let not_hex = [&VALID[..10], b"g", &VALID[11..]].concat();
        for bad in [
            &zero_trace[..],
            zero_parent,
            upper,
            &version_ff,
            &v00_longer,
            short,
            &bad_dash,
            &not_hex,
            b"",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn the_callers_decision_wins_over_the_ratio() {
        let (mut never, now) = tracer(0.0, 16);
        let span = never.start(Some(VALID), "/next", "GET", now).unwrap();
        let caller = parse_traceparent(VALID).unwrap();
        assert_eq!(span.context.trace_id, caller.trace_id);
        assert_eq!(span.parent_id, Some(caller.span_id));
        assert_ne!(span.context.span_id, caller.span_id);
        assert!(never.start(None, "/next", "GET", now).is_none());
        assert!(never.start(Some(b"garbage"), "/next", "GET", now).is_none());
        let (mut always, _) = tracer(1.0, 16);
        let unsampled = [&VALID[..53], b"00"].concat();
        assert!(
            always
                .start(Some(&unsampled), "/next", "GET", now)
                .is_none()
        );
        let fresh = always.start(None, "/next", "GET", now).unwrap();
        assert_eq!(fresh.parent_id, None);
        assert_ne!(fresh.context.trace_id, [0; 16]);
    }

    #[test]
    fn the_ratio_samples_about_that_share() {
        let (mut t, now) = tracer(0.1, 16);
        let sampled = (0..100_000)
            .filter(|_| t.start(None, "/current", "GET", now).is_some())
            .count();
        assert!((9_000..11_000).contains(&sampled), "{sampled}");
    }

    /// A fake client: keeps the bodies, answers nothing (a hung collector)
    /// until the test says so.
    #[derive(Default)]
    struct Collector {
        bodies: Vec<(String, Vec<u8>)>,
        refuse: bool,
        asked: usize,
    }

    impl Post for Collector {
        fn post(
            &mut self,
            to: &Target,
            content_type: &'static str,
            body: &[u8],
            _: Instant,
        ) -> bool {
            assert_eq!(content_type, "application/json");
            self.asked += 1;
            if self.refuse {
                return false;
            }
            self.bodies.push((to.to_string(), body.to_vec()));
            true
        }
    }

    /// Ends `span` in a loop pass that ends at `at`.
    fn finish_at(
        t: &mut Tracer,
        span: SpanStart,
        status: u16,
        outcome: Option<&'static str>,
        at: Instant,
    ) {
        t.begin_pass(at);
        t.finish(span, status, id(), outcome);
        t.end_pass(at);
    }

    fn hex_of_len(v: &serde_json::Value, len: usize) -> bool {
        v.as_str()
            .is_some_and(|s| s.len() == len && s.bytes().all(|b| HEX.contains(&b)))
    }

    #[test]
    fn a_peer_is_named_by_its_host_without_port_or_brackets() {
        for (url, address, port, endpoint) in [
            ("http://[::1]:8080/a", "::1", 8080, r#""ipv6":"::1""#),
            // Whichever address localhost resolves to first, the port is the URL's.
            ("http://localhost/b", "localhost", 80, r#","port":80}"#),
            (
                "http://127.0.0.1:9/c",
                "127.0.0.1",
                9,
                r#""ipv4":"127.0.0.1""#,
            ),
        ] {
            let peer = Peer::new(&Target::resolve(url).unwrap());
            let attributes: serde_json::Value = serde_json::from_str(&format!(
                "[{}]",
                String::from_utf8_lossy(&peer.otlp_attributes[1..])
            ))
            .unwrap();
            assert_eq!(attributes[0]["value"]["stringValue"], url);
            assert_eq!(attributes[1]["value"]["stringValue"], address, "{url}");
            assert_eq!(attributes[2]["value"]["intValue"], port.to_string());
            let zipkin = String::from_utf8_lossy(&peer.zipkin_endpoint).into_owned();
            assert!(zipkin.contains(endpoint), "{zipkin}");
        }
    }

    #[test]
    fn exported_json_follows_the_zipkin_v2_span_model() {
        let (mut t, now) = tracer(0.0, 16);
        let server = t.start(Some(VALID), "/api/smart", "GET", now).unwrap();
        let server = server.with_path(b"/api/smart");
        let attempt = t.child(&server, "upstream", "GET", now + Duration::from_micros(10));
        let attempt = attempt.with_peer(0);
        let passed_on = parse_traceparent(attempt.context.traceparent().as_bytes()).unwrap();
        assert_eq!(passed_on.trace_id, server.context.trace_id);
        assert_eq!(passed_on.span_id, attempt.context.span_id);
        finish_at(
            &mut t,
            attempt,
            200,
            Some("won"),
            now + Duration::from_micros(900),
        );
        finish_at(&mut t, server, 503, None, now + Duration::from_millis(2));
        let mut collector = Collector::default();
        t.export_due(now + 2 * FLUSH_INTERVAL, &mut collector);
        assert_eq!(collector.bodies.len(), 1);
        let (url, body) = &collector.bodies[0];
        assert_eq!(url, "http://127.0.0.1:9411/api/v2/spans");
        let spans: serde_json::Value = serde_json::from_slice(body).unwrap();
        let spans = spans.as_array().unwrap();
        assert_eq!(spans.len(), 2);
        let (client, server) = (&spans[0], &spans[1]);
        for span in spans {
            assert!(hex_of_len(&span["traceId"], 32), "{span}");
            assert!(hex_of_len(&span["id"], 16), "{span}");
            assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(span["localEndpoint"]["serviceName"], "fibd");
            assert_eq!(span["tags"]["request_id"], "req-1");
            assert!(
                span["tags"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| v.is_string())
            );
            // Microseconds since the epoch: 1.8e9 s is 1.8e15 µs.
            let ts = span["timestamp"].as_u64().unwrap();
            assert!(
                (1_800_000_000_000_000..1_800_000_001_000_000).contains(&ts),
                "{ts}"
            );
        }
        assert_eq!(server["kind"], "SERVER");
        assert_eq!(server["name"], "get /api/smart");
        assert_eq!(server["parentId"], "00f067aa0ba902b7");
        assert_eq!(server["duration"], 2000);
        assert_eq!(server["tags"]["http.status_code"], "503");
        assert_eq!(server["tags"]["error"], "503");
        assert_eq!(client["kind"], "CLIENT");
        assert_eq!(client["parentId"], server["id"]);
        assert_eq!(client["duration"], 890);
        assert_eq!(
            client["timestamp"].as_u64().unwrap() - server["timestamp"].as_u64().unwrap(),
            10
        );
        assert_eq!(client["tags"]["fibd.attempt"], "won");
        assert!(client["tags"].get("error").is_none());
        assert_eq!(server["tags"]["http.path"], "/api/smart");
        assert_eq!(
            client["tags"]["http.url"],
            "http://127.0.0.1:9000/api/data?city=x"
        );
        assert_eq!(
            client["remoteEndpoint"],
            serde_json::json!({"ipv4": "127.0.0.1", "port": 9000})
        );
        assert!(server.get("remoteEndpoint").is_none());
        t.export_finished(ExportOutcome::Delivered);
        assert_eq!(t.counts().exported, 2);
    }

    #[test]
    fn batches_go_when_full_or_after_the_flush_interval_one_at_a_time() {
        let (mut t, now) = tracer(1.0, 1000);
        let mut collector = Collector::default();
        let end_spans = |t: &mut Tracer, n: usize| {
            for _ in 0..n {
                let s = t.start(None, "/current", "GET", now).unwrap();
                finish_at(t, s, 200, None, now);
            }
        };
        end_spans(&mut t, BATCH_SPANS - 1);
        t.export_due(now, &mut collector);
        assert!(collector.bodies.is_empty(), "not full, not old");
        end_spans(&mut t, 11);
        t.export_due(now, &mut collector);
        assert_eq!(collector.bodies.len(), 1, "a full batch goes at once");
        let first: serde_json::Value = serde_json::from_slice(&collector.bodies[0].1).unwrap();
        assert_eq!(
            first.as_array().unwrap().len(),
            BATCH_SPANS + 10,
            "with what waits besides"
        );
        end_spans(&mut t, 10);
        t.export_due(now + FLUSH_INTERVAL, &mut collector);
        assert_eq!(collector.bodies.len(), 1, "one in flight at most");
        t.export_finished(ExportOutcome::Delivered);
        t.export_due(
            now + FLUSH_INTERVAL - Duration::from_millis(1),
            &mut collector,
        );
        assert_eq!(collector.bodies.len(), 1, "10 wait for the interval");
        t.export_due(now + FLUSH_INTERVAL, &mut collector);
        assert_eq!(
            collector.bodies.len(),
            2,
            "the rest once the interval passed"
        );
        t.export_finished(ExportOutcome::Failed);
        assert_eq!(
            t.counts(),
            TraceCounts {
                recorded: BATCH_SPANS as u64 + 20,
                dropped: 10,
                exported: BATCH_SPANS as u64 + 10
            }
        );
        // A pile larger than a batch goes BATCH_SPANS_MAX at a time.
        end_spans(&mut t, BATCH_SPANS_MAX + 100);
        t.export_due(now, &mut collector);
        let third: serde_json::Value = serde_json::from_slice(&collector.bodies[2].1).unwrap();
        assert_eq!(third.as_array().unwrap().len(), BATCH_SPANS_MAX);
        assert_eq!(t.spans.len(), 100);
    }

    #[test]
    fn a_hung_collector_costs_dropped_spans_not_memory() {
        let (mut t, now) = tracer(1.0, 300);
        let capacity = t.spans.capacity();
        let mut collector = Collector::default();
        for i in 0..1000u32 {
            let at = now + Duration::from_millis(u64::from(i));
            let s = t.start(None, "/next", "POST", at).unwrap();
            finish_at(&mut t, s, 200, None, at);
            t.export_due(at, &mut collector);
        }
        // One batch left and never came back; the buffer filled behind it.
        assert_eq!(collector.bodies.len(), 1);
        assert_eq!(t.spans.len(), 300);
        assert_eq!(t.spans.capacity(), capacity, "the ring never grew");
        let counts = t.counts();
        assert_eq!(counts.dropped, 1000 - 300 - BATCH_SPANS as u64);
        t.export_finished(ExportOutcome::Failed);
        assert_eq!(t.counts().dropped, 1000 - 300);
        // A client that cannot take a batch now leaves it buffered, and is
        // asked again only after the flush interval.
        collector.refuse = true;
        let later = now + Duration::from_secs(5);
        // Full: due since the first span behind the batch in flight arrived.
        assert_eq!(t.next_export(), Some(now + Duration::from_millis(128)));
        t.export_due(later, &mut collector);
        assert_eq!((t.spans.len(), collector.asked), (300, 2));
        assert_eq!(t.next_export(), Some(later + FLUSH_INTERVAL));
        t.export_due(later + Duration::from_millis(999), &mut collector);
        assert_eq!(collector.asked, 2, "not asked on every loop pass");
        collector.refuse = false;
        t.export_due(later + FLUSH_INTERVAL, &mut collector);
        // What piled up behind the hung batch goes in one.
        assert_eq!((t.spans.len(), collector.bodies.len()), (0, 2));
        let second: serde_json::Value = serde_json::from_slice(&collector.bodies[1].1).unwrap();
        assert_eq!(second.as_array().unwrap().len(), 300);
        assert_eq!(t.next_export(), None, "a batch is in flight");
    }

    /// OTLP attributes as a map from key to its one typed value.
    fn attributes(span: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let value = a["value"].as_object().unwrap();
                assert_eq!(value.len(), 1, "one typed value: {a}");
                (a["key"].as_str().unwrap().to_owned(), a["value"].clone())
            })
            .collect()
    }

    #[test]
    fn exported_otlp_json_is_an_export_trace_service_request() {
        let (mut t, now) = tracer_for(1.0, 16, ExportFormat::Otlp);
        let server = t.start(Some(VALID), "/api/smart", "GET", now).unwrap();
        let server = server.with_path(b"/api/smart");
        let won = t.child(&server, "upstream", "GET", now + Duration::from_micros(10));
        let won = won.with_peer(0);
        let failed = t.child(&server, "upstream", "GET", now + Duration::from_micros(20));
        // A host the tracer was not told of: no peer attributes, no panic.
        let failed = failed.with_peer(7);
        finish_at(
            &mut t,
            won,
            200,
            Some("won"),
            now + Duration::from_micros(900),
        );
        finish_at(
            &mut t,
            failed,
            0,
            Some("failed"),
            now + Duration::from_micros(950),
        );
        finish_at(&mut t, server, 503, None, now + Duration::from_millis(2));
        let fresh = t.start(None, "/current", "GET", now).unwrap();
        let fresh = fresh.with_path(&[b'x'; SPAN_PATH_BYTES_MAX + 1]);
        finish_at(&mut t, fresh, 200, None, now + Duration::from_micros(3));
        let mut collector = Collector::default();
        t.export_due(now + 2 * FLUSH_INTERVAL, &mut collector);
        let (url, body) = &collector.bodies[0];
        assert_eq!(url, "http://127.0.0.1:4318/v1/traces");
        let request: serde_json::Value = serde_json::from_slice(body).unwrap();
        let resource_spans = request["resourceSpans"].as_array().unwrap();
        assert_eq!(resource_spans.len(), 1);
        let resource = attributes(&resource_spans[0]["resource"]);
        assert_eq!(resource["service.name"]["stringValue"], "fibd");
        assert_eq!(
            resource["service.version"]["stringValue"],
            env!("CARGO_PKG_VERSION")
        );
        let scope = &resource_spans[0]["scopeSpans"][0];
        assert_eq!(scope["scope"]["name"], "fibd");
        let spans = scope["spans"].as_array().unwrap();
        assert_eq!(spans.len(), 4);
        let (won, failed, server, fresh) = (&spans[0], &spans[1], &spans[2], &spans[3]);
        for span in spans {
            assert!(hex_of_len(&span["traceId"], 32), "{span}");
            assert!(hex_of_len(&span["spanId"], 16), "{span}");
            // 64-bit integers are decimal strings: nanoseconds since the epoch.
            let start: u128 = span["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
            let end: u128 = span["endTimeUnixNano"].as_str().unwrap().parse().unwrap();
            assert!(
                (1_800_000_000_000_000_000..1_800_000_001_000_000_000).contains(&start),
                "{start}"
            );
            assert!(end > start, "{span}");
            assert_eq!(attributes(span)["fibd.request_id"]["stringValue"], "req-1");
            assert_eq!(
                attributes(span)["http.request.method"]["stringValue"],
                "GET"
            );
        }
        assert_eq!(server["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(server["parentSpanId"], "00f067aa0ba902b7");
        assert_eq!(server["name"], "GET /api/smart");
        assert_eq!(server["kind"], 2);
        assert_eq!(server["status"]["code"], 2, "a 5xx is an error");
        let end_minus_start = |s: &serde_json::Value| {
            let n = |k: &str| s[k].as_str().unwrap().parse::<u128>().unwrap();
            n("endTimeUnixNano") - n("startTimeUnixNano")
        };
        assert_eq!(end_minus_start(server), 2_000_000);
        let attrs = attributes(server);
        assert_eq!(attrs["http.route"]["stringValue"], "/api/smart");
        assert_eq!(attrs["url.path"]["stringValue"], "/api/smart");
        assert_eq!(attrs["url.scheme"]["stringValue"], "http");
        assert_eq!(attrs["http.response.status_code"]["intValue"], "503");
        for attempt in [won, failed] {
            assert_eq!(attempt["kind"], 3);
            assert_eq!(attempt["parentSpanId"], server["spanId"]);
            assert_eq!(attempt["traceId"], server["traceId"]);
            assert!(
                attributes(attempt).get("http.route").is_none(),
                "server spans only"
            );
        }
        assert_eq!(end_minus_start(won), 890_000);
        let peer = attributes(won);
        assert_eq!(
            peer["url.full"]["stringValue"],
            "http://127.0.0.1:9000/api/data?city=x"
        );
        assert_eq!(peer["server.address"]["stringValue"], "127.0.0.1");
        assert_eq!(peer["server.port"]["intValue"], "9000");
        assert!(attributes(failed).get("url.full").is_none(), "unknown host");
        let fresh_attrs = attributes(fresh);
        assert!(fresh_attrs.get("url.path").is_none(), "too long to carry");
        assert_eq!(fresh_attrs["url.scheme"]["stringValue"], "http");
        assert_eq!(attributes(won)["fibd.attempt"]["stringValue"], "won");
        assert_eq!(
            attributes(won)["http.response.status_code"]["intValue"],
            "200"
        );
        assert!(won.get("status").is_none(), "unset: {won}");
        assert_eq!(attributes(failed)["fibd.attempt"]["stringValue"], "failed");
        assert!(
            attributes(failed)
                .get("http.response.status_code")
                .is_none(),
            "no answer"
        );
        assert_eq!(failed["status"]["code"], 2);
        assert!(fresh.get("parentSpanId").is_none(), "a root span: {fresh}");
        assert!(fresh.get("status").is_none());
        assert_ne!(fresh["traceId"], server["traceId"]);
    }

    #[test]
    fn encoding_a_batch_again_reuses_the_body() {
        let (mut t, now) = tracer_for(1.0, 1000, ExportFormat::Otlp);
        let mut collector = Collector::default();
        let mut capacities = Vec::new();
        for round in 0..3u32 {
            let at = now + 2 * FLUSH_INTERVAL * round;
            for _ in 0..BATCH_SPANS {
                let s = t.start(None, "/current", "GET", at).unwrap();
                finish_at(&mut t, s, 200, None, at);
            }
            t.export_due(at, &mut collector);
            t.export_finished(ExportOutcome::Delivered);
            capacities.push(t.body.capacity());
        }
        assert_eq!(collector.bodies.len(), 3);
        assert_eq!(
            capacities[1], capacities[2],
            "the body grew once: {capacities:?}"
        );
    }

    #[test]
    fn a_stop_sends_what_waits_at_once_and_waits_a_bounded_time() {
        for format in [ExportFormat::Zipkin, ExportFormat::Otlp] {
            let (mut t, now) = tracer_for(1.0, 1000, format);
            let mut collector = Collector::default();
            for _ in 0..3 {
                let s = t.start(None, "/next", "POST", now).unwrap();
                finish_at(&mut t, s, 200, None, now);
            }
            t.export_due(now, &mut collector);
            assert!(collector.bodies.is_empty(), "not due before the stop");
            t.begin_stop();
            assert_eq!(t.next_export(), Some(now), "due at once");
            t.export_due(now, &mut collector);
            assert_eq!(collector.bodies.len(), 1);
            // A span that ends meanwhile waits behind the batch in flight.
            let late = t.start(None, "/next", "POST", now).unwrap();
            finish_at(&mut t, late, 200, None, now);
            assert_eq!(t.stop_flushed(now), None, "in flight");
            assert_eq!(
                t.next_export(),
                Some(now + STOP_FLUSH_DEADLINE),
                "wake to give up"
            );
            t.export_finished(ExportOutcome::Delivered);
            assert_eq!(t.stop_flushed(now), None, "one more waits");
            t.export_due(now, &mut collector);
            assert_eq!(collector.bodies.len(), 2);
            t.export_finished(ExportOutcome::Delivered);
            assert_eq!(t.stop_flushed(now), Some(0));
            assert_eq!(t.counts().exported, 4);
        }
    }

    #[test]
    fn a_stop_gives_up_on_a_hung_collector_at_its_deadline() {
        let (mut t, now) = tracer_for(1.0, 1000, ExportFormat::Otlp);
        let mut collector = Collector::default();
        for _ in 0..5 {
            let s = t.start(None, "/next", "POST", now).unwrap();
            finish_at(&mut t, s, 200, None, now);
        }
        t.begin_stop();
        t.export_due(now, &mut collector);
        let s = t.start(None, "/next", "POST", now).unwrap();
        finish_at(&mut t, s, 200, None, now);
        assert_eq!(t.stop_flushed(now), None);
        let almost = now + STOP_FLUSH_DEADLINE - Duration::from_millis(1);
        assert_eq!(t.stop_flushed(almost), None);
        assert_eq!(t.stop_flushed(now + STOP_FLUSH_DEADLINE), Some(6));
        assert_eq!(t.counts().dropped, 6);
        assert_eq!(t.next_export(), None, "nothing more is sent");
        // The given-up batch's late answer counts nothing twice.
        t.export_finished(ExportOutcome::Delivered);
        assert_eq!((t.counts().exported, t.counts().dropped), (0, 6));
        assert_eq!(t.stop_flushed(now + 2 * STOP_FLUSH_DEADLINE), Some(0));
        // A client that cannot take the batch: asked again before the deadline.
        let (mut t, now) = tracer_for(1.0, 1000, ExportFormat::Zipkin);
        let s = t.start(None, "/next", "POST", now).unwrap();
        finish_at(&mut t, s, 200, None, now);
        t.begin_stop();
        assert_eq!(t.stop_flushed(now), None);
        collector.refuse = true;
        t.export_due(now, &mut collector);
        assert_eq!(t.next_export(), Some(now + FLUSH_INTERVAL));
    }
}
