//! The stepper against the real binary: the seed example, concurrency, big values.

mod support;

use std::collections::BTreeSet;
use std::thread;

use support::{Client, DataDir, Fibd, fib_decimal};

#[test]
fn seed_example() {
    let data = DataDir::new("seed");
    let fibd = Fibd::start(&data, &[]);
    let walk = [
        ("/current", "0"),
        ("/next", "1"),
        ("/next", "1"),
        ("/next", "2"),
        ("/previous", "1"),
    ];
    for (path, value) in walk {
        let r = fibd.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.text(), format!("{value}\n"), "{path}");
        assert_eq!(r.header("Cache-Control"), Some("no-store"));
        assert!(r.header("Content-Type").unwrap().starts_with("text/plain"));
        assert!(r.header("Date").is_some());
    }
    assert_eq!(fibd.get("/current").index(), 2);
}

#[test]
fn post_is_the_same_step_and_json_keeps_values_as_strings() {
    let data = DataDir::new("json");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    for _ in 0..10 {
        assert_eq!(client.request("POST", "/next", &[]).status, 200);
    }
    let r = client.request("GET", "/current", &[("Accept", "application/json")]);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_eq!(r.text(), "{\"index\": 10, \"value\": \"55\"}\n");
    let r = client.request("POST", "/previous", &[("Accept", "application/json")]);
    assert_eq!(r.text(), "{\"index\": 9, \"value\": \"34\"}\n");
    assert_eq!(r.index(), 9);
}

#[test]
fn previous_at_zero_stays_at_zero() {
    let data = DataDir::new("zero");
    let fibd = Fibd::start(&data, &[]);
    for _ in 0..3 {
        let r = fibd.get("/previous");
        assert_eq!((r.status, r.text(), r.index()), (200, "0\n".to_owned(), 0));
    }
    assert_eq!(fibd.get("/next").text(), "1\n");
}

#[test]
fn head_steps_like_get_but_sends_no_body() {
    let data = DataDir::new("head");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    let r = client.request("HEAD", "/current", &[]);
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("2")));
    assert!(r.body.is_empty());
    // The next response must start right after the head: no stray body bytes.
    let r = client.request("GET", "/current", &[]);
    assert_eq!(r.text(), "0\n");
}

#[test]
fn next_at_the_ceiling_is_409_and_the_index_stays() {
    let data = DataDir::new("ceiling");
    let fibd = Fibd::start(&data, &["--max-index", "3"]);
    for _ in 0..3 {
        assert_eq!(fibd.post("/next").status, 200);
    }
    let r = fibd.post("/next");
    assert_eq!(r.status, 409);
    assert!(r.text().contains("\"error\""), "{}", r.text());
    assert!(r.text().contains("\"max_index\": 3"), "{}", r.text());
    assert_eq!(fibd.get("/current").index(), 3);
    assert_eq!(fibd.post("/previous").index(), 2);
}

#[test]
fn concurrent_next_gives_each_index_exactly_once() {
    const CONNECTIONS: usize = 16;
    const STEPS: usize = 50;
    let data = DataDir::new("concurrent");
    let fibd = Fibd::start(&data, &[]);
    let addr = fibd.addr;
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                (0..STEPS)
                    .map(|_| {
                        let r = client.request("POST", "/next", &[]);
                        assert_eq!(r.status, 200);
                        r.index()
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for worker in workers {
        let indices = worker.join().unwrap();
        assert!(
            indices.windows(2).all(|w| w[0] < w[1]),
            "one client sees its steps in order"
        );
        for i in indices {
            assert!(seen.insert(i), "index {i} handed out twice");
        }
    }
    let total = (CONNECTIONS * STEPS) as u64;
    assert_eq!(seen, (1..=total).collect::<BTreeSet<u64>>());
    assert_eq!(fibd.get("/current").index(), total);
}

#[test]
fn values_past_u128_are_exact() {
    let data = DataDir::new("big");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    let mut last = String::new();
    for i in 1..=400u64 {
        let r = client.request("POST", "/next", &[]);
        assert_eq!(r.index(), i);
        last = r.text();
        if i >= 180 {
            assert_eq!(last, format!("{}\n", fib_decimal(i)), "F({i})");
        }
    }
    // /current shares the rendered value of the last committed step.
    assert_eq!(client.request("GET", "/current", &[]).text(), last);
    for i in (350..400u64).rev() {
        assert_eq!(
            client.request("POST", "/previous", &[]).text(),
            format!("{}\n", fib_decimal(i))
        );
    }
}

#[test]
fn a_restart_at_a_large_index_resumes_with_the_exact_value() {
    let data = DataDir::new("resume");
    let fibd = Fibd::start(&data, &[]);
    let mut client = fibd.connect();
    for _ in 0..300 {
        client.request("POST", "/next", &[]);
    }
    drop(client);
    assert!(fibd.terminate().success());
    let fibd = Fibd::start(&data, &[]);
    let r = fibd.get("/current");
    assert_eq!(
        (r.index(), r.text()),
        (300, format!("{}\n", fib_decimal(300)))
    );
    assert_eq!(fibd.post("/next").text(), format!("{}\n", fib_decimal(301)));
}
