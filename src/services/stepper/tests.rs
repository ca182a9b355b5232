//! The stepper on both stores: on LMDB through the ledger (commit outcomes
//! made by hand), on etcd through its calls (answers captured from etcd
//! 3.4.23, as `store::etcd::wire`'s tests have them).

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

    fn etcd(endpoints: usize) -> Harness {
        let now = Instant::now();
        let endpoints = (0..endpoints)
            .map(|i| Target::resolve(&format!("http://127.0.0.1:{}", 2379 + i)).unwrap())
            .collect();
        let config = ClusterConfig {
            endpoints,
            name: "t".into(),
            node: "n1".into(),
            reads: ReadMode::Linearizable,
            call_timeout: Duration::from_secs(1),
            wait: Duration::from_secs(3),
        };
        let store = IndexStore::Etcd(Box::new(EtcdIndex::new(config, 0xab, now)));
        Harness::on(Stepper::new(store, 100, None), now)
    }

    /// A node that has read index `at` (revision `rev`).
    fn started(at: u64, rev: u64) -> Harness {
        let mut h = Harness::etcd(3);
        let call = h.call().expect("the first read");
        assert_eq!(kind(&call), "range");
        h.answer(200, &range(at, rev));
        assert!(h.stepper.is_ready());
        h
    }

    /// Submits what collected and takes the store's next call.
    fn call(&mut self) -> Option<StoreCall> {
        self.submit();
        self.stepper.next_call(self.now)
    }

    fn answer(&mut self, status: u16, body: &str) {
        let response = Response {
            status,
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        };
        self.done(Ok(response));
    }

    fn done(&mut self, result: Result<Response, CallError>) {
        let replies = &mut self.replies;
        self.stepper
            .call_done(result, self.now, &mut |t, r| replies.push((t, r)));
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

// --- etcd ---

fn kv(index: u64, rev: u64) -> String {
    format!(
        r#"{{"kvs":[{{"mod_revision":"{rev}","value":"{}"}}]}}"#,
        B64.encode(index.to_string())
    )
}

fn range(index: u64, rev: u64) -> String {
    kv(index, rev)
}

fn moved(index: u64, rev: u64, writer: &str) -> String {
    format!(
        r#"{{"header":{{"revision":"{rev}"}},"responses":[{{"response_range":{}}},{{"response_range":{{"kvs":[{{"value":"{}"}}]}}}}]}}"#,
        kv(index, rev),
        B64.encode(writer)
    )
}

fn committed(rev: u64) -> String {
    format!(r#"{{"header":{{"revision":"{rev}"}},"succeeded":true}}"#)
}

fn body(call: &StoreCall) -> serde_json::Value {
    serde_json::from_slice(call.request.body()).unwrap()
}

/// "range", "txn" (with a compare) or "readback" (a txn without one).
fn kind(call: &StoreCall) -> &'static str {
    let body = body(call);
    match (body.get("key").is_some(), body.get("compare").is_some()) {
        (true, _) => "range",
        (false, true) => "txn",
        (false, false) => "readback",
    }
}

/// The tag, the put index and the compared revision of a step transaction.
fn sent(call: &StoreCall) -> (String, u64, String) {
    let body = body(call);
    let put = |i: usize| {
        let v = body["success"][i]["request_put"]["value"].as_str().unwrap();
        String::from_utf8(B64.decode(v).unwrap()).unwrap()
    };
    let expected = body["compare"][0]["mod_revision"]
        .as_str()
        .unwrap()
        .to_owned();
    (put(1), put(0).parse().unwrap(), expected)
}

fn endpoint(call: &StoreCall, i: u16) -> bool {
    call.request.addr() == SocketAddr::from(([127, 0, 0, 1], 2379 + i))
}

#[test]
fn a_pass_of_steps_is_one_txn_and_replies_wait_for_its_commit() {
    let mut h = Harness::started(5, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    h.step(Step::Previous);
    h.step(Step::Next);
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "txn");
    let (tag, put, expected) = sent(&call);
    assert_eq!((put, expected.as_str()), (7, "10"));
    assert_eq!(tag, "00000000000000ab-1");
    assert!(h.call().is_none(), "one call in flight");
    assert!(h.take().is_empty(), "nothing before the commit");
    h.answer(200, &committed(11));
    assert_eq!(h.indices(), [6, 7, 6, 7]);
    assert_eq!(h.stepper.committed_index(), 7);
    h.read();
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "range");
    h.answer(200, &range(7, 11));
    let StepReply::Index { value, .. } = &h.take()[0].1 else {
        panic!()
    };
    assert_eq!(value.decimal_len(), 2, "F(7) = 13");
}

