//! OTLP/HTTP JSON trace export against the real binary and a real reader:
//! `tests/support/otlp_collector.py` parses every POST with PyPI's
//! opentelemetry-proto into an `ExportTraceServiceRequest` (refusing what
//! the schema does not allow, and ids that are not lowercase hex of the
//! right length). Checked: the resource and scope, kinds, times, HTTP
//! semantic-convention attributes, status, a caller's trace continued,
//! /api/smart's attempts as client spans, and spans still buffered at
//! SIGTERM delivered before fibd exits.

mod support;

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::otlp::{OtlpCollector, attribute, spans_of};
use support::upstream::{Answer, FakeUpstream};
use support::{CALLER_SPAN, CALLER_TRACE, DataDir, Fibd};

/// OTLP's `Span.SpanKind` and `Status.StatusCode` values.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
const STATUS_ERROR: u64 = 2;

fn unix_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// fibd tracing every request to `collector`, calling `upstream` if given.
fn traced_fibd(data: &DataDir, collector: &OtlpCollector, upstream: Option<&FakeUpstream>) -> Fibd {
    let url = collector.url();
    let mut args = vec![
        "--trace-otlp",
        &url,
        "--trace-sample",
        "1",
        "--rate-limit",
        "0",
    ];
    let upstream_url = upstream.map(FakeUpstream::url);
    if let Some(upstream_url) = &upstream_url {
        args.extend(["--upstream", upstream_url]);
    }
    Fibd::start(data, &args)
}

fn string(span: &Value, key: &str) -> String {
    attribute(span, key)
        .and_then(|v| v["stringValue"].as_str())
        .unwrap_or_else(|| panic!("no string {key}: {span}"))
        .to_owned()
}

/// `http.response.status_code`: an intValue (protobuf writes int64 as a string).
fn status_code(span: &Value) -> Option<String> {
    attribute(span, "http.response.status_code").map(|v| {
        v["intValue"]
            .as_str()
            .unwrap_or_else(|| panic!("an intValue: {span}"))
            .to_owned()
    })
}

fn nanos(span: &Value, key: &str) -> u128 {
    span[key]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{key} in ns: {span}"))
}

fn with_name<'s>(spans: &'s [Value], name: &str) -> Vec<&'s Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// What every span must be, for one that began and ended between `from`
/// and `to` (ns since the epoch).
fn check_span(span: &Value, from: u128, to: u128) {
    let (start, end) = (
        nanos(span, "startTimeUnixNano"),
        nanos(span, "endTimeUnixNano"),
    );
    assert!(
        from <= start && start < end && end <= to,
        "{span}: not within [{from}, {to}]"
    );
    assert!(
        matches!(span["kind"].as_u64(), Some(KIND_SERVER | KIND_CLIENT)),
        "{span}"
    );
    assert!(!string(span, "fibd.request_id").is_empty());
    assert!(!string(span, "http.request.method").is_empty());
}

#[test]
#[ignore = "needs opentelemetry-proto: run scripts/test"]
fn spans_reach_an_otlp_collector_and_parse_as_export_trace_service_requests() {
    let collector = OtlpCollector::start();
    let upstream = FakeUpstream::start(|_| Answer::json(5, "{\"v\": 1}"));
    let data = DataDir::new("otlp-export");
    let from = unix_nanos();
    let fibd = traced_fibd(&data, &collector, Some(&upstream));
    let mut client = fibd.connect();
    support::send_traced_mix(&mut client, 5);

    let spans = collector.wait_for_spans(|spans| {
        with_name(spans, "GET /api/smart").len() == 1 && with_name(spans, "GET upstream").len() == 1
    });
    let to = unix_nanos();
    for request in collector.requests() {
        let resource = &request["resourceSpans"][0]["resource"];
        assert_eq!(string(resource, "service.name"), "fibd");
        assert_eq!(
            string(resource, "service.version"),
            env!("CARGO_PKG_VERSION")
        );
        let scope = &request["resourceSpans"][0]["scopeSpans"][0]["scope"];
        assert_eq!(scope["name"], "fibd", "{request}");
    }
    let biggest = collector
        .requests()
        .iter()
        .map(|r| spans_of(r).len())
        .max()
        .unwrap();
    assert!(
        biggest >= 5,
        "spans go in batches, not one a POST: {biggest}"
    );
    for span in &spans {
        check_span(span, from, to);
    }
    let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["spanId"].as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");

    let current = with_name(&spans, "GET /current");
    assert_eq!(current.len(), 5);
    for span in &current {
        assert_eq!(span["kind"], KIND_SERVER);
        assert!(
            span.get("parentSpanId").is_none(),
            "a trace of its own: {span}"
        );
        assert_eq!(string(span, "http.route"), "/current");
        assert_eq!(string(span, "url.path"), "/current");
        assert_eq!(string(span, "url.scheme"), "http");
        assert_eq!(string(span, "http.request.method"), "GET");
        assert_eq!(status_code(span).as_deref(), Some("200"));
        assert!(span.get("status").is_none(), "unset: {span}");
    }
    assert_eq!(
        status_code(with_name(&spans, "POST /next")[0]).as_deref(),
        Some("200")
    );
    let not_found = with_name(&spans, "GET other")[0];
    assert_eq!(status_code(not_found).as_deref(), Some("404"));
    assert_eq!(
        string(not_found, "url.path"),
        "/nope",
        "the path asked for, under the route `other`"
    );
    assert!(
        not_found.get("status").is_none(),
        "a 4xx is the client's: {not_found}"
    );

    // The caller's trace continues under its span; the attempt is a child.
    let server = with_name(&spans, "GET /api/smart")[0];
    assert_eq!(server["kind"], KIND_SERVER);
    assert_eq!(server["traceId"], CALLER_TRACE);
    assert_eq!(server["parentSpanId"], CALLER_SPAN);
    assert_eq!(string(server, "fibd.request_id"), "smart-1");
    assert_eq!(string(server, "http.route"), "/api/smart");
    let attempt = with_name(&spans, "GET upstream")[0];
    assert_eq!(attempt["kind"], KIND_CLIENT);
    assert_eq!(attempt["traceId"], CALLER_TRACE);
    assert_eq!(attempt["parentSpanId"], server["spanId"]);
    assert_eq!(string(attempt, "fibd.attempt"), "won");
    assert_eq!(status_code(attempt).as_deref(), Some("200"));
    assert_eq!(string(attempt, "url.full"), upstream.url());
    assert_eq!(string(attempt, "server.address"), "127.0.0.1");
    assert_eq!(
        attribute(attempt, "server.port").and_then(|v| v["intValue"].as_str()),
        Some(upstream.addr.port().to_string().as_str())
    );
    assert!(
        attribute(attempt, "http.route").is_none(),
        "server spans only"
    );
    assert!(
        nanos(attempt, "endTimeUnixNano") - nanos(attempt, "startTimeUnixNano") >= 5_000_000,
        "the upstream took 5 ms"
    );
    // The attempt carried its own context upstream.
    let sent = upstream.received();
    let traceparent = sent[0]
        .header("traceparent")
        .expect("a traceparent upstream");
    assert_eq!(
        traceparent,
        format!(
            "00-{CALLER_TRACE}-{}-01",
            attempt["spanId"].as_str().unwrap()
        )
    );

    support::assert_spans_exported(&mut client, spans.len());
}

