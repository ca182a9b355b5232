//! Counters and histograms, written by hand in the Prometheus text format
//! 0.0.4 (`/metrics`) and as compact JSON for the built-in dashboard
//! (`/metrics.json`, shaped as the `Json` writer's doc shows); one walk over the metrics feeds both, so
//! they cannot disagree. Everything is a plain integer owned by the
//! event-loop thread: a request costs a few additions, no lock and no
//! allocation.
//!
//! The services' families, which the dashboard (`src/routes/dashboard.html`), the
//! Grafana dashboard and the alert rules (`deploy/`) read: primes tasks
//! (`fibd_primes_tasks_total{status}`, `fibd_primes_queue_length` and
//! `_capacity`, the table; see `expose_primes`) and /api/smart
//! (`fibd_smart_calls_total{outcome}`, `fibd_smart_attempts`,
//! `fibd_smart_attempts_sent_total{kind}`, the budget and the hosts,
//! `fibd_upstream_duration_seconds`; see `expose_upstream`).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use crate::http::response::Status;
use crate::routes::route::Route;
use crate::services::primes::callback::CallbackCounts;
use crate::services::primes::service::PrimesCounts;
use crate::services::smart::hosts::HostOutcome;
use crate::services::smart::service::SmartGauges;
use crate::services::smart::{AttemptKind, CallEnd};
use crate::store::etcd::election::ElectionCall;
use crate::store::etcd::{CallKind, EtcdStats};

/// One row per route, plus one for requests that matched none.
const ROUTE_ROWS: usize = Route::ALL.len() + 1;

/// Status codes counted individually; anything else lands in the last slot.
const CODES: [u16; 21] = [
    100, 200, 202, 304, 400, 401, 403, 404, 405, 406, 408, 409, 413, 414, 415, 422, 429, 431, 501,
    503, 505,
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
/// Seconds from a task's acceptance to done: a table hit is 0, a sieve of
/// the first million primes tens of milliseconds, a queue behind it more.
const TASK_BOUNDS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];
/// Settle to delivery: a receiver on the same host answers within a
/// millisecond or two; retries after back-off take seconds to an hour.
const CALLBACK_BOUNDS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 5.0, 60.0, 600.0, 3600.0,
];

/// Seconds; one upstream attempt, from its send to its outcome.
const UPSTREAM_BOUNDS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Attempts sent for one /api/smart call: 0 (none could be sent) to 3.
const ATTEMPT_BOUNDS: [f64; 4] = [0.0, 1.0, 2.0, 3.0];
/// What a reader of /metrics.json is watching, so the dashboard can say
/// which fibd it is (an operator may have several open): fixed at start.
pub struct Watched {
    pub version: &'static str,
    /// Every address fibd is bound to.
    pub listeners: ListenAddrs,
    pub store: WatchedStore,
}

/// Where the index is kept.
pub enum WatchedStore {
    Lmdb {
        data_dir: String,
    },
    Etcd {
        cluster: String,
        node: String,
        endpoints: Vec<String>,
    },
}

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
}

/// Values the loop knows at scrape time rather than counting.
#[derive(Clone, Copy, Debug, Default)]
pub struct Gauges {
    pub ready: bool,
    pub connections_max: usize,
    pub committed_index: u64,
    pub pending_index: u64,
    pub fib_cache_bytes: usize,
    pub fib_cache_entries: usize,
    pub fib_queue: usize,
    pub fib_queue_capacity: usize,
    pub rate_limit_clients: usize,
    pub upstream: crate::net::upstream::PoolStats,
    pub smart: SmartGauges,
    pub trace_spans_recorded: u64,
    pub trace_spans_dropped: u64,
    pub trace_spans_exported: u64,
    pub start_time_unix_seconds: u64,
    /// Since start, on the monotonic clock (JSON only: the page's time base).
    pub uptime: Duration,
    pub primes: PrimesGauges,
    /// `--store etcd` only: etcd's counters, and the stepper's cursor jumps.
    pub etcd: Option<(EtcdStats, u64)>,
    pub listeners: ListenAddrs,
}

/// Where fibd listens, so a scrape (or the dashboard) can tell which port
/// it reached: `fibd_listener_info{listener, address}`.
#[derive(Clone, Copy, Debug, Default)]
pub struct ListenAddrs {
    pub public: Option<SocketAddr>,
    /// `--admin-listen`, or the socket systemd passed named `admin`.
    pub admin: Option<SocketAddr>,
}

impl ListenAddrs {
    /// Each bound listener, `public` first, named as /metrics labels it.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, SocketAddr)> {
        [("public", self.public), ("admin", self.admin)]
            .into_iter()
            .filter_map(|(name, addr)| Some((name, addr?)))
    }
}

