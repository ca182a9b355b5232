//! Traces against the real binary, with a fake Zipkin collector in the test
//! process (the scripted fake upstream): what arrives is checked against the
//! Zipkin v2 span model (ids, microsecond timestamps, kinds, parent ids,
//! tags), spans come several to a POST, /api/smart's attempts are child
//! spans whose context goes upstream in `traceparent`, and a collector that
//! hangs costs dropped spans, counted, never the answers' speed, nor more
//! than a bounded wait at a stop.

mod support;

use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use support::upstream::{Answer, FakeUpstream, Received};
use support::{CALLER_SPAN, CALLER_TRACE, DataDir, Fibd, metric};

/// The loaded test times fibd: the tests here run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// A collector that takes every batch (Zipkin answers 202).
fn collector() -> FakeUpstream {
    FakeUpstream::start(|_| Answer::status(0, 202))
}

/// fibd tracing every request to `collector`, calling `upstream` if given.
fn traced_fibd(data: &DataDir, collector: &FakeUpstream, upstream: Option<&FakeUpstream>) -> Fibd {
    let url = format!("http://{}/api/v2/spans", collector.addr);
    let mut args = vec![
        "--trace-zipkin".to_owned(),
        url,
        "--trace-sample".to_owned(),
        "1".to_owned(),
        "--rate-limit".to_owned(),
        "0".to_owned(),
    ];
    if let Some(upstream) = upstream {
        args.extend(["--upstream".to_owned(), upstream.url()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Fibd::start(data, &args)
}

/// The spans of each POST the collector received, after checking the POST
/// itself: the path, JSON content, and an array of spans.
fn batches(collector: &FakeUpstream) -> Vec<Vec<Value>> {
    collector
        .received()
        .iter()
        .map(|post: &Received| {
            assert_eq!(post.line, "POST /api/v2/spans HTTP/1.1");
            assert_eq!(post.header("Content-Type"), Some("application/json"));
            let spans: Value = serde_json::from_slice(&post.body).expect("a JSON body");
            spans.as_array().expect("an array of spans").clone()
        })
        .collect()
}

/// Waits (bounded) until the spans received satisfy `done`; all of them.
fn wait_for_spans(collector: &FakeUpstream, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let spans: Vec<Value> = batches(collector).into_iter().flatten().collect();
        if done(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "spans never arrived: {spans:#?}");
        std::thread::sleep(ms(20));
    }
}

fn is_hex(v: &Value, len: usize) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// What every span must be, by the Zipkin v2 model (zipkin2-api.yaml), for
/// a span that began and ended between `from_us` and `to_us`.
fn check_span_model(span: &Value, from_us: u64, to_us: u64) {
    assert!(is_hex(&span["traceId"], 32), "{span}");
    assert!(is_hex(&span["id"], 16), "{span}");
    if let Some(parent) = span.get("parentId") {
        assert!(is_hex(parent, 16), "{span}");
    }
    assert!(
        matches!(span["kind"].as_str(), Some("SERVER" | "CLIENT")),
        "{span}"
    );
    assert_eq!(span["localEndpoint"]["serviceName"], "fibd");
    let timestamp = span["timestamp"].as_u64().expect("timestamp in µs");
    let duration = span["duration"].as_u64().expect("duration in µs");
    assert!(
        (from_us..=to_us).contains(&timestamp) && timestamp + duration <= to_us,
        "{span}: not within [{from_us}, {to_us}] µs since the epoch"
    );
    assert!(duration >= 1, "{span}");
    let tags = span["tags"].as_object().expect("tags");
    assert!(tags.values().all(Value::is_string), "{span}");
    assert!(tags["request_id"].as_str().is_some_and(|id| !id.is_empty()));
}

fn with_name<'s>(spans: &'s [Value], name: &str) -> Vec<&'s Value> {
    spans.iter().filter(|s| s["name"] == name).collect()
}

/// `00-TRACE-SPAN-01` split into its trace and span ids.
fn ids_of(traceparent: &str) -> (&str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "{traceparent}");
    (parts[1], parts[2])
}

