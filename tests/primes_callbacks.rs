//! Completion callbacks of primes tasks against the real binary and a
//! loopback receiver (tests/support/receiver.rs): a delivery is signed so
//! that an independent HMAC (Python's) verifies it, a failing receiver is
//! retried with each attempt numbered, a hanging one costs the loop nothing,
//! pending deliveries survive kill -9, URLs outside --callback-allow are
//! refused before anything is stored, an Idempotency-Key covers the
//! callback_url, and a delivery that keeps failing is given up after
//! --callback-retry-secs.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde_json::{Value, json};
use support::receiver::{Behaviour, Delivery, Receiver};
use support::{DataDir, Fibd, Response, json_request_with, run_to_exit};

/// The HMAC key; its file holds it with a trailing newline, which fibd trims.
const SECRET: &str = "fibd-test-callback-secret-0123456789";

/// Bounds every wait: generous for a loaded machine, reached only by a hang.
const DEADLINE: Duration = Duration::from_secs(60);

/// fibd with callbacks to 127.0.0.1 allowed, the secret in a file in the
/// data directory, quick retries, no rate limit (the tests post bursts and
/// poll), and `extra` flags.
fn start(data: &DataDir, extra: &[&str]) -> Fibd {
    std::fs::create_dir_all(data.path()).expect("create the data directory");
    let secret = data.path().join("callback.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("write the secret file");
    let secret = secret.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "--rate-limit",
        "0",
        "--callback-allow",
        "127.0.0.1",
        "--callback-secret-file",
        secret,
        "--callback-backoff-ms",
        "100",
    ];
    args.extend_from_slice(extra);
    Fibd::start(data, &args)
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// POSTs a task body with extra header fields.
fn post(fibd: &Fibd, body: &Value, headers: &[(&str, &str)]) -> Response {
    let mut client = fibd.connect();
    client.send(&json_request_with(
        "/v1/primes/tasks",
        &body.to_string(),
        headers,
    ));
    client.read_response(false)
}

/// POSTs a task for `n` with a callback to `url`; its id after the 202.
fn submit(fibd: &Fibd, n: u64, url: &str) -> String {
    let r = post(fibd, &json!({"n": n, "callback_url": url}), &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    json_of(&r)["request_id"].as_str().unwrap().to_owned()
}

/// The task's status document (a 200).
fn task(fibd: &Fibd, id: &str) -> Value {
    let r = fibd.get(&format!("/v1/primes/tasks/{id}"));
    assert_eq!(r.status, 200, "{}", r.text());
    json_of(&r)
}

/// Waits (server side, 30 s a call) until the task is final.
fn await_final(fibd: &Fibd, id: &str) -> Value {
    for _ in 0..4 {
        let v = json_of(&fibd.get(&format!("/v1/primes/tasks/{id}?wait=30")));
        if v["status"] != "pending" && v["status"] != "processing" {
            return v;
        }
    }
    panic!("task {id} not final after two minutes");
}

/// Polls the task until its `callback` object satisfies `done`: a delivery's
/// outcome is recorded after the receiver answered, and ?wait is about the
/// task, not its callback. The deadline only bounds a hang.
fn await_callback(fibd: &Fibd, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let v = task(fibd, id);
        if done(&v["callback"]) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "task {id}: no {what} within {DEADLINE:?}: {v}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `check` holds (for counters that move just after the
/// state a test waited for); the deadline only bounds a hang.
fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "no {what} within {DEADLINE:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn callbacks(fibd: &Fibd, outcome: &str) -> f64 {
    fibd.metric(&format!(
        "fibd_primes_callbacks_total{{outcome=\"{outcome}\"}}"
    ))
}

fn pending(fibd: &Fibd) -> f64 {
    fibd.metric("fibd_primes_callbacks_pending")
}

fn accepted(fibd: &Fibd) -> f64 {
    fibd.metric("fibd_primes_tasks_total{status=\"accepted\"}")
}

/// The task a delivery is about, from its body.
fn request_id(d: &Delivery) -> Option<String> {
    let body: Value = serde_json::from_slice(&d.body).ok()?;
    body["request_id"].as_str().map(str::to_owned)
}

fn attempt(d: &Delivery) -> u64 {
    d.header("fibd-delivery-attempt")
        .unwrap_or_else(|| panic!("no Fibd-Delivery-Attempt in {:?}", d.headers))
        .parse()
        .expect("a numeric Fibd-Delivery-Attempt")
}

/// `t` and `v1` of `Fibd-Signature: t=<digits>,v1=<64 lowercase hex>`,
/// after checking that exact shape.
fn signature(d: &Delivery) -> (String, String) {
    let header = d
        .header("fibd-signature")
        .unwrap_or_else(|| panic!("no Fibd-Signature in {:?}", d.headers));
    let shape = || format!("Fibd-Signature {header:?} is not t=<digits>,v1=<64 lowercase hex>");
    let (t, v1) = header
        .split_once(',')
        .unwrap_or_else(|| panic!("{}", shape()));
    let t = t
        .strip_prefix("t=")
        .unwrap_or_else(|| panic!("{}", shape()));
    let v1 = v1
        .strip_prefix("v1=")
        .unwrap_or_else(|| panic!("{}", shape()));
    assert!(
        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()),
        "{}",
        shape()
    );
    assert!(
        v1.len() == 64 && v1.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "{}",
        shape()
    );
    (t.to_owned(), v1.to_owned())
}

/// A receiver's check written apart from fibd's code: Python's hmac and
/// hashlib. Exits 0 when `v1` is HMAC-SHA256(secret, "<t>.<body>"), 3 when
/// not; anything else (1 is an uncaught exception) is a broken check.
const VERIFY_PY: &str = r#"
import hashlib, hmac, sys
secret, t, v1 = sys.argv[1:]
body = sys.stdin.buffer.read()
mac = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
sys.exit(0 if hmac.compare_digest(mac, v1) else 3)
"#;

/// Whether Python verifies `v1` for `t` and `body` under `secret`.
fn python_verifies(secret: &str, t: &str, v1: &str, body: &[u8]) -> bool {
    let mut child = Command::new("python3")
        .args(["-c", VERIFY_PY, secret, t, v1])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run python3 (scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(body)
        .expect("write the body to python3");
    match child.wait().expect("wait for python3").code() {
        Some(0) => true,
        Some(3) => false,
        other => panic!("the Python check itself failed: exit {other:?}"),
    }
}

#[test]
fn a_delivery_is_signed_so_that_an_independent_hmac_verifies_it() {
    let receiver = Receiver::start();
    let data = DataDir::new("callbacks-signature");
    let fibd = start(&data, &[]);
    let url = receiver.url("/hook?source=fibd");
    let id = submit(&fibd, 100, &url);
    let d = receiver.wait_for(1, DEADLINE).remove(0);
    assert_eq!(d.method, "POST");
    assert_eq!(d.path, "/hook?source=fibd", "path and query of the URL");
    assert_eq!(d.header("host"), Some(receiver.addr.to_string().as_str()));
    assert_eq!(d.header("content-type"), Some("application/json"));
    assert_eq!(
        d.header("user-agent"),
        Some(concat!("fibd/", env!("CARGO_PKG_VERSION")))
    );
    assert_eq!(d.header("fibd-delivery-attempt"), Some("1"));
    let body: Value = serde_json::from_slice(&d.body)
        .unwrap_or_else(|e| panic!("{e}: a JSON body, not {}", d.body_text()));
    assert_eq!(body["request_id"], id.as_str(), "{body}");
    assert_eq!(body["n"], 100, "{body}");
    assert_eq!(body["status"], "done", "{body}");
    assert!(body["elapsed_ms"].is_u64(), "{body}");
    let task_url = format!("/v1/primes/tasks/{id}");
    assert_eq!(body["task_url"], task_url.as_str(), "{body}");
    assert!(
        body.get("result").is_none(),
        "a delivery stays small: {body}"
    );

    // t is the attempt's Unix time in seconds (loose: the same clock, any load).
    let (t, v1) = signature(&d);
    let sent: u64 = t.parse().unwrap();
    let arrived = d.wall.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(sent.abs_diff(arrived) <= 60, "t={t}, arrived at {arrived}");
    assert!(
        python_verifies(SECRET, &t, &v1, &d.body),
        "Python's HMAC does not verify {v1} over {t}.{}",
        d.body_text()
    );
    // The check can fail: another body, time or key does not verify.
    let mut tampered = d.body.clone();
    let at = support::find(&tampered, b"done").expect("\"done\" in the body");
    tampered[at..at + 4].copy_from_slice(b"dome");
    assert!(
        !python_verifies(SECRET, &t, &v1, &tampered),
        "a tampered body"
    );
    let mut longer = d.body.clone();
    longer.push(b' ');
    assert!(!python_verifies(SECRET, &t, &v1, &longer), "a padded body");
    let earlier = (sent - 1).to_string();
    assert!(
        !python_verifies(SECRET, &earlier, &v1, &d.body),
        "another t"
    );
    let other_key = "fibd-test-callback-secret-0123456788";
    assert!(!python_verifies(other_key, &t, &v1, &d.body), "another key");

    // The task records the delivery; its task_url serves the result.
    let v = await_callback(&fibd, &id, "delivered state", |cb| cb["state"] != "pending");
    let cb = &v["callback"];
    assert_eq!(cb["state"], "delivered", "{v}");
    assert_eq!(cb["attempts"], 1, "{v}");
    assert_eq!(cb["url"], url.as_str(), "{v}");
    assert!(cb.get("last_error").is_none(), "no attempt failed: {v}");
    let r = fibd.get(&task_url);
    assert_eq!(r.status, 200);
    assert_eq!(json_of(&r)["result"].as_array().map(Vec::len), Some(100));
    eventually("delivered count", || callbacks(&fibd, "delivered") == 1.0);
    assert_eq!(
        fibd.metric("fibd_primes_callback_latency_seconds_count"),
        1.0
    );
    assert_eq!(pending(&fibd), 0.0);
}

#[test]
fn a_receiver_that_answers_500_twice_gets_the_third_delivery() {
    let receiver = Receiver::scripted(
        [Behaviour::Status(500), Behaviour::Status(500)],
        Behaviour::Status(200),
    );
    let data = DataDir::new("callbacks-retry");
    let fibd = start(&data, &[]);
    let id = submit(&fibd, 100, &receiver.url("/hook"));
    let got = receiver.wait_for(3, DEADLINE);
    let got = &got[..3];
    assert_eq!(got.iter().map(attempt).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(
        got.iter().map(|d| d.answer).collect::<Vec<_>>(),
        [
            Behaviour::Status(500),
            Behaviour::Status(500),
            Behaviour::Status(200)
        ]
    );
    for d in got {
        assert_eq!(request_id(d).as_deref(), Some(id.as_str()), "{d:?}");
        let _signed_each_time = signature(d);
    }
    // Each retry waited its back-off: at least the jitter's floor, half of
    // 100 ms and then of 200 ms, less a few ms for a coarse loop clock.
    let gaps = [got[1].at - got[0].at, got[2].at - got[1].at];
    assert!(gaps[0] >= Duration::from_millis(45), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(90), "{gaps:?}");

    let v = await_callback(&fibd, &id, "delivered state", |cb| cb["state"] != "pending");
    let cb = &v["callback"];
    assert_eq!(cb["state"], "delivered", "{v}");
    assert_eq!(cb["attempts"], 3, "{v}");
    let last_error = cb["last_error"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(last_error.contains("500"), "{v}");
    eventually("delivered count", || callbacks(&fibd, "delivered") == 1.0);
    assert_eq!(callbacks(&fibd, "retried"), 2.0);
    assert_eq!(callbacks(&fibd, "failed"), 0.0);
    assert_eq!(pending(&fibd), 0.0);
}

#[test]
fn a_hanging_receiver_costs_the_loop_no_time() {
    let receiver = Receiver::scripted([], Behaviour::Hang);
    let data = DataDir::new("callbacks-hang");
    // Attempts stay hung for the whole measurement.
    let fibd = start(&data, &["--callback-timeout-ms", "60000"]);
    let url = receiver.url("/hook");
    let ids: Vec<String> = (0..20).map(|_| submit(&fibd, 100, &url)).collect();
    receiver.wait_for(1, DEADLINE);
    let mut client = fibd.connect();
    let median = support::median_current_latency(&mut client, 200);
    let hung = receiver.received();
    eprintln!(
        "median /current {median:?} with {} deliveries hung on {} connections",
        hung.len(),
        receiver.open_connections()
    );
    assert!(hung.iter().all(|d| d.answer == Behaviour::Hang));
    for id in &ids {
        let v = task(&fibd, id);
        assert_eq!(v["status"], "done", "{v}");
        assert_eq!(v["callback"]["state"], "pending", "{v}");
    }
    assert_eq!(pending(&fibd), 20.0);
    assert!(
        median < Duration::from_millis(1),
        "median /current {median:?} while deliveries hang"
    );
    // Tasks still go through the loop and the store.
    let r = post(&fibd, &json!({"n": 7}), &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = json_of(&r)["request_id"].as_str().unwrap().to_owned();
    assert_eq!(await_final(&fibd, &id)["status"], "done");
}

#[test]
fn kill_9_with_deliveries_pending_delivers_them_after_restart() {
    let receiver = Receiver::scripted([], Behaviour::Status(500));
    let data = DataDir::new("callbacks-kill9");
    let fibd = start(&data, &[]);
    let url = receiver.url("/hook");
    let ids: Vec<String> = (0..10).map(|_| submit(&fibd, 100, &url)).collect();
    for id in &ids {
        assert_eq!(await_final(&fibd, id)["status"], "done");
    }
    // An attempt was made (so the settled state was durable) and failed
    // for every task; each is still pending.
    receiver.wait_until(DEADLINE, "an attempt for every task", |got| {
        ids.iter()
            .all(|id| got.iter().any(|d| request_id(d).as_ref() == Some(id)))
    });
    for id in &ids {
        let v = await_callback(&fibd, id, "failed attempt", |cb| {
            cb["attempts"].as_u64().is_some_and(|a| a >= 1)
        });
        assert_eq!(v["callback"]["state"], "pending", "{v}");
    }
    assert_eq!(pending(&fibd), 10.0);
    fibd.kill9();
    // Nothing the killed fibd sent is still on its way in when the
    // receiver starts to accept, so every 2xx below went to the new one.
    receiver.wait_idle(DEADLINE);
    receiver.set_default(Behaviour::Status(200));

    let fibd = start(&data, &[]);
    receiver.wait_until(DEADLINE, "a 2xx answer for every task", |got| {
        ids.iter().all(|id| {
            got.iter()
                .any(|d| d.answer.is_2xx() && request_id(d).as_ref() == Some(id))
        })
    });
    for id in &ids {
        let v = await_callback(&fibd, id, "delivered state", |cb| {
            cb["state"] == "delivered"
        });
        assert_eq!(v["status"], "done", "{v}");
    }
    eventually("no pending delivery", || pending(&fibd) == 0.0);
    assert_eq!(callbacks(&fibd, "delivered"), 10.0);
    assert_eq!(callbacks(&fibd, "failed"), 0.0);
}

#[test]
fn a_callback_url_outside_the_allow_list_is_refused_and_stores_nothing() {
    let receiver = Receiver::start();
    let data = DataDir::new("callbacks-allow");
    let fibd = start(&data, &[]);
    let before = accepted(&fibd);
    let prefix = receiver.url("/");
    let long = format!("{prefix}{}", "a".repeat(1025 - prefix.len()));
    let not_allowed = Some("--callback-allow");
    for (url, says) in [
        (json!("http://10.1.2.3/hook"), not_allowed),
        (json!("http://127.0.0.2/hook"), not_allowed),
        (json!("http://[::1]/hook"), not_allowed),
        (json!("http://localhost:1/"), not_allowed),
        (json!("http://127.0.0.1@10.1.2.3/hook"), None),
        (json!(receiver.url("/").replace("http:", "https:")), None),
        (json!("https://127.0.0.1/"), None),
        (json!("ftp://127.0.0.1/"), None),
        (json!("not a url"), None),
        (json!(""), None),
        (json!(42), None),
        (json!([receiver.url("/")]), None),
        (json!(long), None),
    ] {
        let r = post(&fibd, &json!({"n": 100, "callback_url": url}), &[]);
        assert_eq!(r.status, 422, "{url}: {}", r.text());
        let error = json_of(&r)["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{url}: no error string in {}", r.text()))
            .to_owned();
        if let Some(says) = says {
            assert!(error.contains(says), "{url}: {error}");
        }
    }
    // The store is untouched, and nothing was sent.
    assert_eq!(accepted(&fibd), before);
    assert_eq!(fibd.metric("fibd_primes_tasks_stored"), 0.0);
    assert_eq!(pending(&fibd), 0.0);
    assert!(receiver.received().is_empty());
    // 1024 bytes is allowed; so is the receiver.
    let longest = &long[..1024];
    submit(&fibd, 100, longest);
    submit(&fibd, 100, &receiver.url("/hook"));
    assert_eq!(accepted(&fibd), before + 2.0);
    let longest_path = &longest[prefix.len() - 1..];
    let got = receiver.wait_for(2, DEADLINE);
    for path in ["/hook", longest_path] {
        assert!(got.iter().any(|d| d.path == path), "{path}: {got:?}");
    }
}

#[test]
fn without_an_allow_list_every_callback_url_is_refused() {
    let receiver = Receiver::start();
    let data = DataDir::new("callbacks-none");
    let fibd = Fibd::start(&data, &["--rate-limit", "0"]);
    let r = post(
        &fibd,
        &json!({"n": 100, "callback_url": receiver.url("/hook")}),
        &[],
    );
    assert_eq!(r.status, 422, "{}", r.text());
    let error = json_of(&r)["error"].as_str().unwrap().to_owned();
    assert!(error.contains("--callback-allow"), "{error}");
    assert_eq!(fibd.metric("fibd_primes_tasks_stored"), 0.0);
    let r = post(&fibd, &json!({"n": 100}), &[]);
    assert_eq!(r.status, 202, "a task without a callback: {}", r.text());
    assert!(receiver.received().is_empty());
}

#[test]
fn callbacks_need_a_secret_of_at_least_16_bytes() {
    let data = DataDir::new("callbacks-secret");
    let dir = data.path().to_str().unwrap().to_owned();
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.as_str(),
        "--callback-allow",
        "127.0.0.1",
    ];
    let (status, stderr) = run_to_exit(&base);
    assert!(!status.success());
    assert!(stderr.contains("--callback-secret"), "{stderr}");
    let short = [&base[..], &["--callback-secret", "fifteen-bytes!!"][..]].concat();
    let (status, stderr) = run_to_exit(&short);
    assert!(!status.success());
    assert!(stderr.contains("16"), "{stderr}");
    let fibd = Fibd::start(
        &data,
        &[
            "--callback-allow",
            "127.0.0.1",
            "--callback-secret",
            "sixteen-bytes!!!",
        ],
    );
    assert!(fibd.terminate().success());
}

#[test]
fn an_idempotency_key_replays_only_with_the_same_callback_url() {
    let receiver = Receiver::start();
    let data = DataDir::new("callbacks-idempotency");
    let fibd = start(&data, &[]);
    let key = [("Idempotency-Key", "order-callback-1")];
    let hook = receiver.url("/hook");
    let body = json!({"n": 100, "callback_url": hook});
    let first = post(&fibd, &body, &key);
    assert_eq!(first.status, 202, "{}", first.text());
    let id = json_of(&first)["request_id"].as_str().unwrap().to_owned();
    let again = post(&fibd, &body, &key);
    assert_eq!(again.status, 202, "{}", again.text());
    assert_eq!(json_of(&again)["request_id"], id.as_str());
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    // Another callback_url, or none, is another body.
    for other in [
        json!({"n": 100, "callback_url": receiver.url("/other")}),
        json!({"n": 100}),
    ] {
        let r = post(&fibd, &other, &key);
        assert_eq!(r.status, 422, "{other}: {}", r.text());
        let error = json_of(&r)["error"].as_str().unwrap().to_owned();
        assert!(error.contains("another body"), "{other}: {error}");
    }
    assert_eq!(accepted(&fibd), 1.0);
    assert_eq!(fibd.metric("fibd_primes_tasks_stored"), 1.0);
    // One task, one delivery, to the first URL.
    let v = await_callback(&fibd, &id, "delivered state", |cb| {
        cb["state"] == "delivered"
    });
    assert_eq!(v["callback"]["url"], hook.as_str());
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].path, "/hook");
    assert_eq!(request_id(&got[0]).as_deref(), Some(id.as_str()));
}

#[test]
fn a_delivery_that_keeps_failing_is_given_up_after_the_retry_window() {
    let receiver = Receiver::scripted([], Behaviour::Status(500));
    let data = DataDir::new("callbacks-give-up");
    let fibd = start(&data, &["--callback-retry-secs", "1"]);
    let id = submit(&fibd, 100, &receiver.url("/hook"));
    let v = await_callback(&fibd, &id, "final state", |cb| cb["state"] != "pending");
    assert_eq!(v["status"], "done", "the task itself is done: {v}");
    let cb = &v["callback"];
    assert_eq!(cb["state"], "failed", "{v}");
    let attempts = cb["attempts"].as_u64().unwrap_or_else(|| panic!("{v}"));
    assert!(attempts >= 2, "retried within the window: {v}");
    let last_error = cb["last_error"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(last_error.contains("500"), "{v}");
    // Every attempt reached the receiver, numbered in order.
    let got = receiver.received();
    assert_eq!(
        got.iter().map(attempt).collect::<Vec<_>>(),
        (1..=attempts).collect::<Vec<_>>()
    );
    eventually("failed count", || callbacks(&fibd, "failed") == 1.0);
    assert_eq!(callbacks(&fibd, "retried"), (attempts - 1) as f64);
    assert_eq!(callbacks(&fibd, "delivered"), 0.0);
    assert_eq!(pending(&fibd), 0.0);
}
