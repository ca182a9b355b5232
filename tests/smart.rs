//! /api/smart against the real binary and a scripted fake upstream in the
//! test process: the hedging plan's timing, every failure kind, response
//! framings and the size cap, the pool (reuse, upstreams closing idle
//! connections, the bound), cancelled attempts leaving no socket, and a
//! loop that stays fast while hundreds of calls hang.

mod support;

use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::upstream::{Answer, FakeUpstream, Kind, Seen};
use support::{Client, DataDir, Fibd, Response, metric};

/// Tests that time fibd, and the one that loads it with 800 sockets, run
/// one at a time: on a 2-CPU machine they would otherwise time each other.
fn timing() -> MutexGuard<'static, ()> {
    static TIMING: Mutex<()> = Mutex::new(());
    TIMING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Starts fibd calling `upstream`, rate limiting off unless `extra` says.
fn fibd_for(data: &DataDir, upstream: &FakeUpstream, extra: &[&str]) -> Fibd {
    let url = upstream.url();
    let mut args = vec!["--upstream", url.as_str(), "--rate-limit", "0"];
    args.extend_from_slice(extra);
    Fibd::start(data, &args)
}

/// One call; the response, its JSON and the wall time it took.
fn call(client: &mut Client, timeout_ms: u64) -> (Response, Value, Duration) {
    let started = Instant::now();
    let r = client.request("GET", &format!("/api/smart?timeout={timeout_ms}"), &[]);
    let elapsed = started.elapsed();
    let json: Value = serde_json::from_slice(&r.body).expect("a JSON body");
    (r, json, elapsed)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .count()
}

#[test]
fn a_fast_success_is_one_attempt_embedded_verbatim() {
    let upstream =
        FakeUpstream::start(|_| Answer::json(0, "{\"value\": [1, 2.5, \"x\"], \"n\": null}"));
    let data = DataDir::new("smart-fast");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    let (r, json, _) = call(&mut client, 800);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    assert_eq!(json["attempts"], 1);
    assert!(json["time"].as_u64().unwrap() < 300);
    let text = r.text();
    assert!(
        text.contains("\"api\": {\"value\": [1, 2.5, \"x\"], \"n\": null}, \"attempts\": 1}"),
        "{text}"
    );
    assert_eq!(upstream.requests(), 1);
    // HEAD gets the head only, and the connection stays in step.
    let head = client.request("HEAD", "/api/smart?timeout=800", &[]);
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(client.request("GET", "/healthz", &[]).status, 200);
}

#[test]
fn a_slow_first_attempt_is_rescued_by_a_hedge() {
    let _timing = timing();
    let upstream = FakeUpstream::start(|seen: Seen| match seen.index {
        0 => Answer::json(3000, "{\"who\": \"slow\"}"),
        _ => Answer::json(50, "{\"who\": \"hedge\"}"),
    });
    let data = DataDir::new("smart-hedge");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    let (r, json, elapsed) = call(&mut client, 5000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json["api"]["who"], "hedge");
    assert_eq!(json["attempts"], 3);
    // The hedges leave at 300 ms and answer 50 ms later: well before the slow one.
    assert!(elapsed >= ms(340), "{elapsed:?}");
    assert!(elapsed < ms(1000), "{elapsed:?}");
    let time = json["time"].as_u64().unwrap();
    assert!((340..1000).contains(&time), "{time}");
}

#[test]
fn a_fast_failure_sends_the_hedges_at_once() {
    let _timing = timing();
    let upstream = FakeUpstream::start(|seen: Seen| match seen.index {
        0 => Answer::status(0, 500),
        _ => Answer::json(20, "{\"ok\": true}"),
    });
    let data = DataDir::new("smart-fast-fail");
    let fibd = fibd_for(&data, &upstream, &[]);
    let (r, json, elapsed) = call(&mut fibd.connect(), 5000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json["attempts"], 3);
    assert!(
        elapsed < ms(250),
        "the hedges did not wait for the delay: {elapsed:?}"
    );
}

