//! Counters and histograms for Prometheus, written by hand in the text format
//! 0.0.4. Everything is a plain integer owned by the event-loop thread: a
//! request costs a few additions, no lock and no allocation.

use std::fmt::Write as _;
use std::time::Duration;

use crate::http::response::Status;
use crate::routes::Route;

/// One row per route, plus one for requests that matched none.
const ROUTE_ROWS: usize = Route::ALL.len() + 1;

/// Status codes counted individually; anything else lands in the last slot.
const CODES: [u16; 19] = [
    100, 200, 304, 400, 401, 403, 404, 405, 406, 408, 409, 413, 414, 422, 429, 431, 501, 503, 505,
];
const CODE_SLOTS: usize = CODES.len() + 1;

/// Seconds; request latencies on the loop are microseconds.
const LATENCY_BOUNDS: [f64; 12] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
    1.0,
];
/// Seconds; one commit is two device flushes, about a millisecond here.
const COMMIT_BOUNDS: [f64; 11] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05, 0.25, 1.0,
];
const BATCH_BOUNDS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0];
/// Seconds; F(10^7) takes about two.
const COMPUTE_BOUNDS: [f64; 9] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 10.0];

/// A cumulative histogram with fixed bounds.
#[derive(Debug)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, value: f64) {
        self.observe_n(value, 1);
    }

    /// `n` observations of the same value.
    fn observe_n(&mut self, value: f64, n: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.counts[i] += n;
        }
        self.sum += value * n as f64;
        self.count += n;
    }

    fn write(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(out, "{name}_sum {}", self.sum);
        let _ = writeln!(out, "{name}_count {}", self.count);
    }
}

/// Values the loop knows at scrape time rather than counting.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub committed_index: u64,
    pub pending_index: u64,
    pub fib_cache_bytes: usize,
    pub fib_cache_entries: usize,
    pub fib_queue: usize,
    pub rate_limit_clients: usize,
}

#[derive(Debug)]
pub struct Metrics {
    requests: [[u64; CODE_SLOTS]; ROUTE_ROWS],
    request_seconds: Histogram,
    commit_seconds: Histogram,
    commit_batch_steps: Histogram,
    commit_failures: u64,
    accepted: u64,
    closed: u64,
    fib_cache_hits: u64,
    fib_cache_misses: u64,
    fib_compute_seconds: Histogram,
    rate_limited: u64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: [[0; CODE_SLOTS]; ROUTE_ROWS],
            request_seconds: Histogram::new(&LATENCY_BOUNDS),
            commit_seconds: Histogram::new(&COMMIT_BOUNDS),
            commit_batch_steps: Histogram::new(&BATCH_BOUNDS),
            commit_failures: 0,
            accepted: 0,
            closed: 0,
            fib_cache_hits: 0,
            fib_cache_misses: 0,
            fib_compute_seconds: Histogram::new(&COMPUTE_BOUNDS),
            rate_limited: 0,
        }
    }
}

impl Metrics {
    /// Counts one answer; `route` is None for a path that matched no route.
    pub fn request(&mut self, route: Option<Route>, status: Status) {
        let code = status.code();
        let slot = CODES.iter().position(|&c| c == code).unwrap_or(CODES.len());
        let row = route.map_or(Route::ALL.len(), |r| r as usize);
        self.requests[row][slot] += 1;
        if code == 429 {
            self.rate_limited += 1;
        }
    }

    /// `answered` requests read in one loop pass had their replies queued
    /// `elapsed` after the pass began. Timed per connection, not per request:
    /// requests that arrived in one read share their fate, and a clock read
    /// per request cost 7% of the loop's time under pipelining.
    pub fn answered(&mut self, answered: u64, elapsed: Duration) {
        self.request_seconds
            .observe_n(elapsed.as_secs_f64(), answered);
    }

    pub fn connection_opened(&mut self) {
        self.accepted += 1;
    }

    pub fn connection_closed(&mut self) {
        self.closed += 1;
    }

    pub fn batch_submitted(&mut self, steps: u64) {
        self.commit_batch_steps.observe(steps as f64);
    }

    pub fn commit(&mut self, elapsed: Option<Duration>) {
        match elapsed {
            Some(d) => self.commit_seconds.observe(d.as_secs_f64()),
            None => self.commit_failures += 1,
        }
    }

    pub fn fib_cache(&mut self, hit: bool) {
        if hit {
            self.fib_cache_hits += 1;
        } else {
            self.fib_cache_misses += 1;
        }
    }

    pub fn fib_computed(&mut self, elapsed: Duration) {
        self.fib_compute_seconds.observe(elapsed.as_secs_f64());
    }