#[test]
fn spans_reach_the_collector_in_batches_as_zipkin_v2() {
    let _serial = serial();
    let collector = collector();
    let upstream = FakeUpstream::start(|_| Answer::json(5, "{\"v\": 1}"));
    let data = DataDir::new("traces-export");
    let from_us = unix_micros();
    let fibd = traced_fibd(&data, &collector, Some(&upstream));
    let mut client = fibd.connect();
    support::send_traced_mix(&mut client, 10);

    let spans = wait_for_spans(&collector, |spans| {
        with_name(spans, "get /api/smart").len() == 1 && with_name(spans, "get upstream").len() == 1
    });
    let to_us = unix_micros();
    for span in &spans {
        check_span_model(span, from_us, to_us);
    }
    let biggest = batches(&collector).iter().map(Vec::len).max().unwrap();
    assert!(
        biggest >= 10,
        "spans go in batches, not one a POST: {biggest}"
    );

    let current = with_name(&spans, "get /current");
    assert_eq!(current.len(), 10);
    for span in &current {
        assert_eq!(span["kind"], "SERVER");
        assert!(span.get("parentId").is_none(), "a trace of its own: {span}");
        assert_eq!(span["tags"]["http.status_code"], "200");
        assert_eq!(span["tags"]["http.route"], "/current");
        assert_eq!(span["tags"]["http.method"], "GET");
    }
    let ids: BTreeSet<&str> = spans.iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique");
    assert_eq!(
        with_name(&spans, "post /next")[0]["tags"]["http.status_code"],
        "200"
    );
    let not_found = with_name(&spans, "get other")[0];
    assert_eq!(not_found["tags"]["http.status_code"], "404");

    // The caller's trace continues under its span; the attempt is a child.
    let server = with_name(&spans, "get /api/smart")[0];
    assert_eq!(server["kind"], "SERVER");
    assert_eq!(server["traceId"], CALLER_TRACE);
    assert_eq!(server["parentId"], CALLER_SPAN);
    assert_eq!(server["tags"]["request_id"], "smart-1");
    assert_eq!(server["tags"]["http.status_code"], "200");
    let attempt = with_name(&spans, "get upstream")[0];
    assert_eq!(attempt["kind"], "CLIENT");
    assert_eq!(attempt["traceId"], CALLER_TRACE);
    assert_eq!(attempt["parentId"], server["id"]);
    assert_eq!(attempt["tags"]["fibd.attempt"], "won");
    assert_eq!(attempt["tags"]["http.status_code"], "200");
    assert_eq!(attempt["tags"]["request_id"], "smart-1");
    assert_eq!(server["tags"]["http.path"], "/api/smart");
    assert_eq!(attempt["tags"]["http.url"], upstream.url().as_str());
    assert_eq!(
        attempt["remoteEndpoint"],
        serde_json::json!({"ipv4": "127.0.0.1", "port": upstream.addr.port()})
    );
    let bounds = |s: &Value| {
        let ts = s["timestamp"].as_u64().unwrap();
        (ts, ts + s["duration"].as_u64().unwrap())
    };
    let (server_start, server_end) = bounds(server);
    let (attempt_start, attempt_end) = bounds(attempt);
    // Both are floored to the microsecond: allow one for each.
    assert!(attempt_start + 1 >= server_start && attempt_end <= server_end + 2);
    assert!(
        attempt_end - attempt_start >= 5_000,
        "the upstream took 5 ms"
    );

    // The attempt carried the child's context upstream.
    let sent = upstream.received();
    assert_eq!(sent.len(), 1);
    let traceparent = sent[0]
        .header("traceparent")
        .expect("a traceparent upstream");
    assert_eq!(
        ids_of(traceparent),
        (CALLER_TRACE, attempt["id"].as_str().unwrap())
    );

    support::assert_spans_exported(&mut client, spans.len());
}