/// The primes tasks' state at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct PrimesGauges {
    pub counts: PrimesCounts,
    pub stored: usize,
    pub pending: usize,
    /// Readers parked until their task is final (`?wait`).
    pub waiters: usize,
    pub table_primes: u64,
    pub table_bytes: usize,
    /// Tasks that may wait for a sieve (--primes-queue).
    pub queue_capacity: usize,
    pub callbacks: CallbackCounts,
    /// Callbacks not delivered or failed yet.
    pub callbacks_undelivered: usize,
    pub callbacks_in_flight: usize,
}

#[derive(Debug)]
pub struct Metrics {
    requests: [[u64; CODE_SLOTS]; ROUTE_ROWS],
    request_seconds: Histogram,
    commit_seconds: Histogram,
    commit_batch_steps: Histogram,
    commit_failures: u64,
    commit_flushes: u64,
    accepted: u64,
    closed: u64,
    fib_cache_hits: u64,
    fib_cache_misses: u64,
    fib_compute_seconds: Histogram,
    rate_limited: u64,
    smart_outcomes: [u64; CallEnd::LABELS.len()],
    smart_attempts: Histogram,
    upstream_seconds: Histogram,
    etcd_seconds: Histogram,
    primes_task_seconds: Histogram,
    callback_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: [[0; CODE_SLOTS]; ROUTE_ROWS],
            request_seconds: Histogram::new(&LATENCY_BOUNDS),
            commit_seconds: Histogram::new(&COMMIT_BOUNDS),
            commit_batch_steps: Histogram::new(&BATCH_BOUNDS),
            commit_failures: 0,
            commit_flushes: 0,
            accepted: 0,
            closed: 0,
            fib_cache_hits: 0,
            fib_cache_misses: 0,
            fib_compute_seconds: Histogram::new(&COMPUTE_BOUNDS),
            rate_limited: 0,
            smart_outcomes: [0; CallEnd::LABELS.len()],
            smart_attempts: Histogram::new(&ATTEMPT_BOUNDS),
            upstream_seconds: Histogram::new(&UPSTREAM_BOUNDS),
            etcd_seconds: Histogram::new(&COMMIT_BOUNDS),
            primes_task_seconds: Histogram::new(&TASK_BOUNDS),
            callback_seconds: Histogram::new(&CALLBACK_BOUNDS),
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

    /// A commit carried `writes` mutations (steps and task records).
    pub fn batch_committed(&mut self, writes: u64) {
        self.commit_batch_steps.observe(writes as f64);
    }

