//! may-baseline: the fibd stepper (GET /current, /next, /previous; body = the
//! decimal value and "\n"; an X-Fib-Index header) on may_minihttp with one
//! may worker. The baseline fibd's hand-rolled loop must beat.
//!
//! Durability, the simplest honest way that does not block the one worker on
//! the disk: a commit thread owns fibd's own `Store` (same LMDB layout). A
//! step is sent to it; it takes every step queued so far, applies them in
//! order, commits once (group commit), publishes the new committed index
//! under a Mutex and only then answers each step's coroutine. /current reads
//! the committed index, so it never shows a value a crash could take back.
//!
//! Usage: may-baseline --listen 127.0.0.1:PORT --data-dir DIR

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use fibd::store::lmdb::Store;
use may_minihttp::{HttpService, HttpServiceFactory, Request, Response};

#[derive(Clone, Copy)]
enum Step {
    Next,
    Previous,
}

/// A step and the channel its coroutine waits on for the committed index.
type StepMsg = (Step, may::sync::mpsc::Sender<u64>);

#[derive(Clone)]
struct Stepper {
    committed: Arc<Mutex<u64>>,
    steps: mpsc::Sender<StepMsg>,
}

/// may_minihttp takes only `&'static str` headers: each distinct
/// "X-Fib-Index: N" is leaked once and reused (a few bytes per index reached).
fn index_header(n: u64) -> &'static str {
    static HEADERS: OnceLock<Mutex<Vec<&'static str>>> = OnceLock::new();
    let mut v = HEADERS.get_or_init(Default::default).lock().unwrap();
    while v.len() as u64 <= n {
        let s = format!("X-Fib-Index: {}", v.len());
        v.push(Box::leak(s.into_boxed_str()));
    }
    v[n as usize]
}

fn value(n: u64) -> Vec<u8> {
    let mut s = match fibd::services::fib::small(n) {
        Some(v) => v.to_string(),
        None => fibd::services::fib::decimal(n),
    };
    s.push('\n');
    s.into_bytes()
}

impl HttpService for Stepper {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        let step = match (req.method(), req.path()) {
            ("GET", "/current") => None,
            ("GET", "/next") => Some(Step::Next),
            ("GET", "/previous") => Some(Step::Previous),
            _ => {
                rsp.status_code(404, "Not Found").body("not found\n");
                return Ok(());
            }
        };
        let index = match step {
            None => *self.committed.lock().unwrap(),
            Some(step) => {
                let (tx, rx) = may::sync::mpsc::channel();
                self.steps.send((step, tx)).map_err(|_| io::Error::other("commit thread gone"))?;
                // Parks this coroutine only; the worker serves others meanwhile.
                rx.recv().map_err(|_| io::Error::other("commit failed"))?
            }
        };
        rsp.header("Content-Type: text/plain")
            .header("Cache-Control: no-store")
            .header(index_header(index));
        rsp.body_vec(value(index));
        Ok(())
    }
}

struct Factory(Stepper);

impl HttpServiceFactory for Factory {
    type Service = Stepper;
    fn new_service(&self, _: usize) -> Stepper {
        self.0.clone()
    }
}

fn main() {
    let mut listen = "127.0.0.1:8080".to_owned();
    let mut data_dir = PathBuf::from("may-baseline-data");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().expect("--listen ADDR"),
            "--data-dir" => data_dir = args.next().expect("--data-dir DIR").into(),
            _ => panic!("usage: may-baseline --listen ADDR:PORT --data-dir DIR"),
        }
    }
    may::config().set_workers(1);
    let store = Store::open(&data_dir, fibd::store::lmdb::map_bytes_for(0, 0)).expect("open store");
    let start = store.with_table(|t| t.read_index()).expect("table").expect("read");
    let committed = Arc::new(Mutex::new(start));
    let (steps_tx, steps_rx) = mpsc::channel::<StepMsg>();
    let shared = committed.clone();
    std::thread::spawn(move || {
        store
            .with_table(|table| {
                let mut index = start;
                while let Ok(first) = steps_rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(steps_rx.try_iter());
                    let mut answers = Vec::with_capacity(batch.len());
                    for (step, tx) in batch {
                        match step {
                            Step::Next => index += 1,
                            Step::Previous => index = index.saturating_sub(1),
                        }
                        answers.push((index, tx));
                    }
                    table.write_index(index).expect("commit"); // durable before any answer
                    *shared.lock().unwrap() = index;
                    for (i, tx) in answers {
                        let _ = tx.send(i);
                    }
                }
            })
            .expect("table");
    });
    let server = Factory(Stepper { committed, steps: steps_tx })
        .start(listen.as_str())
        .expect("listen");
    eprintln!("may-baseline listening on {listen}, index {start}");
    server.join().ok();
}
