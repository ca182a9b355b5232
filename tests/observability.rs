//! What an operator sees, against the real binary: request ids on every
//! answer, in error bodies and log lines; /metrics.json agreeing with /metrics.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::upstream::{Answer, FakeUpstream};
use support::{DataDir, Fibd, Response, request_bytes};

/// A made id: six base-32 characters, a dash, a hex counter.
fn is_generated(id: &str) -> bool {
    let Some((prefix, counter)) = id.split_once('-') else {
        return false;
    };
    prefix.len() == 6
        && prefix
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
        && !counter.is_empty()
        && counter.len() <= 16
        && counter.bytes().all(|b| b.is_ascii_hexdigit())
}

fn request_id(r: &Response) -> &str {
    r.header("X-Request-Id")
        .expect("every answer has X-Request-Id")
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("JSON body: {e}: {:?}", r.text()))
}

/// Waits for a log line that satisfies `wanted`; the lines seen, on failure.
fn wait_for_log(fibd: &Fibd, wanted: impl Fn(&str) -> bool) -> Result<String, Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while let Ok(line) = fibd
        .log
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if wanted(&line) {
            return Ok(line);
        }
        seen.push(line);
    }
    Err(seen)
}

#[test]
fn a_valid_request_id_is_echoed_and_anything_else_replaced() {
    let data = DataDir::new("rid-rules");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    let longest = "x".repeat(64);
    for good in ["client-7f3a", "a", "{weird}!~", longest.as_str()] {
        let r = client.request("GET", "/current", &[("X-Request-Id", good)]);
        assert_eq!(request_id(&r), good);
    }
    let too_long = "x".repeat(65);
    for bad in ["has space", too_long.as_str(), "caf\u{e9}", ""] {
        let r = client.request("GET", "/current", &[("X-Request-Id", bad)]);
        assert_eq!(r.status, 200);
        assert!(
            is_generated(request_id(&r)),
            "{bad:?} -> {}",
            request_id(&r)
        );
    }
    let mut seen = std::collections::HashSet::new();
    let mut prefixes = std::collections::HashSet::new();
    for _ in 0..500 {
        let r = client.request("GET", "/current", &[]);
        let id = request_id(&r).to_owned();
        assert!(is_generated(&id) && id.len() <= 23, "{id}");
        prefixes.insert(id.split_once('-').unwrap().0.to_owned());
        assert!(seen.insert(id), "ids are unique");
    }
    assert_eq!(prefixes.len(), 1, "one prefix per process run");
}

/// Method, path, extra headers, expected status.
type Case = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u16,
);

#[test]
fn every_kind_of_answer_carries_the_id_and_errors_name_it_in_the_body() {
    let data = DataDir::new("rid-answers");
    let fibd = Fibd::start(&data, &["--rate-limit", "0"]);
    let mut client = fibd.connect();
    let cases: &[Case] = &[
        ("GET", "/current", &[], 200),
        ("POST", "/next", &[], 200),
        ("HEAD", "/current", &[], 200),
        ("GET", "/v1/fib?n=90", &[], 200),
        (
            "GET",
            "/v1/fib?n=90",
            &[("If-None-Match", "\"fib-90\"")],
            304,
        ),
        ("GET", "/v1/random", &[], 200),
        ("GET", "/healthz", &[], 200),
        ("GET", "/readyz", &[], 200),
        ("GET", "/metrics", &[], 200),
        ("GET", "/metrics.json", &[], 200),
        ("GET", "/dashboard", &[], 200),
        ("GET", "/nope", &[], 404),
        ("DELETE", "/current", &[], 405),
        ("GET", "/current", &[("Accept", "image/png")], 406),
        ("GET", "/v1/fib?n=x", &[], 400),
        ("GET", "/v1/fib?n=99999999999", &[], 422),
    ];
    for (i, &(method, path, headers, status)) in cases.iter().enumerate() {
        let id = format!("case-{i}");
        let mut headers = headers.to_vec();
        headers.push(("X-Request-Id", &id));
        let r = client.request(method, path, &headers);
        assert_eq!(r.status, status, "{method} {path}");
        assert_eq!(request_id(&r), id, "{method} {path}");
        if status >= 400 {
            let body = json(&r);
            assert_eq!(body["request_id"], id.as_str(), "{method} {path}: {body}");
            assert_eq!(body["status"], status);
        }
    }
    // A computation on the worker: the id travels with the parked request.
    let r = client.request("GET", "/v1/fib?n=30001", &[("X-Request-Id", "deferred-1")]);
    assert_eq!((r.status, request_id(&r)), (200, "deferred-1"));
    // Spend a bucket: the 429 names the id too.
    let limited_data = DataDir::new("rid-limited");
    let limited = Fibd::start(
        &limited_data,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "2",
            "--rate-limit-loopback",
        ],
    );
    let mut limited = limited.connect();
    let limited = (0..100)
        .map(|_| limited.request("GET", "/current", &[("X-Request-Id", "burst")]))
        .find(|r| r.status == 429)
        .expect("a 429 once the bucket is spent");
    assert_eq!(request_id(&limited), "burst");
    assert_eq!(json(&limited)["request_id"], "burst");
    // A head that cannot be parsed has no id to keep: one is made.
    let mut raw = fibd.connect();
    raw.send(b"GET /current HTTP/1.1\r\nX-Request-Id: lost\r\n\r\n");
    let r = raw.read_response(false);
    assert_eq!(r.status, 400);
    assert!(is_generated(request_id(&r)));
    assert_eq!(json(&r)["request_id"], request_id(&r));
}

