//! The operator's resources: /healthz, /readyz and /metrics.

use super::{App, write_no_store};
use crate::conn::Output;
use crate::http::parse::Request;
use crate::http::response::ContentType;
use crate::metrics::{self, Gauges};

impl App {
    pub(super) fn metrics_page(&mut self, request: &Request<'_>, out: &mut Output) {
        let gauges = Gauges {
            committed_index: self.stepper.committed_index(),
            pending_index: self.stepper.pending_index(),
            fib_cache_bytes: self.fib.cache_bytes(),
            fib_cache_entries: self.fib.cache_len(),
            fib_queue: self.fib.queued(),
            rate_limit_clients: self.limiter.clients(),
        };
        let mut text = String::with_capacity(8 * 1024);
        self.metrics.render(&gauges, &mut text);
        metrics::render_key_counts(&mut text, self.access.key_counts());
        let body = text.as_bytes();
        write_no_store(out, &self.date, request, ContentType::Prometheus, body);
    }
}
