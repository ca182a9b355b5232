//! Rate limiting against the real binary: 429 with the draft's headers,
//! recovery after the refill, buckets by address, weighted costs, free
//! probes. Loopback is exempt by default, so these tests ask for
//! `--rate-limit-loopback`; keys are in tests/access.rs.

mod support;

use std::time::Duration;

use support::{DataDir, Fibd};

#[test]
fn over_budget_is_429_with_headers_then_recovers() {
    let data = DataDir::new("rl-basic");
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "10",
            "--rate-burst",
            "5",
            "--rate-limit-loopback",
        ],
    );
    let mut client = fibd.connect();
    for i in 0..5 {
        assert_eq!(
            client.request("GET", "/current", &[]).status,
            200,
            "request {i}"
        );
    }
    let r = client.request("POST", "/next", &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert_eq!(r.header("RateLimit-Policy"), Some("\"default\";q=5;w=1"));
    assert!(
        r.header("RateLimit")
            .unwrap()
            .starts_with("\"default\";r=0;t="),
        "{r:?}"
    );
    assert!(r.text().contains("\"error\""));
    let metrics = client.request("GET", "/metrics", &[]).text();
    assert!(
        metrics.contains("fibd_stepper_pending_index 0\n"),
        "the refused /next did not step: {metrics}"
    );
    // Probes are never limited.
    assert_eq!(client.request("GET", "/healthz", &[]).status, 200);
    assert_eq!(client.request("GET", "/metrics", &[]).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(
        client.request("POST", "/next", &[]).status,
        200,
        "the bucket refilled"
    );
    let metrics = client.request("GET", "/metrics", &[]).text();
    assert!(metrics.contains("fibd_rate_limited_total 1\n"), "{metrics}");
}

#[test]
fn without_a_key_file_the_api_key_does_not_choose_the_bucket() {
    let data = DataDir::new("rl-keys");
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "2",
            "--rate-limit-loopback",
        ],
    );
    let mut client = fibd.connect();
    let a = [("X-API-Key", "alice")];
    let b = [("X-API-Key", "bob")];
    assert_eq!(client.request("GET", "/current", &a).status, 200);
    assert_eq!(client.request("GET", "/current", &b).status, 200);
    assert_eq!(
        client.request("GET", "/current", &[]).status,
        429,
        "one address, one bucket, whatever the key says"
    );
    assert_eq!(client.request("GET", "/current", &a).status, 429);
}

#[test]
fn an_uncached_large_fib_costs_more_than_a_cached_one() {
    let data = DataDir::new("rl-cost");
    // A second client, told apart by its key.
    let keys = data.path().with_extension("keys");
    std::fs::write(&keys, "other other-key-0123456789ab\n").unwrap();
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "50",
            "--rate-limit-loopback",
            "--api-keys",
            keys.to_str().unwrap(),
        ],
    );
    let mut client = fibd.connect();
    // F(300000) takes milliseconds to compute: it costs the whole bucket.
    assert_eq!(client.request("GET", "/v1/fib?n=300000", &[]).status, 200);
    assert_eq!(client.request("GET", "/current", &[]).status, 429);
    // Another client finds it cached: it costs one token.
    let mut other = fibd.connect();
    let key = [("X-API-Key", "other-key-0123456789ab")];
    for _ in 0..10 {
        assert_eq!(other.request("GET", "/v1/fib?n=300000", &key).status, 200);
    }
    let _ = std::fs::remove_file(&keys);
}

#[test]
fn the_defaults_let_the_seed_benchmark_through() {
    let data = DataDir::new("rl-default");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    for _ in 0..3000 {
        assert_eq!(client.request("GET", "/current", &[]).status, 200);
    }
}
