//! The admin listener (`--admin-listen`, or a socket systemd passes named
//! `admin`) against the real binary: the operator's endpoints move there and
//! leave the public port, the probes stay on both, the API stays public.

mod support;

use std::net::{SocketAddr, TcpListener};

use support::{Client, DataDir, Fibd, Response, run_to_exit};

/// What only the operator should see once there is an admin listener.
const OPERATOR_PATHS: [&str; 4] = ["/metrics", "/metrics.json", "/dashboard", "/docs"];
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).request("GET", path, &[])
}

/// The JSON error's `error` and `status`, the request id left out.
fn error_of(response: &Response) -> (String, u64) {
    let json: serde_json::Value = serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {}", response.text()));
    (
        json["error"].as_str().expect("error").to_owned(),
        json["status"].as_u64().expect("status"),
    )
}

/// The public port answers an operator path exactly as an unknown path.
fn assert_not_found_like_any_path(addr: SocketAddr, path: &str) {
    let unknown = get(addr, "/no-such-path");
    assert_eq!(unknown.status, 404);
    let response = get(addr, path);
    assert_eq!(
        response.status,
        404,
        "{path} on {addr}: {}",
        response.text()
    );
    assert_eq!(
        response.header("content-type"),
        unknown.header("content-type")
    );
    assert_eq!(error_of(&response), error_of(&unknown), "{path}");
}

/// Every split of the routes a fibd with an admin listener must show.
fn assert_split(public: SocketAddr, admin: SocketAddr) {
    for path in OPERATOR_PATHS {
        assert_not_found_like_any_path(public, path);
        assert_eq!(get(admin, path).status, 200, "{path} on the admin port");
    }
    let metrics = get(admin, "/metrics").text();
    assert!(metrics.contains("fibd_requests_total"), "{metrics}");
    // A scrape tells which listener is which.
    for (listener, addr) in [("public", public), ("admin", admin)] {
        let line = format!("fibd_listener_info{{listener=\"{listener}\",address=\"{addr}\"}} 1");
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    let json = get(admin, "/metrics.json").text();
    assert!(
        json.contains("fibd_listener_info") && json.contains(&admin.to_string()),
        "{json}"
    );
    for path in PROBES {
        assert_eq!(get(public, path).status, 200, "{path} on the public port");
        assert_eq!(get(admin, path).status, 200, "{path} on the admin port");
    }
    // The API is public only: the admin port knows none of it.
    assert_eq!(get(public, "/current").status, 200);
    assert_eq!(get(public, "/openapi.json").status, 200);
    for path in ["/current", "/v1/fib?n=10", "/openapi.json"] {
        assert_not_found_like_any_path(admin, path);
    }
    let step = Client::connect(admin).request("POST", "/next", &[]);
    assert_eq!(step.status, 404, "{}", step.text());
    assert_eq!(get(public, "/current").index(), 0, "no step was taken");
}

#[test]
fn admin_listen_moves_the_operator_endpoints_off_the_public_port() {
    let data = DataDir::new("admin-listen");
    let fibd = Fibd::start(&data, &["--admin-listen", "127.0.0.1:0"]);
    let admin = fibd.admin.expect("the start line names the admin listener");
    assert_ne!(admin, fibd.addr);
    assert_split(fibd.addr, admin);
    // Requests on the admin port are counted like any others.
    let metrics = get(admin, "/metrics").text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("fibd_requests_total{") && l.contains("/metrics")),
        "{metrics}"
    );
    assert!(fibd.terminate().success());
}

#[test]
fn without_admin_listen_everything_stays_on_the_public_port() {
    let data = DataDir::new("admin-unset");
    let fibd = Fibd::start(&data, &[]);
    assert_eq!(fibd.admin, None);
    for path in OPERATOR_PATHS.into_iter().chain(PROBES) {
        assert_eq!(fibd.get(path).status, 200, "{path}");
    }
    let metrics = fibd.get("/metrics").text();
    let listeners: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("fibd_listener_info{"))
        .collect();
    let line = format!(
        "fibd_listener_info{{listener=\"public\",address=\"{}\"}} 1",
        fibd.addr
    );
    assert_eq!(listeners, [line.as_str()]);
    assert_eq!(fibd.post("/next").index(), 1);
}

