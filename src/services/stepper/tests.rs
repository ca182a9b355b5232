//! The stepper on both stores: on LMDB through the ledger (commit outcomes
//! made by hand), on etcd through its calls (answers in the shapes etcd
//! 3.4's gateway gives, as `store::etcd::wire`'s tests have them): the
//! node campaigns first (a lease, then the leader key), leads or follows,
//! then reads the index and its writer key.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::*;
use crate::net::upstream::{CallError, Response, Target};
use crate::services::fib;
use crate::store::etcd::{ClusterConfig, EtcdIndex, ReadMode};
use crate::store::ledger::BatchId;
use crate::store::ledger::{CommitOutcome, Durable};
use crate::store::lmdb::StoreError;

fn digits(value: &Value) -> String {
    match value {
        Value::Small(v) => v.to_string(),
        Value::Big(d) => String::from_utf8(d.to_vec()).unwrap(),
    }
}

fn t(n: u64) -> Ticket {
    Ticket::for_tests(n)
}

/// A stepper with what it settled.
struct Harness {
    stepper: Stepper,
    ledger: Ledger,
    replies: Vec<(Ticket, StepReply)>,
    next_ticket: u64,
    now: Instant,
    /// The channel the last call came on: where its answer goes back (etcd).
    channel: Channel,
}

impl Harness {
    fn lmdb(recovered: u64, max_index: u64) -> Harness {
        Harness::on(
            Stepper::new(IndexStore::lmdb(), max_index, Some(recovered)),
            Instant::now(),
        )
    }

    fn on(stepper: Stepper, now: Instant) -> Harness {
        Harness {
            stepper,
            ledger: Ledger::new(),
            replies: Vec::new(),
            next_ticket: 0,
            now,
            channel: Channel::Index,
        }
    }

    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        t(self.next_ticket)
    }

    fn step(&mut self, step: Step) -> Ticket {
        let ticket = self.ticket();
        self.stepper.step(ticket, step);
        ticket
    }

    fn read(&mut self) -> Ticket {
        let ticket = self.ticket();
        self.stepper.read(ticket);
        ticket
    }

    fn submit(&mut self) {
        let replies = &mut self.replies;
        self.stepper
            .submit(&mut self.ledger, self.now, &mut |t, r| replies.push((t, r)));
    }

    /// The ledger commits what it took (LMDB).
    fn commit(&mut self, ok: bool) -> Option<u64> {
        let request = self.ledger.take()?;
        let outcome = CommitOutcome {
            batch: request.batch,
            result: if ok {
                Ok(Durable {
                    took: Duration::from_millis(1),
                    flushes: 1,
                })
            } else {
                Err(StoreError::InjectedFault("test"))
            },
        };
        let committed = self.ledger.on_outcome(outcome).unwrap();
        let replies = &mut self.replies;
        self.stepper
            .on_commit(&committed, &mut |t, r| replies.push((t, r)));
        request.index
    }

    fn take(&mut self) -> Vec<(Ticket, StepReply)> {
        std::mem::take(&mut self.replies)
    }

    fn indices(&mut self) -> Vec<u64> {
        self.take().iter().map(|(_, r)| index(r)).collect()
    }

    // --- etcd ---

    /// Node n1 of cluster "t" at [`NODE_URL`], before any call.
    fn etcd(endpoints: usize) -> Harness {
        let now = Instant::now();
        let endpoints = (0..endpoints)
            .map(|i| Target::resolve(&format!("http://127.0.0.1:{}", 2379 + i)).unwrap())
            .collect();
        let config = ClusterConfig {
            endpoints,
            name: "t".into(),
            node: "n1".into(),
            url: Some(NODE_URL.into()),
            secret: Secret::new(SECRET).unwrap(),
            lease_ttl: Duration::from_secs(3),
            reads: ReadMode::Linearizable,
            call_timeout: Duration::from_secs(1),
            wait: Duration::from_secs(3),
        };
        let etcd = EtcdIndex::new(config, NODE_URL, 0xab, now);
        Harness::on(
            Stepper::new(IndexStore::Etcd(Box::new(etcd)), 100, None),
            now,
        )
    }

    /// A node that won the election (term: create_revision 9, lease 77) and
    /// read index `at` (revision `rev`) and its fence [`FENCE`].
    fn leader(at: u64, rev: u64) -> Harness {
        let mut h = Harness::etcd(3);
        h.elect(WON);
        h.first_read(at, rev);
        assert!(h.stepper.is_ready(h.now));
        assert!(h.stepper.takes_relays(h.now));
        h
    }

    /// A node that lost the election to n2 at [`OTHER_URL`], then read.
    fn follower(at: u64, rev: u64) -> Harness {
        let mut h = Harness::etcd(3);
        h.elect(&held("n2", OTHER_URL, 5, 55));
        h.first_read(at, rev);
        assert!(h.stepper.is_ready(h.now));
        assert!(!h.stepper.takes_relays(h.now));
        h
    }

    /// A lease, then a campaign answered `campaign`.
    fn elect(&mut self, campaign: &str) {
        let grant = self.call().expect("a lease grant");
        assert_eq!((grant.channel, kind(&grant)), (Channel::Election, "grant"));
        self.answer(200, GRANT);
        let call = self.call().expect("a campaign");
        assert_eq!((call.channel, kind(&call)), (Channel::Election, "campaign"));
        let body = body(&call);
        assert_eq!(body["compare"][0]["key"], B64.encode("/fibd/t/leader"));
        assert_eq!(
            decode(&body["success"][0]["request_put"]["value"]),
            format!("n1 {NODE_URL}")
        );
        assert_eq!(body["success"][0]["request_put"]["lease"], "77");
        self.answer(200, campaign);
    }

    /// The first read: the index and this node's writer key.
    fn first_read(&mut self, at: u64, rev: u64) {
        let call = self.call().expect("the first read");
        assert_eq!((call.channel, kind(&call)), (Channel::Index, "first read"));
        self.answer(200, &first_read(at, rev));
    }

    /// Another node's steps, relayed to this one.
    fn relay(&mut self, node: &str, tag: &str, fence: u64, steps: &[Step]) -> Ticket {
        let ticket = self.ticket();
        let relay = Relay {
            node: node.into(),
            tag: tag.into(),
            fence,
            steps: steps.to_vec(),
        };
        self.stepper.relay(ticket, relay);
        ticket
    }

    /// Lets the linger after an answered batch run out.
    fn linger_out(&mut self) {
        self.now += Duration::from_millis(1);
    }

    /// Submits what collected and takes the store's next call.
    fn call(&mut self) -> Option<StoreCall> {
        self.submit();
        let replies = &mut self.replies;
        let call = self
            .stepper
            .next_call(self.now, &mut |t, r| replies.push((t, r)))?;
        self.channel = call.channel;
        Some(call)
    }

    /// Answers the last call.
    fn answer(&mut self, status: u16, body: &str) {
        self.answer_on(self.channel, status, body);
    }

    fn answer_on(&mut self, channel: Channel, status: u16, body: &str) {
        let response = Response {
            status,
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        };
        self.channel = channel;
        self.done(Ok(response));
    }

    /// The last call's outcome.
    fn done(&mut self, result: Result<Response, CallError>) {
        let replies = &mut self.replies;
        self.stepper
            .call_done(self.channel, result, self.now, &mut |t, r| {
                replies.push((t, r))
            });
    }

    /// The last call could not be handed to the outbound client.
    fn not_sent(&mut self) {
        let replies = &mut self.replies;
        self.stepper
            .call_not_sent(self.channel, self.now, &mut |t, r| replies.push((t, r)));
    }

    fn stats(&self) -> EtcdStats {
        self.stepper.etcd_stats(self.now).unwrap()
    }
}

