//! The daemon's systemd and operations surface against the real binary:
//! sd_notify, socket activation, health, metrics (journald: tests/journald.rs).

mod support;

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{DataDir, Fibd, Response, binary, run_to_exit};

fn notify_socket(tag: &str) -> (UnixDatagram, std::path::PathBuf, DataDir) {
    let dir = DataDir::new(tag);
    std::fs::create_dir_all(dir.path()).unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (socket, path, dir)
}

/// Collects datagrams until one contains `want` or the deadline passes.
fn wait_for(socket: &UnixDatagram, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = message.contains(want);
            seen.push(message);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want:?} among {seen:?}");
}

#[test]
fn sd_notify_ready_status_watchdog_and_stopping() {
    let (socket, path, _socket_dir) = notify_socket("notify-sock");
    let data = DataDir::new("notify");
    let fibd = Fibd::start_with(
        &data,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    wait_for(&socket, "READY=1");
    wait_for(&socket, "STATUS=serving; committed index 0");
    // WATCHDOG_USEC=200ms: pings every 100ms even with no traffic.
    wait_for(&socket, "WATCHDOG=1");
    wait_for(&socket, "WATCHDOG=1");
    fibd.post("/next");
    wait_for(&socket, "committed index 1");
    assert!(fibd.terminate().success());
    wait_for(&socket, "STOPPING=1");
}

#[test]
fn socket_activation_through_systemd_socket_activate() {
    if Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate is not installed");
        return;
    }
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let data = DataDir::new("activate");
    let mut child = Command::new("systemd-socket-activate")
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg(binary())
        .arg("--listen")
        .arg("127.0.0.1:1") // ignored: the passed socket wins
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-socket-activate");
    // The socket exists before fibd does: a client connects and waits in the
    // backlog while fibd starts on the first connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let response: Response = loop {
        if let Ok(stream) = std::net::TcpStream::connect(addr) {
            drop(stream);
            break support::Client::connect(addr).request("POST", "/next", &[]);
        }
        assert!(
            Instant::now() < deadline,
            "activation socket never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!((response.status, response.index()), (200, 1));
    support::signal(child.id(), "TERM");
    let status = support::wait_timeout(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

#[test]
fn listen_fds_for_another_pid_are_ignored() {
    let data = DataDir::new("not-ours");
    let fibd = Fibd::start_with(&data, &[], &[("LISTEN_PID", "1"), ("LISTEN_FDS", "1")]);
    assert_eq!(fibd.get("/current").status, 200);
}

#[test]
fn health_and_readiness() {
    let data = DataDir::new("health");
    let fibd = Fibd::start(&data, &[]);
    let r = fibd.get("/healthz");
    assert_eq!(
        (r.status, r.text()),
        (200, "{\"status\": \"ok\"}\n".to_owned())
    );
    assert_eq!(fibd.get("/readyz").status, 200);
    let addr = fibd.addr.to_string();
    let (status, _) = run_to_exit(&["healthcheck", "--listen", &addr]);
    assert!(status.success());
    drop(fibd);
    let (status, stderr) = run_to_exit(&["healthcheck", "--listen", &addr]);
    assert_eq!(status.code(), Some(1), "{stderr}");
}

/// Parses the text format 0.0.4 by its rules: `# HELP`/`# TYPE` lines, then
/// `name{labels} value` samples; every sample's family must be declared.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value in {line:?}"));
        let name = series.split('{').next().unwrap();
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair.split_once('=').expect("label pair");
                assert!(
                    k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "{line}"
                );
                assert!(v.starts_with('"') && v.ends_with('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "undeclared family for {line:?}");
        samples.insert(series.to_owned(), value);
    }
    samples
}

#[test]
fn metrics_parse_and_counters_move() {
    let data = DataDir::new("metrics");
    let fibd = Fibd::start(&data, &[]);
    let before = parse_exposition(&fibd.get("/metrics").text());
    let r = fibd.get("/metrics");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    for _ in 0..3 {
        fibd.post("/next");
    }
    fibd.get("/nope");
    let after = parse_exposition(&fibd.get("/metrics").text());
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(&after, "fibd_requests_total{route=\"/next\",code=\"200\"}"),
        3.0
    );
    assert_eq!(
        get(&after, "fibd_requests_total{route=\"other\",code=\"404\"}"),
        1.0
    );
    assert_eq!(get(&after, "fibd_stepper_index"), 3.0);
    assert!(get(&after, "fibd_commit_duration_seconds_count") >= 1.0);
    assert!(
        get(&after, "fibd_connections_accepted_total")
            > get(&before, "fibd_connections_accepted_total")
    );
    assert!(
        get(&after, "fibd_request_duration_seconds_count")
            > get(&before, "fibd_request_duration_seconds_count")
    );
}