#[test]
#[ignore = "needs opentelemetry-proto: run scripts/test"]
fn failed_attempts_and_a_5xx_answer_are_errors() {
    let collector = OtlpCollector::start();
    let upstream = FakeUpstream::start(|_| Answer::status(0, 500));
    let data = DataDir::new("otlp-errors");
    let fibd = traced_fibd(&data, &collector, Some(&upstream));
    let r = fibd
        .connect()
        .request("GET", "/api/smart?timeout=5000", &[]);
    assert_eq!(r.status, 503, "{}", r.text());
    let spans = collector.wait_for_spans(|spans| {
        with_name(spans, "GET /api/smart").len() == 1 && with_name(spans, "GET upstream").len() == 3
    });
    let server = with_name(&spans, "GET /api/smart")[0];
    assert!(
        server.get("parentSpanId").is_none(),
        "a new trace: {server}"
    );
    assert_eq!(status_code(server).as_deref(), Some("503"));
    assert_eq!(server["status"]["code"], STATUS_ERROR, "{server}");
    for attempt in with_name(&spans, "GET upstream") {
        assert_eq!(attempt["kind"], KIND_CLIENT);
        assert_eq!(attempt["traceId"], server["traceId"]);
        assert_eq!(attempt["parentSpanId"], server["spanId"]);
        assert_eq!(string(attempt, "fibd.attempt"), "failed");
        assert_eq!(status_code(attempt).as_deref(), Some("500"));
        assert_eq!(attempt["status"]["code"], STATUS_ERROR, "{attempt}");
    }
}

#[test]
#[ignore = "needs opentelemetry-proto: run scripts/test"]
fn spans_buffered_at_sigterm_are_delivered_before_fibd_exits() {
    let mut collector = OtlpCollector::holding_first();
    let data = DataDir::new("otlp-sigterm");
    let fibd = traced_fibd(&data, &collector, None);
    let mut client = fibd.connect();
    assert_eq!(
        client
            .request("GET", "/current", &[("X-Request-Id", "first")])
            .status,
        200
    );
    // The first batch is in flight and held: the spans after it can only
    // wait in the buffer (one batch in flight at most).
    collector.wait_for_requests(1);
    let buffered: Vec<String> = (0..5).map(|i| format!("buffered-{i}")).collect();
    for id in &buffered {
        let r = client.request("POST", "/next", &[("X-Request-Id", id)]);
        assert_eq!(r.status, 200);
    }
    drop(client);
    support::signal(fibd.pid(), "TERM");
    fibd.wait_log("stopping: finishing in-flight requests");
    collector.release();
    let (status, log) = fibd.wait_exit();
    assert!(status.success(), "{status:?}: {log:#?}");
    assert!(!log.iter().any(|l| l.contains("not delivered")), "{log:#?}");
    let requests = collector.requests();
    assert_eq!(
        requests.len(),
        2,
        "the held batch, then the rest at the stop"
    );
    let delivered: Vec<String> = spans_of(&requests[1])
        .iter()
        .map(|s| string(s, "fibd.request_id"))
        .collect();
    assert_eq!(delivered, buffered);
    assert_eq!(
        string(&spans_of(&requests[0])[0], "fibd.request_id"),
        "first"
    );
    assert!(
        collector.rejected().is_empty(),
        "{:?}",
        collector.rejected()
    );
}