fn index(reply: &StepReply) -> u64 {
    match reply {
        StepReply::Index { index, .. } => *index,
        other => panic!("not an index: {other:?}"),
    }
}

// --- LMDB ---

#[test]
fn steps_are_answered_once_their_batch_commits() {
    let mut h = Harness::lmdb(0, 100);
    let a = h.step(Step::Next);
    let b = h.step(Step::Next);
    assert_eq!(
        h.stepper.current_now(false).unwrap().index,
        0,
        "reads show durable state only"
    );
    h.submit();
    assert!(h.take().is_empty(), "nothing before the commit");
    assert_eq!(h.commit(true), Some(2), "one transaction for both");
    let got: Vec<(Ticket, u64)> = h.take().iter().map(|(t, r)| (*t, index(r))).collect();
    assert_eq!(got, [(a, 1), (b, 2)]);
    let now = h.stepper.current_now(false).unwrap();
    assert_eq!((now.index, digits(&now.value).as_str()), (2, "1"));
    assert_eq!(h.stepper.pending_index(), 2);
}

#[test]
fn one_batch_is_in_flight_and_the_next_collects_meanwhile() {
    let mut h = Harness::lmdb(0, 100);
    h.step(Step::Next);
    h.submit();
    let c = h.step(Step::Next);
    h.submit();
    assert_eq!(h.stepper.pending_index(), 2);
    assert_eq!(h.commit(true), Some(1));
    assert_eq!(h.indices(), [1]);
    h.submit();
    assert_eq!(h.commit(true), Some(2));
    assert_eq!(
        h.take()[0],
        (
            c,
            StepReply::Index {
                index: 2,
                value: Value::Small(1)
            }
        )
    );
}

#[test]
fn previous_at_zero_writes_nothing() {
    let mut h = Harness::lmdb(0, 100);
    h.step(Step::Previous);
    h.submit();
    assert_eq!(h.indices(), [0], "answered at once");
    assert!(h.ledger.take().is_none(), "no commit");
}

#[test]
fn previous_at_zero_behind_pending_steps_waits_for_them() {
    let mut h = Harness::lmdb(1, 100);
    h.step(Step::Previous);
    h.submit();
    h.step(Step::Previous);
    h.submit();
    assert!(
        h.take().is_empty(),
        "the second waits for the first's commit"
    );
    h.commit(true);
    h.submit();
    assert_eq!(h.indices(), [0, 0]);
}

#[test]
fn next_at_the_ceiling_is_refused_and_moves_nothing() {
    let mut h = Harness::lmdb(5, 5);
    let a = h.step(Step::Next);
    h.submit();
    assert_eq!(h.take(), [(a, StepReply::AtCeiling { max_index: 5 })]);
    assert_eq!(h.stepper.pending_index(), 5);
    assert!(h.ledger.take().is_none());
}

#[test]
fn a_failed_commit_withdraws_its_steps_and_the_index_stays() {
    let mut h = Harness::lmdb(10, 100);
    let a = h.step(Step::Next);
    h.submit();
    let b = h.step(Step::Next);
    h.commit(false);
    assert_eq!(h.take(), [(a, StepReply::Withdrawn)]);
    assert_eq!(h.stepper.committed_index(), 10);
    // The step collected meanwhile was applied on nothing yet: it goes next,
    // on the index that is durable.
    h.submit();
    assert_eq!(h.commit(true), Some(11));
    let got = h.take();
    assert_eq!(got[0].0, b);
    assert_eq!(
        digits(&match &got[0].1 {
            StepReply::Index { value, .. } => value.clone(),
            other => panic!("{other:?}"),
        }),
        "89"
    );
}

#[test]
fn own_steps_are_visible_to_a_read_behind_them() {
    let mut h = Harness::lmdb(0, 100);
    h.step(Step::Next);
    assert!(h.stepper.current_now(true).is_none(), "it must wait");
    let r = h.read();
    h.step(Step::Next);
    let r2 = h.read();
    h.submit();
    h.commit(true);
    let got = h.take();
    let reads: Vec<(Ticket, u64)> = got
        .iter()
        .filter(|(t, _)| *t == r || *t == r2)
        .map(|(t, reply)| (*t, index(reply)))
        .collect();
    assert_eq!(reads, [(r, 1), (r2, 2)], "each read at its place");
}

#[test]
fn a_step_whose_client_left_before_its_batch_was_taken_never_happens() {
    let mut h = Harness::lmdb(0, 100);
    let gone = h.step(Step::Next);
    let kept = h.step(Step::Next);
    h.stepper.abandon(gone);
    h.submit();
    assert_eq!(h.commit(true), Some(1));
    assert_eq!(h.take()[0].0, kept);
    assert!(h.stepper.is_settled());
}

