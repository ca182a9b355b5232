//! /v1/fib against the real binary: exact values, HTTP caching, bad input,
//! single flight, a full queue, and a loop that never stalls behind a big F(n).

mod support;

use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use ibig::UBig;
use support::{Client, DataDir, Fibd, fib_decimal};

/// These tests are about F(n), not the rate limiter, which would rightly
/// refuse many uncached large values from one client (tests/ratelimit.rs).
const UNLIMITED: &[&str] = &["--rate-limit", "0"];

fn value(body: &str) -> String {
    let rest = body.split("\"value\": \"").nth(1).expect("a value");
    rest.split('"').next().unwrap().to_owned()
}

fn fib_big(fibd: &Fibd, n: u64) -> UBig {
    let r = fibd.get(&format!("/v1/fib?n={n}"));
    assert_eq!(r.status, 200, "n={n}: {}", r.text());
    UBig::from_str(&value(&r.text())).unwrap()
}

#[test]
fn values_match_the_plain_sum_and_big_identities() {
    let data = DataDir::new("fib-values");
    let fibd = Fibd::start(&data, UNLIMITED);
    let mut client = fibd.connect();
    for n in (0..=400).chain([186, 187, 1000, 2500, 2999]) {
        let r = client.request("GET", &format!("/v1/fib?n={n}"), &[]);
        assert_eq!(
            r.text(),
            format!("{{\"n\": {n}, \"value\": \"{}\"}}\n", fib_decimal(n))
        );
    }
    // Past the inline threshold (computed off the loop): the doubling identities.
    for k in [25_000u64, 40_001] {
        let (a, b) = (fib_big(&fibd, k), fib_big(&fibd, k + 1));
        let two = UBig::from(2u8);
        assert_eq!(fib_big(&fibd, 2 * k), &a * (&two * &b - &a), "F(2k), k={k}");
        assert_eq!(
            fib_big(&fibd, 2 * k + 1),
            &a * &a + &b * &b,
            "F(2k+1), k={k}"
        );
    }
}

#[test]
fn f_one_million_has_the_known_digits() {
    let data = DataDir::new("fib-million");
    let fibd = Fibd::start(&data, UNLIMITED);
    let mut client = fibd.connect();
    let r = client.request("GET", "/v1/fib?n=1000000", &[("Accept", "text/plain")]);
    let text = r.text();
    let digits = text.trim_end();
    assert_eq!(digits.len(), 208_988);
    assert!(digits.starts_with("1953282128"));
    assert!(digits.ends_with("8242546875"));
    assert!(text.ends_with('\n'));
}

#[test]
fn etag_304_head_and_immutable_caching() {
    let data = DataDir::new("fib-cache");
    let fibd = Fibd::start(&data, UNLIMITED);
    let mut client = fibd.connect();
    let r = client.request("GET", "/v1/fib?n=90", &[]);
    let get_length = r.body.len().to_string();
    let etag = r.header("ETag").unwrap().to_owned();
    assert_eq!(etag, "\"fib-90\"");
    assert_eq!(
        r.header("Cache-Control"),
        Some("public, max-age=31536000, immutable")
    );
    for inm in [etag.as_str(), "*", "\"x\", \"fib-90\"", "W/\"fib-90\""] {
        let r = client.request("GET", "/v1/fib?n=90", &[("If-None-Match", inm)]);
        assert_eq!(r.status, 304, "If-None-Match: {inm}");
        assert!(r.body.is_empty());
        assert_eq!(r.header("ETag"), Some(etag.as_str()));
    }
    let r = client.request("GET", "/v1/fib?n=90", &[("If-None-Match", "\"fib-91\"")]);
    assert_eq!(r.status, 200);
    let r = client.request("HEAD", "/v1/fib?n=90", &[]);
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("Content-Length"), Some(get_length.as_str()));
    assert_eq!(r.header("ETag"), Some(etag.as_str()));
    // The connection is still in step: the next answer parses cleanly.
    assert_eq!(
        client
            .request("GET", "/v1/fib?n=1", &[("Accept", "text/plain")])
            .text(),
        "1\n"
    );
    // The stepper stays uncacheable.
    assert_eq!(
        client
            .request("GET", "/current", &[])
            .header("Cache-Control"),
        Some("no-store")
    );
}

