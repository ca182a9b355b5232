//! Durability against the real binary and real LMDB: kill -9 under load loses
//! no acknowledged step; SIGTERM finishes in-flight work and exits 0.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use support::{Client, DataDir, Fibd};

/// Starts `clients` connections that POST /next one after another until
/// `stop` is set or the server stops answering; each returns the highest
/// index it was told.
fn stepping_clients(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<u64>> {
    (0..clients)
        .map(|_| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut highest = 0;
                let mut client = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    client.send(&support::request_bytes("POST", "/next", &[]));
                    match client.try_read_response(false) {
                        Some(r) if r.status == 200 => highest = highest.max(r.index()),
                        _ => break,
                    }
                }
                highest
            })
        })
        .collect()
}

/// The highest index any of the clients was told.
fn acknowledged(workers: Vec<JoinHandle<u64>>) -> u64 {
    workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap_or(0)
}

/// Drives /next from `clients` connections for `run_for`.
fn hammer(fibd: &Fibd, clients: usize, run_for: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let workers = stepping_clients(fibd.addr, clients, &stop);
    thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    acknowledged(workers)
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_step() {
    let data = DataDir::new("kill9");
    let mut floor = 0;
    for round in 0..4 {
        let fibd = Fibd::start(&data, &[]);
        let recovered = fibd.get("/current").index();
        assert!(
            recovered >= floor,
            "round {round}: recovered {recovered} < acknowledged {floor}"
        );
        let pid = fibd.pid();
        // Kill while the clients are mid-flight: they stop when it dies.
        let killer = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300 + 100 * round));
            support::signal(pid, "KILL");
        });
        let acknowledged = acknowledged(stepping_clients(
            fibd.addr,
            8,
            &Arc::new(AtomicBool::new(false)),
        ));
        killer.join().unwrap();
        assert!(
            acknowledged > floor,
            "round {round}: the load made progress"
        );
        floor = acknowledged;
        fibd.kill9();
    }
    let fibd = Fibd::start(&data, &[]);
    assert!(fibd.get("/current").index() >= floor);
}

#[test]
fn sigterm_finishes_in_flight_steps_exits_0_and_keeps_the_index() {
    let data = DataDir::new("sigterm");
    let fibd = Fibd::start(&data, &[]);
    let acknowledged = hammer(&fibd, 4, Duration::from_millis(300));
    assert!(acknowledged > 0);
    let status = fibd.terminate();
    assert!(status.success(), "exit status {status:?}");
    let fibd = Fibd::start(&data, &[]);
    assert!(fibd.get("/current").index() >= acknowledged);
}

#[test]
fn sigterm_with_idle_keep_alive_connections_still_exits_promptly() {
    let data = DataDir::new("sigterm-idle");
    let fibd = Fibd::start(&data, &[]);
    let mut idle: Vec<Client> = (0..10).map(|_| fibd.connect()).collect();
    for client in &mut idle {
        client.request("GET", "/current", &[]);
    }
    assert!(fibd.terminate().success());
    for client in &mut idle {
        assert!(client.is_closed_by_server());
    }
}

#[test]
fn a_panic_in_the_loop_exits_and_loses_no_acknowledged_step() {
    let data = DataDir::new("panic");
    let fibd = Fibd::start(&data, &[]);
    let pid = fibd.pid();
    let workers = stepping_clients(fibd.addr, 4, &Arc::new(AtomicBool::new(false)));
    thread::sleep(Duration::from_millis(300));
    // The debug build's test hook: SIGUSR2 panics inside the event loop.
    support::signal(pid, "USR2");
    let acknowledged = acknowledged(workers);
    assert!(acknowledged > 0);
    let (status, log) = fibd.wait_exit();
    assert!(
        !status.success(),
        "a panic must not look like a clean exit: {status:?}"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("ERROR") && l.contains("restarts fibd")),
        "the panic is logged at error level: {log:?}"
    );
    let fibd = Fibd::start(&data, &[]);
    assert!(fibd.get("/current").index() >= acknowledged);
}

/// The deciding case of one flush per batch: a step's log frame is written
/// and the flush that would make it durable fails. A commit path that
/// answered once the frame was written would say 200 for a step a power cut
/// could still take back; fibd says 503, and the step is not applied.
#[test]
fn a_step_whose_durability_flush_fails_is_answered_503_never_200() {
    let data = DataDir::new("flush-fails");
    let fibd = Fibd::start(&data, &[]);
    assert_eq!(fibd.post("/next").status, 200);
    let fault = data.path().join("fail-syncs");
    std::fs::write(&fault, b"").unwrap();
    let r = fibd.post("/next");
    assert_eq!(r.status, 503, "answered before its flush");
    assert_eq!(fibd.get("/readyz").status, 503);
    std::fs::remove_file(&fault).unwrap();
    let r = fibd.post("/next");
    assert_eq!(
        (r.status, r.index()),
        (200, 2),
        "the withdrawn step was not applied"
    );
    assert_eq!(fibd.get("/readyz").status, 200);
    assert_eq!(fibd.get("/current").index(), 2);
}