#[test]
fn values_past_u128_are_exact_and_shared() {
    let mut h = Harness::lmdb(185, 1000);
    for expected in 186..=200 {
        h.step(Step::Next);
        h.submit();
        h.commit(true);
        let got = h.take();
        let StepReply::Index { index, value } = &got[0].1 else {
            panic!("{got:?}")
        };
        assert_eq!(*index, expected);
        assert_eq!(digits(value), fib::decimal(expected));
        assert_eq!(value.decimal_len(), fib::decimal(expected).len());
    }
    for expected in (180..200).rev() {
        h.step(Step::Previous);
        h.submit();
        h.commit(true);
        let StepReply::Index { value, .. } = &h.take()[0].1 else {
            panic!()
        };
        assert_eq!(digits(value), fib::decimal(expected));
    }
}

#[test]
fn batch_ids_of_the_ledger_are_not_the_steppers_business() {
    // The ledger numbers its batches; the stepper's ride them unseen.
    let mut h = Harness::lmdb(0, 10);
    assert_eq!(h.ledger.join(), BatchId::for_tests(1));
    h.step(Step::Next);
    h.submit();
    let request = h.ledger.take().unwrap();
    assert_eq!(
        (request.batch, request.index),
        (BatchId::for_tests(1), Some(1))
    );
}
// --- etcd ---

/// Where this node (n1) and the other one (n2) take relays.
const NODE_URL: &str = "http://127.0.0.1:8081";
const OTHER_URL: &str = "http://127.0.0.1:8082";
const SECRET: &[u8] = b"0123456789abcdef";
const GRANT: &str = r#"{"header":{"revision":"2"},"ID":"77","TTL":"3"}"#;
/// The campaign won: the leader key created at revision 9, under lease 77.
const WON: &str = r#"{"header":{"revision":"9"},"succeeded":true}"#;
const KEEPALIVE: &str = r#"{"result":{"ID":"77","TTL":"3"}}"#;
/// n1's writer key's mod_revision at the first read: its fence.
const FENCE: u64 = 4;

use crate::store::etcd::wire::fixtures::{kv, ranges};

fn index_kv(index: u64, rev: u64) -> String {
    kv("/fibd/t/index", &index.to_string(), 2, rev, 0)
}

fn leader_kv(node: &str, url: &str, create: u64, lease: i64) -> String {
    kv(
        "/fibd/t/leader",
        &format!("{node} {url}"),
        create,
        create,
        lease,
    )
}

/// The leader key of the term [`Harness::leader`] won.
fn own_leader_kv() -> String {
    leader_kv("n1", NODE_URL, 9, 77)
}

fn writer_kv(node: &str, value: &str, rev: u64) -> String {
    kv(&format!("/fibd/t/writers/{node}"), value, 3, rev, 0)
}

/// A campaign lost to `node`.
fn held(node: &str, url: &str, create: u64, lease: i64) -> String {
    ranges(&[Some(leader_kv(node, url, create, lease))])
}

/// A range of the index (reads-only batches).
fn range(index: u64, rev: u64) -> String {
    format!(
        r#"{{"header":{{"revision":"{rev}"}},"kvs":[{}],"count":"1"}}"#,
        index_kv(index, rev)
    )
}

/// The first read: the index, and n1's writer key at [`FENCE`].
fn first_read(index: u64, rev: u64) -> String {
    ranges(&[
        Some(index_kv(index, rev)),
        Some(writer_kv("n1", "00000000000000aa-7 3", FENCE)),
    ])
}

fn committed(rev: u64) -> String {
    format!(
        r#"{{"header":{{"revision":"{rev}"}},"succeeded":true,"responses":[{{"response_put":{{}}}},{{"response_put":{{}}}}]}}"#
    )
}

/// A step transaction refused: the index, the leader key, and each writer
/// key's mod_revision (keys only; 0: absent), n1's first.
fn refused(index: u64, rev: u64, leader: Option<String>, fences: &[(&str, u64)]) -> String {
    let mut kvs = vec![Some(index_kv(index, rev)), leader];
    for &(node, fence) in fences {
        kvs.push((fence != 0).then(|| {
            let key = B64.encode(format!("/fibd/t/writers/{node}"));
            format!(
                r#"{{"key":"{key}","create_revision":"3","mod_revision":"{fence}","version":"2"}}"#
            )
        }));
    }
    ranges(&kvs)
}

/// A fence call that rewrote n1's writer key at revision `fence`.
fn fenced(fence: u64, index: u64, rev: u64) -> String {
    format!(
        r#"{{"header":{{"revision":"{fence}"}},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"{fence}"}}}}}},{{"response_range":{{"kvs":[{}],"count":"1"}}}}]}}"#,
        index_kv(index, rev)
    )
}

/// A fence call that found n1's writer key moved: it holds `writer` now.
fn fence_moved(index: u64, rev: u64, writer: &str, writer_rev: u64) -> String {
    ranges(&[
        Some(index_kv(index, rev)),
        Some(writer_kv("n1", writer, writer_rev)),
    ])
}

/// The leader's answer to a relay.
fn relay_answer(base: u64, then: u64, revision: u64) -> String {
    format!(r#"{{"base":"{base}","then":"{then}","revision":"{revision}"}}"#)
}

fn decode(value: &serde_json::Value) -> String {
    String::from_utf8(B64.decode(value.as_str().unwrap()).unwrap()).unwrap()
}

/// The request as it goes on the wire: `Outbound` shows its bytes to other
/// modules only through Debug (`bytes: [80, 79, ...]`).
fn wire(call: &StoreCall) -> String {
    let debug = format!("{:?}", call.request);
    let start = debug.find("bytes: [").expect("Outbound's bytes") + "bytes: [".len();
    let end = start + debug[start..].find(']').unwrap();
    let bytes: Vec<u8> = debug[start..end]
        .split(", ")
        .map(|b| b.parse().unwrap())
        .collect();
    String::from_utf8(bytes).unwrap()
}

fn path(call: &StoreCall) -> String {
    let wire = wire(call);
    let line = wire.lines().next().unwrap();
    let mut parts = line.split(' ');
    assert_eq!(parts.next(), Some("POST"), "{line}");
    parts.next().unwrap().to_owned()
}

fn header(call: &StoreCall, name: &str) -> Option<String> {
    let wire = wire(call);
    let head = wire.split("\r\n\r\n").next().unwrap().to_owned();
    head.lines().skip(1).find_map(|line| {
        let (field, value) = line.split_once(": ")?;
        field.eq_ignore_ascii_case(name).then(|| value.to_owned())
    })
}

fn body(call: &StoreCall) -> serde_json::Value {
    serde_json::from_slice(call.request.body()).unwrap()
}

/// What a call is: "grant", "keepalive", "campaign", "first read" (a txn
/// without a compare), "range", "txn" (a leader's step transaction),
/// "fence" or "relay".
fn kind(call: &StoreCall) -> &'static str {
    match path(call).as_str() {
        "/v3/lease/grant" => "grant",
        "/v3/lease/keepalive" => "keepalive",
        "/v3/lease/revoke" => "revoke",
        "/v3/kv/range" => "range",
        "/internal/v1/steps" => "relay",
        "/v3/kv/txn" => {
            let body = body(call);
            let first = &body["compare"][0];
            match first["target"].as_str() {
                None => "first read",
                Some("CREATE") if first["create_revision"] == "0" => "campaign",
                Some("CREATE") => "txn",
                Some("MOD") if decode(&first["key"]) == "/fibd/t/writers/n1" => "fence",
                Some(_) => "an unknown txn",
            }
        }
        _ => "an unknown call",
    }
}

