//! Cluster mode (`--store etcd`) against a real three-member etcd cluster on
//! loopback (tests/support/etcd.rs) and three fibd nodes on it: steps from
//! many clients over all nodes, a recorded history checked for
//! linearizability, kill -9 of a node, of etcd's leader and then of a second
//! member (quorum lost and back), an etcd member stopped mid-call, the
//! nodes on etcd's followers served with one member down, the internal
//! endpoint's guards, real network partitions (iptables): the leader
//! node cut off from etcd, a follower cut off from the leader, and etcd's
//! leader cut off from its peers; and primes tasks held by the leader in
//! etcd, read on any node and outliving the nodes that took them.
//!
//! Each test starts its own etcd cluster; they run one at a time, since each
//! keeps the two cores busy with six processes and eight clients.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use support::etcd::EtcdCluster;
use support::linearizability::{History, Op, Outcome, Process, Ret, StepperRegister};
use support::partition::{self, Partition};
use support::{Client, DataDir, Fibd};

/// Short etcd deadlines for the fault tests: a call's, and a request's wait.
const FAST_FAILURE: [&str; 4] = ["--etcd-timeout-ms", "500", "--etcd-wait-ms", "2000"];
/// How long a client waits for an answer before it counts the call unknown:
/// well past any `--etcd-wait-ms` used here.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(12);
/// Bound on every wait for the cluster to reach a state.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// A client's pause after a 503 before its next call.
const BACK_OFF: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 40;

/// Mostly forward, some back, some reads.
const MIXED: &[Op] = &[
    Op::Next,
    Op::Current,
    Op::Next,
    Op::Previous,
    Op::Current,
    Op::Next,
];
/// Every answer distinct: the checker's search stays short however many
/// outcomes a fault leaves unknown (reads beside unknown steps multiply it).
const NEXT_ONLY: &[Op] = &[Op::Next];

/// One test at a time (see the module docs).
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static CLUSTER: Mutex<()> = Mutex::new(());
    CLUSTER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A name for the test's stepper index, unique to this run.
