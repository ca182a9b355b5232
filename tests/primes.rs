//! Primes tasks against the real binary and real LMDB: results checked by
//! trial division, the status lifecycle, ?wait, kill -9 with tasks queued and
//! running, group commit under a burst, every bad input, a loop that stays
//! fast while the largest task runs, and retention.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{DataDir, Fibd, Response};

/// These tests are about tasks, not the rate limiter (a big task costs
/// thousands of tokens by design).
const UNLIMITED: &[&str] = &["--rate-limit", "0"];

/// The first `n` primes by trial division by the primes before them:
/// slow, obviously right, and independent of the daemon's sieve.
fn oracle(n: usize) -> Vec<u64> {
    let mut primes: Vec<u64> = Vec::with_capacity(n);
    let mut k = 2u64;
    while primes.len() < n {
        if primes
            .iter()
            .take_while(|&&p| p * p <= k)
            .all(|&p| !k.is_multiple_of(p))
        {
            primes.push(k);
        }
        k += 1;
    }
    primes
}

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

fn body(n: u64) -> String {
    format!("{{\"n\": {n}}}")
}

/// POSTs a task; returns its id after checking the 202.
fn submit(fibd: &Fibd, n: u64) -> String {
    let r = fibd.post_json("/v1/primes/tasks", &body(n));
    assert_eq!(r.status, 202, "{}", r.text());
    let v = json(&r);
    let id = v["request_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 22);
    assert_eq!(
        r.header("Location"),
        Some(format!("/v1/primes/tasks/{id}").as_str())
    );
    id
}

/// Waits (server side, up to 30 s a call) until the task is done.
fn await_done(fibd: &Fibd, id: &str) -> Value {
    for _ in 0..4 {
        let r = fibd.get(&format!("/v1/primes/tasks/{id}?wait=30"));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = json(&r);
        if v["status"] == "done" {
            return v;
        }
    }
    panic!("task {id} not done after two minutes");
}

fn result(v: &Value) -> Vec<u64> {
    v["result"]
        .as_array()
        .expect("a result")
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect()
}

#[test]
fn results_match_trial_division_at_and_past_the_table() {
    let data = DataDir::new("primes-oracle");
    let fibd = Fibd::start(&data, UNLIMITED);
    let expected = oracle(20_000);
    // 1000 builds the table; 1000 again and smaller ones are hits; 1001 and
    // 20000 are just and far past it.
    for (n, hit) in [
        (1000, false),
        (1000, true),
        (1, true),
        (2, true),
        (999, true),
        (1001, false),
        (20_000, false),
        (19_999, true),
    ] {
        let hits = fibd.metric("fibd_primes_table_hits_total");
        let id = submit(&fibd, n);
        let v = await_done(&fibd, &id);
        assert_eq!(v["n"], n);
        assert_eq!(v["request_id"], id.as_str());
        assert!(v["elapsed_ms"].is_u64());
        assert_eq!(result(&v), expected[..n as usize], "n={n}");
        let hits_now = fibd.metric("fibd_primes_table_hits_total");
        assert_eq!(hits_now - hits, if hit { 1.0 } else { 0.0 }, "n={n}");
    }
    // The same API at the old service's paths.
    let r = fibd.post_json("/tasks", &body(10));
    assert_eq!(r.status, 202);
    let id = json(&r)["request_id"].as_str().unwrap().to_owned();
    assert_eq!(r.header("Location"), Some(format!("/tasks/{id}").as_str()));
    assert_eq!(json(&r)["status"], "done", "a table hit is done on arrival");
    let v = json(&fibd.get(&format!("/tasks/{id}")));
    assert_eq!(result(&v), expected[..10]);
    // HEAD: the head of the GET, no body.
    let head = fibd.connect().request("HEAD", &format!("/tasks/{id}"), &[]);
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(fibd.metric("fibd_primes_computations_total"), 3.0);
}

/// The one compute thread busy with a large F(n): tasks behind it wait.
fn block_the_compute_thread(fibd: &Fibd) -> thread::JoinHandle<u16> {
    support::occupy_compute(fibd, 1, 1_500_000).remove(0)
}

#[test]
fn lifecycle_wait_and_failure_after_a_lowered_cap() {
    let data = DataDir::new("primes-lifecycle");
    let fibd = Fibd::start(&data, UNLIMITED);
    let blocker = block_the_compute_thread(&fibd);
    let posted = Instant::now();
    let id = submit(&fibd, 5000);
    let now = json(&fibd.get(&format!("/v1/primes/tasks/{id}")));
    assert!(
        now["status"] == "pending" || now["status"] == "processing",
        "{now}"
    );
    assert!(now.get("result").is_none());
    // The wait ends first: the current status, 200.
    let started = Instant::now();
    let r = fibd.get(&format!("/v1/primes/tasks/{id}?wait=1"));
    let waited = started.elapsed();
    assert_eq!(r.status, 200);
    if json(&r)["status"] != "done" {
        assert!(
            waited >= Duration::from_millis(990) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    }
    // A long wait answers as soon as the task is done (more than one wait
    // if the machine is so busy that the blocker outlasts 30 s).
    let v = await_done(&fibd, &id);
    let answered = posted.elapsed();
    let elapsed = Duration::from_millis(v["elapsed_ms"].as_u64().unwrap());
    // From acceptance to done is elapsed_ms; the reply came within a few ms of it.
    let lag = answered.saturating_sub(elapsed);
    assert!(
        lag < Duration::from_millis(250),
        "answered {lag:?} after done"
    );
    assert_eq!(result(&v), oracle(5000));
    assert_eq!(blocker.join().unwrap(), 200);
    assert_eq!(fibd.metric("fibd_primes_tasks_total{status=\"done\"}"), 1.0);
    assert!(fibd.metric("fibd_primes_task_duration_seconds_count") >= 1.0);

    // A restart with a smaller cap fails the task with a reason.
    assert!(fibd.terminate().success());
    let fibd = Fibd::start(&data, &["--primes-max-n", "1000"]);
    let v = json(&fibd.get(&format!("/v1/primes/tasks/{id}")));
    assert_eq!(v["status"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap().contains("--primes-max-n"));
    assert!(v.get("result").is_none());
}

#[test]
fn kill_9_with_tasks_queued_and_running_loses_none() {
    let data = DataDir::new("primes-kill9");
    let fibd = Fibd::start(&data, &["--rate-limit", "0", "--primes-max-n", "200000"]);
    // One task running alone, then more queued behind the F(n) that blocks
    // the only compute thread.
    let running = submit(&fibd, 200_000);
    let blocker = block_the_compute_thread(&fibd);
    let queued: Vec<(String, u64)> = [150_000, 3000, 199_999, 7]
        .into_iter()
        .map(|n| (submit(&fibd, n), n))
        .collect();
    fibd.kill9();
    let _ = blocker.join();

    let fibd = Fibd::start(&data, &["--rate-limit", "0", "--primes-max-n", "200000"]);
    let expected = oracle(200_000);
    for (id, n) in queued.iter().chain([&(running.clone(), 200_000)]) {
        let v = await_done(&fibd, id);
        assert_eq!(result(&v), expected[..*n as usize], "n={n}");
    }
}

#[test]
fn a_burst_of_100_tasks_costs_far_fewer_commits() {
    let data = DataDir::new("primes-burst");
    let fibd = Fibd::start(&data, UNLIMITED);
    let commits = fibd.metric("fibd_commit_duration_seconds_count");
    // The burst arrives at once, in one write: how many commits it shares
    // then depends on the server, not on how fast 100 threads are started
    // against how fast a commit returns on this machine.
    let burst: Vec<u8> = (0..100u64)
        .flat_map(|i| support::json_request("/v1/primes/tasks", &body(10 + i)))
        .collect();
    let mut client = fibd.connect();
    client.send(&burst);
    let ids: Vec<String> = (0..100)
        .map(|_| {
            let r = client.read_response(false);
            assert_eq!(r.status, 202, "{}", r.text());
            json(&r)["request_id"].as_str().unwrap().to_owned()
        })
        .collect();
    let used = fibd.metric("fibd_commit_duration_seconds_count") - commits;
    eprintln!("100 acknowledged tasks took {used} commits");
    assert!(used <= 30.0, "{used} commits for 100 tasks");
    let expected = oracle(110);
    for (i, id) in ids.iter().enumerate() {
        let v = await_done(&fibd, id);
        assert_eq!(result(&v), expected[..10 + i]);
    }
}

#[test]
fn bad_input_is_refused_clearly_and_changes_nothing() {
    let data = DataDir::new("primes-bad");
    let fibd = Fibd::start(&data, &["--primes-max-n", "5000"]);
    let post = |content_type: &str, body: &str| {
        let mut client = fibd.connect();
        let head = format!(
            "POST /v1/primes/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        client.send(head.as_bytes());
        client.read_response(false)
    };
    let json_type = "application/json";
    for (content_type, body, status, says) in [
        (json_type, "n=5", 400, "not valid JSON"),
        (json_type, "{\"n\": 5", 400, "not valid JSON"),
        (json_type, "", 400, "not valid JSON"),
        (json_type, "[5]", 400, "JSON object"),
        (json_type, "{}", 400, "has no \"n\""),
        (json_type, "{\"n\": -3}", 400, "negative"),
        (json_type, "{\"n\": 0}", 422, "at least 1"),
        (json_type, "{\"n\": 2.5}", 400, "whole number"),
        (json_type, "{\"n\": \"100\"}", 400, "no quotes"),
        (json_type, "{\"n\": 5001}", 422, "limit"),
        (json_type, "{\"n\": 1e400}", 400, "not valid JSON"),
        (json_type, "{\"n\": 99999999999999999999999}", 422, "limit"),
        (
            "text/plain",
            "{\"n\": 5}",
            415,
            "Content-Type: application/json",
        ),
        (
            "application/x-www-form-urlencoded",
            "n=5",
            415,
            "application/json",
        ),
    ] {
        let r = post(content_type, body);
        assert_eq!(r.status, status, "{body}: {}", r.text());
        let v = json(&r);
        assert!(
            v["error"].as_str().unwrap().contains(says),
            "{body}: {}",
            r.text()
        );
        if status != 415 {
            assert_eq!(v["max_n"], 5000, "{body}");
        }
    }
    // No Content-Type at all.
    let mut client = fibd.connect();
    client.send(b"POST /tasks HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n{\"n\": 5}");
    assert_eq!(client.read_response(false).status, 415);
    // Too large, by Content-Length and by chunks: 413, and the connection closes.
    let big = format!("{{\"n\": 5, \"pad\": \"{}\"}}", "x".repeat(5000));
    let r = post(json_type, &big);
    assert_eq!(r.status, 413);
    let mut client = fibd.connect();
    client.send(
        format!(
            "POST /v1/primes/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n\r\n1388\r\n{}\r\n0\r\n\r\n",
            "x".repeat(5000)
        )
        .as_bytes(),
    );
    assert_eq!(client.read_response(false).status, 413);
    assert!(client.is_closed_by_server());
    // Ids: unknown 404, malformed 400; wrong methods 405; bad waits 400.
    for (path, status) in [
        ("/v1/primes/tasks/AAAAAAAAAAAAAAAAAAAAAA", 404),
        ("/tasks/AAAAAAAAAAAAAAAAAAAAAA", 404),
        ("/v1/primes/tasks/nope", 400),
        ("/v1/primes/tasks/", 400),
        ("/v1/primes/tasks/AAAAAAAAAAAAAAAAAAAAA=", 400),
        ("/v1/primes/tasks/AAAAAAAAAAAAAAAAAAAAAA?wait=31", 400),
        ("/v1/primes/tasks/AAAAAAAAAAAAAAAAAAAAAA?wait=x", 400),
        ("/v1/primes/tasks/AAAAAAAAAAAAAAAAAAAAAA?sleep=1", 400),
        ("/v1/primes/tasks", 405),
    ] {
        let r = fibd.get(path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(json(&r)["error"].is_string());
    }
    let r = fibd.post_json("/v1/primes/tasks/AAAAAAAAAAAAAAAAAAAAAA", &body(5));
    assert_eq!(
        (r.status, r.header("Allow")),
        (405, Some("GET, HEAD, DELETE"))
    );
    // Nothing was stored, the index did not move, and the daemon serves on.
    assert_eq!(fibd.metric("fibd_primes_tasks_stored"), 0.0);
    assert_eq!(fibd.get("/current").index(), 0);
    let id = submit(&fibd, 5);
    assert_eq!(result(&await_done(&fibd, &id)), [2, 3, 5, 7, 11]);
}

#[test]
fn bodies_arrive_chunked_split_and_after_100_continue() {
    let data = DataDir::new("primes-framing");
    let fibd = Fibd::start(&data, UNLIMITED);
    let mut client = fibd.connect();
    // Chunked, with the head and each chunk in separate writes.
    client.send(
        b"POST /v1/primes/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n",
    );
    client.send(b"4\r\n{\"n\"\r\n");
    client.send(b"4\r\n: 12\r\n1\r\n}\r\n0\r\n\r\n");
    let r = client.read_response(false);
    assert_eq!(r.status, 202, "{}", r.text());
    // Expect: 100-continue: the 100 first, then the 202 once the body is in.
    client.send(
        b"POST /v1/primes/tasks HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
          Expect: 100-continue\r\nContent-Length: 9\r\n\r\n",
    );
    assert_eq!(client.read_response(false).status, 100);
    client.send(b"{\"n\": 13}");
    let r = client.read_response(false);
    assert_eq!(r.status, 202, "{}", r.text());
    // Pipelined: a POST and a GET of another task in one write, in order.
    let id = json(&r)["request_id"].as_str().unwrap().to_owned();
    let mut both = support::json_request("/tasks", &body(14));
    both.extend_from_slice(&support::request_bytes(
        "GET",
        &format!("/tasks/{id}?wait=30"),
        &[],
    ));
    client.send(&both);
    assert_eq!(client.read_response(false).status, 202);
    let v = json(&client.read_response(false));
    assert_eq!(result(&v), oracle(13));
}

#[test]
fn current_stays_fast_while_the_largest_task_runs() {
    let data = DataDir::new("primes-loop");
    let fibd = Fibd::start(&data, UNLIMITED);
    let id = submit(&fibd, 1_000_000);
    let mut client = fibd.connect();
    let mut status_client = fibd.connect();
    let mut latencies = Vec::new();
    let mut during = 0;
    loop {
        let status = status_client.request("GET", &format!("/v1/primes/tasks/{id}"), &[]);
        let done = json(&status)["status"] == "done";
        let started = Instant::now();
        assert_eq!(client.request("GET", "/current", &[]).status, 200);
        latencies.push(started.elapsed());
        if done {
            break;
        }
        during += 1;
        thread::sleep(Duration::from_millis(2));
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    eprintln!(
        "{during} /current samples while the sieve ran; median {median:?}, max {:?}",
        latencies.last().unwrap()
    );
    assert!(during >= 5, "the sieve ended before sampling began");
    assert!(median < Duration::from_millis(5), "{latencies:?}");
    let v = await_done(&fibd, &id);
    let primes = result(&v);
    assert_eq!(primes.len(), 1_000_000);
    assert_eq!(primes.last(), Some(&15_485_863), "the millionth prime");
}

#[test]
fn retention_deletes_settled_tasks_durably() {
    let data = DataDir::new("primes-expiry");
    let fibd = Fibd::start(&data, &["--primes-retention-secs", "1"]);
    let id = submit(&fibd, 10);
    assert_eq!(await_done(&fibd, &id)["status"], "done");
    let path = format!("/v1/primes/tasks/{id}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fibd.get(&path).status == 200 {
        assert!(Instant::now() < deadline, "not expired after 10 s");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fibd.get(&path).status, 404);
    assert_eq!(
        fibd.metric("fibd_primes_tasks_total{status=\"expired\"}"),
        1.0
    );
    assert_eq!(fibd.metric("fibd_primes_tasks_stored"), 0.0);
    // Deleted in the store too: a restart with a long retention finds nothing.
    assert!(fibd.terminate().success());
    let fibd = Fibd::start(&data, &["--primes-retention-secs", "86400"]);
    assert_eq!(fibd.get(&path).status, 404);
    assert_eq!(fibd.metric("fibd_primes_tasks_stored"), 0.0);
}

#[test]
fn a_task_costs_tokens_by_its_work() {
    let data = DataDir::new("primes-limit");
    // One token a second, a bucket of 7,000: one task for n = 10^6 (6,000
    // tokens) fits, a second computation does not; a table hit costs 1.
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "1",
            "--rate-burst",
            "7000",
            "--rate-limit-loopback",
        ],
    );
    let id = submit(&fibd, 1_000_000);
    let r = fibd.post_json("/v1/primes/tasks", &body(999_999));
    if json(&fibd.get(&format!("/v1/primes/tasks/{id}")))["status"] != "done" {
        assert_eq!(r.status, 429, "{}", r.text());
        assert!(r.header("Retry-After").is_some());
    }
    await_done(&fibd, &id);
    let r = fibd.post_json("/v1/primes/tasks", &body(999_999));
    assert_eq!(r.status, 202, "a table hit costs one token: {}", r.text());
    assert_eq!(json(&r)["status"], "done");
}