#[test]
fn the_access_log_carries_the_id_at_debug() {
    let data = DataDir::new("rid-log");
    let fibd = Fibd::start_with(&data, &[], &[("RUST_LOG", "debug")]);
    let r = fibd
        .connect()
        .request("GET", "/current", &[("X-Request-Id", "trace-me-42")]);
    assert_eq!(r.status, 200);
    let line = wait_for_log(&fibd, |l| l.contains("trace-me-42"))
        .unwrap_or_else(|seen| panic!("no access log line with the id: {seen:#?}"));
    assert!(line.contains("DEBUG") && line.contains("/current") && line.contains("200"));
}

#[test]
fn a_failed_commit_answers_503_naming_the_request_and_logs_a_warning_with_it() {
    let data = DataDir::new("rid-commit");
    let fibd = Fibd::start(&data, &[]);
    assert_eq!(fibd.post("/next").status, 200);
    let fault = data.path().join("fail-commits");
    std::fs::write(&fault, b"").unwrap();
    let r = fibd
        .connect()
        .request("POST", "/next", &[("X-Request-Id", "doomed-step")]);
    assert_eq!(r.status, 503);
    assert_eq!(request_id(&r), "doomed-step");
    assert_eq!(json(&r)["request_id"], "doomed-step");
    let line = wait_for_log(&fibd, |l| l.contains("doomed-step"))
        .unwrap_or_else(|seen| panic!("no warning naming the request: {seen:#?}"));
    assert!(line.contains("WARN"), "{line}");
    let metrics = fibd.get("/metrics.json");
    let metrics = &json(&metrics)["metrics"];
    assert_eq!(metrics["fibd_ready"], 0);
    assert!(metrics["fibd_commit_failures_total"].as_u64() >= Some(1));
    std::fs::remove_file(&fault).unwrap();
    let r = fibd.post("/next");
    assert_eq!(
        (r.status, r.index()),
        (200, 2),
        "the failed step was not applied"
    );
    assert_eq!(fibd.get("/readyz").status, 200);
}

/// Every sample of the Prometheus text, keyed `name{labels}`.
fn prometheus_samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').expect("name value");
            (key.to_owned(), value.parse().expect("numeric sample"))
        })
        .collect()
}