#[test]
fn two_named_sockets_from_systemd_are_the_public_and_the_admin_listener() {
    let public = TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").unwrap();
    let (public_addr, admin_addr) = (public.local_addr().unwrap(), admin.local_addr().unwrap());
    let data = DataDir::new("admin-activated");
    // No --admin-listen: the passed `admin` socket decides. Its fd comes
    // first here, so the names, not the order, tell them apart.
    let fibd = Fibd::start_activated(&data, &[&admin, &public], "admin:fibd", &[]);
    drop((public, admin));
    assert_eq!(fibd.addr, public_addr);
    assert_eq!(fibd.admin, Some(admin_addr));
    assert_split(public_addr, admin_addr);
    assert!(fibd.terminate().success());
}

#[test]
fn one_unnamed_socket_from_systemd_serves_everything_as_before() {
    let public = TcpListener::bind("127.0.0.1:0").unwrap();
    let public_addr = public.local_addr().unwrap();
    let data = DataDir::new("admin-activated-one");
    let fibd = Fibd::start_activated(&data, &[&public], "", &[]);
    drop(public);
    assert_eq!((fibd.addr, fibd.admin), (public_addr, None));
    for path in OPERATOR_PATHS.into_iter().chain(PROBES) {
        assert_eq!(fibd.get(path).status, 200, "{path}");
    }
}

#[test]
fn a_passed_public_socket_with_admin_listen_binds_the_admin_address() {
    let public = TcpListener::bind("127.0.0.1:0").unwrap();
    let public_addr = public.local_addr().unwrap();
    let data = DataDir::new("admin-activated-bind");
    let fibd = Fibd::start_activated(
        &data,
        &[&public],
        "fibd.socket",
        &["--admin-listen", "127.0.0.1:0"],
    );
    drop(public);
    assert_eq!(fibd.addr, public_addr);
    let admin = fibd.admin.expect("an admin listener");
    assert_split(public_addr, admin);
}

#[test]
fn a_bad_admin_address_is_a_config_error() {
    let data = DataDir::new("admin-bad");
    let dir = data.path().to_str().unwrap();
    for (value, says) in [
        ("nonsense", "invalid admin listen address \"nonsense\""),
        ("127.0.0.1:8080", "an address other than --listen's"),
    ] {
        let (status, stderr) = run_to_exit(&[
            "--listen",
            "127.0.0.1:8080",
            "--admin-listen",
            value,
            "--data-dir",
            dir,
        ]);
        assert_eq!(status.code(), Some(2), "{value}: {stderr}");
        assert!(stderr.contains(says), "{value}: {stderr}");
    }
    // An address that cannot be bound stops fibd at start, naming it.
    let occupied = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = occupied.local_addr().unwrap().to_string();
    let (status, stderr) = run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        &taken,
        "--data-dir",
        dir,
    ]);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {taken}")),
        "{stderr}"
    );
}

#[test]
fn the_admin_listener_has_connections_of_its_own_beside_the_public_cap() {
    let data = DataDir::new("admin-cap");
    let fibd = Fibd::start(
        &data,
        &["--admin-listen", "127.0.0.1:0", "--max-connections", "1"],
    );
    let admin = fibd.admin.expect("an admin listener");
    // The one public slot is taken...
    let mut held = fibd.connect();
    assert_eq!(held.request("GET", "/current", &[]).status, 200);
    // ...yet the operator gets in on the admin port,
    let mut operator = Client::connect(admin);
    assert_eq!(operator.request("GET", "/metrics", &[]).status, 200);
    // while a second public client connects (the kernel's backlog takes it)
    // but is not served...
    let mut waiting = fibd.connect();
    waiting.send(&support::request_bytes("GET", "/current", &[]));
    let stream = waiting.stream();
    stream
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let early = std::io::Read::read(stream, &mut [0u8; 1]);
    assert!(early.is_err(), "served beyond the public cap: {early:?}");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // ...until the first public connection leaves; the admin one stays.
    drop(held);
    assert_eq!(waiting.read_response(false).status, 200);
    assert_eq!(operator.request("GET", "/healthz", &[]).status, 200);
}