/// A leader's step transaction, as sent.
#[derive(Debug)]
struct Txn {
    /// The leader key's create_revision and lease it compares.
    term: (String, String),
    /// The index's mod_revision it compares.
    expected: String,
    /// The index it puts.
    put: u64,
    /// Per writer key, n1's first: the node, the fence compared and the
    /// value put ("<tag> <base>").
    writers: Vec<(String, String, String)>,
    /// The ranges read back when refused.
    failure: usize,
}

impl Txn {
    fn tag(&self) -> &str {
        self.writers[0].2.split_once(' ').unwrap().0
    }
}

fn txn(call: &StoreCall) -> Txn {
    assert_eq!((call.channel, kind(call)), (Channel::Index, "txn"));
    let body = body(call);
    let compare = body["compare"].as_array().unwrap();
    let success = body["success"].as_array().unwrap();
    assert_eq!(compare[0]["key"], B64.encode("/fibd/t/leader"));
    assert_eq!(
        (&compare[1]["target"], &compare[1]["key"]),
        (&"LEASE".into(), &B64.encode("/fibd/t/leader").into())
    );
    assert_eq!(compare[2]["target"], "MOD");
    assert_eq!(compare[2]["key"], B64.encode("/fibd/t/index"));
    assert_eq!(
        success[0]["request_put"]["key"],
        B64.encode("/fibd/t/index")
    );
    assert_eq!(compare.len(), success.len() + 2, "a compare per writer put");
    let writers = compare[3..]
        .iter()
        .zip(&success[1..])
        .map(|(c, s)| {
            let key = decode(&c["key"]);
            assert_eq!(decode(&s["request_put"]["key"]), key);
            let node = key.strip_prefix("/fibd/t/writers/").unwrap().to_owned();
            let fence = c["mod_revision"].as_str().unwrap().to_owned();
            (node, fence, decode(&s["request_put"]["value"]))
        })
        .collect();
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_owned();
    Txn {
        term: (
            text(&compare[0]["create_revision"]),
            text(&compare[1]["lease"]),
        ),
        expected: text(&compare[2]["mod_revision"]),
        put: decode(&success[0]["request_put"]["value"]).parse().unwrap(),
        writers,
        failure: body["failure"].as_array().unwrap().len(),
    }
}

/// A fence call: the fence it compares and the mark it writes.
fn fence(call: &StoreCall) -> (String, String) {
    assert_eq!((call.channel, kind(call)), (Channel::Index, "fence"));
    let body = body(call);
    let put = &body["success"][0]["request_put"];
    assert_eq!(put["key"], B64.encode("/fibd/t/writers/n1"));
    let compared = body["compare"][0]["mod_revision"].as_str().unwrap();
    (compared.to_owned(), decode(&put["value"]))
}

/// A relay to n2: its body, once the request is checked.
fn relayed(call: &StoreCall) -> serde_json::Value {
    assert_eq!((call.channel, kind(call)), (Channel::Index, "relay"));
    assert_eq!(call.request.addr(), "127.0.0.1:8082".parse().unwrap());
    assert_eq!(
        header(call, "Fibd-Cluster-Secret").as_deref(),
        Some("0123456789abcdef")
    );
    body(call)
}

fn endpoint(call: &StoreCall, i: u16) -> bool {
    call.request.addr() == SocketAddr::from(([127, 0, 0, 1], 2379 + i))
}

#[test]
fn a_pass_of_steps_is_one_txn_and_replies_wait_for_its_commit() {
    let mut h = Harness::leader(5, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    h.step(Step::Previous);
    h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.put, sent.expected.as_str()), (7, "10"));
    assert_eq!(
        sent.writers,
        [("n1".into(), "4".into(), "00000000000000ab-1 5".into())]
    );
    assert!(h.call().is_none(), "one call in flight");
    assert!(h.take().is_empty(), "nothing before the commit");
    h.answer(200, &committed(11));
    assert_eq!(h.indices(), [6, 7, 6, 7]);
    assert_eq!(h.stepper.committed_index(), 7);
    h.read();
    h.linger_out();
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "range");
    h.answer(200, &range(7, 11));
    let StepReply::Index { value, .. } = &h.take()[0].1 else {
        panic!()
    };
    assert_eq!(value.decimal_len(), 2, "F(7) = 13");
    // The next transaction compares what the commit left: the index's
    // revision, and this node's writer key, rewritten in the same txn.
    h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.put, sent.expected.as_str()), (8, "11"));
    assert_eq!(sent.writers[0].1, "11");
}

#[test]
fn reads_of_one_pass_share_one_quorum_read_and_later_ones_wait_for_the_next() {
    let mut h = Harness::leader(3, 4);
    h.read();
    h.read();
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "range");
    assert_eq!(body(&call)["key"], B64.encode("/fibd/t/index"));
    assert_eq!(body(&call)["serializable"], false);
    h.read(); // arrived after the read left: not answered by it
    h.submit();
    h.answer(200, &range(4, 5));
    assert_eq!(h.indices(), [4, 4]);
    h.linger_out();
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "range");
    h.answer(200, &range(4, 5));
    assert_eq!(h.indices(), [4]);
}