    /// Device flushes a durable batch took (its log frame's, and a
    /// checkpoint's when one went first).
    pub fn flushed(&mut self, flushes: u32) {
        self.commit_flushes += u64::from(flushes);
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

    /// One /api/smart call ended so, after sending `attempts`.
    pub fn smart_outcome(&mut self, end: CallEnd, attempts: u8) {
        self.smart_outcomes[end.slot()] += 1;
        self.smart_attempts.observe(f64::from(attempts));
    }

    /// One outbound call finished (answered or failed) after `elapsed`.
    pub fn upstream_call(&mut self, elapsed: Duration) {
        self.upstream_seconds.observe(elapsed.as_secs_f64());
    }

    /// One etcd call, from its send to its answer or failure.
    pub fn etcd_call(&mut self, elapsed: Duration) {
        self.etcd_seconds.observe(elapsed.as_secs_f64());
    }

    /// A primes task done `elapsed_ms` after it was accepted.
    pub fn primes_task_done(&mut self, elapsed_ms: u64) {
        self.primes_task_seconds.observe(elapsed_ms as f64 / 1000.0);
    }

    /// A callback delivered `latency` after its task's settled state was durable.
    pub fn callback_delivered(&mut self, latency: Duration) {
        self.callback_seconds.observe(latency.as_secs_f64());
    }

    /// The exposition, in the Prometheus text format 0.0.4.
    pub fn render(&self, gauges: &Gauges, out: &mut String) {
        self.expose(
            gauges,
            &mut PrometheusText {
                out,
                family: ("", &[]),
            },
        );
    }

    /// The same counters as compact JSON for the dashboard (see [`Json`]),
    /// after what is being watched.
    pub fn render_json(&self, gauges: &Gauges, watched: &Watched, out: &mut String) {
        let mut json = Json::start(out, gauges.uptime, watched);
        self.expose(gauges, &mut json);
        json.finish();
    }

    /// Every metric, once, in whichever format `sink` writes: the two
    /// expositions cannot drift apart.
    fn expose(&self, gauges: &Gauges, sink: &mut dyn Exposition) {
        sink.family(
            Kind::Counter,
            "fibd_requests_total",
            "Requests answered, by route and status code.",
            &["route", "code"],
        );
        let labels = Route::ALL.iter().map(|r| r.path()).chain(["other"]);
        let mut code_text = String::new();
        for (row, route) in self.requests.iter().zip(labels) {
            for (slot, &count) in row.iter().enumerate() {
                if count == 0 {
                    continue;
                }
                code_text.clear();
                match CODES.get(slot) {
                    Some(code) => {
                        let _ = write!(code_text, "{code}");
                    }
                    None => code_text.push_str("other"),
                }
                sink.series(&[route, &code_text], count);
            }
        }
        sink.histogram(
            "fibd_request_duration_seconds",
            "From the loop pass that read a request to its reply being queued (waiting for a commit or a computation excluded).",
            &self.request_seconds,
        );
        sink.histogram(
            "fibd_commit_duration_seconds",
            "From a group commit's write to its batch being durable (one device flush).",
            &self.commit_seconds,
        );
        sink.histogram(
            "fibd_commit_batch_steps",
            "Stepper mutations made durable by one commit.",
            &self.commit_batch_steps,
        );
        let scalars: [(Kind, &str, &str, u64); 20] = [
            (
                Kind::Counter,
                "fibd_commit_failures_total",
                "Commits that failed.",
                self.commit_failures,
            ),
            (
                Kind::Counter,
                "fibd_commit_flushes_total",
                "Device flushes of the store: one per batch (its write-ahead log frame), two more per checkpoint into LMDB.",
                self.commit_flushes,
            ),
            (
                Kind::Gauge,
                "fibd_ready",
                "1 while commits succeed (/readyz answers 200), else 0.",
                u64::from(gauges.ready),
            ),
            (
                Kind::Counter,
                "fibd_connections_accepted_total",
                "Connections accepted.",
                self.accepted,
            ),
            (
                Kind::Gauge,
                "fibd_connections_open",
                "Connections open now.",
                self.accepted - self.closed,
            ),
            (
                Kind::Gauge,
                "fibd_connections_max",
                "Connections open at most (--max-connections); more wait in the backlog.",
                gauges.connections_max as u64,
            ),
            (
                Kind::Gauge,
                "fibd_stepper_index",
                "The committed stepper index.",
                gauges.committed_index,
            ),
            (
                Kind::Gauge,
                "fibd_stepper_pending_index",
                "The stepper index including steps awaiting their commit.",
                gauges.pending_index,
            ),
            (
                Kind::Counter,
                "fibd_fib_cache_hits_total",
                "/v1/fib answers served from the cache.",
                self.fib_cache_hits,
            ),
            (
                Kind::Counter,
                "fibd_fib_cache_misses_total",
                "/v1/fib answers that needed a computation.",
                self.fib_cache_misses,
            ),
            (
                Kind::Gauge,
                "fibd_fib_cache_bytes",
                "Bytes of rendered values in the /v1/fib cache.",
                gauges.fib_cache_bytes as u64,
            ),
            (
                Kind::Gauge,
                "fibd_fib_cache_entries",
                "Values in the /v1/fib cache.",
                gauges.fib_cache_entries as u64,
            ),
            (
                Kind::Gauge,
                "fibd_fib_queue_length",
                "F(n) computations waiting for the worker.",
                gauges.fib_queue as u64,
            ),
            (
                Kind::Gauge,
                "fibd_fib_queue_capacity",
                "F(n) computations that may wait (--fib-queue); more get 503.",
                gauges.fib_queue_capacity as u64,
            ),
            (
                Kind::Counter,
                "fibd_rate_limited_total",
                "Requests refused with 429.",
                self.rate_limited,
            ),
            (
                Kind::Gauge,
                "fibd_rate_limit_clients",
                "Clients with a token bucket (bounded; full buckets are evicted first).",
                gauges.rate_limit_clients as u64,
            ),
            (
                Kind::Counter,
                "fibd_trace_spans_total",
                "Request spans recorded for export (sampled requests, with --trace-zipkin).",
                gauges.trace_spans_recorded,
            ),
            (
                Kind::Counter,
                "fibd_trace_spans_dropped_total",
                "Spans dropped: the export buffer was full, or the collector did not take their batch.",
                gauges.trace_spans_dropped,
            ),
            (
                Kind::Counter,
                "fibd_trace_spans_exported_total",
                "Spans in batches the Zipkin collector took (a 2xx answer).",
                gauges.trace_spans_exported,
            ),
            (
                Kind::Gauge,
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, in seconds.",
                gauges.start_time_unix_seconds,
            ),
        ];
        for (kind, name, help, value) in scalars {
            sink.scalar(kind, name, help, value);
        }
        sink.histogram(
            "fibd_fib_compute_duration_seconds",
            "Time to compute and render one F(n) off the event loop.",
            &self.fib_compute_seconds,
        );
        expose_listeners(&gauges.listeners, sink);
        self.expose_upstream(gauges, sink);
        self.expose_primes(&gauges.primes, sink);
        if let Some((stats, jumps)) = &gauges.etcd {
            self.expose_etcd(stats, *jumps, sink);
        }
    }

    /// `--store etcd`: the etcd calls, the election and what they found.
    fn expose_etcd(&self, stats: &EtcdStats, jumps: u64, sink: &mut dyn Exposition) {
        sink.family(
            Kind::Counter,
            "fibd_etcd_calls_total",
            "Calls for the index (read, txn, relay to the leader, fence) and the election \
             (lease_grant, lease_keepalive, campaign, lease_revoke), by outcome (answered, failed).",
            &["kind", "outcome"],
        );
        let index = CallKind::ALL.iter().map(|k| k.name()).zip(stats.calls);
        let election = ElectionCall::ALL
            .iter()
            .map(|k| k.name())
            .zip(stats.election.calls);
        for (kind, counts) in index.chain(election) {
            sink.series(&[kind, "answered"], counts[0]);
            sink.series(&[kind, "failed"], counts[1]);
        }
        sink.histogram(
            "fibd_etcd_call_duration_seconds",
            "etcd calls and relays, from the send to the answer or failure.",
            &self.etcd_seconds,
        );
        sink.scalar(
            Kind::Gauge,
            "fibd_cluster_leader",
            "1 while this node leads the cluster (it batches every node's steps), else 0.",
            u64::from(stats.leader),
        );
        let scalars: [(&str, &str, u64); 6] = [
            (
                "fibd_etcd_txn_conflicts_total",
                "Leader transactions refused by a compare (the index, the term or a fence moved).",
                stats.conflicts,
            ),
            (
                "fibd_etcd_unknown_outcomes_total",
                "Fences sent to settle a transaction or relay whose answer was lost.",
                stats.unknown_outcomes,
            ),
            (
                "fibd_cluster_terms_won_total",
                "Elections this node won.",
                stats.election.won,
            ),
            (
                "fibd_cluster_step_downs_total",
                "Times this node stopped leading (its lease ran out, or another node holds the key).",
                stats.election.stepped_down,
            ),
            (
                "fibd_cluster_relays_applied_total",
                "Batches of other nodes' steps this node applied as the leader.",
                stats.relays_applied,
            ),
            (
                "fibd_etcd_cursor_jumps_total",
                "Cursor moves too long for the loop, computed on the compute worker.",
                jumps,
            ),
        ];
        for (name, help, value) in scalars {
            sink.scalar(Kind::Counter, name, help, value);
        }
    }

    /// /api/smart and its outbound client.
    fn expose_upstream(&self, gauges: &Gauges, sink: &mut dyn Exposition) {
        sink.family(
            Kind::Counter,
            "fibd_smart_calls_total",
            "/api/smart calls answered, by outcome.",
            &["outcome"],
        );
        for (outcome, count) in CallEnd::LABELS.iter().zip(self.smart_outcomes) {
            sink.series(&[outcome], count);
        }
        sink.histogram(
            "fibd_smart_attempts",
            "Upstream attempts sent per /api/smart call.",
            &self.smart_attempts,
        );
        sink.histogram(
            "fibd_upstream_duration_seconds",
            "/api/smart's upstream calls, from the send to the answer or failure (cancelled ones excluded).",
            &self.upstream_seconds,
        );
        self.expose_hedging(&gauges.smart, sink);
        let pool = gauges.upstream;
        let scalars: [(Kind, &str, &str, u64); 4] = [
            (
                Kind::Gauge,
                "fibd_upstream_connections_open",
                "Outbound connections open or opening, idle ones included.",
                pool.open as u64,
            ),
            (
                Kind::Gauge,
                "fibd_upstream_connections_idle",
                "Outbound keep-alive connections idle in the pool.",
                pool.idle as u64,
            ),
            (
                Kind::Counter,
                "fibd_upstream_reused_total",
                "Outbound calls sent on a pooled keep-alive connection.",
                pool.reused,
            ),
            (
                Kind::Counter,
                "fibd_upstream_retried_total",
                "Outbound calls retried on a fresh connection because the pooled one had been closed.",
                pool.retried,
            ),
        ];
        for (kind, name, help, value) in scalars {
            sink.scalar(kind, name, help, value);
        }
    }

    /// /api/smart's attempts by kind, its budget, its delay and its hosts.
    fn expose_hedging(&self, smart: &SmartGauges, sink: &mut dyn Exposition) {
        let counts = smart.counts;
        sink.family(
            Kind::Counter,
            "fibd_smart_attempts_sent_total",
            "Upstream attempts sent, by kind: first (one per call), hedge (the hedge delay passed), \
             retry (an attempt failed). Extra load on the upstream is (hedge + retry) / first.",
            &["kind"],
        );
        for (kind, count) in AttemptKind::LABELS.iter().zip(counts.sent) {
            sink.series(&[kind], count);
        }
        sink.family(
            Kind::Counter,
            "fibd_smart_attempts_won_total",
            "Attempts whose answer was the call's, by kind (hedge and retry: extra attempts that won).",
            &["kind"],
        );
        for (kind, count) in AttemptKind::LABELS.iter().zip(counts.won) {
            sink.series(&[kind], count);
        }
        let budget = smart.budget;
        let mut scalars: Vec<(Kind, &'static str, &'static str, u64)> = vec![
            (
                Kind::Counter,
                "fibd_smart_attempts_cancelled_total",
                "Attempts cancelled in flight: another answered first, the caller left, or the deadline passed.",
                counts.cancelled,
            ),
            (
                Kind::Counter,
                "fibd_smart_budget_refused_total",
                "Extra attempts a call asked for that the budget (--hedge-budget) refused.",
                counts.budget_refused,
            ),
            (
                Kind::Gauge,
                "fibd_smart_budget_spent",
                "Extra attempts sent in the budget's window (the last 10 s).",
                budget.spent,
            ),
        ];
        if let Some(allowed) = budget.allowed {
            scalars.push((
                Kind::Gauge,
                "fibd_smart_budget_allowed",
                "Extra attempts the budget allows in its window: the share of first attempts plus the minimum.",
                allowed,
            ));
        }
        for (kind, name, help, value) in scalars {
            sink.scalar(kind, name, help, value);
        }
        sink.seconds(
            "fibd_smart_hedge_delay_seconds",
            "The hedge delay a call starting now gets (--hedge-after; a percentile moves with the upstream).",
            smart.hedge_delay,
        );
        let hosts: Vec<_> = smart.hosts.iter().flatten().collect();
        let names: Vec<String> = hosts.iter().map(|h| h.addr.to_string()).collect();
        sink.family(
            Kind::Counter,
            "fibd_upstream_host_attempts_total",
            "/api/smart attempts by upstream host and how they ended.",
            &["host", "outcome"],
        );
        for (host, name) in hosts.iter().zip(&names) {
            for (outcome, count) in HostOutcome::LABELS.iter().zip(host.outcomes) {
                sink.series(&[name, outcome], count);
            }
        }
        sink.family(
            Kind::Gauge,
            "fibd_upstream_host_in_rotation",
            "1 while an upstream host takes attempts, 0 while it is ejected or being probed.",
            &["host"],
        );
        for (host, name) in hosts.iter().zip(&names) {
            sink.series(&[name], u64::from(host.in_rotation));
        }
        sink.family(
            Kind::Counter,
            "fibd_upstream_host_ejections_total",
            "Times an upstream host was taken out of rotation after failing in a row.",
            &["host"],
        );
        for (host, name) in hosts.iter().zip(&names) {
            sink.series(&[name], host.ejections);
        }
    }

    /// The primes tasks and their prime table.
    fn expose_primes(&self, primes: &PrimesGauges, sink: &mut dyn Exposition) {
        let counts = primes.counts;
        sink.family(
            Kind::Counter,
            "fibd_primes_tasks_total",
            "Primes tasks by the status they reached.",
            &["status"],
        );
        for (status, count) in [
            ("accepted", counts.accepted),
            ("done", counts.done),
            ("failed", counts.failed),
            ("cancelled", counts.cancelled),
            ("expired", counts.expired),
            ("evicted", counts.evicted),
        ] {
            sink.series(&[status], count);
        }
        sink.family(
            Kind::Counter,
            "fibd_primes_refused_total",
            "Task POSTs refused for room, by reason (client_share: 429; queue_full, \
             store_full: 503).",
            &["reason"],
        );
        for (reason, count) in [
            ("client_share", counts.refused_client_share),
            ("queue_full", counts.refused_queue_full),
            ("store_full", counts.refused_store_full),
            ("callback_backlog", counts.refused_callback_backlog),
        ] {
            sink.series(&[reason], count);
        }
        sink.family(
            Kind::Counter,
            "fibd_primes_callbacks_total",
            "Completion callback attempts by how they ended (delivered: a 2xx; retried: \
             failed with another attempt scheduled; failed: given up).",
            &["outcome"],
        );
        let callbacks = primes.callbacks;
        for (outcome, count) in [
            ("delivered", callbacks.delivered),
            ("retried", callbacks.retried),
            ("failed", callbacks.failed),
        ] {
            sink.series(&[outcome], count);
        }
        sink.histogram(
            "fibd_primes_callback_latency_seconds",
            "From a task's settled state being durable to its callback's 2xx.",
            &self.callback_seconds,
        );
        sink.histogram(
            "fibd_primes_task_duration_seconds",
            "From a task's acceptance to done.",
            &self.primes_task_seconds,
        );
        let scalars: [(Kind, &str, &str, u64); 11] = [
            (
                Kind::Gauge,
                "fibd_primes_callbacks_pending",
                "Callbacks not delivered or failed yet (--callback-pending bounds them).",
                primes.callbacks_undelivered as u64,
            ),
            (
                Kind::Gauge,
                "fibd_primes_callbacks_in_flight",
                "Callback attempts sent and not answered yet (--callback-conns bounds them).",
                primes.callbacks_in_flight as u64,
            ),
            (
                Kind::Gauge,
                "fibd_primes_waiters",
                "Task GETs parked until their task is final (?wait).",
                primes.waiters as u64,
            ),
            (
                Kind::Counter,
                "fibd_primes_idempotent_replays_total",
                "Task POSTs answered with the task their Idempotency-Key was first posted for.",
                counts.replayed,
            ),
            (
                Kind::Counter,
                "fibd_primes_table_hits_total",
                "Tasks answered from the prime table on arrival, without a computation.",
                counts.table_hits,
            ),
            (
                Kind::Counter,
                "fibd_primes_computations_total",
                "Sieves run (each serves every pending task it covers).",
                counts.computations,
            ),
            (
                Kind::Gauge,
                "fibd_primes_table_primes",
                "Primes in the table (the largest computed so far).",
                primes.table_primes,
            ),
            (
                Kind::Gauge,
                "fibd_primes_table_bytes",
                "Bytes of the table's one JSON rendering, shared by every reply.",
                primes.table_bytes as u64,
            ),
            (
                Kind::Gauge,
                "fibd_primes_tasks_stored",
                "Tasks in the store (pending and settled).",
                primes.stored as u64,
            ),
            (
                Kind::Gauge,
                "fibd_primes_queue_length",
                "Tasks waiting for a sieve.",
                primes.pending as u64,
            ),
            (
                Kind::Gauge,
                "fibd_primes_queue_capacity",
                "Tasks that may wait for a sieve (--primes-queue); more get 503.",
                primes.queue_capacity as u64,
            ),
        ];
        for (kind, name, help, value) in scalars {
            sink.scalar(kind, name, help, value);
        }
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

/// Prometheus metric types fibd uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// One series per listener, valued 1: its address is the label.
fn expose_listeners(listeners: &ListenAddrs, sink: &mut dyn Exposition) {
    sink.family(
        Kind::Gauge,
        "fibd_listener_info",
        "The addresses fibd listens on (value 1): public (the API) and admin (metrics, dashboard, docs).",
        &["listener", "address"],
    );
    for (listener, addr) in listeners.iter() {
        sink.series(&[listener, &addr.to_string()], 1);
    }
}

/// A format metrics are written in; [`Metrics::expose`] drives it.
trait Exposition {
    fn scalar(&mut self, kind: Kind, name: &'static str, help: &str, value: u64);
    /// Starts a labelled family; [`Exposition::series`] adds to the latest one.
    fn family(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &str,
        labels: &'static [&'static str],
    );
    fn series(&mut self, label_values: &[&str], value: u64);
    fn histogram(&mut self, name: &'static str, help: &str, histogram: &Histogram);
    /// A gauge of a duration, in seconds (microsecond precision).
    fn seconds(&mut self, name: &'static str, help: &str, value: Duration);
}

/// The Prometheus text format 0.0.4.
struct PrometheusText<'o> {
    out: &'o mut String,
    /// The labelled family being written: its name and label names.
    family: (&'static str, &'static [&'static str]),
}

impl PrometheusText<'_> {
    fn header(&mut self, kind: &str, name: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
}

impl Exposition for PrometheusText<'_> {
    fn scalar(&mut self, kind: Kind, name: &'static str, help: &str, value: u64) {
        self.header(kind.as_str(), name, help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    fn seconds(&mut self, name: &'static str, help: &str, value: Duration) {
        self.header("gauge", name, help);
        let _ = writeln!(self.out, "{name} {:.6}", value.as_secs_f64());
    }

    fn family(
        &mut self,
        kind: Kind,
        name: &'static str,
        help: &str,
        labels: &'static [&'static str],
    ) {
        self.header(kind.as_str(), name, help);
        self.family = (name, labels);
    }

    fn series(&mut self, label_values: &[&str], value: u64) {
        let (name, labels) = self.family;
        self.out.push_str(name);
        for (i, (label, value)) in labels.iter().zip(label_values).enumerate() {
            let sep = if i == 0 { '{' } else { ',' };
            let _ = write!(self.out, "{sep}{label}=\"");
            for c in value.chars() {
                match c {
                    '\\' => self.out.push_str("\\\\"),
                    '"' => self.out.push_str("\\\""),
                    '\n' => self.out.push_str("\\n"),
                    c => self.out.push(c),
                }
            }
            self.out.push('"');
        }
        if !labels.is_empty() {
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    fn histogram(&mut self, name: &'static str, help: &str, histogram: &Histogram) {
        self.header("histogram", name, help);
        let mut cumulative = 0;
        for (bound, count) in histogram.bounds.iter().zip(&histogram.counts) {
            cumulative += count;
            let _ = writeln!(self.out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let _ = writeln!(self.out, "{name}_bucket{{le=\"+Inf\"}} {}", histogram.count);
        let _ = writeln!(self.out, "{name}_sum {}", histogram.sum);
        let _ = writeln!(self.out, "{name}_count {}", histogram.count);
    }
}

/// The compact JSON the dashboard polls (`GET /metrics.json`):
///
/// ```text
/// {"uptime_seconds": 12.5,
///  "fibd": {"version": "0.1.0", "listeners": [{"listener": "public", "addr": "127.0.0.1:8080"}],
///           "store": {"kind": "lmdb", "data_dir": "/var/lib/fibd"}},
///           (or "store": {"kind": "etcd", "cluster": "c", "node": "n1", "endpoints": [...]})
///  "metrics": {
///   "fibd_connections_open": 3,                                   counter or gauge
///   "fibd_requests_total": {"labels": ["route", "code"],           labelled family
///                           "series": [["/next", "200", 41], ...]},
///   "fibd_commit_duration_seconds": {"le": [0.0001, ...],          histogram
///                                    "buckets": [cumulative counts], "sum": 0.8, "count": 900}}}
/// ```
///
/// Names, label values and numbers are those of `/metrics`; buckets omit
/// `+Inf`, whose count is `count`. `uptime_seconds` (monotonic) lets the
/// page compute rates with fibd's clock rather than the browser's; `fibd`
/// (see [`Watched`]) lets it say which fibd it is watching.
struct Json<'o> {
    out: &'o mut String,
    entries: usize,
    /// A labelled family's series array is open.
    family_open: bool,
    series: usize,
}

impl<'o> Json<'o> {
    fn start(out: &'o mut String, uptime: Duration, watched: &Watched) -> Json<'o> {
        let _ = write!(
            out,
            "{{\"uptime_seconds\": {:.3}, \"fibd\": {{\"version\": ",
            uptime.as_secs_f64()
        );
        json_string(out, watched.version);
        out.push_str(", \"listeners\": [");
        for (i, (listener, addr)) in watched.listeners.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(
                out,
                "{sep}{{\"listener\": \"{listener}\", \"addr\": \"{addr}\"}}"
            );
        }
        out.push_str("], \"store\": ");
        match &watched.store {
            WatchedStore::Lmdb { data_dir } => {
                out.push_str("{\"kind\": \"lmdb\", \"data_dir\": ");
                json_string(out, data_dir);
            }
            WatchedStore::Etcd {
                cluster,
                node,
                endpoints,
            } => {
                out.push_str("{\"kind\": \"etcd\", \"cluster\": ");
                json_string(out, cluster);
                out.push_str(", \"node\": ");
                json_string(out, node);
                out.push_str(", \"endpoints\": [");
                for (i, endpoint) in endpoints.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    json_string(out, endpoint);
                }
                out.push(']');
            }
        }
        out.push_str("}}, \"metrics\": {");
        Json {
            out,
            entries: 0,
            family_open: false,
            series: 0,
        }
    }

    /// Closes the previous entry and opens `"name": `.
    fn key(&mut self, name: &str) {
        self.close_family();
        if self.entries > 0 {
            self.out.push_str(", ");
        }
        self.entries += 1;
        let _ = write!(self.out, "\"{name}\": ");
    }

    fn close_family(&mut self) {
        if self.family_open {
            self.out.push_str("]}");
            self.family_open = false;
        }
    }

    fn finish(mut self) {
        self.close_family();
        self.out.push_str("}}\n");
    }
}

/// `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Exposition for Json<'_> {
    fn scalar(&mut self, _: Kind, name: &'static str, _: &str, value: u64) {
        self.key(name);
        let _ = write!(self.out, "{value}");
    }

    fn seconds(&mut self, name: &'static str, _: &str, value: Duration) {
        self.key(name);
        let _ = write!(self.out, "{:.6}", value.as_secs_f64());
    }

    fn family(&mut self, _: Kind, name: &'static str, _: &str, labels: &'static [&'static str]) {
        self.key(name);
        self.out.push_str("{\"labels\": [");
        for (i, label) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push_str(", ");
            }
            json_string(self.out, label);
        }
        self.out.push_str("], \"series\": [");
        self.family_open = true;
        self.series = 0;
    }

    fn series(&mut self, label_values: &[&str], value: u64) {
        if self.series > 0 {
            self.out.push_str(", ");
        }
        self.series += 1;
        self.out.push('[');
        for label_value in label_values {
            json_string(self.out, label_value);
            self.out.push_str(", ");
        }
        let _ = write!(self.out, "{value}]");
    }

    fn histogram(&mut self, name: &'static str, _: &str, histogram: &Histogram) {
        self.key(name);
        self.out.push_str("{\"le\": [");
        for (i, bound) in histogram.bounds.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(self.out, "{sep}{bound}");
        }
        self.out.push_str("], \"buckets\": [");
        let mut cumulative = 0;
        for (i, count) in histogram.counts.iter().enumerate() {
            cumulative += count;
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(self.out, "{sep}{cumulative}");
        }
        let _ = write!(
            self.out,
            "], \"sum\": {}, \"count\": {}}}",
            histogram.sum, histogram.count
        );
    }
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

    #[test]
    fn the_json_form_is_valid_and_keeps_labels_and_buckets() {
        let mut m = Metrics::default();
        m.request(Some(Route::Next), Status::OK);
        m.request(None, Status::NOT_FOUND);
        m.commit(Some(Duration::from_micros(300)));
        m.commit(None);
        let gauges = Gauges {
            ready: true,
            uptime: Duration::from_millis(12_345),
            ..Gauges::default()
        };
        let watched = Watched {
            version: "1.2.3",
            listeners: ListenAddrs {
                public: Some("127.0.0.1:8080".parse().unwrap()),
                admin: None,
            },
            store: WatchedStore::Lmdb {
                data_dir: "/var/lib/fibd \"a\"".to_owned(),
            },
        };
        let mut out = String::new();
        m.render_json(&gauges, &watched, &mut out);
        let doc: serde_json::Value = serde_json::from_str(&out).expect(&out);
        assert_eq!(doc["uptime_seconds"], 12.345);
        assert_eq!(
            doc["fibd"],
            serde_json::json!({"version": "1.2.3",
                "listeners": [{"listener": "public", "addr": "127.0.0.1:8080"}],
                "store": {"kind": "lmdb", "data_dir": "/var/lib/fibd \"a\""}})
        );
        let metrics = &doc["metrics"];
        let requests = &metrics["fibd_requests_total"];
        assert_eq!(requests["labels"], serde_json::json!(["route", "code"]));
        assert_eq!(
            requests["series"],
            serde_json::json!([["/next", "200", 1], ["other", "404", 1]])
        );
        let commits = &metrics["fibd_commit_duration_seconds"];
        assert_eq!(commits["count"], 1);
        assert_eq!(commits["le"].as_array().unwrap().len(), COMMIT_BOUNDS.len());
        assert_eq!(commits["buckets"][1], 0, "0.3 ms is above 0.25 ms");
        assert_eq!(commits["buckets"][2], 1, "and cumulative from 0.5 ms on");
        assert_eq!(metrics["fibd_commit_failures_total"], 1);
        assert_eq!(metrics["fibd_ready"], 1);
    }

    #[test]
    fn the_json_form_names_an_etcd_cluster_and_every_listener() {
        let watched = Watched {
            version: "1.2.3",
            listeners: ListenAddrs {
                public: Some("[::1]:8080".parse().unwrap()),
                admin: Some("127.0.0.1:9090".parse().unwrap()),
            },
            store: WatchedStore::Etcd {
                cluster: "prod".to_owned(),
                node: "n1".to_owned(),
                endpoints: vec!["10.0.0.1:2379".to_owned(), "10.0.0.2:2379".to_owned()],
            },
        };
        let mut out = String::new();
        Metrics::default().render_json(&Gauges::default(), &watched, &mut out);
        let doc: serde_json::Value = serde_json::from_str(&out).expect(&out);
        assert_eq!(
            doc["fibd"]["listeners"],
            serde_json::json!([{"listener": "public", "addr": "[::1]:8080"},
                {"listener": "admin", "addr": "127.0.0.1:9090"}])
        );
        assert_eq!(
            doc["fibd"]["store"],
            serde_json::json!({"kind": "etcd", "cluster": "prod", "node": "n1",
                "endpoints": ["10.0.0.1:2379", "10.0.0.2:2379"]})
        );
    }
}