fn cluster_name(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// One fibd node: its data directory and arguments outlive its process, so
/// it can be killed and started again as it was.
struct Node {
    name: String,
    data: DataDir,
    args: Vec<String>,
    /// Run under this uid, so a partition can cut it off alone.
    uid: Option<u32>,
    fibd: Option<Fibd>,
}

impl Node {
    fn start(name: &str, endpoints: &str, cluster: &str, extra: &[&str]) -> Node {
        Node::start_as(None, name, endpoints, cluster, extra)
    }

    fn start_as(
        uid: Option<u32>,
        name: &str,
        endpoints: &str,
        cluster: &str,
        extra: &[&str],
    ) -> Node {
        let args: Vec<String> = [
            "--store",
            "etcd",
            "--etcd-endpoints",
            endpoints,
            "--cluster-name",
            cluster,
            "--node-name",
            name,
            "--cluster-secret-file",
            support::etcd::secret_file(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect();
        let mut node = Node {
            name: name.to_owned(),
            data: DataDir::new(&format!("cluster-{name}")),
            args,
            uid,
            fibd: None,
        };
        node.restart();
        node
    }

    fn fibd(&self) -> &Fibd {
        self.fibd.as_ref().expect("node is running")
    }

    fn addr(&self) -> SocketAddr {
        self.fibd().addr
    }

    fn kill9(&mut self) {
        self.fibd.take().expect("node is running").kill9();
    }

    /// Starts the node (again) on its data directory and waits until it is
    /// ready: it has read the index from etcd.
    fn restart(&mut self) {
        assert!(self.fibd.is_none(), "node is running");
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.fibd = Some(match self.uid {
            Some(uid) => Fibd::start_as(uid, &self.data, &args),
            None => Fibd::start(&self.data, &args),
        });
        self.wait_ready(200);
    }

    fn wait_ready(&self, status: u16) {
        wait_ready(self.addr(), status);
    }

    /// /current's index, read once.
    fn current(&self) -> u64 {
        let response = self.fibd().get("/current");
        assert_eq!(response.status, 200, "{}", response.text());
        response.index()
    }
}

impl Drop for Node {
    /// A failing test shows the tail of each node's log.
    fn drop(&mut self) {
        if let (true, Some(fibd)) = (thread::panicking(), &self.fibd) {
            let lines: Vec<String> = fibd.log.try_iter().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "---- fibd node {} ({}), last {} log lines ----\n{}",
                self.name,
                fibd.addr,
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Polls the node's /readyz until it answers `status`.
fn wait_ready(node: SocketAddr, status: u16) {
    wait_until(&format!("/readyz {status} on {node}"), || {
        let mut client = Client::try_connect(node).ok()?;
        (client.request("GET", "/readyz", &[]).status == status).then_some(())
    });
}

/// Three nodes on `etcd`, node k trying member k first.
fn start_nodes(etcd: &EtcdCluster, cluster: &str, extra: &[&str]) -> Vec<Node> {
    (0..3)
        .map(|k| Node::start(&format!("n{k}"), &etcd.endpoints_from(k), cluster, extra))
        .collect()
}

fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        if let Some(answer) = probe() {
            return answer;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {SETTLE_TIMEOUT:?}"
        );
        thread::sleep(POLL_INTERVAL);
    }
}

/// One stepper call on `client`, read as the history records it. A dropped
/// connection or no answer in time leaves the outcome unknown (and the
/// client to be replaced). Every 503 must say when to retry.
fn perform(client: &mut Client, op: Op) -> (Outcome, bool) {
    let (method, path) = match op {
        Op::Next => ("POST", "/next"),
        Op::Previous => ("POST", "/previous"),
        Op::Current => ("GET", "/current"),
    };
    let request = support::request_bytes(method, path, &[]);
    if client.stream().write_all(&request).is_err() {
        return (Outcome::Unknown, false);
    }
    let Some(response) = client.try_read_response(false) else {
        return (Outcome::Unknown, false);
    };
    let outcome = match response.status {
        200 => Outcome::Returned(Ret::Index(response.index())),
        409 => Outcome::Returned(Ret::AtCeiling),
        503 => {
            assert_eq!(
                response.header("Retry-After"),
                Some("1"),
                "{op:?}: 503 without Retry-After: {}",
                response.text()
            );
            let body: serde_json::Value =
                serde_json::from_slice(&response.body).expect("a JSON error body");
            match (body["code"].as_str(), op) {
                (Some("store_unavailable"), _) => Outcome::NotApplied,
                (Some("step_outcome_unknown"), Op::Next | Op::Previous) => Outcome::Unknown,
                _ => panic!("{op:?}: unexpected 503 {body}"),
            }
        }
        status => panic!("{op:?} answered {status}: {}", response.text()),
    };
    (outcome, true)
}

/// A connection to the first node in `nodes`, from `first` on, that accepts one.
fn connect(nodes: &[SocketAddr], first: usize) -> Client {
    wait_until("a node accepting a connection", || {
        (0..nodes.len()).find_map(|k| {
            let client = Client::try_connect(nodes[(first + k) % nodes.len()]).ok()?;
            client_timeout(client)
        })
    })
}

/// `client`, which waits [`ANSWER_TIMEOUT`] for an answer.
fn client_timeout(mut client: Client) -> Option<Client> {
    client
        .stream()
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .ok()?;
    Some(client)
}

/// A node that cannot reach a quorum of etcd: a step waits, then 503 within
/// `wait` and a little (with Retry-After, which `perform` checks), is left
/// out or unknown; /current is 503; /readyz turns 503. Recorded as `probe`.
fn assert_refuses(mut probe: Process, node: SocketAddr, wait: Duration, why: &str) {
    let mut client = client_timeout(Client::connect(node)).expect("client");
    let started = Instant::now();
    let outcome = probe.call(Op::Next, || perform(&mut client, Op::Next).0);
    let took = started.elapsed();
    assert!(
        matches!(outcome, Outcome::NotApplied | Outcome::Unknown),
        "/next {why}: {outcome:?}"
    );
    assert!(took < wait + Duration::from_secs(3), "503 after {took:?}");
    let read = probe.call(Op::Current, || perform(&mut client, Op::Current).0);
    assert_eq!(read, Outcome::NotApplied, "/current {why}");
    wait_ready(node, 503);
}

/// Where the load's clients wait while the test makes an outage: the
/// checker's search grows fast with the number of unknown outcomes.
struct Gate {
    /// Clients from this index on wait before their next call; while it is
    /// set at all, a client whose last call failed waits too.
    held_from: AtomicUsize,
    /// How many clients wait now.
    waiting: AtomicUsize,
}

impl Gate {
    fn holds(&self, client: usize, failed: bool) -> bool {
        let from = self.held_from.load(Ordering::SeqCst);
        client >= from || (failed && from != usize::MAX)
    }

    /// Waits (bounded) while this client is held.
    fn pass(&self, client: usize, failed: bool, stop: &AtomicBool) {
        if !self.holds(client, failed) {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + SETTLE_TIMEOUT * 2;
        while self.holds(client, failed) && !stop.load(Ordering::Relaxed) {
            assert!(Instant::now() < deadline, "client {client} held too long");
            thread::sleep(POLL_INTERVAL);
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Clients that step through the nodes and record every call in one history.
struct Load {
    history: Arc<History>,
    /// The nodes' addresses when the load started.
    nodes: Arc<[SocketAddr]>,
    stop: Arc<AtomicBool>,
    gate: Arc<Gate>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn new(nodes: &[Node]) -> Load {
        Load {
            history: History::new(),
            nodes: nodes.iter().map(Node::addr).collect(),
            stop: Arc::new(AtomicBool::new(false)),
            gate: Arc::new(Gate {
                held_from: AtomicUsize::new(usize::MAX),
                waiting: AtomicUsize::new(0),
            }),
            clients: Vec::new(),
        }
    }

    /// Starts `count` clients, client i on node i mod 3 (and on the next
    /// node while that one does not accept), each cycling through `ops`
    /// until stopped or until `answered` of its calls returned (a call that
    /// did not happen is made again).
    fn spawn(&mut self, count: usize, ops: &'static [Op], answered: Option<usize>) {
        for i in 0..count {
            let (history, nodes) = (self.history.clone(), self.nodes.clone());
            let (stop, gate) = (self.stop.clone(), self.gate.clone());
            self.clients.push(thread::spawn(move || {
                let mut process = history.process();
                let mut client = connect(&nodes, i);
                let mut returned = 0;
                let limit = answered.unwrap_or(usize::MAX);
                let mut calls = 0;
                let mut failed = false;
                while !stop.load(Ordering::Relaxed) && returned < limit {
                    gate.pass(i, failed, &stop);
                    calls += 1;
                    assert!(
                        calls <= limit.saturating_mul(2),
                        "client {i}: too many calls refused"
                    );
                    let op = ops[calls % ops.len()];
                    let mut alive = true;
                    let outcome = process.call(op, || {
                        let (outcome, kept) = perform(&mut client, op);
                        alive = kept;
                        outcome
                    });
                    if !alive {
                        client = connect(&nodes, i);
                    }
                    failed = !matches!(outcome, Outcome::Returned(_));
                    if failed {
                        thread::sleep(BACK_OFF);
                    } else {
                        returned += 1;
                    }
                }
            }));
        }
    }

    /// Holds every client from `keep` on before its next call, and the
    /// first `keep` after their next failed call; returns once the former
    /// all wait. An outage made then leaves at most `keep` calls unknown.
    fn hold(&self, keep: usize) {
        self.gate.held_from.store(keep, Ordering::SeqCst);
        let held = self.clients.len().saturating_sub(keep);
        wait_until(&format!("{held} clients held"), || {
            (self.gate.waiting.load(Ordering::SeqCst) >= held).then_some(())
        });
    }

    fn release(&self) {
        self.gate.held_from.store(usize::MAX, Ordering::SeqCst);
    }

    /// Waits until at least `count` calls were answered in all.
    fn wait_answered(&self, count: usize) {
        wait_until(&format!("{count} calls answered"), || {
            (self.answered() >= count).then_some(())
        });
    }

    fn answered(&self) -> usize {
        self.history
            .calls()
            .iter()
            .filter(|c| matches!(c.outcome, Outcome::Returned(_)))
            .count()
    }

    /// Stops the clients (each after its call in flight) and waits for them.
    fn finish(self) -> Arc<History> {
        self.stop.store(true, Ordering::Relaxed);
        self.release();
        self.join()
    }

    /// Waits for clients that make a set number of calls to be done.
    fn join(self) -> Arc<History> {
        for client in self.clients {
            client.join().expect("a client failed");
        }
        self.history
    }
}

/// The indices acknowledged to /next calls, sorted.
fn acknowledged_nexts(history: &History) -> Vec<u64> {
    let mut indices: Vec<u64> = history
        .calls()
        .iter()
        .filter(|c| c.op == Op::Next)
        .filter_map(|c| match c.outcome {
            Outcome::Returned(Ret::Index(i)) => Some(i),
            _ => None,
        })
        .collect();
    indices.sort_unstable();
    indices
}

fn unknown_outcomes(history: &History) -> usize {
    history
        .calls()
        .iter()
        .filter(|c| c.outcome == Outcome::Unknown)
        .count()
}

/// Calls answered 503 `store_unavailable`: not made (and made again).
fn refused(history: &History) -> usize {
    history
        .calls()
        .iter()
        .filter(|c| c.outcome == Outcome::NotApplied)
        .count()
}

fn assert_distinct(indices: &[u64]) {
    for pair in indices.windows(2) {
        assert_ne!(pair[0], pair[1], "index {} acknowledged twice", pair[0]);
    }
}

/// A last /current, after every other call, recorded into `history` so the
/// checker holds the final index to everything acknowledged before it.
fn final_read(history: &Arc<History>, node: &Node) -> u64 {
    let mut client = client_timeout(node.fibd().connect()).expect("client");
    let outcome = history
        .process()
        .call(Op::Current, || perform(&mut client, Op::Current).0);
    match outcome {
        Outcome::Returned(Ret::Index(i)) => i,
        other => panic!("final /current: {other:?}"),
    }
}

fn assert_linearizable(history: &History) {
    let started = Instant::now();
    match history.check(StepperRegister::fresh()) {
        Ok(calls) => eprintln!(
            "{calls} calls ({} unknown, {} refused and left out) linearizable, checked in {:?}",
            unknown_outcomes(history),
            refused(history),
            started.elapsed()
        ),
        Err(e) => panic!("{e}"),
    }
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn the_harness_elects_a_new_leader_after_kill_9_and_takes_the_member_back() {
    let _serial = one_at_a_time();
    let mut etcd = EtcdCluster::start(3);
    let name = cluster_name("harness");
    assert_eq!(etcd.index(&name), 0, "absent key reads as 0");
    let old = etcd.leader();
    etcd.kill9(old);
    let new = etcd.leader();
    assert_ne!(new, old);
    etcd.wait_for_quorum();
    etcd.restart(old);
    etcd.wait_for_quorum();
    // The restarted member answers and follows the new leader.
    assert_eq!(etcd.leader(), new);
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn next_from_eight_clients_over_three_nodes_gives_every_index_once() {
    let _serial = one_at_a_time();
    let etcd = EtcdCluster::start(3);
    let name = cluster_name("next");
    let nodes = start_nodes(&etcd, &name, &[]);
    let mut load = Load::new(&nodes);
    let started = Instant::now();
    load.spawn(8, NEXT_ONLY, Some(200));
    let history = load.join();
    eprintln!("1600 steps over three nodes in {:?}", started.elapsed());

    assert_eq!(
        unknown_outcomes(&history),
        0,
        "a healthy cluster lost an answer"
    );
    let acked = acknowledged_nexts(&history);
    assert_eq!(acked.len(), 1600);
    assert_distinct(&acked);
    assert_eq!(
        acked,
        (1..=1600).collect::<Vec<u64>>(),
        "a gap in the indices"
    );
    assert_eq!(etcd.index(&name), 1600);
    for node in &nodes {
        assert_eq!(node.current(), 1600);
    }
    // One leader wrote every step; the others relayed theirs and never
    // sent a transaction of their own.
    let leader = leader_of(&nodes);
    let txns = |node: &Node| {
        node.fibd()
            .metric(r#"fibd_etcd_calls_total{kind="txn",outcome="answered"}"#)
    };
    let relays = |node: &Node| {
        node.fibd()
            .metric(r#"fibd_etcd_calls_total{kind="relay",outcome="answered"}"#)
    };
    for (k, node) in nodes.iter().enumerate().filter(|&(k, _)| k != leader) {
        assert_eq!(txns(node), 0.0, "follower n{k} wrote the index itself");
        assert!(relays(node) > 0.0, "follower n{k} relayed nothing");
    }
    let applied = nodes[leader]
        .fibd()
        .metric("fibd_cluster_relays_applied_total");
    let leader_txns = txns(&nodes[leader]);
    eprintln!(
        "leader n{leader}: {leader_txns} txns for 1600 steps ({:.1} steps per txn), {applied} relays applied",
        1600.0 / leader_txns
    );
    assert!(applied > 0.0);
}

/// The node that reports itself the cluster's leader, once exactly one does.
fn leader_of(nodes: &[Node]) -> usize {
    wait_until("exactly one leader", || {
        let leading: Vec<usize> = (0..nodes.len())
            .filter(|&k| nodes[k].fibd.is_some())
            .filter(|&k| nodes[k].fibd().metric("fibd_cluster_leader") == 1.0)
            .collect();
        match leading[..] {
            [one] => Some(one),
            _ => None,
        }
    })
}

/// A leader other than `old` among the running nodes.
fn new_leader(nodes: &[Node], old: usize) -> usize {
    wait_until("a new leader", || {
        let k = leader_of(nodes);
        (k != old).then_some(k)
    })
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn the_internal_endpoint_takes_only_the_cluster_secret_at_the_leader_which_resigns_at_a_stop() {
    let _serial = one_at_a_time();
    let etcd = EtcdCluster::start(3);
    let name = cluster_name("internal");
    let mut nodes: Vec<Node> = (0..2)
        .map(|k| Node::start(&format!("n{k}"), &etcd.endpoints_from(k), &name, &[]))
        .collect();
    let leader = leader_of(&nodes);
    let follower = 1 - leader;
    let secret = std::fs::read_to_string(support::etcd::secret_file()).unwrap();
    let relay = |node: usize, secret: Option<&str>, body: &str| {
        let headers: Vec<(&str, &str)> = secret
            .map(|secret| ("Fibd-Cluster-Secret", secret))
            .into_iter()
            .collect();
        let mut client = nodes[node].fibd().connect();
        client.send(&support::json_request_with(
            "/internal/v1/steps",
            body,
            &headers,
        ));
        client.read_response(false)
    };
    let steps = r#"{"node":"outsider","tag":"t-1","fence":"0","steps":"nnp"}"#;
    let wrong = relay(leader, Some("not-the-cluster-secret"), steps);
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!(relay(leader, None, steps).status, 401);
    let bad = relay(
        leader,
        Some(secret.trim()),
        r#"{"node":"outsider","steps":"x"}"#,
    );
    assert_eq!(bad.status, 400, "{}", bad.text());
    let misdirected = relay(follower, Some(secret.trim()), steps);
    assert_eq!(misdirected.status, 421, "{}", misdirected.text());
    assert!(misdirected.text().contains("not_leader"));
    // With the secret, at the leader: applied in one piece, on index 0.
    let applied = relay(leader, Some(secret.trim()), steps);
    assert_eq!(applied.status, 200, "{}", applied.text());
    let answer: serde_json::Value = serde_json::from_str(&applied.text()).unwrap();
    assert_eq!(
        (answer["base"].as_str(), answer["then"].as_str()),
        (Some("0"), Some("1"))
    );
    assert_eq!(etcd.index(&name), 1);
    // The same tag and fence again: its fence moved, so it cannot apply.
    let again = relay(leader, Some(secret.trim()), steps);
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(etcd.index(&name), 1);
    // Not part of the public API.
    let doc = nodes[leader].fibd().get("/openapi.json").text();
    assert!(!doc.contains("/internal/"));

    // A graceful stop hands the leadership on: the leader revokes its lease
    // (the key goes at once, not after the TTL), and the other node leads.
    let fibd = nodes[leader].fibd.take().expect("running");
    support::signal(fibd.pid(), "TERM");
    let (status, lines) = fibd.wait_exit();
    assert!(status.success(), "{status:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("resigned at a graceful stop")),
        "{lines:?}"
    );
    assert_eq!(leader_of(&nodes), follower);
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn a_mixed_history_over_three_nodes_is_linearizable_and_serializable_reads_answer() {
    let _serial = one_at_a_time();
    let etcd = EtcdCluster::start(3);
    let name = cluster_name("mixed");
    let nodes = start_nodes(&etcd, &name, &[]);
    let mut load = Load::new(&nodes);
    load.spawn(8, MIXED, Some(30));
    let history = load.join();
    assert_eq!(refused(&history), 0, "a healthy cluster refused a call");
    let last = final_read(&history, &nodes[0]);
    assert_linearizable(&history);
    assert_eq!(etcd.index(&name), last);

    // Serializable reads: answered from the endpoint's own copy, which may
    // lag, so not checked for linearizability; they answer, and steps made
    // through such nodes are still transactions on the one index.
    let relaxed = ["--etcd-reads", "serializable"];
    let relaxed_nodes: Vec<Node> = (0..3)
        .map(|k| Node::start(&format!("s{k}"), &etcd.endpoints_from(k), &name, &relaxed))
        .collect();
    for node in &relaxed_nodes {
        let current = node.current();
        assert!(current <= last, "{current} past every step made");
    }
    let mut stepped = Vec::new();
    for node in &relaxed_nodes {
        let response = node.fibd().post("/next");
        assert_eq!(response.status, 200, "{}", response.text());
        stepped.push(response.index());
    }
    stepped.sort_unstable();
    assert_eq!(stepped, [last + 1, last + 2, last + 3]);
    assert_eq!(etcd.index(&name), last + 3);
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn kill_9_of_the_leader_node_under_load_loses_no_acknowledged_step() {
    let _serial = one_at_a_time();
    let etcd = EtcdCluster::start(3);
    let name = cluster_name("killnode");
    let mut nodes = start_nodes(&etcd, &name, &FAST_FAILURE);
    let mut load = Load::new(&nodes);
    load.spawn(8, NEXT_ONLY, None);
    load.wait_answered(100);
    let leader = leader_of(&nodes);
    let killed = Instant::now();
    nodes[leader].kill9();
    // Its clients move to the other nodes, and one of them leads.
    let successor = new_leader(&nodes, leader);
    eprintln!(
        "n{successor} leads {:?} after n{leader}'s kill",
        killed.elapsed()
    );
    load.wait_answered(load.answered() + 100);
    let history = load.finish();

    let acked = acknowledged_nexts(&history);
    assert!(acked.len() >= 200, "{} steps acknowledged", acked.len());
    assert_distinct(&acked);
    let index = etcd.index(&name);
    let highest = *acked.last().unwrap();
    assert!(
        index >= highest,
        "etcd holds {index}, {highest} was acknowledged"
    );
    // Every index up to the final one was given once, or went to a call
    // whose answer the kill took away.
    let unanswered = index - acked.len() as u64;
    assert!(
        unanswered <= unknown_outcomes(&history) as u64,
        "{unanswered} steps made without an answer, {} calls unanswered",
        unknown_outcomes(&history)
    );
    let last = final_read(&history, &nodes[successor]);
    assert_eq!(last, index);
    assert_linearizable(&history);

    nodes[leader].restart();
    for node in &nodes {
        assert_eq!(node.current(), index);
    }
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn quorum_lost_and_back_under_load_loses_and_doubles_nothing() {
    let _serial = one_at_a_time();
    let mut etcd = EtcdCluster::start(3);
    let name = cluster_name("quorum");
    // Steps wait long enough to outlast an election (about 1 to 3 s here):
    // with 2 s, every call in flight at the leader's kill could end unknown,
    // and eight unknown outcomes take the checker over a minute.
    let wait = Duration::from_secs(5);
    let wait_ms = wait.as_millis().to_string();
    let nodes = start_nodes(
        &etcd,
        &name,
        &["--etcd-timeout-ms", "500", "--etcd-wait-ms", &wait_ms],
    );
    let mut load = Load::new(&nodes);
    load.spawn(8, NEXT_ONLY, None);
    load.wait_answered(50);

    // The leader: a new one is elected, and service goes on.
    let leader = etcd.leader();
    etcd.kill9(leader);
    let new_leader = etcd.leader();
    load.wait_answered(load.answered() + 50);

    // A second member (the new leader): no quorum. Two clients keep
    // stepping into the outage; the other six wait it out.
    load.hold(2);
    etcd.kill9(new_leader);
    // Each node, at once: a step waits, then 503 (with Retry-After, which
    // `perform` checks); /current is 503; /readyz turns 503.
    thread::scope(|scope| {
        for node in nodes.iter().map(Node::addr) {
            let probe = load.history.process();
            scope.spawn(move || assert_refuses(probe, node, wait, "without quorum"));
        }
    });

    // Both back: service resumes on its own.
    etcd.restart(leader);
    etcd.restart(new_leader);
    etcd.wait_for_quorum();
    for node in &nodes {
        node.wait_ready(200);
    }
    load.release();
    load.wait_answered(load.answered() + 50);
    let history = load.finish();

    let last = final_read(&history, &nodes[2]);
    assert_eq!(etcd.index(&name), last);
    assert_linearizable(&history);
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn a_step_whose_etcd_member_stops_mid_call_is_resolved_once() {
    let _serial = one_at_a_time();
    let mut etcd = EtcdCluster::start(3);
    let name = cluster_name("sigstop");
    // A follower, so that no election muddles the picture: node 0 sends to
    // it first, the other nodes to the other members.
    let leader = etcd.leader();
    let stopped = (leader + 1) % 3;
    let others = [(stopped + 1) % 3, (stopped + 2) % 3];
    let mut nodes = vec![Node::start(
        "n0",
        &etcd.endpoints_from(stopped),
        &name,
        &FAST_FAILURE,
    )];
    for (k, member) in others.iter().enumerate() {
        let endpoints = etcd.endpoints_from(*member);
        nodes.push(Node::start(
            &format!("n{}", k + 1),
            &endpoints,
            &name,
            &FAST_FAILURE,
        ));
    }
    let mut load = Load::new(&nodes);
    load.spawn(8, NEXT_ONLY, None);
    load.wait_answered(100);
    let lost_before = nodes[0].fibd().metric("fibd_etcd_unknown_outcomes_total");

    // Node 0 always has a call to that member in flight or about to go.
    etcd.stop(stopped);
    let mut probe = load.history.process();
    let mut client = client_timeout(nodes[0].fibd().connect()).expect("client");
    for _ in 0..5 {
        let outcome = probe.call(Op::Next, || perform(&mut client, Op::Next).0);
        // Resolved: made (200) or certainly not made (503 store_unavailable,
        // which with a minority down is the starvation the test below shows).
        assert!(
            matches!(
                outcome,
                Outcome::Returned(Ret::Index(_)) | Outcome::NotApplied
            ),
            "/next on node 0 with its first member stopped: {outcome:?}"
        );
    }
    load.wait_answered(load.answered() + 100);
    let lost = nodes[0].fibd().metric("fibd_etcd_unknown_outcomes_total") - lost_before;
    assert!(
        lost >= 1.0,
        "node 0 lost no answer: the member stopped between calls"
    );
    etcd.resume(stopped);
    load.wait_answered(load.answered() + 50);
    let history = load.finish();

    assert_eq!(unknown_outcomes(&history), 0, "an outcome was left unknown");
    let acked = acknowledged_nexts(&history);
    assert_distinct(&acked);
    // Every step made was answered, and every step refused was not made:
    // none lost, none made twice, even after the stopped member came back
    // with whatever it had been sent.
    let index = etcd.index(&name);
    assert_eq!(acked, (1..=index).collect::<Vec<u64>>());
    assert_eq!(final_read(&history, &nodes[0]), index);
    assert_linearizable(&history);
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn with_a_member_down_nodes_on_the_follower_are_not_starved_by_one_on_the_leader() {
    // Found by the SIGSTOP test when every node raced for the key: with one
    // member (a minority) down, a node that sends to etcd's leader answered
    // first, and nodes on the follower lost 64 races in a row and answered
    // 503. With one elected leader there is no race left, and this stays
    // the check that the README's promise holds: 200 with a minority down,
    // whichever member each node tries first.
    let _serial = one_at_a_time();
    let mut etcd = EtcdCluster::start(3);
    let name = cluster_name("fair");
    let leader = etcd.leader();
    let (down, follower) = ((leader + 1) % 3, (leader + 2) % 3);
    etcd.kill9(down);
    let nodes = vec![
        Node::start("n0", &etcd.endpoints_from(follower), &name, &[]),
        Node::start("n1", &etcd.endpoints_from(follower), &name, &[]),
        Node::start("n2", &etcd.endpoints_from(leader), &name, &[]),
    ];
    let mut load = Load::new(&nodes);
    load.spawn(9, NEXT_ONLY, Some(100));
    let history = load.join();
    let conflicts: Vec<f64> = nodes
        .iter()
        .map(|n| n.fibd().metric("fibd_etcd_txn_conflicts_total"))
        .collect();
    eprintln!(
        "conflicts per node {conflicts:?}; {} steps refused",
        refused(&history)
    );
    assert_eq!(
        refused(&history),
        0,
        "steps refused (lost races) while etcd answered every call"
    );
    assert_eq!(etcd.index(&name), 900);
}

/// Three nodes, each under a uid of its own so a partition can cut any
/// one of them alone; node k tries etcd member k first.
fn start_isolable_nodes(etcd: &EtcdCluster, cluster: &str, extra: &[&str]) -> Vec<(u32, Node)> {
    (0..3)
        .map(|k| {
            let uid = partition::test_uid();
            let endpoints = etcd.endpoints_from(k);
            (
                uid,
                Node::start_as(Some(uid), &format!("n{k}"), &endpoints, cluster, extra),
            )
        })
        .collect()
}

/// A fresh etcd cluster, three nodes under uids of their own (short etcd
/// deadlines, a request waits `wait`), and eight clients that have had 50
/// steps answered.
fn isolable_under_load(
    test: &str,
    wait: Duration,
) -> (EtcdCluster, String, Vec<u32>, Vec<Node>, Load) {
    let etcd = EtcdCluster::start(3);
    let name = cluster_name(test);
    let wait_ms = wait.as_millis().to_string();
    let flags = [
        "--etcd-timeout-ms",
        "500",
        "--etcd-wait-ms",
        wait_ms.as_str(),
    ];
    let (uids, nodes): (Vec<u32>, Vec<Node>) = start_isolable_nodes(&etcd, &name, &flags)
        .into_iter()
        .unzip();
    let mut load = Load::new(&nodes);
    load.spawn(8, NEXT_ONLY, None);
    load.wait_answered(50);
    (etcd, name, uids, nodes, load)
}

/// Steps through `node`, recorded as `probe`, until one is acknowledged.
fn wait_for_a_step(probe: &mut Process, node: &Node) {
    wait_until(&format!("a step acknowledged on {}", node.name), || {
        let mut client = client_timeout(Client::connect(node.addr()))?;
        let outcome = probe.call(Op::Next, || perform(&mut client, Op::Next).0);
        matches!(outcome, Outcome::Returned(Ret::Index(_))).then_some(())
    });
}

/// After a fault and its end: a last read through `node` is etcd's index,
/// no index was given twice, and the history is linearizable.
fn assert_nothing_lost_or_doubled(
    history: &Arc<History>,
    etcd: &EtcdCluster,
    name: &str,
    node: &Node,
) {
    let last = final_read(history, node);
    assert_eq!(etcd.index(name), last);
    assert_distinct(&acknowledged_nexts(history));
    assert_linearizable(history);
}

#[test]
#[ignore = "needs etcd and iptables, as root: run scripts/test"]
fn the_leader_cut_off_from_etcd_stops_acknowledging_and_another_node_takes_over() {
    let _serial = one_at_a_time();
    let wait = Duration::from_secs(3);
    let (etcd, name, uids, nodes, load) = isolable_under_load("partition", wait);

    // Every packet the leader sends to any etcd member is dropped: its
    // calls hang as across a cut cable, neither refused nor reset. Client
    // `leader` (on it) keeps stepping into it; the others wait it out, so
    // the history stays short enough to check.
    let leader = leader_of(&nodes);
    load.hold(0);
    let cut = Partition::new();
    let cut_at = Instant::now();
    for member in 0..etcd.len() {
        cut.cut(uids[leader], etcd.client_port(member));
    }
    // Within its lease (3 s) and a step's wait it stops acknowledging.
    assert_refuses(
        load.history.process(),
        nodes[leader].addr(),
        wait + Duration::from_secs(3),
        "the leader cut off from etcd",
    );
    // Another node takes over, and the nodes that reach etcd acknowledge.
    let successor = new_leader(&nodes, leader);
    eprintln!("n{successor} leads {:?} after the cut", cut_at.elapsed());
    for (_, node) in nodes.iter().enumerate().filter(|&(k, _)| k != leader) {
        wait_for_a_step(&mut load.history.process(), node);
    }

    // Healed: the old leader follows the new one and serves again, and
    // nothing was lost or doubled.
    cut.heal();
    nodes[leader].wait_ready(200);
    load.release();
    load.wait_answered(load.answered() + 50);
    let history = load.finish();
    drop(cut);
    assert_nothing_lost_or_doubled(&history, &etcd, &name, &nodes[leader]);
}

#[test]
#[ignore = "needs etcd and iptables, as root: run scripts/test"]
fn a_follower_cut_off_from_the_leader_never_writes_the_index_and_serves_once_healed() {
    let _serial = one_at_a_time();
    let wait = Duration::from_secs(2);
    let (etcd, name, uids, nodes, load) = isolable_under_load("cut-follower", wait);

    // The follower's packets to the leader's port are dropped; etcd it
    // still reaches. Its relays hang; it fences them in etcd and never
    // writes the index itself.
    let leader = leader_of(&nodes);
    let follower = (leader + 1) % 3;
    load.hold(0);
    let cut = Partition::new();
    cut.cut(uids[follower], nodes[leader].addr().port());
    let txns = |node: &Node| {
        node.fibd()
            .metric(r#"fibd_etcd_calls_total{kind="txn",outcome="answered"}"#)
    };
    let mut probe = load.history.process();
    let mut client = client_timeout(Client::connect(nodes[follower].addr())).expect("client");
    for _ in 0..3 {
        let outcome = probe.call(Op::Next, || perform(&mut client, Op::Next).0);
        assert!(
            matches!(outcome, Outcome::NotApplied | Outcome::Unknown),
            "/next on a follower cut off from its leader: {outcome:?}"
        );
    }
    assert_eq!(
        txns(&nodes[follower]),
        0.0,
        "the cut follower wrote the index"
    );
    assert!(
        nodes[follower]
            .fibd()
            .metric("fibd_etcd_unknown_outcomes_total")
            > 0.0,
        "its lost relays were fenced"
    );
    // The leader and the third node go on.
    let third = (leader + 2) % 3;
    let mut other = client_timeout(Client::connect(nodes[third].addr())).expect("client");
    let step = probe.call(Op::Next, || perform(&mut other, Op::Next).0);
    assert!(matches!(step, Outcome::Returned(Ret::Index(_))), "{step:?}");

    // Healed: the follower's relays reach the leader again.
    cut.heal();
    wait_for_a_step(&mut probe, &nodes[follower]);
    load.release();
    load.wait_answered(load.answered() + 50);
    let history = load.finish();
    drop(cut);
    assert_eq!(txns(&nodes[follower]), 0.0, "a follower wrote the index");
    let last = final_read(&history, &nodes[follower]);
    assert_eq!(etcd.index(&name), last);
    assert_distinct(&acknowledged_nexts(&history));
    assert_linearizable(&history);
}

#[test]
#[ignore = "needs etcd and iptables, as root: run scripts/test"]
fn the_etcd_leader_cut_off_from_its_peers_is_replaced_and_nothing_is_lost() {
    let _serial = one_at_a_time();
    let mut etcd = EtcdCluster::start_isolable(3);
    let name = cluster_name("isolated-leader");
    // Steps wait long enough to outlast the election the cut causes.
    let wait_ms = Duration::from_secs(5).as_millis().to_string();
    let nodes = start_nodes(
        &etcd,
        &name,
        &["--etcd-timeout-ms", "500", "--etcd-wait-ms", &wait_ms],
    );
    let mut load = Load::new(&nodes);
    load.spawn(8, NEXT_ONLY, None);
    load.wait_answered(50);

    // etcd's leader keeps its clients but loses its peers: the other two
    // elect a new leader, and the old one, without a quorum, commits
    // nothing. Two clients keep stepping through it; six wait it out.
    load.hold(2);
    let old_leader = etcd.leader();
    let cut = Partition::new();
    etcd.isolate(old_leader, &cut);
    let new_leader = etcd.leader();
    assert_ne!(new_leader, old_leader, "the majority elected a new leader");
    // Every node, the one that tries the cut member first included, gets a
    // step acknowledged again: it turns to the members that have a quorum.
    for node in &nodes {
        wait_for_a_step(&mut load.history.process(), node);
    }

    // Healed: the old leader rejoins as a follower, and nothing was lost,
    // doubled or seen out of order.
    cut.heal();
    etcd.rejoin(old_leader);
    etcd.leader();
    load.release();
    load.wait_answered(load.answered() + 50);
    let history = load.finish();
    drop(cut);
    assert_nothing_lost_or_doubled(&history, &etcd, &name, &nodes[0]);
}

/// A primes task request on `node`: the response, once the tasks are
/// reachable there (a 503 means an election or a new leader loading them,
/// and must say when to retry).
fn task_call(
    node: &Node,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> support::Response {
    wait_until(
        &format!("{method} {path} answered on {}", node.name),
        || {
            let mut client = Client::try_connect(node.addr()).ok()?;
            let response = match body {
                Some(body) => {
                    client.send(&support::json_request_with(path, body, headers));
                    client.try_read_response(false)?
                }
                None => {
                    client.send(&support::request_bytes(method, path, headers));
                    client.try_read_response(method == "HEAD")?
                }
            };
            if response.status == 503 {
                assert!(
                    response.header("Retry-After").is_some(),
                    "{}",
                    response.text()
                );
                return None;
            }
            Some(response)
        },
    )
}

/// The task document once it is done, read on `node`.
fn done_task(node: &Node, id: &str) -> serde_json::Value {
    wait_until(&format!("task {id} done on {}", node.name), || {
        let path = format!("/v1/primes/tasks/{id}?wait=5");
        let response = task_call(node, "GET", &path, None, &[]);
        assert_eq!(response.status, 200, "{}", response.text());
        let doc: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        (doc["status"] == "done").then_some(doc)
    })
}

/// The first `n` primes end in `last`.
fn assert_primes(doc: &serde_json::Value, n: usize, last: u64) {
    let result = doc["result"].as_array().expect("a result");
    assert_eq!(result.len(), n);
    assert_eq!(result.last().and_then(|p| p.as_u64()), Some(last));
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn primes_tasks_are_the_clusters_and_outlive_the_nodes_that_took_them() {
    let _serial = one_at_a_time();
    let etcd = EtcdCluster::start(3);
    let name = cluster_name("tasks");
    let receiver = support::receiver::Receiver::start();
    let secret = support::etcd::secret_file();
    let extra = [
        "--rate-limit",
        "0",
        "--callback-allow",
        "127.0.0.1",
        "--callback-secret-file",
        secret,
    ];
    let mut nodes = start_nodes(&etcd, &name, &extra);
    let leader = leader_of(&nodes);
    let (a, b) = ((leader + 1) % 3, (leader + 2) % 3);

    // Accepted on a follower, read on the other follower and on the leader.
    let hook = receiver.url("/hook");
    let body = format!(r#"{{"n": 1000, "callback_url": "{hook}"}}"#);
    let key = [("Idempotency-Key", "order-1")];
    let posted = task_call(&nodes[a], "POST", "/v1/primes/tasks", Some(&body), &key);
    assert_eq!(posted.status, 202, "{}", posted.text());
    let doc: serde_json::Value = serde_json::from_slice(&posted.body).unwrap();
    let small = doc["request_id"].as_str().unwrap().to_owned();
    let location = format!("/v1/primes/tasks/{small}");
    assert_eq!(posted.header("Location"), Some(location.as_str()));
    // Node b never saw the task nor sieved its n: it waits for its own
    // table, then answers with the result from it.
    let first = nodes[b].fibd().get(&format!("{location}?wait=10"));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_primes(&serde_json::from_slice(&first.body).unwrap(), 1000, 7919);
    for k in [b, leader, a] {
        let doc = done_task(&nodes[k], &small);
        assert_primes(&doc, 1000, 7919);
    }

    // The Idempotency-Key holds across nodes: the same body on another node
    // answers the same task; another body under it is refused.
    let replay = task_call(&nodes[b], "POST", "/v1/primes/tasks", Some(&body), &key);
    assert_eq!(replay.status, 202, "{}", replay.text());
    assert_eq!(replay.header("Idempotent-Replayed"), Some("true"));
    assert!(replay.text().contains(&small), "{}", replay.text());
    let other = format!(r#"{{"n": 1001, "callback_url": "{hook}"}}"#);
    let reused = task_call(&nodes[leader], "POST", "/tasks", Some(&other), &key);
    assert_eq!(reused.status, 422, "{}", reused.text());
    // The leader's internal endpoint wants the cluster secret, a body it
    // reads, and to be the leader.
    let cluster_secret = std::fs::read_to_string(secret).unwrap();
    let internal = |k: usize, secret: Option<&str>, body: &str| {
        let headers: Vec<(&str, &str)> = secret
            .map(|s| ("Fibd-Cluster-Secret", s))
            .into_iter()
            .collect();
        let mut client = nodes[k].fibd().connect();
        client.send(&support::json_request_with(
            "/internal/v1/tasks",
            body,
            &headers,
        ));
        client.read_response(false).status
    };
    let get = format!(r#"{{"op":"get","id":"{small}","wait":0}}"#);
    assert_eq!(internal(leader, None, &get), 401);
    assert_eq!(
        internal(leader, Some(cluster_secret.trim()), r#"{"op":"shred"}"#),
        400
    );
    assert_eq!(internal(a, Some(cluster_secret.trim()), &get), 421);
    assert_eq!(internal(leader, Some(cluster_secret.trim()), &get), 200);
    // A forwarded DELETE is refused as the leader would refuse it.
    let cancel = task_call(&nodes[b], "DELETE", &location, None, &[]);
    assert_eq!(cancel.status, 409, "{}", cancel.text());
    assert!(
        cancel.text().contains("\"task_status\": \"done\""),
        "{}",
        cancel.text()
    );

    // One node delivers the callback: the leader, which holds the task.
    let delivered = receiver.wait_for(1, SETTLE_TIMEOUT);
    assert!(delivered[0].body_text().contains(&small));
    let doc = wait_until("the callback delivered", || {
        let doc = done_task(&nodes[b], &small);
        (doc["callback"]["state"] == "delivered").then_some(doc)
    });
    assert_eq!(doc["callback"]["attempts"], 1, "{doc}");
    let delivered_by = |k: usize| {
        nodes[k]
            .fibd()
            .metric("fibd_primes_callbacks_total{outcome=\"delivered\"}")
    };
    assert_eq!(
        (delivered_by(leader), delivered_by(a), delivered_by(b)),
        (1.0, 0.0, 0.0)
    );

    // A large task taken by follower a; then a, and the leader after it,
    // are killed and their data directories deleted. The node left leads,
    // loads every task from etcd, and answers and completes both.
    let posted = task_call(
        &nodes[a],
        "POST",
        "/v1/primes/tasks",
        Some(r#"{"n": 1000000}"#),
        &[],
    );
    assert_eq!(posted.status, 202, "{}", posted.text());
    let doc: serde_json::Value = serde_json::from_slice(&posted.body).unwrap();
    let large = doc["request_id"].as_str().unwrap().to_owned();
    for k in [a, leader] {
        nodes[k].kill9();
        std::fs::remove_dir_all(nodes[k].data.path()).expect("delete the data directory");
    }
    assert_eq!(leader_of(&nodes), b);
    assert_primes(&done_task(&nodes[b], &large), 1_000_000, 15_485_863);
    assert_primes(&done_task(&nodes[b], &small), 1000, 7919);
    // A node started again on an empty directory answers them too.
    nodes[a].restart();
    assert_primes(&done_task(&nodes[a], &large), 1_000_000, 15_485_863);
    assert_eq!(receiver.received().len(), 1, "delivered once, by one node");
}

#[test]
#[ignore = "needs etcd: run scripts/test"]
fn metrics_json_names_the_etcd_cluster_the_node_and_its_endpoints() {
    let _serial = one_at_a_time();
    let etcd = EtcdCluster::start(1);
    let name = cluster_name("watched");
    let node = Node::start("w0", &etcd.endpoints_from(0), &name, &[]);
    let doc: serde_json::Value =
        serde_json::from_str(&node.fibd().get("/metrics.json").text()).expect("JSON");
    let store = &doc["fibd"]["store"];
    assert_eq!(store["kind"], "etcd", "{store}");
    assert_eq!(store["cluster"], name.as_str(), "{store}");
    assert_eq!(store["node"], "w0", "{store}");
    let endpoints = store["endpoints"].as_array().expect("endpoints");
    let port = format!(":{}", etcd.client_port(0));
    assert!(
        endpoints.len() == 1 && endpoints[0].as_str().unwrap().contains(&port),
        "{store}"
    );
    assert_eq!(
        doc["fibd"]["listeners"][0]["addr"],
        node.addr().to_string().as_str()
    );
}