#[test]
fn a_node_without_a_leader_is_not_ready_and_answers_go_to_their_channel() {
    let mut h = Harness::etcd(3);
    let grant = h.call().unwrap();
    assert_eq!((grant.channel, kind(&grant)), (Channel::Election, "grant"));
    // The first read goes beside the grant.
    let read = h.call().unwrap();
    assert_eq!((read.channel, kind(&read)), (Channel::Index, "first read"));
    h.answer_on(Channel::Index, 200, &first_read(5, 10));
    assert_eq!(h.stepper.committed_index(), 5);
    assert!(!h.stepper.is_ready(h.now), "no leader known yet");
    h.step(Step::Next);
    assert!(h.call().is_none(), "no step goes before a leader is known");
    h.answer_on(Channel::Election, 200, GRANT);
    let campaign = h.call().unwrap();
    assert_eq!(
        (campaign.channel, kind(&campaign)),
        (Channel::Election, "campaign")
    );
    h.answer(200, WON);
    assert!(h.stepper.is_ready(h.now));
    assert!(h.stats().leader);
    let sent = txn(&h.call().unwrap());
    assert_eq!(sent.put, 6);
    // A keep-alive goes beside the txn; each answer to its own channel.
    h.now += Duration::from_secs(1);
    let keepalive = h.call().unwrap();
    assert_eq!(
        (keepalive.channel, kind(&keepalive)),
        (Channel::Election, "keepalive")
    );
    h.answer_on(Channel::Index, 200, &committed(11));
    assert_eq!(h.indices(), [6]);
    h.answer_on(Channel::Election, 200, KEEPALIVE);
    let t0 = h.now - Duration::from_secs(1);
    assert!(
        h.stepper.takes_relays(t0 + Duration::from_millis(3_500)),
        "the keep-alive extended the lease past the grant's 3 s"
    );
}

#[test]
fn a_refused_txn_because_the_index_moved_applies_the_batch_again_on_the_new_index() {
    let mut h = Harness::leader(5, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    h.call().unwrap();
    h.answer(
        200,
        &refused(9, 12, Some(own_leader_kv()), &[("n1", FENCE)]),
    );
    assert!(h.take().is_empty());
    assert_eq!(h.stats().conflicts, 1);
    assert!(h.stepper.takes_relays(h.now), "it still leads");
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.put, sent.expected.as_str()), (11, "12"));
    assert_eq!(sent.tag(), "00000000000000ab-2", "a new tag per attempt");
    assert_eq!(sent.writers[0].2, "00000000000000ab-2 9");
    h.answer(200, &committed(13));
    assert_eq!(h.indices(), [10, 11]);
}

#[test]
fn a_lost_answer_is_fenced_and_an_applied_attempt_is_not_sent_again() {
    let mut h = Harness::leader(5, 10);
    h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    h.done(Err(CallError::Timeout));
    let call = h.call().unwrap();
    assert!(endpoint(&call, 1), "the next endpoint");
    let (compared, mark) = fence(&call);
    assert_eq!(compared, "4", "the fence the lost txn compared");
    assert_eq!(mark, "fence-00000000000000ab-2");
    assert!(h.call().is_none(), "nothing else while the fence runs");
    // It was applied, and another node's relay moved the index after it.
    h.answer(200, &fence_moved(8, 15, &format!("{} 5", sent.tag()), 14));
    assert_eq!(h.indices(), [6]);
    assert_eq!(h.stepper.committed_index(), 8);
    assert!(h.call().is_none(), "nothing left to send");
    assert_eq!(h.stats().unknown_outcomes, 1);
    // The next txn compares the writer key as the fence call found it.
    h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.put, sent.expected.as_str()), (9, "15"));
    assert_eq!(sent.writers[0].1, "14");
}

#[test]
fn a_lost_answer_that_was_not_applied_goes_again_under_a_new_tag() {
    let mut h = Harness::leader(5, 10);
    h.step(Step::Previous);
    h.call().unwrap();
    h.done(Err(CallError::Closed));
    let (compared, mark) = fence(&h.call().unwrap());
    assert_eq!(
        (compared.as_str(), mark.as_str()),
        ("4", "fence-00000000000000ab-2")
    );
    // The writer key was still at the fence: the lost txn can never apply.
    h.answer(200, &fenced(20, 5, 10));
    assert!(h.take().is_empty());
    let sent = txn(&h.call().unwrap());
    assert_eq!(
        (sent.tag(), sent.put, sent.expected.as_str()),
        ("00000000000000ab-3", 4, "10")
    );
    assert_eq!(sent.writers[0].1, "20", "the new fence");
    h.answer(200, &committed(21));
    assert_eq!(h.indices(), [4]);
    assert!(h.call().is_none());
}

#[test]
fn an_expired_step_is_unavailable_before_it_is_sent_and_unknown_after() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    assert_eq!(h.stepper.expire(a), Some(StepReply::Unavailable));
    let b = h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    assert_eq!(sent.put, 6, "the expired step is not in the batch");
    assert_eq!(h.stepper.expire(b), Some(StepReply::OutcomeUnknown));
    h.done(Err(CallError::Timeout));
    // Fenced, not applied: the batch has no live step left, so it is
    // dropped, which makes "unknown" true (it happened zero times).
    fence(&h.call().unwrap());
    h.answer(200, &fenced(20, 5, 10));
    assert!(h.take().is_empty());
    assert!(h.call().is_none());
    h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.put, sent.writers[0].1.as_str()), (6, "20"));
}

#[test]
fn a_step_that_expires_before_its_lost_attempt_is_fenced_is_unknown_and_not_sent_again() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    let b = h.step(Step::Next);
    let c = h.step(Step::Next);
    assert_eq!(txn(&h.call().unwrap()).put, 8);
    h.done(Err(CallError::Timeout));
    // The lost attempt may still apply: unknown, until the fence says.
    assert_eq!(h.stepper.expire(a), Some(StepReply::OutcomeUnknown));
    fence(&h.call().unwrap());
    assert_eq!(h.stepper.expire(b), Some(StepReply::OutcomeUnknown));
    h.answer(200, &fenced(20, 5, 10));
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.put, sent.expected.as_str()), (6, "10"), "c alone");
    h.answer(200, &committed(21));
    let got: Vec<(Ticket, u64)> = h.take().iter().map(|(t, r)| (*t, index(r))).collect();
    assert_eq!(got, [(c, 6)]);
}