#[test]
fn every_attempt_slow_is_a_timeout_at_the_deadline() {
    let _timing = timing();
    let upstream = FakeUpstream::start(|_| Answer::silent());
    let data = DataDir::new("smart-timeout");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    for timeout in [500u64, 120] {
        let (r, json, elapsed) = call(&mut client, timeout);
        assert_eq!(r.status, 503, "{}", r.text());
        assert_eq!(json["error"], "upstream_timeout");
        assert_eq!(json["status"], 503);
        let attempts = if timeout > 300 { 3 } else { 1 };
        assert_eq!(json["attempts"], attempts);
        let time = json["time"].as_u64().unwrap();
        // At the deadline, not after it: a few ms of slack for a busy machine.
        assert!(
            (timeout..timeout + 20).contains(&time),
            "time {time} for {timeout}"
        );
        assert!(elapsed >= ms(timeout), "{elapsed:?}");
        assert!(elapsed < ms(timeout + 150), "{elapsed:?} for {timeout}");
        assert!(json["detail"].as_str().unwrap().contains("timeout"));
    }
    assert_eq!(r#try(&mut client), 200, "the connection stays usable");
}

fn r#try(client: &mut Client) -> u16 {
    client.request("GET", "/healthz", &[]).status
}

#[test]
fn every_attempt_failing_names_the_status_at_once() {
    let _timing = timing();
    let upstream = FakeUpstream::start(|_| Answer::status(0, 500));
    let data = DataDir::new("smart-500");
    let fibd = fibd_for(&data, &upstream, &[]);
    let (r, json, elapsed) = call(&mut fibd.connect(), 5000);
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert_eq!(json["error"], "upstream_error");
    assert_eq!(json["upstream_status"], 500);
    assert_eq!(json["attempts"], 3);
    assert!(json["detail"].as_str().unwrap().contains("500"), "{json}");
    assert!(elapsed < ms(250), "{elapsed:?}");
    assert_eq!(upstream.requests(), 3);
}

#[test]
fn an_upstream_that_is_down_is_unavailable() {
    let _timing = timing();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let data = DataDir::new("smart-down");
    let url = format!("http://{closed_port}/x");
    let fibd = Fibd::start(&data, &["--upstream", &url, "--rate-limit", "0"]);
    let (r, json, elapsed) = call(&mut fibd.connect(), 2000);
    assert_eq!(r.status, 503);
    assert_eq!(json["error"], "upstream_unavailable");
    assert_eq!(json["attempts"], 3);
    assert!(
        json["detail"].as_str().unwrap().contains("refused"),
        "{json}"
    );
    assert!(elapsed < ms(250), "{elapsed:?}");
}

#[test]
fn without_an_upstream_the_answer_says_so() {
    let data = DataDir::new("smart-none");
    let fibd = Fibd::start(&data, &[]);
    let (r, json, _) = call(&mut fibd.connect(), 100);
    assert_eq!(r.status, 503);
    assert_eq!(json["error"], "upstream_not_configured");
    assert_eq!(json["attempts"], 0);
    assert!(json["detail"].as_str().unwrap().contains("--upstream"));
}

