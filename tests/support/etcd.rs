//! A real etcd cluster for tests, from the Debian package `etcd-server`:
//! members on free loopback ports, each with its data directory and log file
//! in the cluster's temporary directory; kill -9, restart on the same data,
//! SIGSTOP and SIGCONT, and (members under uids of their own) a member cut
//! off from its peers by a real partition (`partition`). The harness talks to members through etcd's JSON
//! gateway, one HTTP/1.0 request per connection, each with a deadline. When
//! a test fails, the tail of every member's log is printed.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

use super::nginx::free_port;
use super::partition::{self, Partition};
use super::{DataDir, signal};

/// One gateway call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long an election, or a quorum coming back, may take.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 25;

/// The cluster secret file every fibd node of a test is given
/// (`--cluster-secret-file`): written once per test process, readable by the
/// uids partition tests run nodes under.
pub fn secret_file() -> &'static str {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("fibd-cluster-secret-{}", std::process::id()));
        std::fs::write(
            &path,
            format!("test-cluster-secret-{}\n", std::process::id()),
        )
        .expect("write the cluster secret");
        path.to_string_lossy().into_owned()
    })
}

pub struct EtcdCluster {
    dir: DataDir,
    token: String,
    members: Vec<Member>,
}

struct Member {
    name: String,
    peer_port: u16,
    client_port: u16,
    process: Option<Child>,
    stopped: bool,
    /// Run under this uid, so a partition can cut it off alone.
    uid: Option<u32>,
    /// Cut off from its peers: not asked who leads.
    isolated: bool,
}

impl EtcdCluster {
    /// Starts a new cluster of `count` members and waits until it has a
    /// leader that every member follows and a quorum read succeeds.
    pub fn start(count: usize) -> EtcdCluster {
        EtcdCluster::start_with(count, false)
    }

    /// The same, each member under a uid of its own (as root), so that
    /// [`EtcdCluster::isolate`] can cut one off.
    pub fn start_isolable(count: usize) -> EtcdCluster {
        EtcdCluster::start_with(count, true)
    }

    fn start_with(count: usize, isolable: bool) -> EtcdCluster {
        let dir = DataDir::new("etcd");
        std::fs::create_dir_all(dir.path()).expect("etcd test directory");
        let members = (1..=count)
            .map(|i| Member {
                name: format!("m{i}"),
                peer_port: free_port(),
                client_port: free_port(),
                process: None,
                stopped: false,
                uid: isolable.then(partition::test_uid),
                isolated: false,
            })
            .collect();
        let token = dir
            .path()
            .file_name()
            .expect("named directory")
            .to_string_lossy()
            .into_owned();
        let mut cluster = EtcdCluster {
            dir,
            token,
            members,
        };
        for i in 0..count {
            cluster.spawn(i);
        }
        cluster.wait_for_quorum();
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    /// Starts member `i` on its data directory (new, or the one it had: etcd
    /// then ignores the initial-cluster flags and rejoins as it was).
    fn spawn(&mut self, i: usize) {
        assert!(self.members[i].process.is_none(), "member {i} is running");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .expect("etcd log file");
        let member = &self.members[i];
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let mut command = match member.uid {
            None => Command::new("etcd"),
            Some(uid) => {
                use std::os::unix::fs::DirBuilderExt;
                let data = self.data_dir(i);
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .recursive(true)
                    .create(&data)
                    .expect("the member's data directory");
                std::os::unix::fs::chown(&data, Some(uid), Some(uid)).expect("chown (root?)");
                let id = uid.to_string();
                let mut command = Command::new("setpriv");
                command.args([
                    "--reuid",
                    &id,
                    "--regid",
                    &id,
                    "--clear-groups",
                    "--",
                    "etcd",
                ]);
                command
            }
        };
        let child = command
            .args(["--name", &member.name, "--data-dir"])
            .arg(self.data_dir(i))
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (apt-get install etcd-server)");
        self.members[i].process = Some(child);
        self.members[i].stopped = false;
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Member `i`'s client URL.
    pub fn client_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.client_port(i))
    }

