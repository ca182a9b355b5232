//! The operator's resources: /healthz, /readyz, /metrics, /metrics.json and
//! the built-in dashboard.

use std::time::UNIX_EPOCH;

use super::App;
use super::late::Shape;
use crate::http::response::{ContentType, Head, Status};
use crate::ops::metrics::{self, Gauges, PrimesGauges};
use crate::reply::output::Output;

/// One self-contained page (inline CSS and JavaScript, no external assets)
/// that polls /metrics.json once a second and draws the last five minutes.
const DASHBOARD_HTML: &[u8] = include_bytes!("dashboard.html");
/// The page loads nothing from elsewhere and talks only to fibd.
const DASHBOARD_CSP: &[u8] = b"default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

impl App {
    fn gauges(&self) -> Gauges {
        Gauges {
            ready: self.store_ready && self.stepper.is_ready(self.now),
            connections_max: self.connections_max,
            committed_index: self.stepper.committed_index(),
            pending_index: self.stepper.pending_index(),
            fib_cache_bytes: self.fib.cache_bytes(),
            fib_cache_entries: self.fib.cache_len(),
            fib_queue: self.compute.queued(),
            fib_queue_capacity: self.compute.queue_max(),
            rate_limit_clients: self.limiter.clients(),
            upstream: self.upstream.stats(),
            smart: self.smart.gauges(self.now),
            trace_spans_recorded: self.tracer.as_ref().map_or(0, |t| t.counts().recorded),
            trace_spans_dropped: self.tracer.as_ref().map_or(0, |t| t.counts().dropped),
            trace_spans_exported: self.tracer.as_ref().map_or(0, |t| t.counts().exported),
            start_time_unix_seconds: self
                .started_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            uptime: self.now.saturating_duration_since(self.started),
            primes: PrimesGauges {
                counts: self.primes.counts(),
                stored: self.primes.stored(),
                pending: self.primes.pending(),
                waiters: self.primes.waiters(),
                table_primes: self.primes.table_len(),
                table_bytes: self.primes.table_bytes(),
                queue_capacity: self.primes.pending_max(),
                callbacks: self.primes.callback_counts(),
                callbacks_undelivered: self.primes.callbacks_undelivered(),
                callbacks_in_flight: self.primes.callbacks_in_flight(),
            },
            etcd: self
                .stepper
                .etcd_stats(self.now)
                .map(|stats| (stats, self.stepper.jumps())),
            listeners: self.watched.listeners,
        }
    }

    pub(super) fn metrics_page(&mut self, shape: &Shape, out: &mut Output) {
        let mut text = String::with_capacity(8 * 1024);
        self.metrics.render(&self.gauges(), &mut text);
        metrics::render_key_counts(&mut text, self.access.key_counts());
        self.write_no_store(out, shape, ContentType::Prometheus, text.as_bytes());
    }

    pub(super) fn metrics_json_page(&mut self, shape: &Shape, out: &mut Output) {
        let mut json = String::with_capacity(4 * 1024);
        self.metrics
            .render_json(&self.gauges(), &self.watched, &mut json);
        self.write_no_store(out, shape, ContentType::Json, json.as_bytes());
    }

    pub(super) fn dashboard_page(&mut self, shape: &Shape, out: &mut Output) {
        let mut head = Head::start(out.buf(), Status::OK, &self.date, &shape.request_id);
        head.content_type(ContentType::Html)
            .header("Cache-Control", b"no-cache")
            .header("Content-Security-Policy", DASHBOARD_CSP)
            .header("X-Content-Type-Options", b"nosniff");
        head.finish(Status::OK, DASHBOARD_HTML.len(), shape.persistence);
        if !shape.head_only() {
            out.push_shared_prefix(DASHBOARD_HTML, DASHBOARD_HTML.len());
        }
    }
}