#[test]
fn a_step_that_expires_between_attempts_no_attempt_can_apply_is_left_out() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    h.step(Step::Next);
    h.call().unwrap();
    h.answer(
        200,
        &refused(8, 12, Some(own_leader_kv()), &[("n1", FENCE)]),
    );
    assert_eq!(h.stepper.expire(a), Some(StepReply::Unavailable));
    let sent = txn(&h.call().unwrap());
    assert_eq!(
        (sent.put, sent.expected.as_str()),
        (9, "12"),
        "one step, not two"
    );
}

#[test]
fn a_txn_never_handed_to_the_client_goes_again_without_a_fence() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    h.step(Step::Next);
    assert_eq!(txn(&h.call().unwrap()).tag(), "00000000000000ab-1");
    h.not_sent();
    assert_eq!(
        h.stepper.expire(a),
        Some(StepReply::Unavailable),
        "it certainly did not happen"
    );
    let sent = txn(&h.call().unwrap());
    assert_eq!(
        (sent.tag(), sent.put, sent.expected.as_str()),
        ("00000000000000ab-2", 6, "10")
    );
    assert_eq!(h.stats().unknown_outcomes, 0);
}

#[test]
fn a_far_move_waits_for_a_jump_computed_off_the_loop() {
    let mut h = Harness::leader(5, 10);
    h.read();
    h.call().unwrap();
    h.answer(200, &range(90_000, 99));
    assert_eq!(h.stepper.wanted_jump(h.now), Some(90_000));
    assert!(h.take().is_empty());
    h.stepper.jump_started(true, h.now);
    h.step(Step::Next);
    assert!(h.call().is_none(), "nothing is sent during a jump");
    let replies = &mut h.replies;
    h.stepper
        .jumped(Cursor::at(90_000), &mut |t, r| replies.push((t, r)));
    let got = h.take();
    assert_eq!(index(&got[0].1), 90_000);
    let StepReply::Index { value, .. } = &got[0].1 else {
        panic!()
    };
    assert_eq!(value.decimal_len(), fib::decimal(90_000).len());
    assert_eq!(h.stepper.jumps(), 1);
    assert!(h.call().is_some(), "the step goes once the cursor is there");
}

#[test]
fn a_whole_round_of_failures_is_not_ready_and_backs_off() {
    let mut h = Harness::leader(5, 10);
    for i in 0..3 {
        h.read();
        let call = h.call().unwrap();
        assert!(endpoint(&call, i), "each endpoint in turn");
        h.done(Err(CallError::Connect(
            std::io::ErrorKind::ConnectionRefused,
        )));
    }
    assert!(!h.stepper.is_ready(h.now));
    assert!(h.call().is_none(), "backing off");
    let backoff = h.stepper.next_timer().unwrap();
    assert!(backoff > h.now);
    h.now = backoff;
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "range");
    h.answer(200, &range(5, 10));
    assert!(h.stepper.is_ready(h.now));
    assert_eq!(h.take().len(), 3, "every read waited and was answered");
}

#[test]
fn next_at_the_ceiling_is_refused_inside_the_batch() {
    let mut h = Harness::leader(99, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    h.step(Step::Previous);
    assert_eq!(txn(&h.call().unwrap()).put, 99);
    h.answer(200, &committed(11));
    let got = h.take();
    assert_eq!(index(&got[0].1), 100);
    assert_eq!(got[1].1, StepReply::AtCeiling { max_index: 100 });
    assert_eq!(index(&got[2].1), 99);
}

#[test]
fn an_error_status_or_garbage_leads_to_a_fence_call() {
    let mut h = Harness::leader(5, 10);
    h.step(Step::Next);
    h.call().unwrap();
    h.answer(503, r#"{"error":"etcdserver: request timed out"}"#);
    let call = h.call().unwrap();
    assert!(endpoint(&call, 1));
    assert_eq!(
        fence(&call),
        ("4".into(), "fence-00000000000000ab-2".into())
    );
    h.answer(200, "not json");
    let call = h.call().unwrap();
    assert!(endpoint(&call, 2));
    assert_eq!(
        fence(&call),
        ("4".into(), "fence-00000000000000ab-3".into()),
        "the failed fence is no answer: fenced again, on the same fence"
    );
    h.answer(200, &fenced(20, 5, 10));
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.tag(), sent.put), ("00000000000000ab-4", 6));
    h.answer(200, &committed(21));
    assert_eq!(h.indices(), [6]);
}

#[test]
fn a_leaders_txn_carries_its_term_and_a_refusal_naming_another_holder_deposes_it() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    assert_eq!(
        sent.term,
        ("9".into(), "77".into()),
        "CREATE and LEASE of its term"
    );
    assert_eq!(sent.failure, 3, "the index, the leader key, its writer key");
    // n2 took over (this node's lease ran out in etcd) and moved the index.
    let n2 = leader_kv("n2", OTHER_URL, 11, 55);
    h.answer(200, &refused(7, 12, Some(n2), &[("n1", FENCE)]));
    assert!(h.take().is_empty(), "not applied, not answered");
    assert_eq!(h.stepper.committed_index(), 7);
    assert!(!h.stepper.takes_relays(h.now));
    assert!(!h.stats().leader);
    assert!(h.stepper.is_ready(h.now), "it follows n2");
    let call = h.call().unwrap();
    assert_eq!(path(&call), "/internal/v1/steps");
    let relay = relayed(&call);
    assert_eq!(
        (&relay["node"], &relay["steps"], &relay["fence"]),
        (&"n1".into(), &"n".into(), &"4".into())
    );
    assert_eq!(relay["tag"], "00000000000000ab-2");
    h.answer(200, &relay_answer(7, 8, 13));
    assert_eq!(
        h.take(),
        [(
            a,
            StepReply::Index {
                index: 8,
                value: Value::Small(21)
            }
        )]
    );
}

