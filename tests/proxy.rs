//! fibd behind a reverse proxy: forwarded addresses from a trusted proxy
//! choose the bucket (and show in the access log), spoofed chains and
//! untrusted peers gain nothing; and the example `deploy/nginx.conf`, run by
//! a real nginx in front of the real binary, gives two clients two buckets.

mod support;

use support::nginx::{Nginx, curl_statuses, free_port, self_signed_certificate};
use support::{Client, DataDir, Fibd};

/// Sends GET /current with these headers; the status.
fn status(client: &mut Client, headers: &[(&str, &str)]) -> u16 {
    client.request("GET", "/current", headers).status
}

/// Every test's fibd: one token a second, a burst of two, loopback limited
/// like any client, and the access log on.
fn start(data: &DataDir, trusted: &str) -> Fibd {
    Fibd::start_with(
        data,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "2",
            "--rate-limit-loopback",
            "--trusted-proxy",
            trusted,
        ],
        &[("RUST_LOG", "info,fibd::access=debug")],
    )
}

#[test]
fn a_trusted_proxys_forwarded_addresses_choose_the_bucket() {
    let data = DataDir::new("proxy-trusted");
    let fibd = start(&data, "127.0.0.0/8");
    let mut proxy = fibd.connect();
    let a = [("X-Forwarded-For", "203.0.113.1")];
    let b = [("X-Forwarded-For", "203.0.113.2")];
    assert_eq!(status(&mut proxy, &a), 200);
    assert_eq!(status(&mut proxy, &a), 200);
    assert_eq!(status(&mut proxy, &a), 429);
    assert_eq!(
        status(&mut proxy, &b),
        200,
        "another client, another bucket"
    );
    // A client that forged entries to the left of what the proxy appended
    // is still itself; so is one that names a trusted proxy on the right.
    for forged in [
        "198.51.100.7, 203.0.113.1",
        "203.0.113.2, 203.0.113.1",
        "203.0.113.1, 127.0.0.5",
    ] {
        assert_eq!(
            status(&mut proxy, &[("X-Forwarded-For", forged)]),
            429,
            "{forged}"
        );
    }
    // RFC 7239 works the same way.
    assert_eq!(status(&mut proxy, &[("Forwarded", "for=203.0.113.2")]), 200);
    assert_eq!(
        status(
            &mut proxy,
            &[("Forwarded", "for=\"[2001:db8::9]:443\";proto=https")]
        ),
        200
    );
    assert_eq!(
        status(
            &mut proxy,
            &[("Forwarded", "for=198.51.100.7, for=203.0.113.1")]
        ),
        429
    );
    // Two fields that disagree (one forged, passed through) land in the
    // proxy's own bucket, not in a fresh one.
    let disagree = [
        ("Forwarded", "for=198.51.100.50"),
        ("X-Forwarded-For", "198.51.100.51"),
    ];
    assert_eq!(status(&mut proxy, &disagree), 200);
    assert_eq!(status(&mut proxy, &[]), 200, "the proxy's bucket: 2 tokens");
    assert_eq!(status(&mut proxy, &disagree), 429);
    // The access log names the forwarded client.
    fibd.wait_log("203.0.113.1 key=- Get /current -> 429");
    fibd.wait_log("2001:db8::9 key=- Get /current -> 200");
    // Also for answers that never reach a service.
    let r = proxy.request("GET", "/nowhere", &[("X-Forwarded-For", "203.0.113.44")]);
    assert_eq!(r.status, 404);
    fibd.wait_log("203.0.113.44 key=- Get /nowhere -> 404");
}

#[test]
fn an_untrusted_peer_forging_x_forwarded_for_gains_nothing() {
    let data = DataDir::new("proxy-untrusted");
    // The only trusted proxy is elsewhere: the test client is not it.
    let fibd = start(&data, "10.9.9.9");
    let mut client = fibd.connect();
    let mut ok = 0;
    for i in 0..20 {
        let forged = format!("203.0.113.{i}");
        let headers = [
            ("X-Forwarded-For", forged.as_str()),
            ("Forwarded", "for=198.51.100.1"),
        ];
        ok += usize::from(status(&mut client, &headers) == 200);
    }
    assert!(ok <= 3, "{ok} of 20 forged requests got through");
    fibd.wait_log("127.0.0.1 key=- Get /current -> 429");
}