    /// The exposition, in the Prometheus text format 0.0.4.
    pub fn render(&self, gauges: &Gauges, out: &mut String) {
        out.push_str("# HELP fibd_requests_total Requests answered, by route and status code.\n");
        out.push_str("# TYPE fibd_requests_total counter\n");
        let labels = Route::ALL.iter().map(|r| r.path()).chain(["other"]);
        for (row, route) in self.requests.iter().zip(labels) {
            for (slot, &count) in row.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                let code = CODES.get(slot).map_or("other".to_owned(), u16::to_string);
                let _ = writeln!(
                    out,
                    "fibd_requests_total{{route=\"{route}\",code=\"{code}\"}} {count}"
                );
            }
        }
        self.request_seconds.write(
            out,
            "fibd_request_duration_seconds",
            "From the loop pass that read a request to its reply being queued (waiting for a commit or a computation excluded).",
        );
        self.commit_seconds.write(
            out,
            "fibd_commit_duration_seconds",
            "Time for one group commit, including both device flushes.",
        );
        self.commit_batch_steps.write(
            out,
            "fibd_commit_batch_steps",
            "Stepper mutations made durable by one commit.",
        );
        counter(
            out,
            "fibd_commit_failures_total",
            "Commits that failed.",
            self.commit_failures,
        );
        counter(
            out,
            "fibd_connections_accepted_total",
            "Connections accepted.",
            self.accepted,
        );
        gauge(
            out,
            "fibd_connections_open",
            "Connections open now.",
            self.accepted - self.closed,
        );
        gauge(
            out,
            "fibd_stepper_index",
            "The committed stepper index.",
            gauges.committed_index,
        );
        gauge(
            out,
            "fibd_stepper_pending_index",
            "The stepper index including steps awaiting their commit.",
            gauges.pending_index,
        );
        counter(
            out,
            "fibd_fib_cache_hits_total",
            "/v1/fib answers served from the cache.",
            self.fib_cache_hits,
        );
        counter(
            out,
            "fibd_fib_cache_misses_total",
            "/v1/fib answers that needed a computation.",
            self.fib_cache_misses,
        );
        gauge(
            out,
            "fibd_fib_cache_bytes",
            "Bytes of rendered values in the /v1/fib cache.",
            gauges.fib_cache_bytes as u64,
        );
        gauge(
            out,
            "fibd_fib_cache_entries",
            "Values in the /v1/fib cache.",
            gauges.fib_cache_entries as u64,
        );
        gauge(
            out,
            "fibd_fib_queue_length",
            "F(n) computations waiting for the worker.",
            gauges.fib_queue as u64,
        );
        self.fib_compute_seconds.write(
            out,
            "fibd_fib_compute_duration_seconds",
            "Time to compute and render one F(n) off the event loop.",
        );
        counter(
            out,
            "fibd_rate_limited_total",
            "Requests refused with 429.",
            self.rate_limited,
        );
        gauge(
            out,
            "fibd_rate_limit_clients",
            "Clients with a token bucket (bounded; full buckets are evicted first).",
            gauges.rate_limit_clients as u64,
        );
    }
}

/// Requests per API key, labelled by the key's name from the key file: a
/// small set the operator fixed, never anything a client sent. Keys with no
/// requests are listed too, so a scrape shows which keys are loaded.
pub fn render_key_counts<'a>(out: &mut String, keys: impl Iterator<Item = (&'a str, u64, u64)>) {
    let mut limited = String::new();
    out.push_str("# HELP fibd_api_key_requests_total Requests made with each API key.\n");
    out.push_str("# TYPE fibd_api_key_requests_total counter\n");
    for (name, requests, rate_limited) in keys {
        let _ = writeln!(
            out,
            "fibd_api_key_requests_total{{key=\"{name}\"}} {requests}"
        );
        let _ = writeln!(
            limited,
            "fibd_api_key_rate_limited_total{{key=\"{name}\"}} {rate_limited}"
        );
    }
    out.push_str(
        "# HELP fibd_api_key_rate_limited_total Requests with each API key refused with 429.\n",
    );
    out.push_str("# TYPE fibd_api_key_rate_limited_total counter\n");
    out.push_str(&limited);
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counters_labelled() {
        let mut m = Metrics::default();
        m.request(Some(Route::Next), Status::OK);
        m.request(Some(Route::Next), Status::OK);
        m.answered(2, Duration::from_micros(20));
        m.answered(1, Duration::from_millis(3));
        m.request(None, Status::NOT_FOUND);
        m.commit(Some(Duration::from_micros(900)));
        let mut out = String::new();
        m.render(&Gauges::default(), &mut out);
        assert!(
            out.contains("fibd_requests_total{route=\"/next\",code=\"200\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("fibd_requests_total{route=\"other\",code=\"404\"} 1\n"));
        assert!(
            out.contains("fibd_request_duration_seconds_bucket{le=\"0.000025\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("fibd_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("fibd_commit_duration_seconds_count 1\n"));
    }

    #[test]
    fn key_counts_are_labelled_by_name() {
        let mut out = String::new();
        render_key_counts(&mut out, [("ci-bot", 5, 2), ("idle", 0, 0)].into_iter());
        assert!(
            out.contains("fibd_api_key_requests_total{key=\"ci-bot\"} 5\n"),
            "{out}"
        );
        assert!(
            out.contains("fibd_api_key_requests_total{key=\"idle\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("fibd_api_key_rate_limited_total{key=\"ci-bot\"} 2\n"),
            "{out}"
        );
        let limited_at = out.find("fibd_api_key_rate_limited_total{").unwrap();
        assert!(out.find("# TYPE fibd_api_key_rate_limited_total").unwrap() < limited_at);
    }
}