/// /metrics.json flattened into the same keys.
fn json_samples(doc: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (name, value) in doc["metrics"].as_object().expect("metrics object") {
        match value {
            Value::Number(n) => {
                out.insert(name.clone(), n.as_f64().unwrap());
            }
            Value::Object(o) if o.contains_key("series") => {
                let labels: Vec<&str> = o["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap())
                    .collect();
                for series in o["series"].as_array().unwrap() {
                    let series = series.as_array().unwrap();
                    let pairs: Vec<String> = labels
                        .iter()
                        .zip(series)
                        .map(|(l, v)| format!("{l}=\"{}\"", v.as_str().unwrap()))
                        .collect();
                    let value = series.last().unwrap().as_f64().unwrap();
                    out.insert(format!("{name}{{{}}}", pairs.join(",")), value);
                }
            }
            Value::Object(o) => {
                let bounds = o["le"].as_array().unwrap();
                for (bound, count) in bounds.iter().zip(o["buckets"].as_array().unwrap()) {
                    let key = format!("{name}_bucket{{le=\"{}\"}}", bound.as_f64().unwrap());
                    out.insert(key, count.as_f64().unwrap());
                }
                let count = o["count"].as_f64().unwrap();
                out.insert(format!("{name}_bucket{{le=\"+Inf\"}}"), count);
                out.insert(format!("{name}_count"), count);
                out.insert(format!("{name}_sum"), o["sum"].as_f64().unwrap());
            }
            other => panic!("{name}: unexpected {other}"),
        }
    }
    out
}

#[test]
fn metrics_json_is_the_same_counters_as_metrics() {
    let data = DataDir::new("metrics-json");
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "5",
            "--rate-limit-loopback",
        ],
    );
    let mut load = fibd.connect();
    for path in [
        "/next",
        "/next",
        "/previous",
        "/v1/fib?n=50",
        "/v1/fib?n=50",
        "/nope",
    ] {
        load.request("GET", path, &[]);
    }
    for _ in 0..5 {
        load.request("GET", "/current", &[]);
    }
    // Both in one write: answered in one loop pass, so they differ only by
    // the count of the /metrics.json answer itself.
    let mut client = fibd.connect();
    let mut both = request_bytes("GET", "/metrics.json", &[]);
    both.extend(request_bytes("GET", "/metrics", &[]));
    client.send(&both);
    let from_json = json_samples(&json(&client.read_response(false)));
    let text = client.read_response(false).text();
    let mut from_text = prometheus_samples(&text);
    let own = "fibd_requests_total{route=\"/metrics.json\",code=\"200\"}";
    assert_eq!(from_text.remove(own), Some(1.0), "{text}");
    assert_eq!(from_json, from_text);
    let limited: f64 = from_json
        .iter()
        .filter(|(k, _)| k.contains("code=\"429\""))
        .map(|(_, v)| v)
        .sum();
    assert!(limited >= 4.0, "{from_json:?}");
    assert_eq!(from_json["fibd_rate_limited_total"], limited);
    assert_eq!(from_json["fibd_stepper_index"], 1.0);
    assert_eq!(from_json["fibd_fib_cache_hits_total"], 2.0);
    assert!(from_json["fibd_commit_duration_seconds_count"] >= 1.0);
    assert!(from_json.contains_key("fibd_requests_total{route=\"other\",code=\"404\"}"));
}

fn spans(fibd: &Fibd) -> (u64, u64) {
    let m = json(&fibd.get("/metrics.json"));
    let m = &m["metrics"];
    (
        m["fibd_trace_spans_total"].as_u64().unwrap(),
        m["fibd_trace_spans_dropped_total"].as_u64().unwrap(),
    )
}

#[test]
fn a_callers_sampled_flag_decides_and_the_ratio_decides_the_rest() {
    let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    // A collector that takes every batch, so no span is dropped however
    // slowly this runs.
    let collector = FakeUpstream::start(|_| Answer::status(0, 202));
    let url = &format!("http://{}/api/v2/spans", collector.addr);
    let data = DataDir::new("trace-never");
    let never = Fibd::start(&data, &["--trace-zipkin", url, "--trace-sample", "0"]);
    let mut client = never.connect();
    for (header, counted) in [(sampled, 1), (unsampled, 0), (invalid, 0), (sampled, 1)] {
        let before = spans(&never).0;
        let r = client.request("GET", "/current", &[("traceparent", header)]);
        assert_eq!(r.status, 200);
        assert_eq!(spans(&never).0 - before, counted, "{header}");
    }
    assert_eq!(spans(&never).0, 2);

    let data = DataDir::new("trace-always");
    let always = Fibd::start(&data, &["--trace-zipkin", url, "--trace-sample", "1"]);
    let mut client = always.connect();
    client.request("GET", "/v1/fib?n=30002", &[]); // a span that waits with its request
    client.request("GET", "/current", &[("traceparent", unsampled)]);
    client.request("GET", "/nope", &[]);
    // The parked F(n) and the 404; a /metrics.json read's own span ends
    // after its body is written, so the next read counts it.
    assert_eq!(spans(&always), (2, 0));
    assert_eq!(spans(&always), (3, 0));

    let data = DataDir::new("trace-off");
    let off = Fibd::start(&data, &[]);
    off.connect()
        .request("GET", "/current", &[("traceparent", sampled)]);
    assert_eq!(spans(&off), (0, 0), "no collector, no spans");
}