#[test]
fn hedged_attempts_end_won_failed_and_cancelled_each_with_its_own_context() {
    let _serial = serial();
    let collector = collector();
    let upstream = FakeUpstream::start(|seen| match seen.index {
        0 => Answer::status(0, 500),
        // Late enough that the other hedge is surely on the wire: every
        // attempt, the cancelled one too, reaches the upstream.
        1 => Answer::json(300, "{\"v\": 2}"),
        _ => Answer::json(3_000, "{\"v\": 3}"),
    });
    let data = DataDir::new("traces-hedged");
    let fibd = traced_fibd(&data, &collector, Some(&upstream));
    let mut client = fibd.connect();
    let r = client.request("GET", "/api/smart?timeout=5000", &[]);
    assert_eq!(r.status, 200, "{}", r.text());

    let spans = wait_for_spans(&collector, |spans| {
        with_name(spans, "get /api/smart").len() == 1 && with_name(spans, "get upstream").len() == 3
    });
    let server = with_name(&spans, "get /api/smart")[0];
    assert!(server.get("parentId").is_none(), "a new trace: {server}");
    let attempts = with_name(&spans, "get upstream");
    let outcome = |name: &str| {
        let found: Vec<&&Value> = attempts
            .iter()
            .filter(|a| a["tags"]["fibd.attempt"] == name)
            .collect();
        assert_eq!(found.len(), 1, "one {name} attempt: {attempts:#?}");
        *found[0]
    };
    let (failed, won, cancelled) = (outcome("failed"), outcome("won"), outcome("cancelled"));
    assert_eq!(failed["tags"]["http.status_code"], "500");
    assert_eq!(failed["tags"]["error"], "failed");
    assert_eq!(won["tags"]["http.status_code"], "200");
    assert!(won["tags"].get("error").is_none());
    assert!(
        cancelled["tags"].get("http.status_code").is_none(),
        "no answer"
    );
    for attempt in &attempts {
        assert_eq!(attempt["kind"], "CLIENT");
        assert_eq!(attempt["traceId"], server["traceId"]);
        assert_eq!(attempt["parentId"], server["id"]);
    }

    // Each attempt passed on its own span's context, in the request's trace.
    let sent: BTreeSet<(String, String)> = upstream
        .received()
        .iter()
        .map(|r| {
            let (trace, span) = ids_of(r.header("traceparent").expect("a traceparent"));
            (trace.to_owned(), span.to_owned())
        })
        .collect();
    let spans_sent: BTreeSet<(String, String)> = attempts
        .iter()
        .map(|a| {
            (
                a["traceId"].as_str().unwrap().to_owned(),
                a["id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(sent, spans_sent);
}

#[test]
fn unsampled_and_untraced_calls_pass_no_context_upstream() {
    let _serial = serial();
    let collector = collector();
    let upstream = FakeUpstream::start(|_| Answer::json(0, "{}"));
    let data = DataDir::new("traces-unsampled");
    let fibd = traced_fibd(&data, &collector, Some(&upstream));
    let unsampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-00");
    let r = fibd.connect().request(
        "GET",
        "/api/smart?timeout=2000",
        &[("traceparent", &unsampled)],
    );
    assert_eq!(r.status, 200);
    drop(fibd);

    let data = DataDir::new("traces-off");
    let url = upstream.url();
    let off = Fibd::start(&data, &["--upstream", &url, "--rate-limit", "0"]);
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let r = off.connect().request(
        "GET",
        "/api/smart?timeout=2000",
        &[("traceparent", &sampled)],
    );
    assert_eq!(r.status, 200);

    let sent = upstream.received();
    assert_eq!(sent.len(), 2);
    assert!(
        sent.iter().all(|r| r.header("traceparent").is_none()),
        "{sent:#?}"
    );
    assert!(collector.received().is_empty(), "no span was sampled");
}

#[test]
fn a_hung_collector_costs_dropped_spans_not_answers() {
    const REQUESTS: usize = 6_000;
    const PIPELINED: usize = 100;
    const BUFFER: usize = 4_096;
    // A batch is due at 128 spans and carries up to 512 (what waits).
    const BATCH_DUE: usize = 128;
    const BATCH_MAX: usize = 512;
    let _serial = serial();
    let collector = FakeUpstream::start(|_| Answer::silent());
    let data = DataDir::new("traces-hung");
    let fibd = traced_fibd(&data, &collector, None);
    let mut client = fibd.connect();
    let request = support::request_bytes("GET", "/current", &[]);
    for _ in 0..REQUESTS / PIPELINED {
        client.send(&request.repeat(PIPELINED));
        for _ in 0..PIPELINED {
            assert_eq!(client.read_response(false).status, 200);
        }
    }
    // One batch left and hangs; the buffer filled behind it; the rest dropped.
    assert!(collector.wait_until(ms(2000), |c| c.requests() == 1));
    let dropped = metric(&mut client, "fibd_trace_spans_dropped_total");
    assert!(
        dropped >= (REQUESTS - BUFFER - BATCH_MAX) as f64,
        "only {dropped} spans dropped"
    );
    assert_eq!(metric(&mut client, "fibd_trace_spans_exported_total"), 0.0);
    assert_eq!(collector.requests(), 1, "one batch in flight at most");

    // Answers stay fast meanwhile.
    let median = support::median_current_latency(&mut client, 200);
    assert!(
        median < ms(5),
        "median /current {median:?} while the collector hangs"
    );

    // At its deadline (5 s) the batch fails, is counted as dropped, and the
    // next one goes out.
    assert!(collector.wait_until(Duration::from_secs(10), |c| c.requests() == 2));
    let after = metric(&mut client, "fibd_trace_spans_dropped_total");
    assert!(
        after >= dropped + 200.0 + BATCH_DUE as f64,
        "{dropped} then {after}"
    );
    assert_eq!(metric(&mut client, "fibd_upstream_connections_open"), 1.0);
    let warning = fibd.wait_log("trace export: ");
    assert!(
        warning.contains("no answer before the deadline") && warning.contains("/api/v2/spans"),
        "{warning}"
    );
}

#[test]
fn a_primes_get_that_waits_ends_its_span_is_counted_and_logged() {
    let _serial = serial();
    let collector = collector();
    let data = DataDir::new("traces-primes-wait");
    let url = format!("http://{}/api/v2/spans", collector.addr);
    let fibd = Fibd::start_with(
        &data,
        &[
            "--trace-zipkin",
            &url,
            "--trace-sample",
            "1",
            "--rate-limit",
            "0",
        ],
        &[("RUST_LOG", "info,fibd::access=debug")],
    );
    // The compute thread is kept busy, so the task waits for it and the GET
    // parks: answered when the task is done or its wait of 1 s ends,
    // whichever comes first; both are replies answered later.
    let addr = fibd.addr;
    let blocker = std::thread::spawn(move || {
        support::Client::connect(addr)
            .request("GET", "/v1/fib?n=9000000", &[])
            .status
    });
    let posted = fibd.post_json("/v1/primes/tasks", "{\"n\": 100000}");
    assert_eq!(posted.status, 202);
    let posted: Value = serde_json::from_str(&posted.text()).expect("a JSON body");
    let id = posted["request_id"].as_str().unwrap().to_owned();
    let from_us = unix_micros();
    let waited = fibd.connect().request(
        "GET",
        &format!("/v1/primes/tasks/{id}?wait=1"),
        &[("X-Request-Id", "waited-get")],
    );
    assert_eq!(waited.status, 200);
    let spans = wait_for_spans(&collector, |spans| {
        spans
            .iter()
            .any(|s| s["tags"]["request_id"] == "waited-get")
    });
    let span = spans
        .iter()
        .find(|s| s["tags"]["request_id"] == "waited-get")
        .unwrap();
    assert_eq!(span["name"], "get /v1/primes/tasks/{id}");
    assert_eq!(span["tags"]["http.status_code"], "200");
    check_span_model(span, from_us, unix_micros());
    let line = fibd.wait_log("waited-get");
    assert!(line.contains("/v1/primes/tasks/{id} -> 200"), "{line}");
    let mut client = fibd.connect();
    let counted = metric(
        &mut client,
        "fibd_requests_total{route=\"/v1/primes/tasks/{id}\",code=\"200\"}",
    );
    assert_eq!(counted, 1.0, "the waited GET is counted once");
    assert_eq!(blocker.join().unwrap(), 200);
}

#[test]
fn a_stop_gives_a_hung_collector_a_bounded_time_then_exits() {
    let _serial = serial();
    let collector = FakeUpstream::start(|_| Answer::silent());
    let data = DataDir::new("traces-stop-hung");
    let fibd = traced_fibd(&data, &collector, None);
    let mut client = fibd.connect();
    assert_eq!(client.request("GET", "/current", &[]).status, 200);
    // That span's batch is in flight and never answered; these wait behind it.
    assert!(collector.wait_until(Duration::from_secs(10), |c| c.requests() == 1));
    for _ in 0..3 {
        assert_eq!(client.request("POST", "/next", &[]).status, 200);
    }
    drop(client);
    support::signal(fibd.pid(), "TERM");
    let (status, log) = fibd.wait_exit();
    assert!(status.success(), "{status:?}: {log:#?}");
    let given_up = log
        .iter()
        .find(|l| l.contains("span(s) not delivered"))
        .unwrap_or_else(|| panic!("no give-up line: {log:#?}"));
    assert!(given_up.contains("/api/v2/spans"), "{given_up}");
}
