//! Keys, scopes and the defaults against the real binary: rotating keys
//! escapes nothing, unknown keys are 401, `--protect-steps` in every
//! combination, SIGHUP reloads (add, remove, a broken file), and a local
//! benchmark burst is never throttled by default.

mod support;

use support::{DataDir, Fibd, KeyFile, Response, request_bytes, signal};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef00";
const CAROL: &str = "carol-key-0123456789abcdef";

fn get(fibd: &Fibd, method: &str, path: &str, key: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    fibd.connect().request(method, path, &headers)
}

/// The measurement: 200 requests, each with a new invented key.
#[test]
fn rotating_invented_keys_escapes_nothing() {
    let data = DataDir::new("rotate");
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "10",
            "--rate-burst",
            "10",
            "--rate-limit-loopback",
        ],
    );
    let mut client = fibd.connect();
    let mut limited = 0;
    for i in 0..200 {
        let key = format!("invented-key-{i:08}");
        let r = client.request("GET", "/current", &[("X-API-Key", key.as_str())]);
        limited += usize::from(r.status == 429);
    }
    // 10 from the burst and 10 per second of refill get through.
    assert!(limited >= 150, "only {limited} of 200 were limited");
}

#[test]
fn unknown_keys_are_401_and_known_keys_have_their_own_limits() {
    let data = DataDir::new("keys");
    let keys = KeyFile::new(
        &data,
        &format!("# test keys\nalice {ALICE} rate=1 burst=3\nbob {BOB}\n"),
    );
    let fibd = Fibd::start(&data, &["--api-keys", keys.arg(), "--rate-limit-loopback"]);
    for unknown in ["not-a-key-at-all-00000", "", &ALICE[..ALICE.len() - 1]] {
        let r = get(&fibd, "GET", "/current", Some(unknown));
        assert_eq!(r.status, 401, "{unknown:?}");
        assert_eq!(
            r.header("WWW-Authenticate"),
            Some("ApiKey realm=\"fibd\", header=\"X-API-Key\"")
        );
        assert!(r.text().starts_with("{\"error\": \""), "{}", r.text());
        assert!(r.text().contains("\"status\": 401"));
    }
    // Probes too: a wrong key is wrong everywhere.
    assert_eq!(get(&fibd, "GET", "/healthz", Some("nope")).status, 401);
    assert_eq!(get(&fibd, "GET", "/healthz", None).status, 200);

    let mut client = fibd.connect();
    let alice = [("X-API-Key", ALICE)];
    for i in 0..3 {
        assert_eq!(client.request("GET", "/current", &alice).status, 200, "{i}");
    }
    let r = client.request("GET", "/current", &alice);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("RateLimit-Policy"), Some("\"default\";q=3;w=3"));
    assert!(r.text().contains("--rate-limit"), "{}", r.text());
    assert!(r.text().contains("--api-keys"), "{}", r.text());
    // Bob has the server's limits; anonymous callers pay by address.
    assert_eq!(
        client
            .request("GET", "/current", &[("X-API-Key", BOB)])
            .status,
        200
    );
    assert_eq!(client.request("GET", "/current", &[]).status, 200);

    let metrics = fibd.get("/metrics").text();
    assert!(
        metrics.contains("fibd_api_key_requests_total{key=\"alice\"} 4\n"),
        "{metrics}"
    );
    assert!(metrics.contains("fibd_api_key_rate_limited_total{key=\"alice\"} 1\n"));
    assert!(metrics.contains("fibd_api_key_requests_total{key=\"bob\"} 1\n"));
    assert!(metrics.contains("fibd_requests_total{route=\"/current\",code=\"401\"} 3\n"));
    assert!(!metrics.contains(ALICE) && !metrics.contains("not-a-key"));
    let status = fibd.terminate();
    assert!(status.success());
}