#[test]
fn a_follower_relays_its_steps_and_renders_them_from_the_leaders_base() {
    let mut h = Harness::follower(5, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    h.step(Step::Previous);
    let call = h.call().unwrap();
    assert_eq!(
        relayed(&call),
        serde_json::json!({
            "node": "n1", "tag": "00000000000000ab-1", "fence": "4", "steps": "nnp"
        })
    );
    assert!(h.call().is_none(), "one call in flight");
    assert!(h.take().is_empty());
    // The leader applied them on 20 and stepped on to 25 in its batch.
    h.answer(200, &relay_answer(20, 25, 40));
    let got = h.take();
    assert_eq!(
        got.iter().map(|(_, r)| index(r)).collect::<Vec<_>>(),
        [21, 22, 21]
    );
    let StepReply::Index { value, .. } = &got[1].1 else {
        panic!()
    };
    assert_eq!(digits(value), fib::decimal(22));
    assert_eq!(h.stepper.committed_index(), 25, "it learns `then`");
    assert_eq!(h.stats().calls[2], [1, 0], "one relay answered");
    // Its next relay carries the fence the leader's txn left.
    h.step(Step::Next);
    h.linger_out();
    let relay = relayed(&h.call().unwrap());
    assert_eq!(
        (&relay["fence"], &relay["steps"]),
        (&"40".into(), &"n".into())
    );
    h.answer(200, &relay_answer(25, 26, 41));
    assert_eq!(h.indices(), [26]);
    // Reads go to etcd, not to the leader.
    h.read();
    let call = h.call().unwrap();
    assert!(endpoint(&call, 0));
    assert_eq!(kind(&call), "range");
    h.answer(200, &range(26, 41));
    assert_eq!(h.indices(), [26]);
}

#[test]
fn a_follower_whose_relay_failed_fences_and_relays_again_under_a_new_tag() {
    let mut h = Harness::follower(5, 10);
    let a = h.step(Step::Next);
    h.step(Step::Next);
    assert_eq!(relayed(&h.call().unwrap())["tag"], "00000000000000ab-1");
    h.done(Err(CallError::Timeout));
    assert_eq!(h.stepper.expire(a), Some(StepReply::OutcomeUnknown));
    assert!(h.call().is_none(), "a failed relay waits a little");
    h.now += Duration::from_millis(40);
    let call = h.call().unwrap();
    assert!(endpoint(&call, 0), "the fence goes to etcd");
    assert_eq!(
        fence(&call),
        ("4".into(), "fence-00000000000000ab-2".into())
    );
    // Fenced: the lost relay can never apply. Another node stepped meanwhile.
    h.answer(200, &fenced(30, 6, 29));
    assert!(h.take().is_empty());
    let relay = relayed(&h.call().unwrap());
    assert_eq!(
        (&relay["tag"], &relay["fence"], &relay["steps"]),
        (&"00000000000000ab-3".into(), &"30".into(), &"n".into()),
        "a new tag, the new fence, without the expired step"
    );
    h.answer(200, &relay_answer(6, 7, 31));
    assert_eq!(h.indices(), [7]);
}

#[test]
fn a_follower_whose_lost_relay_was_applied_does_not_send_it_again() {
    let mut h = Harness::follower(5, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    let tag = relayed(&h.call().unwrap())["tag"]
        .as_str()
        .unwrap()
        .to_owned();
    h.answer(421, r#"{"error":"not_leader"}"#);
    h.now += Duration::from_millis(40);
    fence(&h.call().unwrap());
    // The leader's txn wrote this node's writer key: applied on 12.
    h.answer(200, &fence_moved(14, 33, &format!("{tag} 12"), 33));
    assert_eq!(h.indices(), [13, 14]);
    assert!(h.call().is_none(), "nothing left to send");
    h.step(Step::Next);
    h.linger_out();
    assert_eq!(relayed(&h.call().unwrap())["fence"], "33");
}

#[test]
fn a_leader_applies_a_relay_with_its_own_steps_in_one_txn() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    let r = h.relay("n2", "b-1", 7, &[Step::Next, Step::Next, Step::Previous]);
    let b = h.step(Step::Next);
    assert_eq!(h.stepper.pending_index(), 8);
    let sent = txn(&h.call().unwrap());
    assert_eq!(sent.put, 8);
    assert_eq!(
        sent.writers,
        [
            ("n1".into(), "4".into(), "00000000000000ab-1 5".into()),
            ("n2".into(), "7".into(), "b-1 6".into()),
        ],
        "the relay's writer key at its fence, with the index at its place"
    );
    assert_eq!(sent.failure, 4);
    h.answer(200, &committed(11));
    assert_eq!(
        h.take(),
        [
            (
                a,
                StepReply::Index {
                    index: 6,
                    value: Value::Small(8)
                }
            ),
            (
                r,
                StepReply::Relayed {
                    base: 6,
                    then: 8,
                    revision: 11
                }
            ),
            (
                b,
                StepReply::Index {
                    index: 8,
                    value: Value::Small(21)
                }
            ),
        ]
    );
    assert_eq!(h.stats().relays_applied, 1);
    assert_eq!(h.stepper.committed_index(), 8);
}

#[test]
fn a_refused_txn_whose_relay_fence_moved_drops_that_relay_and_sends_the_rest() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    let r2 = h.relay("n2", "b-1", 7, &[Step::Next]);
    let r3 = h.relay("n3", "c-1", 0, &[Step::Next, Step::Next]);
    let b = h.step(Step::Next);
    assert_eq!(txn(&h.call().unwrap()).put, 10);
    // n2 fenced its relay (its writer key moved to 8); n3's key is still
    // absent, as its relay compared.
    let fences = [("n1", FENCE), ("n2", 8), ("n3", 0)];
    h.answer(200, &refused(5, 10, Some(own_leader_kv()), &fences));
    assert_eq!(h.take(), [(r2, StepReply::RelayFenced)]);
    let sent = txn(&h.call().unwrap());
    assert_eq!((sent.put, sent.expected.as_str()), (9, "10"));
    assert_eq!(
        sent.writers,
        [
            ("n1".into(), "4".into(), "00000000000000ab-2 5".into()),
            ("n3".into(), "0".into(), "c-1 6".into()),
        ]
    );
    h.answer(200, &committed(11));
    let got = h.take();
    assert_eq!(got.len(), 3);
    assert_eq!((got[0].0, index(&got[0].1)), (a, 6));
    assert_eq!(
        got[1],
        (
            r3,
            StepReply::Relayed {
                base: 6,
                then: 9,
                revision: 11
            }
        )
    );
    assert_eq!((got[2].0, index(&got[2].1)), (b, 9));
}

#[test]
fn a_node_that_does_not_lead_takes_no_relay() {
    let mut h = Harness::follower(5, 10);
    assert!(!h.stepper.takes_relays(h.now), "the route refuses relays");
    // One that joined anyway is answered so, and nothing is sent for it.
    let r = h.relay("n3", "c-1", 0, &[Step::Next]);
    assert!(h.call().is_none());
    assert_eq!(h.take(), [(r, StepReply::NotLeader)]);
    assert_eq!(h.stepper.pending_index(), 5);
    assert!(h.stepper.is_settled());
}

#[test]
fn a_deposed_leader_answers_the_relays_in_its_batch_not_leader() {
    let mut h = Harness::leader(5, 10);
    let r = h.relay("n3", "c-1", 0, &[Step::Next, Step::Next]);
    let a = h.step(Step::Next);
    assert_eq!(txn(&h.call().unwrap()).writers.len(), 2);
    let n2 = leader_kv("n2", OTHER_URL, 11, 55);
    h.answer(200, &refused(5, 10, Some(n2), &[("n1", FENCE), ("n3", 0)]));
    assert!(h.take().is_empty());
    let call = h.call().unwrap();
    assert_eq!(h.take(), [(r, StepReply::NotLeader)]);
    let relay = relayed(&call);
    assert_eq!(relay["steps"], "n", "its own step alone");
    h.answer(200, &relay_answer(5, 6, 12));
    assert_eq!(
        h.take(),
        [(
            a,
            StepReply::Index {
                index: 6,
                value: Value::Small(8)
            }
        )]
    );
}

#[test]
fn a_relay_that_expires_while_its_txn_is_in_flight_still_moves_the_cursor_for_the_steps_after_it() {
    let mut h = Harness::leader(5, 10);
    let r = h.relay("n2", "b-1", 7, &[Step::Next, Step::Next]);
    let a = h.step(Step::Next);
    let sent = txn(&h.call().unwrap());
    assert_eq!(sent.put, 8);
    // The relay's wait ends while its transaction is in flight.
    assert_eq!(h.stepper.expire(r), Some(StepReply::OutcomeUnknown));
    h.answer(200, &committed(11));
    let got = h.take();
    assert_eq!(got.len(), 1, "the expired relay has nobody to answer");
    assert_eq!(
        got[0],
        (
            a,
            StepReply::Index {
                index: 8,
                value: Value::Small(21)
            }
        ),
        "the step after the relay is answered from the index it made"
    );
}

#[test]
fn a_batch_with_relays_whose_leader_lapsed_before_it_was_sent_goes_back_to_the_stepper() {
    let mut h = Harness::leader(5, 10);
    let r = h.relay("n3", "c-1", 0, &[Step::Next, Step::Next]);
    let a = h.step(Step::Next);
    h.submit();
    // The lease runs out here before the transaction leaves; the node then
    // follows n2.
    h.now += Duration::from_secs(3);
    h.elect(&held("n2", OTHER_URL, 5, 55));
    assert!(h.call().is_none(), "the batch goes back instead of out");
    let call = h.call().expect("the own step, relayed to n2");
    assert_eq!(
        h.take(),
        [(r, StepReply::NotLeader)],
        "the relay is not applied"
    );
    assert_eq!(kind(&call), "relay");
    assert_eq!(relayed(&call)["steps"], "n", "only this node's own steps");
    h.answer(200, &relay_answer(5, 6, 12));
    assert_eq!(h.indices(), [6]);
    let _ = a;
}

#[test]
fn the_next_batch_lingers_for_as_many_requests_as_the_last_answered_at_most_a_millisecond() {
    let mut h = Harness::leader(5, 10);
    for _ in 0..4 {
        h.step(Step::Next);
    }
    h.call().unwrap();
    h.answer(200, &committed(11));
    assert_eq!(h.indices(), [6, 7, 8, 9]);
    // One of the four clients is back: the next transaction waits for
    // the others, and the loop sleeps until the linger ends.
    h.step(Step::Next);
    assert!(h.call().is_none(), "lingering");
    assert!(!h.stepper.wants_submit(&h.ledger, h.now));
    assert_eq!(
        h.stepper.next_timer(),
        Some(h.now + Duration::from_millis(1))
    );
    // All four back: it goes at once, with the four.
    for _ in 0..3 {
        h.step(Step::Next);
    }
    assert_eq!(txn(&h.call().unwrap()).put, 13);
    // A fifth client's step comes while the transaction is in flight: the
    // next one waits for it and the four answered.
    h.step(Step::Next);
    h.answer(200, &committed(12));
    assert_eq!(h.indices(), [10, 11, 12, 13]);
    for _ in 0..3 {
        h.step(Step::Next);
    }
    assert!(h.call().is_none(), "four of five: still lingering");
    h.step(Step::Next);
    assert_eq!(txn(&h.call().unwrap()).put, 18, "all five at once");
    h.answer(200, &committed(13));
    // Only one comes back: it goes when the millisecond is over.
    h.step(Step::Next);
    assert!(h.call().is_none());
    h.now += Duration::from_micros(999);
    assert!(h.call().is_none());
    h.now += Duration::from_micros(1);
    assert_eq!(txn(&h.call().unwrap()).put, 19);
}

#[test]
fn a_node_alone_on_lmdb_never_lingers() {
    let mut h = Harness::lmdb(0, 100);
    h.step(Step::Next);
    h.step(Step::Next);
    h.submit();
    h.commit(true);
    assert_eq!(h.indices(), [1, 2]);
    h.step(Step::Next);
    h.submit();
    assert_eq!(h.commit(true), Some(3), "the next commit leaves at once");
}

#[test]
fn a_batch_left_unknown_with_etcd_out_of_reach_does_not_hold_a_graceful_stop() {
    let mut h = Harness::leader(5, 10);
    let a = h.step(Step::Next);
    h.call().unwrap();
    h.done(Err(CallError::Timeout));
    assert!(!h.stepper.is_settled(), "its step still waits");
    assert_eq!(h.stepper.expire(a), Some(StepReply::OutcomeUnknown));
    assert!(
        h.stepper.is_settled(),
        "nobody waits on the unknown batch: a stop need not either"
    );
}