#[test]
fn reads_of_one_pass_share_one_quorum_read_and_later_ones_wait_for_the_next() {
    let mut h = Harness::started(3, 4);
    h.read();
    h.read();
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "range");
    assert_eq!(body(&call)["serializable"], false);
    h.read(); // arrived after the read left: not answered by it
    h.submit();
    h.answer(200, &range(4, 5));
    assert_eq!(h.indices(), [4, 4]);
    let call = h.call().unwrap();
    assert_eq!(kind(&call), "range");
    h.answer(200, &range(4, 5));
    assert_eq!(h.indices(), [4]);
}

#[test]
fn a_conflict_applies_the_batch_again_on_the_index_another_node_made() {
    let mut h = Harness::started(5, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    h.call().unwrap();
    h.answer(200, &moved(9, 12, "someone-else-3"));
    assert!(h.take().is_empty());
    assert_eq!(h.stepper.etcd_stats().unwrap().conflicts, 1);
    let (tag, put, expected) = sent(&h.call().unwrap());
    assert_eq!((put, expected.as_str()), (11, "12"));
    assert_eq!(tag, "00000000000000ab-2", "a new tag per attempt");
    h.answer(200, &committed(13));
    assert_eq!(h.indices(), [10, 11]);
}

#[test]
fn a_lost_answer_is_read_back_and_an_applied_txn_is_not_sent_again() {
    let mut h = Harness::started(5, 10);
    h.step(Step::Next);
    let (tag, _, _) = sent(&h.call().unwrap());
    h.done(Err(CallError::Timeout));
    let readback = h.call().unwrap();
    assert_eq!(kind(&readback), "readback");
    assert!(endpoint(&readback, 1), "the next endpoint");
    // It was applied, and another node stepped after it.
    h.answer(200, &moved(8, 15, &tag));
    assert_eq!(h.indices(), [6]);
    assert_eq!(h.stepper.committed_index(), 8);
    assert!(h.call().is_none(), "nothing left to send");
}

#[test]
fn a_lost_answer_that_was_not_applied_goes_again_under_a_new_tag() {
    let mut h = Harness::started(5, 10);
    h.step(Step::Previous);
    h.call().unwrap();
    h.done(Err(CallError::Closed));
    h.call().unwrap();
    h.answer(200, &moved(5, 10, "00000000000000ab-0"));
    let (tag, put, expected) = sent(&h.call().unwrap());
    assert_eq!(
        (tag.as_str(), put, expected.as_str()),
        ("00000000000000ab-2", 4, "10")
    );
    // The first attempt arrives late and wins: the second's compare
    // fails and the writer tag names the first.
    h.answer(200, &moved(4, 11, "00000000000000ab-1"));
    assert_eq!(h.indices(), [4]);
    assert!(h.call().is_none());
}

#[test]
fn an_expired_step_is_unavailable_before_it_is_sent_and_unknown_after() {
    let mut h = Harness::started(5, 10);
    let a = h.step(Step::Next);
    assert_eq!(h.stepper.expire(a), Some(StepReply::Unavailable));
    let b = h.step(Step::Next);
    let (_, put, _) = sent(&h.call().unwrap());
    assert_eq!(put, 6, "the expired step is not in the batch");
    assert_eq!(h.stepper.expire(b), Some(StepReply::OutcomeUnknown));
    h.done(Err(CallError::Timeout));
    // Not applied, read back: the batch has no live step left, so it is
    // dropped, which makes "unknown" true (it happened zero times).
    h.call().unwrap();
    h.answer(200, &moved(5, 10, ""));
    h.step(Step::Next);
    let (_, put, _) = sent(&h.call().unwrap());
    assert_eq!(put, 6);
}

#[test]
fn a_far_move_waits_for_a_jump_computed_off_the_loop() {
    let mut h = Harness::started(5, 10);
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
    let mut h = Harness::started(5, 10);
    for _ in 0..3 {
        h.read();
        h.call().unwrap();
        h.done(Err(CallError::Connect(
            std::io::ErrorKind::ConnectionRefused,
        )));
    }
    assert!(!h.stepper.is_ready());
    assert!(h.call().is_none(), "backing off");
    h.now = h.stepper.next_timer().unwrap();
    let call = h.call().unwrap();
    h.answer(200, &range(5, 10));
    assert!(h.stepper.is_ready());
    assert_eq!(kind(&call), "range");
    assert_eq!(h.take().len(), 3, "every read waited and was answered");
}

#[test]
fn next_at_the_ceiling_is_refused_inside_the_batch() {
    let mut h = Harness::started(99, 10);
    h.step(Step::Next);
    h.step(Step::Next);
    h.step(Step::Previous);
    let (_, put, _) = sent(&h.call().unwrap());
    assert_eq!(put, 99);
    h.answer(200, &committed(11));
    let got = h.take();
    assert_eq!(index(&got[0].1), 100);
    assert_eq!(got[1].1, StepReply::AtCeiling { max_index: 100 });
    assert_eq!(index(&got[2].1), 99);
}

#[test]
fn an_error_status_or_garbage_is_a_failed_call() {
    let mut h = Harness::started(5, 10);
    h.step(Step::Next);
    h.call().unwrap();
    h.answer(503, r#"{"error":"etcdserver: request timed out"}"#);
    assert_eq!(kind(&h.call().unwrap()), "readback");
    h.answer(200, "not json");
    assert_eq!(kind(&h.call().unwrap()), "readback");
}

#[test]
fn a_step_read_back_as_not_applied_stays_unknown_until_a_new_attempt_fences_the_old() {
    let mut h = Harness::started(5, 10);
    let a = h.step(Step::Next);
    let b = h.step(Step::Next);
    h.call().unwrap();
    h.done(Err(CallError::Timeout));
    h.call().unwrap();
    // Not applied yet, and the index is still at the compared revision:
    // the lost attempt may still arrive and apply.
    h.answer(200, &moved(5, 10, ""));
    assert_eq!(h.stepper.expire(a), Some(StepReply::OutcomeUnknown));
    // So the next attempt carries both steps, on the same revision.
    let (_, put, expected) = sent(&h.call().unwrap());
    assert_eq!((put, expected.as_str()), (7, "10"));
    h.answer(200, &committed(11));
    let got: Vec<(Ticket, u64)> = h.take().iter().map(|(t, r)| (*t, index(r))).collect();
    assert_eq!(got, [(b, 7)]);
}

#[test]
fn a_step_that_expires_between_attempts_no_attempt_can_apply_is_left_out() {
    let mut h = Harness::started(5, 10);
    let a = h.step(Step::Next);
    h.step(Step::Next);
    h.call().unwrap();
    h.answer(200, &moved(8, 12, "other-1"));
    assert_eq!(h.stepper.expire(a), Some(StepReply::Unavailable));
    let (_, put, expected) = sent(&h.call().unwrap());
    assert_eq!((put, expected.as_str()), (9, "12"), "one step, not two");
}

#[test]
fn a_winner_that_sees_another_node_losing_yields_one_round_trip() {
    let mut h = Harness::started(5, 10);
    h.step(Step::Next);
    h.call().unwrap();
    h.now += Duration::from_millis(4);
    let losing = B64.encode("/fibd/t/losing/n2");
    let answer = format!(
        r#"{{"header":{{"revision":"11"}},"succeeded":true,"responses":[{{}},{{}},{{"response_range":{{"kvs":[{{"key":"{losing}"}}]}}}}]}}"#
    );
    h.answer(200, &answer);
    assert_eq!(h.take().len(), 1);
    h.step(Step::Next);
    let later = h.now;
    assert!(h.call().is_none(), "yielding");
    assert_eq!(
        h.stepper.next_timer(),
        Some(later + Duration::from_millis(4))
    );
    h.now = later + Duration::from_millis(4);
    assert!(h.call().is_some());
    assert_eq!(h.stepper.etcd_stats().unwrap().yields, 1);
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