/// The substitutions that turn the example into a test instance; each must
/// match exactly once, so the test follows the file or fails.
fn test_site(fibd: &Fibd, https_port: u16, http_port: u16, dir: &std::path::Path) -> String {
    let (cert, key) = self_signed_certificate(dir);
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf"))
            .expect("deploy/nginx.conf");
    let substitutions = [
        ("server 127.0.0.1:8080;", format!("server {};", fibd.addr)),
        (
            "listen 443 ssl http2;",
            format!("listen 127.0.0.1:{https_port} ssl http2;"),
        ),
        ("listen [::]:443 ssl http2;", String::new()),
        ("listen 80;", format!("listen 127.0.0.1:{http_port};")),
        ("listen [::]:80;", String::new()),
        (
            "/etc/ssl/certs/fibd.example.org.pem",
            cert.display().to_string(),
        ),
        (
            "/etc/ssl/private/fibd.example.org.key",
            key.display().to_string(),
        ),
    ];
    let mut site = example;
    for (from, to) in substitutions {
        assert_eq!(
            site.matches(from).count(),
            1,
            "{from:?} in deploy/nginx.conf"
        );
        site = site.replace(from, &to);
    }
    site
}

#[test]
#[ignore = "needs nginx, curl and openssl: run scripts/test"]
fn behind_the_example_nginx_two_clients_get_two_buckets_and_forging_gains_nothing() {
    let data = DataDir::new("nginx-fibd");
    let fibd = Fibd::start_with(
        &data,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "3",
            "--rate-limit-loopback",
            "--trusted-proxy",
            "127.0.0.1",
        ],
        &[("RUST_LOG", "info,fibd::access=debug")],
    );
    let (https_port, http_port) = (free_port(), free_port());
    let certs = DataDir::new("nginx-certs");
    std::fs::create_dir_all(certs.path()).unwrap();
    let site = test_site(&fibd, https_port, http_port, certs.path());
    let nginx = Nginx::start(&site, &[https_port, http_port]);
    let current = format!("https://127.0.0.1:{https_port}/current");
    let four: Vec<String> = vec![current.clone(); 4];

    // Client A (127.0.0.2) spends its burst of 3; its 4th is refused.
    let a = curl_statuses("127.0.0.2", &[], &four);
    assert_eq!(a, [200, 200, 200, 429], "client A through nginx");
    // Client B (127.0.0.3) has a bucket of its own.
    let b = curl_statuses("127.0.0.3", &[], &four[..3]);
    assert_eq!(b, [200, 200, 200], "client B through nginx");
    // A forging X-Forwarded-For through nginx: nginx appends the address it
    // saw, and that is the one fibd believes.
    let forged = curl_statuses(
        "127.0.0.2",
        &[
            "X-Forwarded-For: 198.51.100.77",
            "Forwarded: for=198.51.100.78",
        ],
        &four[..2],
    );
    assert_eq!(
        forged,
        [429, 429],
        "forging through the proxy gains nothing"
    );
    fibd.wait_log("127.0.0.3 key=- Get /current -> 200");
    fibd.wait_log("127.0.0.2 key=- Get /current -> 429");

    // nginx kept its connection to fibd open (upstream keep-alive): nine
    // proxied requests, and this scrape's own connection.
    let metrics = fibd.get("/metrics").text();
    let accepted: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fibd_connections_accepted_total "))
        .and_then(|v| v.parse().ok())
        .expect("accepted counter");
    assert!(
        accepted <= 3,
        "{accepted} connections for 9 proxied requests"
    );

    // Straight to fibd from a peer that is not the proxy, with a new forged
    // address each time: the header is ignored and the peer pays.
    let direct = format!("http://{}/current", fibd.addr);
    let rotated: Vec<u16> = (0..4)
        .flat_map(|i| {
            let header = format!("X-Forwarded-For: 203.0.113.{i}");
            curl_statuses("127.0.0.4", &[&header], std::slice::from_ref(&direct))
        })
        .collect();
    assert_eq!(rotated, [200, 200, 200, 429]);
    fibd.wait_log("127.0.0.4 key=- Get /current -> 429");

    // Plain HTTP only redirects.
    let plain = format!("http://127.0.0.1:{http_port}/current");
    assert_eq!(curl_statuses("127.0.0.2", &[], &[plain]), [301]);
    let log = std::fs::read_to_string(nginx.dir().join("access.log")).unwrap_or_default();
    assert_eq!(log.lines().count(), 10, "{log}");
}