#[test]
fn chunked_and_length_answers_and_malformed_ones() {
    let big = format!("\"{}\"", "a".repeat(2 << 20));
    let upstream = FakeUpstream::start(move |seen: Seen| match seen.index {
        0 => Answer::new(
            0,
            Kind::Chunked("{\"framing\": \"chunked\", \"pad\": \"0123456789abcdef\"}".into()),
        ),
        1 => Answer::json(0, "{\"framing\": \"length\"}"),
        2 => Answer::new(
            0,
            Kind::Raw(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"framing\": \"close\"}".to_vec(),
            ),
        )
        .then_close(),
        3..=5 => Answer::json(0, &big),
        6..=8 => Answer::json(0, "not json"),
        _ => Answer::new(
            0,
            Kind::Raw(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n".to_vec()),
        )
        .then_close(),
    });
    let data = DataDir::new("smart-framing");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    for framing in ["chunked", "length", "close"] {
        let (r, json, _) = call(&mut client, 2000);
        assert_eq!(r.status, 200, "{framing}: {}", r.text());
        assert_eq!(json["api"]["framing"], framing);
    }
    let (r, json, _) = call(&mut client, 2000);
    assert_eq!(r.status, 503, "an answer over the cap");
    assert_eq!(json["error"], "upstream_malformed");
    assert!(
        json["detail"].as_str().unwrap().contains("larger"),
        "{json}"
    );
    let (_, json, _) = call(&mut client, 2000);
    assert_eq!(json["error"], "upstream_malformed");
    assert!(
        json["detail"].as_str().unwrap().contains("not JSON"),
        "{json}"
    );
    let (_, json, _) = call(&mut client, 2000);
    assert_eq!(json["error"], "upstream_malformed");
    assert!(
        json["detail"].as_str().unwrap().contains("Content-Length"),
        "{json}"
    );
}

#[test]
fn cancelled_attempts_leave_no_socket_open() {
    let upstream = FakeUpstream::start(|seen: Seen| match seen.index {
        1 => Answer::json(50, "{\"won\": true}"),
        _ => Answer::silent(),
    });
    let data = DataDir::new("smart-cancel");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    assert_eq!(r#try(&mut client), 200);
    let baseline = fd_count(fibd.pid());
    let (r, json, _) = call(&mut client, 5000);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json["attempts"], 3);
    // The two losers were closed with the answer; the winner is pooled.
    assert!(
        upstream.wait_until(ms(1000), |u| u.peer_closed() >= 2),
        "losers left open"
    );
    assert_eq!(fd_count(fibd.pid()), baseline + 1);
    assert_eq!(metric(&mut client, "fibd_upstream_connections_open"), 1.0);
    // A timeout cancels everything still in flight.
    let (r, _, _) = call(&mut client, 400);
    assert_eq!(r.status, 503);
    assert!(
        upstream.wait_until(ms(1000), |u| u.peer_closed() >= 5),
        "attempts left open after a timeout"
    );
    assert_eq!(fd_count(fibd.pid()), baseline);
    assert_eq!(metric(&mut client, "fibd_upstream_connections_open"), 0.0);
}

#[test]
fn pooled_connections_are_reused() {
    let upstream = FakeUpstream::start(|_| Answer::json(0, "{\"n\": 1}"));
    let data = DataDir::new("smart-pool");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    for _ in 0..20 {
        let (r, json, _) = call(&mut client, 1000);
        assert_eq!((r.status, json["attempts"].as_u64()), (200, Some(1)));
    }
    assert_eq!(upstream.requests(), 20);
    assert_eq!(upstream.accepted(), 1, "one connection, reused");
    assert_eq!(metric(&mut client, "fibd_upstream_reused_total"), 19.0);
    assert_eq!(
        metric(&mut client, "fibd_smart_calls_total{outcome=\"ok\"}"),
        20.0
    );
    assert_eq!(metric(&mut client, "fibd_upstream_connections_idle"), 1.0);
}

#[test]
fn an_upstream_closing_idle_connections_costs_no_attempt() {
    let _timing = timing();
    // Closes after every answer, without saying so.
    let upstream = FakeUpstream::start(|_| Answer::json(0, "{\"n\": 2}").then_close());
    let data = DataDir::new("smart-idle-close");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    for i in 0..10 {
        let (r, json, _) = call(&mut client, 1000);
        assert_eq!(
            (r.status, json["attempts"].as_u64()),
            (200, Some(1)),
            "call {i}"
        );
        if i % 2 == 0 {
            thread::sleep(ms(20)); // let the close arrive before the next call
        }
    }
    assert_eq!(upstream.accepted(), 10);

    // Keeps the connection after answering, then drops it when the next
    // request arrives: the race a keep-alive timeout causes. The retry on a
    // fresh connection is not an attempt.
    let upstream = FakeUpstream::start(|seen: Seen| match seen.on_connection {
        0 => Answer::json(0, "{\"n\": 3}"),
        _ => Answer::new(0, Kind::Drop),
    });
    let data = DataDir::new("smart-idle-race");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    for i in 0..5 {
        let (r, json, elapsed) = call(&mut client, 1000);
        assert_eq!(
            (r.status, json["attempts"].as_u64()),
            (200, Some(1)),
            "call {i}: {json}"
        );
        assert!(elapsed < ms(250), "no hedge was needed: {elapsed:?}");
    }
    assert_eq!(metric(&mut client, "fibd_upstream_retried_total"), 4.0);
}

#[test]
fn bad_timeout_values_name_the_range() {
    let upstream = FakeUpstream::start(|_| Answer::json(0, "{}"));
    let data = DataDir::new("smart-bad");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut client = fibd.connect();
    for query in [
        "",
        "?timeout",
        "?timeout=",
        "?timeout=0",
        "?timeout=60001",
        "?timeout=-1",
        "?timeout=abc",
        "?timeout=1.5",
        "?timeout=1&timeout=2",
        "?time=5",
    ] {
        let r = client.request("GET", &format!("/api/smart{query}"), &[]);
        assert_eq!(r.status, 400, "{query}");
        assert!(r.text().contains("1 to 60000"), "{query}: {}", r.text());
    }
    let r = client.request("POST", "/api/smart?timeout=5", &[]);
    assert_eq!(r.status, 405);
    assert_eq!(upstream.requests(), 0);
}

#[test]
fn past_the_connection_bound_the_answer_is_at_once() {
    let _timing = timing();
    let upstream = FakeUpstream::start(|_| Answer::silent());
    let data = DataDir::new("smart-bound");
    let fibd = fibd_for(&data, &upstream, &["--upstream-max-conns", "1"]);
    let mut holder = fibd.connect();
    holder.send(&support::request_bytes(
        "GET",
        "/api/smart?timeout=3000",
        &[],
    ));
    assert!(upstream.wait_until(ms(2000), |u| u.requests() == 1));
    let (r, json, elapsed) = call(&mut fibd.connect(), 3000);
    assert_eq!(r.status, 503);
    assert_eq!(json["error"], "upstream_unavailable");
    assert_eq!(json["attempts"], 0);
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("--upstream-max-conns")
    );
    assert!(elapsed < ms(100), "{elapsed:?}");
}

