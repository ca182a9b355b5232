//! HTTP/1.1 behaviour of the real binary: keep-alive, pipelining, partial
//! reads, errors as JSON with the right status, and the connection handling
//! that goes with each.

mod support;

use std::io::Write;
use std::time::Duration;

use support::{Client, DataDir, Fibd, request_bytes};

#[test]
fn keep_alive_and_a_hundred_pipelined_requests_in_one_write() {
    let data = DataDir::new("pipeline");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    let mut batch = Vec::new();
    for i in 0..100 {
        let path = if i % 2 == 0 { "/next" } else { "/current" };
        batch.extend(request_bytes("GET", path, &[]));
    }
    client.send(&batch);
    for i in 0..100u64 {
        let r = client.read_response(false);
        assert_eq!(r.status, 200);
        // A /current pipelined behind this connection's own /next sees it.
        assert_eq!(r.index(), i / 2 + 1, "response {i} in request order");
    }
    assert_eq!(client.request("GET", "/current", &[]).index(), 50);
}

#[test]
fn a_request_delivered_byte_by_byte() {
    let data = DataDir::new("bytewise");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    for byte in request_bytes("POST", "/next", &[("Accept", "application/json")]) {
        client.send(&[byte]);
        client.stream().flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = client.read_response(false);
    assert_eq!(r.text(), "{\"index\": 1, \"value\": \"1\"}\n");
}

#[test]
fn http_1_0_closes_unless_keep_alive_and_connection_close_is_honoured() {
    let data = DataDir::new("close");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    client.send(b"GET /current HTTP/1.0\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!(r.status, 200);
    assert!(client.is_closed_by_server());

    let mut client = fibd.connect();
    client.send(b"GET /current HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    client.read_response(false);
    client.send(b"GET /current HTTP/1.0\r\n\r\n");
    client.read_response(false);
    assert!(client.is_closed_by_server());

    let mut client = fibd.connect();
    let r = client.request("GET", "/current", &[("Connection", "close")]);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(client.is_closed_by_server());
}

#[test]
fn request_bodies_are_framed_and_skipped() {
    let data = DataDir::new("bodies");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    client.send(b"POST /next HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    client.send(b"POST /next HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    client.send(&request_bytes("GET", "/current", &[]));
    assert_eq!(client.read_response(false).index(), 1);
    assert_eq!(client.read_response(false).index(), 2);
    assert_eq!(client.read_response(false).index(), 2);
}

/// Sends raw bytes on a fresh connection; returns the response and whether
/// the server closed the connection after it.
fn exchange(fibd: &Fibd, raw: &[u8]) -> (support::Response, bool) {
    let mut client = fibd.connect();
    client.send(raw);
    let r = client.read_response(false);
    let closed = client.is_closed_by_server();
    (r, closed)
}

#[test]
fn errors_are_json_with_the_right_status_and_the_index_is_untouched() {
    let data = DataDir::new("errors");
    let fibd = Fibd::start(&data, &[]);
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(3000));
    let big_head = format!(
        "GET /next HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(9000)
    );
    // (request, status, closes the connection)
    let cases: Vec<(Vec<u8>, u16, bool)> = vec![
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 404, false),
        (b"DELETE /next HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 405, false),
        (b"GET /next HTTP/1.1\r\n\r\n".to_vec(), 400, true),
        (b"GET /next HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(), 400, true),
        (b"GET /next HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n".to_vec(), 400, true),
        (b"GET /next HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec(), 400, true),
        (b"GET /next HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec(), 400, true),
        (b"GET /next HTTP/1.1\r\nHost: x\r\nBad\x00Header: 1\r\n\r\n".to_vec(), 400, true),
        (b"GET /next HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n".to_vec(), 400, true),
        (b"GET /next HTTP/3.0\r\nHost: x\r\n\r\n".to_vec(), 505, true),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505, true),
        (b"GET /ne%zzxt HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, true),
        (long_uri.into_bytes(), 414, true),
        (big_head.into_bytes(), 431, true),
        (b"GET /next HTTP/1.1\r\nHost: x\r\nAccept: image/png\r\n\r\n".to_vec(), 406, false),
    ];
    for (raw, status, closes) in cases {
        let (r, closed) = exchange(&fibd, &raw);
        let shown = String::from_utf8_lossy(&raw[..raw.len().min(60)]).into_owned();
        assert_eq!(r.status, status, "{shown:?}");
        assert_eq!(
            r.header("Content-Type"),
            Some("application/json"),
            "{shown:?}"
        );
        let body = r.text();
        assert!(body.starts_with("{\"error\": \""), "{shown:?}: {body}");
        assert_eq!(closed, closes, "{shown:?} closes the connection");
    }
    let (r, _) = exchange(&fibd, b"PUT /current HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.header("Allow"), Some("GET, HEAD, POST"));
    assert_eq!(
        fibd.get("/current").index(),
        0,
        "no bad request moved the index"
    );
}

#[test]
fn the_daemon_keeps_serving_after_a_client_vanishes_mid_request() {
    let data = DataDir::new("vanish");
    let fibd = Fibd::start(&data, &[]);
    for _ in 0..20 {
        let mut client = Client::connect(fibd.addr);
        client.send(b"GET /next HTTP/1.1\r\nHo");
    }
    assert_eq!(fibd.get("/current").index(), 0);
    assert_eq!(fibd.get("/next").index(), 1);
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn running_out_of_file_descriptors_neither_spins_nor_stops_the_daemon() {
    let data = DataDir::new("emfile");
    // 32 descriptors: stdio, epoll, the store, a few spares; the rest are connections.
    let fibd = Fibd::start_with(&data, &[], &[]);
    let pid = fibd.pid();
    let status = std::process::Command::new("prlimit")
        .args(["--nofile=32:32", "--pid", &pid.to_string()])
        .status()
        .expect("prlimit");
    assert!(status.success());
    let mut held: Vec<Client> = (0..60).map(|_| Client::connect(fibd.addr)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_millis(1000));
    let spent = cpu_seconds(pid) - before;
    assert!(
        spent < 0.3,
        "the loop spun at EMFILE: {spent} CPU seconds in one second"
    );
    let warned = fibd
        .log
        .try_iter()
        .filter(|l| l.contains("pausing accepts"))
        .count();
    assert_eq!(
        warned, 1,
        "EMFILE was hit and reported once, not once per retry"
    );
    // Accepted connections are served; the rest wait in the backlog until fds free up.
    let r = held[0].request("GET", "/current", &[]);
    assert_eq!(r.status, 200);
    held.truncate(5);
    let mut late = Client::connect(fibd.addr);
    assert_eq!(late.request("GET", "/current", &[]).status, 200);
}
