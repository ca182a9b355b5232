//! A real systemd-journald of a test's own: started in a private mount
//! namespace (tmpfs over /run/systemd and /run/log, so its sockets sit where
//! every client looks and its journal is volatile), ready when it says
//! READY=1 on the test's notify socket. Commands run inside that namespace
//! through `nsenter`; fibd runs there with its stderr on the journal's
//! stream, as systemd would start it, and the journal is read back with
//! `journalctl -o json --follow`. Needs root (mount namespaces) and the
//! Debian `systemd` package.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;

use super::{STARTUP_TIMEOUT, binary, listening_addr};

const JOURNALD: &str = "/lib/systemd/systemd-journald";

/// Volatile storage, no kernel messages, no rate limit (a test's burst of
/// lines must all arrive), nothing forwarded.
const JOURNALD_CONF: &str = "[Journal]\nStorage=volatile\nReadKMsg=no\n\
    RateLimitIntervalSec=0\nForwardToSyslog=no\nForwardToWall=no\nForwardToConsole=no\n";

/// The namespace's setup, then journald in place of the shell.
const NAMESPACE_SETUP: &str = r#"set -e
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/journald.conf.d
printf '%s' "$JOURNALD_CONF" > /run/systemd/journald.conf.d/fibd-test.conf
mount -t tmpfs tmpfs /run/log
exec "$JOURNALD"
"#;

/// What systemd does for a service's stderr: the journal's stream, and
/// `JOURNAL_STREAM` naming its device and inode. `systemd-cat` makes the
/// stream but does not set the variable; this shell, on that stream, does.
const ON_THE_STREAM: &str =
    r#"JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM && exec "$@""#;

/// Hides the native socket from the command that follows (a nested mount
/// namespace with /dev/null bound over it): journald reachable through its
/// stream only.
const WITHOUT_NATIVE_SOCKET: &str =
    r#"mount --bind /dev/null /run/systemd/journal/socket && exec "$@""#;

pub struct Journald {
    daemon: Child,
    entries: mpsc::Receiver<Value>,
    /// Every entry read so far, in the journal's order.
    read: RefCell<Vec<Value>>,
    reader: Child,
}

impl Journald {
    pub fn start() -> Journald {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fibd-test-journald-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let notify = UnixDatagram::bind_addr(
            &UnixAddr::from_abstract_name(name.as_bytes()).expect("abstract address"),
        )
        .expect("bind the notify socket");
        notify
            .set_read_timeout(Some(STARTUP_TIMEOUT))
            .expect("timeout");
        let mut daemon = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(NAMESPACE_SETUP)
            .env("JOURNALD_CONF", JOURNALD_CONF)
            .env("JOURNALD", JOURNALD)
            .env("NOTIFY_SOCKET", format!("@{name}"))
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn unshare (util-linux)");
        let mut message = [0; 4096];
        loop {
            let Ok(len) = notify.recv(&mut message) else {
                let _ = daemon.kill();
                panic!("journald did not say READY=1: {:?}", daemon.wait());
            };
            let text = String::from_utf8_lossy(&message[..len]);
            if text.lines().any(|line| line == "READY=1") {
                break;
            }
        }
        let pid = daemon.id().to_string();
        let mut reader = Command::new("nsenter")
            .args(["--target", &pid, "--mount", "--"])
            .args([
                "journalctl",
                "--directory=/run/log/journal",
                "--output=json",
            ])
            .args(["--lines=all", "--follow", "--no-pager"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn journalctl");
        let stdout = reader.stdout.take().expect("piped");
        let (tx, entries) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let entry = serde_json::from_str(&line).expect("journalctl prints JSON");
                if tx.send(entry).is_err() {
                    break;
                }
            }
        });
        Journald {
            daemon,
            entries,
            read: RefCell::new(Vec::new()),
            reader,
        }
    }

    /// fibd in the journal's namespace, its stderr the journal stream (as
    /// under systemd), on a free port; returns once the journal has its
    /// listening line, with that line.
    pub fn start_fibd(&self, data: &Path, extra: &[&str], env: &[(&str, &str)]) -> JournaledFibd {
        self.spawn_fibd(data, extra, env, &[])
    }

    /// As [`Journald::start_fibd`], with the native socket hidden from fibd.
    pub fn start_fibd_without_native_socket(
        &self,
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> JournaledFibd {
        let hide = ["unshare", "--mount", "--propagation", "private", "--"];
        let hide: Vec<&str> = hide
            .into_iter()
            .chain(["sh", "-c", WITHOUT_NATIVE_SOCKET, "sh"])
            .collect();
        self.spawn_fibd(data, extra, env, &hide)
    }

    fn spawn_fibd(
        &self,
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> JournaledFibd {
        let child = self
            .fibd_command(data, extra, env, wrapper)
            .spawn()
            .expect("spawn fibd through nsenter and systemd-cat");
        let listening = self.wait_entry("fibd's listening line", |e| {
            field(e, "MESSAGE").is_some_and(|m| m.contains("listening on "))
        });
        let addr = field(&listening, "MESSAGE")
            .and_then(listening_addr)
            .expect("an address in the listening line");
        JournaledFibd {
            child,
            addr,
            listening,
        }
    }

    /// fibd as [`Journald::start_fibd`] runs it, for a run that ends by
    /// itself (a start that fails); returns how it ended.
    pub fn run_fibd(&self, data: &Path, extra: &[&str]) -> std::process::ExitStatus {
        self.fibd_command(data, extra, &[], &[])
            .status()
            .expect("run fibd through nsenter and systemd-cat")
    }

    fn fibd_command(
        &self,
        data: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        wrapper: &[&str],
    ) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["--target", &self.daemon.id().to_string(), "--mount", "--"])
            .args(wrapper)
            .args(["systemd-cat", "--identifier=fibd", "--"])
            .args(["sh", "-c", ON_THE_STREAM, "sh", binary()])
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "info")
            .env_remove("FIBD_LISTEN")
            .env_remove("FIBD_DATA_DIR")
            .env_remove("STATE_DIRECTORY")
            .env_remove("JOURNAL_STREAM")
            .envs(env.iter().copied())
            .stdin(Stdio::null());
        command
    }

    /// The first entry (from the journal's start) that `wanted` accepts;
    /// panics with the entries seen when none comes within the timeout.
    pub fn wait_entry(&self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(entry) = self.read.borrow().iter().find(|e| wanted(e)) {
            return entry.clone();
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(entry) = self.entries.recv_timeout(left) else {
                let read = self.read.borrow();
                let messages: Vec<_> = read.iter().filter_map(|e| field(e, "MESSAGE")).collect();
                panic!("no journal entry for {what}; read {messages:#?}");
            };
            self.read.borrow_mut().push(entry.clone());
            if wanted(&entry) {
                return entry;
            }
        }
    }
}

impl Drop for Journald {
    fn drop(&mut self) {
        for child in [&mut self.reader, &mut self.daemon] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A journal entry's field as text (journalctl's JSON gives every field as
/// a string).
pub fn field<'a>(entry: &'a Value, name: &str) -> Option<&'a str> {
    entry.get(name)?.as_str()
}

/// fibd logging to the test's journald; killed when dropped.
pub struct JournaledFibd {
    child: Child,
    pub addr: SocketAddr,
    /// The journal's entry for the listening line.
    pub listening: Value,
}

impl Drop for JournaledFibd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
