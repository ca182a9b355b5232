//! The primes tasks' guards against the real binary and real LMDB: a full
//! store evicts settled tasks oldest first and never an unsettled one (also
//! through kill -9), one client's flood stops at its share while others are
//! served, an Idempotency-Key makes a retry answer the same task (also
//! after kill -9), and a pending task can be cancelled, a done or running
//! one not.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Client, DataDir, Fibd, KeyFile, Response, json_request_with};

const ALICE: &str = "alice-key-0123456789abcdef";
const BOB: &str = "bob-key-0123456789abcdef00";

fn json(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// POSTs a task for `n` with extra header fields.
fn post(fibd: &Fibd, n: u64, headers: &[(&str, &str)]) -> Response {
    let mut client = fibd.connect();
    client.send(&json_request_with(
        "/v1/primes/tasks",
        &format!("{{\"n\": {n}}}"),
        headers,
    ));
    client.read_response(false)
}

/// POSTs a task and returns its id after checking the 202.
fn submit(fibd: &Fibd, n: u64, headers: &[(&str, &str)]) -> String {
    let r = post(fibd, n, headers);
    assert_eq!(r.status, 202, "{}", r.text());
    json(&r)["request_id"].as_str().unwrap().to_owned()
}

fn task(fibd: &Fibd, id: &str) -> Response {
    fibd.get(&format!("/v1/primes/tasks/{id}"))
}

fn cancel(fibd: &Fibd, id: &str, headers: &[(&str, &str)]) -> Response {
    fibd.connect()
        .request("DELETE", &format!("/v1/primes/tasks/{id}"), headers)
}

/// Waits (server side, 30 s a call) until the task is final.
fn await_final(fibd: &Fibd, id: &str) -> Value {
    for _ in 0..4 {
        let v = json(&fibd.get(&format!("/v1/primes/tasks/{id}?wait=30")));
        if v["status"] != "pending" && v["status"] != "processing" {
            return v;
        }
    }
    panic!("task {id} not final after two minutes");
}

fn stored(fibd: &Fibd) -> f64 {
    fibd.metric("fibd_primes_tasks_stored")
}

/// F(n)s near the default --max-n ahead of every sieve: 0.7 s each on
/// this machine, so the few milliseconds of posts and DELETEs made
/// meanwhile find their tasks unsettled on a machine ten times faster too.
/// Each test checks that the blockers were still running when it was done.
const BLOCKERS: u64 = 4;
const BLOCKER_N: u64 = 9_999_000;

/// Occupies the compute thread; see [`BLOCKERS`].
fn occupy(fibd: &Fibd) -> Vec<std::thread::JoinHandle<u16>> {
    support::occupy_compute(fibd, BLOCKERS, BLOCKER_N)
}

/// The tasks' states were observed while the sieve still waited.
fn still_blocked(blockers: &[std::thread::JoinHandle<u16>]) {
    assert!(
        !blockers.iter().all(|b| b.is_finished()),
        "the F(n) blockers ended before the checks did: raise BLOCKERS"
    );
}

#[test]
fn a_full_store_evicts_settled_tasks_oldest_first_and_keeps_every_unsettled_one() {
    let data = DataDir::new("guards-evict");
    let args = ["--rate-limit", "0", "--primes-tasks-max", "6"];
    let fibd = Fibd::start(&data, &args);
    // The table for 100, then settled tasks (table hits) up to the cap.
    let first = submit(&fibd, 100, &[]);
    assert_eq!(await_final(&fibd, &first)["status"], "done");
    let settled: Vec<String> = (1..6).map(|n| submit(&fibd, n, &[])).collect();
    assert_eq!(stored(&fibd), 6.0);
    assert_eq!(
        fibd.metric("fibd_primes_tasks_total{status=\"evicted\"}"),
        0.0,
        "no eviction while there is room"
    );
    // Unsettled tasks behind a busy compute thread: each takes the place
    // of the oldest settled one, never of another unsettled one.
    let blockers = occupy(&fibd);
    let mut unsettled = Vec::new();
    let mut refused = 0;
    for k in 0..10u64 {
        let r = post(&fibd, 1_000 + k, &[]);
        match r.status {
            202 => unsettled.push((json(&r)["request_id"].as_str().unwrap().to_owned(), k)),
            503 => {
                refused += 1;
                assert!(r.header("Retry-After").is_some());
                assert!(
                    json(&r)["error"].as_str().unwrap().contains("not settled"),
                    "{}",
                    r.text()
                );
            }
            other => panic!("{other}: {}", r.text()),
        }
        assert!(stored(&fibd) <= 6.0);
    }
    still_blocked(&blockers);
    assert_eq!(unsettled.len(), 6, "six fit once the settled ones went");
    assert_eq!(refused, 4, "then only unsettled tasks are stored");
    assert_eq!(task(&fibd, &first).status, 404, "the oldest went first");
    for id in &settled {
        assert_eq!(task(&fibd, id).status, 404);
    }
    assert_eq!(
        fibd.metric("fibd_primes_tasks_total{status=\"evicted\"}"),
        6.0
    );
    assert_eq!(
        fibd.metric("fibd_primes_refused_total{reason=\"store_full\"}"),
        4.0
    );
    // Every unsettled task survives a kill -9 and is done after it.
    fibd.kill9();
    for blocker in blockers {
        let _ = blocker.join();
    }
    let fibd = Fibd::start(&data, &args);
    assert_eq!(stored(&fibd), 6.0);
    for (id, _) in &unsettled {
        assert_eq!(await_final(&fibd, id)["status"], "done");
    }
    assert_eq!(task(&fibd, &first).status, 404, "its deletion was durable");
}

#[test]
fn a_flood_from_one_client_stops_at_its_share_and_others_are_served() {
    let data = DataDir::new("guards-share");
    let keys = KeyFile::new(&data, &format!("alice {ALICE}\nbob {BOB}\n"));
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "0",
            "--api-keys",
            keys.arg(),
            "--primes-pending-per-client",
            "3",
        ],
    );
    let blockers = occupy(&fibd);
    let alice = [("X-API-Key", ALICE)];
    let bob = [("X-API-Key", BOB)];
    let mine: Vec<String> = (0..3).map(|k| submit(&fibd, 2_000 + k, &alice)).collect();
    let r = post(&fibd, 3_000, &alice);
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(
        json(&r)["error"]
            .as_str()
            .unwrap()
            .contains("--primes-pending-per-client"),
        "{}",
        r.text()
    );
    still_blocked(&blockers);
    let before = stored(&fibd);
    // Bob is served; so is anyone without a key (by address), and Alice's
    // table hits (settled at once, they hold no share).
    let theirs = submit(&fibd, 3_001, &bob);
    submit(&fibd, 3_002, &[]);
    assert_eq!(stored(&fibd), before + 2.0);
    assert_eq!(
        fibd.metric("fibd_primes_refused_total{reason=\"client_share\"}"),
        1.0
    );
    for blocker in blockers {
        assert_eq!(blocker.join().unwrap(), 200);
    }
    for id in mine.iter().chain([&theirs]) {
        assert_eq!(await_final(&fibd, id)["status"], "done");
    }
    // Settled, they free the share.
    submit(&fibd, 3_003, &alice);
    submit(&fibd, 5, &alice);
}