#[test]
fn bad_n_names_the_accepted_range() {
    let data = DataDir::new("fib-bad");
    let fibd = Fibd::start(&data, &["--max-n", "5000"]);
    let cases = [
        ("/v1/fib", 400),
        ("/v1/fib?n=", 400),
        ("/v1/fib?n=-1", 400),
        ("/v1/fib?n=abc", 400),
        ("/v1/fib?n=1e3", 400),
        ("/v1/fib?n=1.5", 400),
        ("/v1/fib?n=%2B5", 400),
        ("/v1/fib?n=1&n=2", 400),
        ("/v1/fib?m=1", 400),
        ("/v1/fib?n=18446744073709551616", 422),
        ("/v1/fib?n=5001", 422),
    ];
    for (path, status) in cases {
        let r = fibd.get(path);
        assert_eq!(r.status, status, "{path}");
        let body = r.text();
        assert!(body.starts_with("{\"error\": \""), "{path}: {body}");
        assert!(body.contains("\"max_n\": 5000"), "{path}: {body}");
        // The message names this server's limit, not the default one.
        assert!(body.contains("from 0 to 5000\""), "{path}: {body}");
        assert!(!body.contains("10000000"), "{path}: {body}");
    }
    assert_eq!(fibd.get("/v1/fib?n=5000").status, 200);
    assert_eq!(fibd.post("/v1/fib?n=5").status, 405);
}

fn metric(fibd: &Fibd, name: &str) -> f64 {
    let text = fibd.get("/metrics").text();
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("{name} in {text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn concurrent_requests_for_one_n_share_one_computation() {
    let data = DataDir::new("fib-flight");
    let fibd = Fibd::start(&data, UNLIMITED);
    let addr = fibd.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || Client::connect(addr).request("GET", "/v1/fib?n=700000", &[]))
        })
        .collect();
    let bodies: Vec<String> = clients
        .into_iter()
        .map(|c| c.join().unwrap().text())
        .collect();
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        metric(&fibd, "fibd_fib_compute_duration_seconds_count"),
        1.0
    );
    // And the next one is a cache hit.
    let hits = metric(&fibd, "fibd_fib_cache_hits_total");
    fibd.get("/v1/fib?n=700000");
    assert_eq!(metric(&fibd, "fibd_fib_cache_hits_total"), hits + 1.0);
}

#[test]
fn a_full_compute_queue_answers_503_with_retry_after() {
    let data = DataDir::new("fib-queue");
    let fibd = Fibd::start(&data, &["--fib-queue", "1", "--rate-limit", "0"]);
    let mut clients: Vec<Client> = (0..6).map(|_| fibd.connect()).collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let n = 5_000_000 + i as u64;
        client.send(&support::request_bytes(
            "GET",
            &format!("/v1/fib?n={n}"),
            &[],
        ));
    }
    // One computes, one waits in the queue; the other four cannot be queued
    // and are refused at once, whichever order the server saw them in. (Five,
    // if all six arrive before the worker takes the first job off the queue.)
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut refused = 0;
    let mut answered = vec![false; clients.len()];
    while Instant::now() < deadline {
        for (i, client) in clients.iter_mut().enumerate() {
            if answered[i] {
                continue;
            }
            client
                .stream()
                .set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            if let Some(r) = client.try_read_response(false) {
                answered[i] = true;
                if r.status == 503 {
                    assert_eq!(r.header("Retry-After"), Some("1"));
                    refused += 1;
                }
            }
        }
    }
    assert!((4..=5).contains(&refused), "{refused} refused");
}

#[test]
fn current_stays_fast_while_large_values_compute() {
    let data = DataDir::new("fib-loop");
    let fibd = Fibd::start(&data, UNLIMITED);
    let addr = fibd.addr;
    let big: Vec<_> = (0..4u64)
        .map(|i| {
            thread::spawn(move || {
                let path = format!("/v1/fib?n={}", 600_000 + i);
                Client::connect(addr).request("GET", &path, &[]).status
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    // Sample /current for as long as any of the four is still computing.
    let mut client = fibd.connect();
    let mut latencies = Vec::new();
    while latencies.len() < 10 || big.iter().any(|b| !b.is_finished()) {
        let started = Instant::now();
        assert_eq!(client.request("GET", "/current", &[]).status, 200);
        latencies.push(started.elapsed());
        thread::sleep(Duration::from_millis(5));
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    assert!(
        median < Duration::from_millis(5),
        "/current median {median:?} while F(6e5) computes; all: {latencies:?}"
    );
    for b in big {
        assert_eq!(b.join().unwrap(), 200);
    }
}