/// `--protect-steps`: every combination of route, method and caller.
#[test]
fn protected_steps_need_a_key_with_the_step_scope() {
    let data = DataDir::new("scopes");
    let keys = KeyFile::new(
        &data,
        &format!("stepper {ALICE} scopes=step\nreader {BOB}\n"),
    );
    let fibd = Fibd::start(&data, &["--api-keys", keys.arg(), "--protect-steps"]);
    let mut index = 0;
    for path in ["/next", "/previous"] {
        for method in ["GET", "POST", "HEAD"] {
            let r = get(&fibd, method, path, None);
            assert_eq!(r.status, 401, "{method} {path} without a key");
            assert!(r.header("WWW-Authenticate").is_some());
            let r = get(&fibd, method, path, Some(BOB));
            assert_eq!(r.status, 403, "{method} {path} without the scope");
            assert_eq!(r.header("WWW-Authenticate"), None);
            if method != "HEAD" {
                assert!(r.text().contains("step scope"), "{}", r.text());
            }
            let r = get(&fibd, method, path, Some(ALICE));
            assert_eq!(r.status, 200, "{method} {path} with the scope");
            index = r.index();
        }
    }
    assert_eq!(index, 0, "three steps forward, three back");
    // Refused steps did not step: three /next made it, and three /previous.
    let r = get(&fibd, "GET", "/current", None);
    assert_eq!((r.status, r.index()), (200, 0));
    for (path, key) in [
        ("/current", None),
        ("/current", Some(BOB)),
        ("/v1/fib?n=10", None),
        ("/v1/random", Some(BOB)),
        ("/healthz", None),
        ("/metrics", None),
    ] {
        assert_eq!(get(&fibd, "GET", path, key).status, 200, "{path} {key:?}");
    }
    assert_eq!(get(&fibd, "GET", "/current", Some(CAROL)).status, 401);
}

#[test]
fn without_protect_steps_anyone_steps_and_keys_still_must_be_known() {
    let data = DataDir::new("open-steps");
    let keys = KeyFile::new(&data, &format!("reader {BOB}\n"));
    let fibd = Fibd::start(&data, &["--api-keys", keys.arg()]);
    assert_eq!(get(&fibd, "POST", "/next", None).status, 200);
    assert_eq!(get(&fibd, "POST", "/next", Some(BOB)).index(), 2);
    assert_eq!(get(&fibd, "POST", "/next", Some(ALICE)).status, 401);
    assert_eq!(get(&fibd, "GET", "/current", None).index(), 2);
}

