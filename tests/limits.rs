//! Protection against slow, idle, greedy and hostile clients, against the
//! real binary: timeouts, the connection cap, bounded memory.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use support::{Client, DataDir, Fibd, request_bytes};

/// Peak resident memory of a process, from /proc/PID/status, in KiB.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn slowloris_is_cut_off_with_408_within_the_request_timeout() {
    let data = DataDir::new("slowloris");
    let fibd = Fibd::start(&data, &["--request-timeout-ms", "300"]);
    let mut client = fibd.connect();
    let started = Instant::now();
    client.send(b"GET /current HTTP/1.1\r\nHost: x\r\n");
    // Trickle a byte now and then: activity, but the request never completes.
    let mut response = None;
    for _ in 0..40 {
        if client.stream().write_all(b"X").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        client.stream().set_nonblocking(true).unwrap();
        let mut probe = [0u8; 1];
        let peeked = client.stream().peek(&mut probe);
        client.stream().set_nonblocking(false).unwrap();
        if matches!(peeked, Ok(n) if n > 0) {
            response = client.try_read_response(false);
            break;
        }
    }
    let response = response.expect("a 408 before the client gave up");
    assert_eq!(response.status, 408);
    assert!(response.text().contains("\"error\""));
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(2500),
        "cut off after {elapsed:?}"
    );
    assert!(client.is_closed_by_server());
    assert_eq!(fibd.get("/current").status, 200, "others are still served");
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let data = DataDir::new("idle");
    let fibd = Fibd::start(&data, &["--idle-timeout-ms", "300"]);
    let mut client = fibd.connect();
    assert_eq!(client.request("GET", "/current", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(1600));
    assert!(client.is_closed_by_server());
}

#[test]
fn connections_beyond_the_cap_wait_in_the_backlog() {
    let data = DataDir::new("cap");
    let fibd = Fibd::start(&data, &["--max-connections", "4"]);
    let mut open: Vec<Client> = (0..4).map(|_| fibd.connect()).collect();
    for client in &mut open {
        assert_eq!(client.request("GET", "/current", &[]).status, 200);
    }
    // The fifth connects (the kernel's backlog accepts it) but is not served...
    let mut waiting = fibd.connect();
    waiting.send(&request_bytes("GET", "/current", &[]));
    waiting
        .stream()
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = std::io::Read::read(waiting.stream(), &mut byte);
    assert!(early.is_err(), "served beyond the cap: {early:?}");
    waiting
        .stream()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    // ...until a slot frees up.
    open.pop();
    let r = waiting.read_response(false);
    assert_eq!(r.status, 200);
}

#[test]
fn a_pipelining_client_that_never_reads_cannot_grow_memory() {
    let data = DataDir::new("flood");
    let fibd = Fibd::start(&data, &[]);
    let baseline = vm_hwm_kib(fibd.pid());
    let mut client = fibd.connect();
    client
        .stream()
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let chunk: Vec<u8> = (0..1000)
        .flat_map(|_| request_bytes("GET", "/current", &[]))
        .collect();
    let mut sent = 0usize;
    // Write until the server stops reading (its socket and ours fill up).
    while sent < 200 << 20 {
        match client.stream().write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let peak = vm_hwm_kib(fibd.pid());
    assert!(
        sent < 200 << 20,
        "the server kept reading {sent} bytes without us reading replies"
    );
    assert!(
        peak < baseline + 16 * 1024,
        "peak RSS grew from {baseline} KiB to {peak} KiB after {sent} pipelined bytes"
    );
    assert_eq!(fibd.get("/current").status, 200, "others are still served");
}