    /// Member `i`'s client port on loopback.
    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client_port
    }

    /// Every member's client URL, comma-joined, member `first` first (for
    /// `--etcd-endpoints`: a node tries its endpoints in that order).
    pub fn endpoints_from(&self, first: usize) -> String {
        (0..self.len())
            .map(|k| self.client_url((first + k) % self.len()))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn pid(&self, i: usize) -> u32 {
        self.members[i]
            .process
            .as_ref()
            .expect("member is running")
            .id()
    }

    /// Members that run, are not stopped and not cut off: those whose
    /// answers count.
    fn answering(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter(|&i| {
            let m = &self.members[i];
            m.process.is_some() && !m.stopped && !m.isolated
        })
    }

    /// Cuts member `i` off from its peers (both ways: every packet it sends
    /// to their peer ports, and from its own): clients still reach it.
    pub fn isolate(&mut self, i: usize, partition: &Partition) {
        let uid = self.members[i].uid.expect("a member started isolable");
        for (j, other) in self.members.iter().enumerate() {
            if j != i {
                partition.cut(uid, other.peer_port);
            }
        }
        partition.cut_from(uid, self.members[i].peer_port);
        self.members[i].isolated = true;
    }

    /// Member `i` counts again, once the partition that isolated it healed.
    pub fn rejoin(&mut self, i: usize) {
        self.members[i].isolated = false;
    }

    /// kill -9 member `i`, and reap it.
    pub fn kill9(&mut self, i: usize) {
        let mut child = self.members[i].process.take().expect("member is running");
        child.kill().expect("kill -9 etcd");
        child.wait().expect("reap etcd");
        self.members[i].stopped = false;
    }

    /// Restarts a killed member `i` on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
    }

    /// SIGSTOP: the member keeps its sockets but answers nothing.
    pub fn stop(&mut self, i: usize) {
        signal(self.pid(i), "STOP");
        self.members[i].stopped = true;
    }

    /// SIGCONT after [`stop`](Self::stop).
    pub fn resume(&mut self, i: usize) {
        signal(self.pid(i), "CONT");
        self.members[i].stopped = false;
    }

    /// The index of the leader, once every answering member names the same
    /// one among them; panics if that takes longer than an election should.
    pub fn leader(&self) -> usize {
        self.wait_until("a leader every answering member follows", || {
            self.agreed_leader()
        })
    }

    fn agreed_leader(&self) -> Option<usize> {
        let mut ids = Vec::new();
        let mut leaders = Vec::new();
        for i in self.answering() {
            let status = self.call(i, "/v3/maintenance/status", "{}").ok()?;
            ids.push((i, status["header"]["member_id"].as_str()?.to_owned()));
            leaders.push(status["leader"].as_str()?.to_owned());
        }
        let leader = leaders.first()?;
        if leaders.iter().any(|l| l != leader) {
            return None;
        }
        ids.iter().find(|(_, id)| id == leader).map(|(i, _)| *i)
    }

    /// Waits until a linearizable read succeeds on some answering member.
    pub fn wait_for_quorum(&self) {
        self.wait_until("a quorum read", || {
            self.answering()
                .find_map(|i| self.range(i, "/fibd-test/quorum-probe").ok())
        });
    }

    /// The stepper's index of `cluster` as etcd holds it (0 when the key is
    /// absent), by a linearizable read through any answering member.
    pub fn index(&self, cluster: &str) -> u64 {
        let key = format!("/fibd/{cluster}/index");
        let value = self.wait_until("a quorum read of the index", || {
            self.answering().find_map(|i| self.range(i, &key).ok())
        });
        value.map_or(0, |v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{key} holds {v:?}, not a decimal index"))
        })
    }

    /// A linearizable range of one key on member `i`: its value, if any.
    fn range(&self, i: usize, key: &str) -> Result<Option<Vec<u8>>, String> {
        let body = format!("{{\"key\": \"{}\"}}", BASE64.encode(key));
        let answer = self.call(i, "/v3/kv/range", &body)?;
        match answer["kvs"][0]["value"].as_str() {
            Some(value) => BASE64
                .decode(value)
                .map(Some)
                .map_err(|e| format!("value of {key}: {e}")),
            None if answer.get("header").is_some() => Ok(None),
            None => Err(format!("range answered {answer}")),
        }
    }

    /// POSTs `body` to the gateway of member `i`; its JSON answer if 200.
    fn call(&self, i: usize, path: &str, body: &str) -> Result<Value, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.members[i].client_port));
        let mut stream =
            TcpStream::connect_timeout(&addr, CALL_TIMEOUT).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(CALL_TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(CALL_TIMEOUT)).unwrap();
        let request = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&answer);
        let (head, json) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP head in {text:?}"))?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("{head}\n{json}"));
        }
        serde_json::from_str(json).map_err(|e| format!("{e}: {json}"))
    }

    /// Polls `probe` until it gives an answer, for at most [`SETTLE_TIMEOUT`].
    fn wait_until<T>(&self, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            if let Some(answer) = probe() {
                return answer;
            }
            // A member that exited (a port taken meanwhile, say) shows in
            // the log tails printed when this panics.
            assert!(Instant::now() < deadline, "etcd: no {what} in time");
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn print_log_tails(&self) {
        for i in 0..self.len() {
            let log = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- etcd member {} ({}), last {} lines ----\n{}",
                self.members[i].name,
                self.client_url(i),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
        }
        // SIGKILL ends a stopped process too.
        for member in &mut self.members {
            if let Some(mut child) = member.process.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
