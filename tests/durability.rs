//! Durability against the real binary and real LMDB: kill -9 under load loses
//! no acknowledged step; SIGTERM finishes in-flight work and exits 0.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use support::{Client, DataDir, Fibd};

/// Drives /next from `clients` connections until told to stop; returns the
/// highest index any client was told.
fn hammer(fibd: &Fibd, clients: usize, run_for: Duration) -> u64 {
    let stop = Arc::new(AtomicBool::new(false));
    let addr = fibd.addr;
    let workers: Vec<_> = (0..clients)
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
        .collect();
    thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap_or(0)
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
        let addr = fibd.addr;
        let pid = fibd.pid();
        let stop = Arc::new(AtomicBool::new(false));
        // Kill while the clients are mid-flight, not after they stopped.
        let killer = {
            let stop = stop.clone();
            thread::spawn(move || {
                thread::sleep(Duration::from_millis(300 + 100 * round));
                support::signal(pid, "KILL");
                stop.store(true, Ordering::Relaxed);
            })
        };
        let workers: Vec<_> = (0..8)
            .map(|_| {
                thread::spawn(move || {
                    let mut highest = 0;
                    let mut client = Client::connect(addr);
                    loop {
                        client.send(&support::request_bytes("POST", "/next", &[]));
                        match client.try_read_response(false) {
                            Some(r) if r.status == 200 => highest = highest.max(r.index()),
                            _ => return highest,
                        }
                    }
                })
            })
            .collect();
        let acknowledged = workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap();
        killer.join().unwrap();
        assert!(stop.load(Ordering::Relaxed));
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
    let addr = fibd.addr;
    let pid = fibd.pid();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            thread::spawn(move || {
                let mut highest = 0;
                let mut client = Client::connect(addr);
                loop {
                    client.send(&support::request_bytes("POST", "/next", &[]));
                    match client.try_read_response(false) {
                        Some(r) if r.status == 200 => highest = highest.max(r.index()),
                        _ => return highest,
                    }
                }
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    // The debug build's test hook: SIGUSR2 panics inside the event loop.
    support::signal(pid, "USR2");
    let acknowledged = workers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap();
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