#[test]
fn protect_steps_without_a_key_file_is_refused_at_start() {
    let (status, stderr) = support::run_to_exit(&["--protect-steps"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--api-keys"), "{stderr}");
}

#[test]
fn a_bad_key_file_stops_the_start_naming_the_line_not_the_key() {
    let data = DataDir::new("bad-keys");
    let keys = KeyFile::new(&data, &format!("alice {ALICE}\nbob {BOB} colour=blue\n"));
    let data_dir = data.path().to_str().unwrap();
    let (status, stderr) = support::run_to_exit(&[
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir,
        "--api-keys",
        keys.arg(),
    ]);
    assert!(!status.success());
    assert!(stderr.contains("line 2"), "{stderr}");
    assert!(!stderr.contains(BOB), "{stderr}");
}

#[test]
fn sighup_adds_and_removes_keys_keeps_buckets_and_survives_a_broken_file() {
    let data = DataDir::new("reload");
    let keys = KeyFile::new(&data, &format!("alice {ALICE} rate=1 burst=2\n"));
    let fibd = Fibd::start(&data, &["--api-keys", keys.arg(), "--rate-limit-loopback"]);
    let mut client = fibd.connect();
    let alice = [("X-API-Key", ALICE)];
    let bob = [("X-API-Key", BOB)];
    assert_eq!(client.request("GET", "/current", &alice).status, 200);
    assert_eq!(client.request("GET", "/current", &alice).status, 200);
    assert_eq!(client.request("GET", "/current", &alice).status, 429);
    assert_eq!(client.request("GET", "/current", &bob).status, 401);

    // Add bob; alice is unchanged and keeps her drained bucket.
    keys.write(&format!(
        "alice {ALICE} rate=1 burst=2\nbob {BOB} scopes=step\n"
    ));
    signal(fibd.pid(), "HUP");
    let line = fibd.wait_log("reloaded 2 API keys");
    assert!(line.contains("added [bob]"), "{line}");
    assert!(!line.contains(BOB), "{line}");
    assert_eq!(client.request("GET", "/current", &bob).status, 200);
    assert_eq!(
        client.request("GET", "/current", &alice).status,
        429,
        "a reload does not refill an unchanged key's bucket"
    );

    // A broken file is logged at error and the old set kept.
    keys.write(&format!("alice {ALICE}\nbob\n"));
    signal(fibd.pid(), "HUP");
    let line = fibd.wait_log("cannot reload the API keys");
    assert!(line.contains("ERROR") && line.contains("line 2"), "{line}");
    assert_eq!(client.request("GET", "/current", &bob).status, 200);

    // Remove alice: her key is now unknown. The same connection stays open
    // through all of it.
    keys.write(&format!("bob {BOB}\n"));
    signal(fibd.pid(), "HUP");
    let line = fibd.wait_log("reloaded 1 API keys");
    assert!(line.contains("removed [alice]"), "{line}");
    assert_eq!(client.request("GET", "/current", &alice).status, 401);
    assert_eq!(client.request("GET", "/current", &bob).status, 200);
    let metrics = client.request("GET", "/metrics", &[]).text();
    assert!(
        metrics.contains("fibd_api_key_requests_total{key=\"bob\"} 3\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("key=\"alice\""), "{metrics}");
}

/// Pipelines `per_connection` GET /current on each of `connections`
/// connections, in batches; returns (200s, 429s).
fn burst(fibd: &Fibd, connections: usize, per_connection: usize) -> (usize, usize) {
    const BATCH: usize = 500;
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let mut client = fibd.connect();
            std::thread::spawn(move || {
                let (mut ok, mut limited) = (0, 0);
                let mut left = per_connection;
                while left > 0 {
                    let n = left.min(BATCH);
                    let batch: Vec<u8> = (0..n)
                        .flat_map(|_| request_bytes("GET", "/current", &[]))
                        .collect();
                    client.send(&batch);
                    for _ in 0..n {
                        match client.read_response(false).status {
                            200 => ok += 1,
                            429 => limited += 1,
                            other => panic!("status {other}"),
                        }
                    }
                    left -= n;
                }
                (ok, limited)
            })
        })
        .collect();
    workers
        .into_iter()
        .map(|w| w.join().expect("client thread"))
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

/// The h2load run, in-process: 20,000 requests from loopback with
/// the default limits (5,000/s, burst 10,000) are all answered 200.
#[test]
fn a_local_benchmark_burst_is_not_throttled_by_default() {
    let data = DataDir::new("loopback-burst");
    let fibd = Fibd::start(&data, &[]);
    assert_eq!(burst(&fibd, 4, 5_000), (20_000, 0));
}

/// Loopback is exempt from the limits unless --rate-limit-loopback.
#[test]
fn rate_limit_loopback_treats_loopback_like_any_client() {
    let tight = ["--rate-limit", "10", "--rate-burst", "100"];
    let exempt = Fibd::start(&DataDir::new("loopback-exempt"), &tight);
    assert_eq!(burst(&exempt, 1, 1_000), (1_000, 0));
    let mut args = tight.to_vec();
    args.push("--rate-limit-loopback");
    let limited = Fibd::start(&DataDir::new("loopback-limited"), &args);
    let (ok, refused) = burst(&limited, 1, 1_000);
    assert!(
        ok >= 100 && refused >= 500,
        "{ok} answered, {refused} refused"
    );
}

/// The measurement with the tool: before loopback was
/// exempt, 19,177 of these 20,000 were 429.
#[test]
#[ignore = "needs h2load (nghttp2-client): run scripts/test"]
fn h2load_burst_from_loopback_with_the_defaults_sees_no_429() {
    let data = DataDir::new("h2load");
    let fibd = Fibd::start(&data, &[]);
    let url = format!("http://{}/current", fibd.addr);
    let output = std::process::Command::new("h2load")
        .args(["--h1", "-n", "20000", "-c", "50", &url])
        .output()
        .expect("run h2load (apt-get install nghttp2-client)");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}");
    let codes = report
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap_or_else(|| panic!("no status codes in {report}"));
    assert_eq!(
        codes, "status codes: 20000 2xx, 0 3xx, 0 4xx, 0 5xx",
        "{report}"
    );
}