#[test]
fn a_call_costs_tokens() {
    let upstream = FakeUpstream::start(|_| Answer::json(0, "{}"));
    let data = DataDir::new("smart-rate");
    let url = upstream.url();
    let fibd = Fibd::start(
        &data,
        &[
            "--upstream",
            &url,
            "--rate-limit",
            "1",
            "--rate-burst",
            "15",
            "--rate-limit-loopback",
        ],
    );
    let mut client = fibd.connect();
    assert_eq!(call(&mut client, 500).0.status, 200);
    assert_eq!(
        call(&mut client, 500).0.status,
        429,
        "a call costs 10 of the 15 tokens"
    );
    assert_eq!(
        client.request("GET", "/current", &[]).status,
        200,
        "a cheap request still fits"
    );
    assert_eq!(upstream.requests(), 1);
}

#[test]
fn current_stays_fast_while_hundreds_of_calls_hang() {
    let _timing = timing();
    let upstream = FakeUpstream::start(|_| Answer::silent());
    let data = DataDir::new("smart-hang");
    // No budget: this is about the loop holding every attempt the seed's
    // plan sends, not about capping them.
    let fibd = fibd_for(
        &data,
        &upstream,
        &["--upstream-max-conns", "1000", "--hedge-budget", "off"],
    );
    let mut hanging: Vec<Client> = (0..200).map(|_| fibd.connect()).collect();
    let request = support::request_bytes("GET", "/api/smart?timeout=20000", &[]);
    for client in &mut hanging {
        client.send(&request);
    }
    // First attempts, then the hedges after 300 ms: 600 silent calls.
    assert!(
        upstream.wait_until(ms(10_000), |u| u.requests() >= 600),
        "only {} upstream requests",
        upstream.requests()
    );
    let mut client = fibd.connect();
    let median = support::median_current_latency(&mut client, 200);
    assert!(
        median < ms(5),
        "median /current {median:?} with 200 calls hanging"
    );
    assert_eq!(metric(&mut client, "fibd_upstream_connections_open"), 600.0);
}

#[test]
fn a_caller_that_hangs_up_cancels_its_attempts() {
    let upstream = FakeUpstream::start(|_| Answer::silent());
    let data = DataDir::new("smart-gone");
    let fibd = fibd_for(&data, &upstream, &[]);
    let mut caller = fibd.connect();
    caller.send(&support::request_bytes(
        "GET",
        "/api/smart?timeout=30000",
        &[],
    ));
    assert!(
        upstream.wait_until(ms(2000), |u| u.requests() == 3),
        "hedged"
    );
    drop(caller);
    assert!(
        upstream.wait_until(ms(2000), |u| u.peer_closed() == 3),
        "the attempts outlived their caller"
    );
    let mut client = fibd.connect();
    assert_eq!(metric(&mut client, "fibd_upstream_connections_open"), 0.0);
    assert_eq!(
        metric(
            &mut client,
            "fibd_smart_calls_total{outcome=\"client_gone\"}"
        ),
        1.0
    );
}

/// A call that succeeds in the very pass its deadline passes is answered
/// once, never dropped (schemathesis found such calls hanging).
#[test]
fn every_call_is_answered_even_at_its_deadline() {
    use std::io::{Read, Write};
    // Answers that land right around the deadline, in the same loop pass.
    let upstream =
        FakeUpstream::start(|seen| Answer::json((seen.index % 3) as u64, "{\"ok\": true}"));
    let data = DataDir::new("smart-deadline-race");
    let url = upstream.url();
    let fibd = Fibd::start(&data, &["--upstream", &url]);
    let mut hung = 0;
    for timeout_ms in [1, 2, 3].repeat(50) {
        let mut stream = std::net::TcpStream::connect(fibd.addr).expect("connect");
        stream.set_read_timeout(Some(ms(3000))).unwrap();
        let request = format!(
            "GET /api/smart?timeout={timeout_ms} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) if answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.1 503") => {
            }
            _ => hung += 1,
        }
    }
    assert_eq!(hung, 0, "calls left without an answer");
}