#[test]
fn an_idempotency_key_answers_the_same_task_also_after_kill_9() {
    let data = DataDir::new("guards-idempotency");
    let keys = KeyFile::new(&data, &format!("alice {ALICE}\nbob {BOB}\n"));
    let args = ["--rate-limit", "0", "--api-keys", keys.arg()];
    let fibd = Fibd::start(&data, &args);
    let alice_key = [("X-API-Key", ALICE), ("Idempotency-Key", "order-7")];
    let first = post(&fibd, 500, &alice_key);
    assert_eq!(first.status, 202, "{}", first.text());
    assert_eq!(first.header("Idempotent-Replayed"), None);
    let id = json(&first)["request_id"].as_str().unwrap().to_owned();
    let again = post(&fibd, 500, &alice_key);
    assert_eq!(again.status, 202);
    assert_eq!(json(&again)["request_id"], id.as_str());
    assert_eq!(again.header("Idempotent-Replayed"), Some("true"));
    assert_eq!(
        again.header("Location"),
        Some(format!("/v1/primes/tasks/{id}").as_str())
    );
    // Another body under the same key is refused and stores nothing.
    let before = stored(&fibd);
    let other = post(&fibd, 501, &alice_key);
    assert_eq!(other.status, 422, "{}", other.text());
    assert!(
        json(&other)["error"]
            .as_str()
            .unwrap()
            .contains("another body")
    );
    // Bob's key of the same name is his own.
    let bobs = submit(
        &fibd,
        500,
        &[("X-API-Key", BOB), ("Idempotency-Key", "order-7")],
    );
    assert_ne!(bobs, id);
    assert_eq!(stored(&fibd), before + 1.0);
    // Bad keys are 400 and store nothing.
    let long = "k".repeat(256);
    for bad in [long.as_str(), "two words", ""] {
        let r = post(&fibd, 500, &[("Idempotency-Key", bad)]);
        assert_eq!(r.status, 400, "{bad:?}: {}", r.text());
        assert!(
            json(&r)["error"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    assert_eq!(stored(&fibd), before + 1.0);
    assert_eq!(fibd.metric("fibd_primes_idempotent_replays_total"), 1.0);

    // A kill -9 right after a 202: the retry after the restart gets its id.
    let fresh = [("X-API-Key", ALICE), ("Idempotency-Key", "order-8")];
    let posted = submit(&fibd, 42, &fresh);
    fibd.kill9();
    let fibd = Fibd::start(&data, &args);
    assert_eq!(
        json(&post(&fibd, 42, &fresh))["request_id"],
        posted.as_str()
    );
    assert_eq!(
        json(&post(&fibd, 500, &alice_key))["request_id"],
        id.as_str()
    );
    assert_eq!(post(&fibd, 43, &fresh).status, 422);
}

#[test]
fn a_pending_task_is_cancelled_and_a_running_or_done_one_is_not() {
    let data = DataDir::new("guards-cancel");
    let keys = KeyFile::new(&data, &format!("alice {ALICE}\nbob {BOB}\n"));
    let args = ["--rate-limit", "0", "--api-keys", keys.arg()];
    let fibd = Fibd::start(&data, &args);
    let blockers = occupy(&fibd);
    // The first task's sieve is queued (processing); the next waits behind it.
    let running = submit(&fibd, 1_000, &[]);
    let pending = submit(&fibd, 5_000, &[]);
    let alices = submit(&fibd, 6_000, &[("X-API-Key", ALICE)]);
    let waiter = {
        let addr = fibd.addr;
        let path = format!("/v1/primes/tasks/{pending}?wait=30");
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = Client::connect(addr).request("GET", &path, &[]);
            (r, started.elapsed())
        })
    };
    // The waiter is parked before the DELETE.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fibd.metric("fibd_primes_waiters") < 1.0 {
        assert!(Instant::now() < deadline, "the waiter never parked");
        std::thread::sleep(Duration::from_millis(5));
    }
    let r = cancel(&fibd, &running, &[]);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(json(&r)["task_status"], "processing");
    assert!(json(&r)["error"].as_str().unwrap().contains("running"));
    let r = cancel(&fibd, &pending, &[]);
    still_blocked(&blockers);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(json(&r)["status"], "cancelled");
    let (r, waited) = waiter.join().unwrap();
    assert_eq!(json(&r)["status"], "cancelled", "{}", r.text());
    assert!(
        waited < Duration::from_secs(25),
        "answered at the cancel, not at the wait's end"
    );
    // A ?wait on a cancelled task answers at once; a repeat DELETE is 200.
    assert_eq!(await_final(&fibd, &pending)["status"], "cancelled");
    assert_eq!(cancel(&fibd, &pending, &[]).status, 200);
    assert_eq!(
        fibd.metric("fibd_primes_idempotent_replays_total"),
        0.0,
        "a repeated DELETE is no idempotent POST"
    );
    // Only Alice may cancel Alice's task.
    let r = cancel(&fibd, &alices, &[("X-API-Key", BOB)]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(cancel(&fibd, &alices, &[]).status, 403);
    assert_eq!(cancel(&fibd, &alices, &[("X-API-Key", ALICE)]).status, 200);
    for blocker in blockers {
        assert_eq!(blocker.join().unwrap(), 200);
    }
    assert_eq!(await_final(&fibd, &running)["status"], "done");
    let r = cancel(&fibd, &running, &[]);
    assert_eq!(r.status, 409);
    assert_eq!(json(&r)["task_status"], "done");
    assert_eq!(cancel(&fibd, "AAAAAAAAAAAAAAAAAAAAAA", &[]).status, 404);
    assert_eq!(cancel(&fibd, "short", &[]).status, 400);
    assert_eq!(
        fibd.metric("fibd_primes_tasks_total{status=\"cancelled\"}"),
        2.0
    );
    // Cancelled stays cancelled over a restart, and the sieve skipped it.
    assert!(fibd.terminate().success());
    let fibd = Fibd::start(&data, &args);
    let v = json(&task(&fibd, &pending));
    assert_eq!(v["status"], "cancelled");
    assert!(v.get("result").is_none());
}
