//! HTTP/1.0 keep-alive as real 1.0 clients need it: a connection fibd keeps
//! is announced with `Connection: keep-alive`, one it closes with
//! `Connection: close`; HTTP/1.1 is unchanged. Checked with a raw socket
//! and with ApacheBench (`ab -k`, an HTTP/1.0 client).

mod support;

use std::process::Command;
use std::time::Duration;

use support::{DataDir, Fibd, wait_timeout};

#[test]
fn http_1_0_keep_alive_is_announced_on_every_answer_it_keeps() {
    let data = DataDir::new("ka10");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    let requests: [&[u8]; 4] = [
        b"GET /current HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"POST /next HTTP/1.0\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
        b"GET /v1/fib?n=10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        b"GET /nowhere HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    ];
    let expected = [200, 200, 200, 404];
    for (request, status) in requests.iter().zip(expected) {
        client.send(request);
        let r = client.read_response(false);
        assert_eq!(r.status, status);
        assert_eq!(r.header("Connection"), Some("keep-alive"), "{r:?}");
        if status == 404 {
            // The 404 lists every resource, the operator's too.
            for path in [
                "/current",
                "/v1/fib",
                "/v1/random",
                "/healthz",
                "/readyz",
                "/metrics",
            ] {
                assert!(r.text().contains(path), "{path} in {}", r.text());
            }
        }
    }
    assert!(!client.is_closed_by_server(), "it stays open as announced");
    // The last one without keep-alive: announced and done.
    client.send(b"GET /current HTTP/1.0\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(client.is_closed_by_server());
}

#[test]
fn a_deferred_answer_and_an_error_that_closes_say_so_too() {
    let data = DataDir::new("ka10-deferred");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    // Computed on the worker: answered later, still announced.
    client.send(b"GET /v1/fib?n=30000 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!(
        (r.status, r.header("Connection")),
        (200, Some("keep-alive"))
    );
    // A framing error closes whatever the client asked.
    client.send(b"GET /current HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: x\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!((r.status, r.header("Connection")), (400, Some("close")));
    assert!(client.is_closed_by_server());
}

#[test]
fn http_1_1_answers_carry_no_connection_field_unless_closing() {
    let data = DataDir::new("ka11");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    let r = client.request("GET", "/current", &[]);
    assert_eq!(r.header("Connection"), None);
    let r = client.request("GET", "/current", &[("Connection", "close")]);
    assert_eq!(r.header("Connection"), Some("close"));
}

/// `ab -k` waited for a close that never came before fibd said keep-alive.
#[test]
#[ignore = "needs ab (apache2-utils): run scripts/test"]
fn apache_bench_keep_alive_completes() {
    let data = DataDir::new("ab");
    let fibd = Fibd::start(&data, &[]);
    let url = format!("http://{}/current", fibd.addr);
    let mut ab = Command::new("ab")
        .args(["-k", "-n", "2000", "-c", "4", "-s", "10", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ab (apt-get install apache2-utils)");
    let status = wait_timeout(&mut ab, Duration::from_secs(60)).expect("ab finishes");
    let output = ab.wait_with_output().expect("ab output");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| -> u64 {
        let line = report
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} in {report}"));
        line[name.len()..].trim().parse().expect("a count")
    };
    assert_eq!(field("Complete requests:"), 2000, "{report}");
    assert_eq!(field("Failed requests:"), 0, "{report}");
    assert_eq!(field("Keep-Alive requests:"), 2000, "{report}");
    let accepted = fibd.get("/metrics").text();
    let line = accepted
        .lines()
        .find(|l| l.starts_with("fibd_connections_accepted_total "))
        .expect("accepted counter");
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count <= 5, "ab's 4 connections were kept: {count} accepted");
}
