//! Tracing glue (with `--trace-zipkin` or `--trace-otlp`): spans begun and ended around
//! replies, child spans for outbound calls, and the export of finished
//! spans in batches through the same outbound client /api/smart uses. The
//! rules (sampling, buffer, batching) are `crate::ops::trace`'s; this file
//! only connects them to the app's clock, client and logs.

use std::time::Instant;

use super::App;
use super::late::CallOwner;
use crate::http::request_id::RequestId;
use crate::net::upstream::{Client, Completion, Target};
use crate::ops::trace::{ExportOutcome, Post, STOP_FLUSH_DEADLINE, SpanStart};

impl App {
    /// Ends a span, if there is one: `status` answered or received (0 for
    /// none), `outcome` for an outbound call's (`won`, `failed`, `cancelled`).
    pub(super) fn finish_span(
        &mut self,
        span: Option<SpanStart>,
        status: u16,
        request_id: RequestId,
        outcome: Option<&'static str>,
    ) {
        if let (Some(tracer), Some(span)) = (&mut self.tracer, span) {
            tracer.finish(span, status, request_id, outcome);
        }
    }

    /// A client span inside `parent` calling the `host`th `--upstream`, if
    /// the request is sampled.
    pub(super) fn child_span(
        &mut self,
        parent: Option<SpanStart>,
        name: &'static str,
        method: &'static str,
        host: usize,
    ) -> Option<SpanStart> {
        let (tracer, parent) = (self.tracer.as_mut()?, parent?);
        Some(
            tracer
                .child(&parent, name, method, self.now)
                .with_peer(host),
        )
    }

    /// Loop phase: hands the tracer's next batch to the outbound client when
    /// one is due (a `None` check without a collector).
    pub(super) fn export_spans(&mut self) {
        if let Some(tracer) = &mut self.tracer {
            let mut client = ExportClient {
                client: &mut self.upstream,
                now: self.now,
            };
            tracer.export_due(self.now, &mut client);
        }
    }

    /// Asked while stopping, once the rest is done: whether the spans still
    /// to export are delivered, or given up (logged) after
    /// [`STOP_FLUSH_DEADLINE`]. True without tracing.
    pub fn spans_flushed(&mut self) -> bool {
        let Some(tracer) = &mut self.tracer else {
            return true;
        };
        match tracer.stop_flushed(self.now) {
            None => false,
            Some(0) => true,
            Some(given_up) => {
                log::warn!(
                    "stopping: {given_up} span(s) not delivered to {} within {STOP_FLUSH_DEADLINE:?}; \
                     dropped (fibd_trace_spans_dropped_total)",
                    tracer.collector()
                );
                true
            }
        }
    }

    /// When the next batch is due, for the loop's sleep.
    pub(super) fn next_export(&self) -> Option<Instant> {
        self.tracer.as_ref()?.next_export()
    }

    /// The collector's word on the batch in flight. A failure is logged when
    /// export starts failing and when it recovers, not once per batch.
    pub(super) fn span_export_done(&mut self, done: Completion<CallOwner>) {
        let Some(tracer) = &mut self.tracer else {
            return;
        };
        let failure = match &done.result {
            Ok(response) if (200..300).contains(&response.status) => None,
            Ok(response) => Some(format!("answered {}", response.status)),
            Err(e) => Some(e.to_string()),
        };
        let collector = tracer.collector();
        let was_failing = self.span_export_failing;
        self.span_export_failing = failure.is_some();
        match failure {
            None if was_failing => log::info!("trace export: {collector} takes spans again"),
            None => {}
            Some(why) if was_failing => log::debug!("trace export: {collector}: {why}"),
            Some(why) => log::warn!(
                "trace export: {collector}: {why}; spans are dropped until it takes \
                 them (fibd_trace_spans_dropped_total)"
            ),
        }
        tracer.export_finished(if self.span_export_failing {
            ExportOutcome::Failed
        } else {
            ExportOutcome::Delivered
        });
    }
}

/// The tracer's [`Post`] through the outbound client: a call tagged
/// [`CallOwner::TraceExport`], whose completion comes back to
/// [`App::span_export_done`].
struct ExportClient<'a> {
    client: &'a mut Client<CallOwner>,
    now: Instant,
}

impl Post for ExportClient<'_> {
    fn post(
        &mut self,
        to: &Target,
        content_type: &'static str,
        body: &[u8],
        deadline: Instant,
    ) -> bool {
        let fields = [("Content-Type", content_type), ("User-Agent", "fibd")];
        let request = to.request("POST", &fields, body);
        self.client
            .send(CallOwner::TraceExport, &request, deadline, self.now)
            .is_ok()
    }
}
