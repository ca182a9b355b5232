//! `fibd backup` against the real binary, real LMDB and a real daemon: a
//! copy made under load holds an acknowledged index and fibd starts on it;
//! a copy made while a commit is in progress, or right after one failed,
//! holds an acknowledged state; the refusals.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Client, DataDir, Fibd};

/// What one run of `fibd backup` said.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The index a successful backup reports.
    fn index(&self) -> u64 {
        assert!(self.status.success(), "fibd backup failed: {}", self.stderr);
        let rest = self.stdout.split("index ").nth(1).expect("an index");
        rest.split(',').next().unwrap().parse().expect("a number")
    }
}

/// `fibd backup ARGS` with none of the daemon's environment but `env`.
fn backup(args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(support::binary())
        .arg("backup")
        .args(args)
        .env_remove("FIBD_DATA_DIR")
        .env_remove("STATE_DIRECTORY")
        .env_remove("FIBD_STORE")
        .envs(env.iter().copied())
        .output()
        .expect("run fibd backup");
    Run {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn backup_of(data: &DataDir, to: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "--data-dir",
        data.path().to_str().unwrap(),
        "--to",
        to.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    backup(&args, &[])
}

/// Clients POSTing /next one after another until `stop`; each returns every
/// index it was told, and `highest` follows the highest told so far.
fn stepping_clients(
    addr: SocketAddr,
    clients: usize,
    stop: &Arc<AtomicBool>,
    highest: &Arc<AtomicU64>,
) -> Vec<JoinHandle<Vec<u64>>> {
    (0..clients)
        .map(|_| {
            let (stop, highest) = (stop.clone(), highest.clone());
            thread::spawn(move || {
                let mut told = Vec::new();
                let mut client = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let r = client.request("POST", "/next", &[]);
                    assert_eq!(r.status, 200, "{}", r.text());
                    told.push(r.index());
                    highest.fetch_max(r.index(), Ordering::SeqCst);
                }
                told
            })
        })
        .collect()
}

/// Checkpoints into LMDB so far: each costs two flushes beyond its batch's
/// (both counters from one reading of /metrics).
fn checkpoints(fibd: &Fibd) -> u64 {
    let page = fibd.get("/metrics").text();
    let sample = |name: &str| -> u64 {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    (sample("fibd_commit_flushes_total") - sample("fibd_commit_duration_seconds_count")) / 2
}

fn json(fibd: &Fibd, path: &str) -> Value {
    let r = fibd.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    serde_json::from_slice(&r.body).unwrap()
}

/// A primes task, waited for until it is done; its id and its record.
fn finished_task(fibd: &Fibd, n: u64) -> (String, Value) {
    let r = fibd.post_json("/v1/primes/tasks", &format!("{{\"n\": {n}}}"));
    assert_eq!(r.status, 202, "{}", r.text());
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    let id = v["request_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = json(fibd, &format!("/v1/primes/tasks/{id}?wait=30"));
        if v["status"] == "done" {
            return (id, v);
        }
        assert!(Instant::now() < deadline, "task {id} not done: {v}");
    }
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// fibd started on `copy` serves `index`, and steps on from it.
fn serves(copy: &DataDir, index: u64) -> Fibd {
    let fibd = Fibd::start(copy, &[]);
    assert_eq!(fibd.get("/current").index(), index, "the copy's index");
    fibd
}

#[test]
fn a_backup_under_load_holds_an_acknowledged_index_and_fibd_starts_on_it() {
    let data = DataDir::new("backup-load");
    let fibd = Fibd::start(&data, &[]);
    let (task, record) = finished_task(&fibd, 1000);
    let files = file_names(data.path());
    let (stop, highest) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let clients = stepping_clients(fibd.addr, 8, &stop, &highest);
    // Backups until one was made while a checkpoint ran (the log rewritten
    // from its start under the copy's feet), plain and compacted in turn.
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut copies: Vec<(u64, u64)> = Vec::new();
    let mut last = None;
    let mut across_a_checkpoint = 0;
    while across_a_checkpoint == 0 || copies.len() < 4 {
        assert!(
            Instant::now() < deadline,
            "no checkpoint ran during any of {} backups",
            copies.len()
        );
        let copy = DataDir::new("backup-load-copy");
        let compact: &[&str] = if copies.len() % 2 == 1 {
            &["--compact"]
        } else {
            &[]
        };
        let checkpointed = checkpoints(&fibd);
        let floor = highest.load(Ordering::SeqCst);
        let index = backup_of(&data, copy.path(), compact).index();
        if checkpoints(&fibd) > checkpointed {
            across_a_checkpoint += 1;
        }
        assert!(
            index >= floor,
            "the copy holds {index}, but {floor} was acknowledged before the backup began"
        );
        copies.push((floor, index));
        serves(&copy, index);
        last = Some((copy, index));
    }
    stop.store(true, Ordering::Relaxed);
    let told: BTreeSet<u64> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    for &(floor, index) in &copies {
        assert!(
            index == 0 || told.contains(&index),
            "the copy holds {index} (floor {floor}), an index no client was told"
        );
    }
    assert!(
        copies.iter().any(|&(_, index)| index > 0),
        "the load made progress: {copies:?}"
    );
    assert_eq!(
        file_names(data.path()),
        files,
        "nothing was added to the live data directory"
    );
    let (copy, index) = last.unwrap();
    let restored = serves(&copy, index);
    assert_eq!(restored.post("/next").index(), index + 1, "it steps on");
    let kept = json(&restored, &format!("/v1/primes/tasks/{task}"));
    assert_eq!(
        (&kept["status"], &kept["result"]),
        (&record["status"], &record["result"]),
        "the task survived"
    );
    // With the daemon stopped, the copy is exactly its last state.
    let final_index = fibd.get("/current").index();
    assert!(fibd.terminate().success());
    let cold = DataDir::new("backup-cold");
    assert_eq!(backup_of(&data, cold.path(), &[]).index(), final_index);
    eprintln!(
        "{} backups under load, {across_a_checkpoint} across a checkpoint",
        copies.len()
    );
}

/// A commit in progress: its frame is in the log, its flush held (the debug
/// build's `hold-syncs` hook). The copy holds the state before the batch or
/// after it, never part of it, and is acknowledged once the flush returns.
#[test]
fn a_backup_made_while_a_commit_is_in_progress_holds_an_acknowledged_state() {
    let data = DataDir::new("backup-held");
    let fibd = Fibd::start(&data, &[]);
    let (task, _) = finished_task(&fibd, 10);
    for _ in 0..3 {
        assert_eq!(fibd.post("/next").status, 200);
    }
    let hold = data.path().join("hold-syncs");
    std::fs::write(&hold, b"").unwrap();
    let addr = fibd.addr;
    let step = thread::spawn(move || Client::connect(addr).request("POST", "/next", &[]));
    fibd.wait_log("holding a commit before its flush");
    assert_eq!(
        fibd.get("/current").index(),
        3,
        "the step is not durable yet"
    );
    let copy = DataDir::new("backup-held-copy");
    let index = backup_of(&data, copy.path(), &[]).index();
    std::fs::remove_file(&hold).unwrap();
    let r = step.join().unwrap();
    assert_eq!((r.status, r.index()), (200, 4));
    assert!(
        index == 3 || index == 4,
        "the copy holds {index}: neither the state before the batch nor after it"
    );
    let restored = serves(&copy, index);
    assert_eq!(restored.post("/next").index(), index + 1);
    assert_eq!(
        json(&restored, &format!("/v1/primes/tasks/{task}"))["status"],
        "done"
    );
}

/// A batch whose frame was written and whose flush failed was answered
/// 503 and never made: a copy made afterwards must not hold it.
#[test]
fn a_backup_made_after_a_failed_commit_leaves_the_failed_step_out() {
    let data = DataDir::new("backup-failed");
    let fibd = Fibd::start(&data, &[]);
    for _ in 0..2 {
        assert_eq!(fibd.post("/next").status, 200);
    }
    let fault = data.path().join("fail-syncs");
    std::fs::write(&fault, b"").unwrap();
    assert_eq!(fibd.post("/next").status, 503);
    let copy = DataDir::new("backup-failed-copy");
    // An empty directory is a new one.
    std::fs::create_dir_all(copy.path()).unwrap();
    let index = backup_of(&data, copy.path(), &[]).index();
    assert_eq!(index, 2, "the copy holds the step that was answered 503");
    std::fs::remove_file(&fault).unwrap();
    assert_eq!(fibd.post("/next").index(), 3);
    serves(&copy, 2);
}

#[test]
fn backups_that_cannot_be_made_as_asked_are_refused_and_leave_nothing() {
    let data = DataDir::new("backup-refused");
    let fibd = Fibd::start(&data, &[]);
    assert_eq!(fibd.post("/next").status, 200);
    let source = data.path().to_str().unwrap();
    let elsewhere = DataDir::new("backup-refused-target");
    let to = elsewhere.path().join("copy");
    let to_str = to.to_str().unwrap();
    let refused = |run: Run, says: &str| {
        assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
        assert!(run.stderr.contains(says), "{says:?} in {}", run.stderr);
        assert!(run.stdout.is_empty());
    };

    // A target that is not empty.
    std::fs::create_dir_all(&to).unwrap();
    std::fs::write(to.join("keep"), b"mine").unwrap();
    refused(
        backup(&["--data-dir", source, "--to", to_str], &[]),
        "is not empty",
    );
    assert_eq!(file_names(&to), BTreeSet::from(["keep".to_owned()]));
    assert_eq!(
        file_names(elsewhere.path()),
        BTreeSet::from(["copy".to_owned()]),
        "no partial copy beside it"
    );
    std::fs::remove_dir_all(&to).unwrap();

    // etcd mode, from the flag or from the environment a unit sets.
    let etcd = "`etcdctl snapshot save";
    refused(
        backup(
            &["--data-dir", source, "--to", to_str, "--store", "etcd"],
            &[],
        ),
        etcd,
    );
    refused(
        backup(
            &["--to", to_str],
            &[("FIBD_STORE", "etcd"), ("STATE_DIRECTORY", source)],
        ),
        etcd,
    );

    // No store where the data directory points.
    let empty = DataDir::new("backup-refused-empty");
    std::fs::create_dir_all(empty.path()).unwrap();
    refused(
        backup(
            &["--to", to_str],
            &[("FIBD_DATA_DIR", empty.path().to_str().unwrap())],
        ),
        "no fibd store in",
    );

    // Inside the live data directory.
    let inside = data.path().join("copy");
    refused(
        backup(
            &["--data-dir", source, "--to", inside.to_str().unwrap()],
            &[],
        ),
        "inside the data directory",
    );
    assert!(!inside.exists());
    assert!(!to.exists(), "nothing was made at the target");

    // A bad command line.
    let bad = backup(&["--data-dir", source], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stderr.contains("--to DIR"), "{}", bad.stderr);
    let bad = backup(&["--listen", "127.0.0.1:1", "--to", to_str], &[]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stderr.contains("fibd backup --help"), "{}", bad.stderr);

    let help = backup(&["--help"], &[]);
    assert!(help.status.success());
    for says in [
        "--to DIR",
        "--compact",
        "etcdctl snapshot save",
        "EXIT STATUS",
    ] {
        assert!(help.stdout.contains(says), "{says:?} in {}", help.stdout);
    }

    // The daemon served throughout, and its lock is still its own.
    assert_eq!(fibd.post("/next").index(), 2);
    let (status, stderr) = support::run_to_exit(&["--listen", "127.0.0.1:0", "--data-dir", source]);
    assert!(!status.success());
    assert!(stderr.contains("in use by another fibd"), "{stderr}");
}
