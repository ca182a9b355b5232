//! The primes tasks' records in etcd (`--store etcd`): written by the
//! leader alone, under its term, and read back whole by each new leader.
//! Sans-IO and sans-clock, like the index: the loop sends the calls through
//! the outbound client and hands the answers back.
//!
//! - A node that wins a term loads every record (quorum range reads, a page
//!   at a time) before it answers a task request: the leader holds the
//!   cluster's tasks, so fair shares, idempotency keys, cancellation and the
//!   callbacks' one deliverer hold cluster-wide. Followers forward their
//!   task requests to it (`services::primes::forward`).
//! - The ledger's group commits (`store::ledger`) go to etcd instead of
//!   LMDB: each batch of record writes is one transaction per
//!   [`TXN_WRITES_MAX`] writes, each compared with the leader key's create
//!   revision and lease. A deposed leader, even one that does not know it
//!   yet, can write nothing. A batch is durable once all its transactions
//!   committed (etcd's quorum), and not before.
//! - A call whose answer was lost fails its batch: its replies are
//!   withdrawn. The writes may still have landed; a task accepted that way
//!   was never acknowledged and settles like any other (its client retries
//!   under its `Idempotency-Key`).

use std::collections::VecDeque;
use std::fmt::Display;
use std::time::{Duration, Instant};

use super::wire::{self, RecordPage, Term, WireError};
use crate::net::upstream::{Outbound, Target};
use crate::store::ledger::{BatchId, CommitOutcome, CommitRequest, Durable};
use crate::store::lmdb::{RecordWrite, StoreError};

/// Writes per transaction at most: etcd refuses more than 128 operations
/// in one (`--max-txn-ops`).
pub const TXN_WRITES_MAX: usize = 100;
/// Records per page of a load: the longest record (a callback URL of 2 KiB)
/// times this stays well under the outbound client's 1 MiB answer.
pub const PAGE_RECORDS: usize = 256;
/// A failed load page is asked again after this long.
const LOAD_RETRY: Duration = Duration::from_millis(200);

/// What the loop learns from the records.
#[derive(Debug)]
pub enum RecordsEvent {
    /// This node leads and holds every record of the cluster as of its
    /// term's start: `(seq, record)`, in acceptance order.
    Loaded(RecordPage),
    /// This node no longer leads: its tasks are no longer the cluster's.
    Lost,
    /// A group commit's outcome.
    Committed(CommitOutcome),
}

#[derive(Debug)]
struct Loading {
    term: Term,
    /// The sequence number the next page starts at.
    from: u64,
    records: RecordPage,
}

#[derive(Debug)]
struct Commit {
    batch: BatchId,
    term: Term,
    writes: Vec<RecordWrite>,
    /// Writes committed so far, in order.
    done: usize,
    /// Writes in the transaction in flight.
    sending: usize,
    started: Instant,
}

pub struct TaskRecords {
    leader_key: String,
    prefix: String,
    endpoints: Vec<Target>,
    endpoint: usize,
    call_timeout: Duration,
    /// The term whose records this node holds.
    loaded: Option<Term>,
    loading: Option<Loading>,
    commit: Option<Commit>,
    /// A call is in flight (one at a time: a load page or a transaction).
    in_flight: bool,
    retry_at: Option<Instant>,
    events: VecDeque<RecordsEvent>,
}

impl TaskRecords {
    pub fn new(cluster_name: &str, endpoints: Vec<Target>, call_timeout: Duration) -> TaskRecords {
        TaskRecords {
            leader_key: wire::leader_key(cluster_name),
            prefix: wire::records_prefix(cluster_name),
            endpoints,
            endpoint: 0,
            call_timeout,
            loaded: None,
            loading: None,
            commit: None,
            in_flight: false,
            retry_at: None,
            events: VecDeque::new(),
        }
    }

    /// Whether this node holds the cluster's tasks now: it leads, and its
    /// term's records are loaded.
    pub fn holds(&self, term: Option<Term>) -> bool {
        term.is_some() && self.loaded == term
    }

    /// A group commit: its outcome comes back as an event. Without a term
    /// loaded it fails at once.
    pub fn submit(&mut self, request: CommitRequest, term: Option<Term>, now: Instant) {
        let (Some(term), true) = (term, self.holds(term)) else {
            self.events
                .push_back(RecordsEvent::Committed(CommitOutcome {
                    batch: request.batch,
                    result: Err(StoreError::Cluster(
                        "this node does not lead the cluster".into(),
                    )),
                }));
            return;
        };
        self.commit = Some(Commit {
            batch: request.batch,
            term,
            writes: request.records,
            done: 0,
            sending: 0,
            started: now,
        });
    }

    pub fn take_event(&mut self) -> Option<RecordsEvent> {
        self.events.pop_front()
    }

    /// Follows the election (`term`: this node's, while it leads), then
    /// gives the call due now, if any.
    pub fn next_call(&mut self, term: Option<Term>, now: Instant) -> Option<(Outbound, Instant)> {
        if self.loaded.is_some() && self.loaded != term {
            self.loaded = None;
            self.events.push_back(RecordsEvent::Lost);
        }
        if self.loading.as_ref().is_some_and(|l| Some(l.term) != term) {
            self.loading = None;
        }
        if let Some(term) = term
            && self.loaded.is_none()
            && self.loading.is_none()
        {
            self.loading = Some(Loading {
                term,
                from: 0,
                records: Vec::new(),
            });
        }
        if self.in_flight || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.retry_at = None;
        let body = if let Some(commit) = &mut self.commit {
            let end = (commit.done + TXN_WRITES_MAX).min(commit.writes.len());
            commit.sending = end - commit.done;
            wire::records_txn_body(
                &self.leader_key,
                commit.term,
                &self.prefix,
                &commit.writes[commit.done..end],
            )
        } else if let Some(loading) = &self.loading {
            wire::records_page_body(&self.prefix, loading.from, PAGE_RECORDS)
        } else {
            return None;
        };
        let path = if self.commit.is_some() {
            wire::TXN_PATH
        } else {
            wire::RANGE_PATH
        };
        self.in_flight = true;
        let request = self.endpoints[self.endpoint].request_to(
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &body,
        );
        Some((request, now + self.call_timeout))
    }

    /// Whether a call is due now.
    pub fn has_work(&self, term: Option<Term>, now: Instant) -> bool {
        !self.events.is_empty()
            || (!self.in_flight
                && self.retry_at.is_none_or(|t| now >= t)
                && (self.commit.is_some()
                    || self.loaded != term
                    || (term.is_some() && self.loaded.is_none())))
    }

    pub fn next_timer(&self) -> Option<Instant> {
        self.retry_at
    }

    /// The call in flight was answered.
    pub fn answered(&mut self, status: u16, body: &[u8], now: Instant) {
        self.in_flight = false;
        if let Some(commit) = &mut self.commit {
            match wire::read_records_txn(status, body) {
                Ok(true) => {
                    commit.done += commit.sending;
                    if commit.done >= commit.writes.len() {
                        let took = now.saturating_duration_since(commit.started);
                        self.finish(Ok(Durable { took, flushes: 1 }));
                    }
                }
                Ok(false) => self.finish(Err(StoreError::Cluster(
                    "this node's term ended: the records were not written".into(),
                ))),
                Err(e) => self.failed(&e, now),
            }
            return;
        }
        let Some(loading) = &mut self.loading else {
            return;
        };
        match wire::read_records_page(status, body, &self.prefix) {
            Ok((page, more)) => {
                loading.from = page.last().map_or(loading.from, |(seq, _)| seq + 1);
                loading.records.extend(page);
                if !more {
                    let done = self.loading.take().map(|l| (l.term, l.records));
                    if let Some((term, records)) = done {
                        log::info!("leading: {} task record(s) loaded from etcd", records.len());
                        self.loaded = Some(term);
                        self.events.push_back(RecordsEvent::Loaded(records));
                    }
                }
            }
            Err(e) => self.failed(&e, now),
        }
    }

    /// The call in flight got no usable answer (or was never sent).
    pub fn failed(&mut self, why: &dyn Display, now: Instant) {
        self.in_flight = false;
        self.endpoint = (self.endpoint + 1) % self.endpoints.len();
        if self.commit.is_some() {
            log::warn!("etcd task records commit failed: {why}");
            self.finish(Err(StoreError::Cluster(format!("etcd: {why}"))));
        } else {
            log::warn!("loading the task records from etcd failed: {why}; retrying");
            self.retry_at = Some(now + LOAD_RETRY);
        }
    }

    fn finish(&mut self, result: Result<Durable, StoreError>) {
        if let Some(commit) = self.commit.take() {
            self.events
                .push_back(RecordsEvent::Committed(CommitOutcome {
                    batch: commit.batch,
                    result,
                }));
        }
    }
}

impl From<WireError> for StoreError {
    fn from(e: WireError) -> StoreError {
        StoreError::Cluster(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn term() -> Term {
        Term {
            create_revision: 7,
            lease: 99,
        }
    }

    fn records() -> TaskRecords {
        let endpoint = Target::resolve("http://127.0.0.1:2379").unwrap();
        TaskRecords::new("c", vec![endpoint], Duration::from_secs(1))
    }

    fn page(kvs: &[(u64, &str)], more: bool) -> String {
        use base64::Engine;
        let b64 = |t: &[u8]| base64::engine::general_purpose::STANDARD.encode(t);
        let kvs: Vec<String> = kvs
            .iter()
            .map(|(seq, v)| {
                let key = b64(format!("/fibd/c/tasks/{seq:016x}").as_bytes());
                format!(r#"{{"key":"{key}","value":"{}"}}"#, b64(v.as_bytes()))
            })
            .collect();
        format!(r#"{{"kvs":[{}],"more":{more}}}"#, kvs.join(","))
    }

    /// The call's request line and body.
    fn body_of(call: &(Outbound, Instant)) -> String {
        let head = String::from_utf8_lossy(call.0.head());
        let line = head.lines().next().unwrap_or_default().to_owned();
        line + " " + &String::from_utf8_lossy(call.0.body())
    }

    #[test]
    fn a_new_term_loads_every_page_before_it_holds_the_tasks() {
        let now = Instant::now();
        let mut records = records();
        assert!(
            records.next_call(None, now).is_none(),
            "a follower loads nothing"
        );
        let first = records.next_call(Some(term()), now).unwrap();
        assert!(body_of(&first).contains("/v3/kv/range"));
        assert!(
            records.next_call(Some(term()), now).is_none(),
            "one call at a time"
        );
        records.answered(200, page(&[(1, "a"), (4, "b")], true).as_bytes(), now);
        assert!(!records.holds(Some(term())), "a page is not the whole");
        let second = records.next_call(Some(term()), now).unwrap();
        // The second page starts after the last key read: seq 5.
        let from = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "/fibd/c/tasks/0000000000000005",
        );
        assert!(body_of(&second).contains(&from), "{}", body_of(&second));
        records.answered(200, page(&[(9, "c")], false).as_bytes(), now);
        assert!(records.holds(Some(term())));
        match records.take_event() {
            Some(RecordsEvent::Loaded(all)) => {
                let seqs: Vec<u64> = all.iter().map(|(s, _)| *s).collect();
                assert_eq!(seqs, [1, 4, 9]);
                assert_eq!(all[2].1, b"c");
            }
            other => panic!("{other:?}"),
        }
        // The term ends: the tasks are no longer this node's.
        assert!(records.next_call(None, now).is_none());
        assert!(matches!(records.take_event(), Some(RecordsEvent::Lost)));
        assert!(!records.holds(Some(term())));
    }

    #[test]
    fn a_commit_is_fenced_by_the_term_split_into_transactions_and_durable_at_the_last() {
        let now = Instant::now();
        let mut records = records();
        let request = |batch| CommitRequest {
            batch: BatchId::for_tests(batch),
            index: None,
            records: (0..150)
                .map(|key| RecordWrite::Put {
                    key,
                    value: vec![1],
                })
                .collect(),
        };
        records.submit(request(1), Some(term()), now);
        match records.take_event() {
            Some(RecordsEvent::Committed(outcome)) => assert!(outcome.result.is_err()),
            other => panic!("not loaded yet, so refused: {other:?}"),
        }
        records.next_call(Some(term()), now).unwrap();
        records.answered(200, page(&[], false).as_bytes(), now);
        records.take_event();
        records.submit(request(2), Some(term()), now);
        let first = body_of(&records.next_call(Some(term()), now).unwrap());
        assert!(first.contains("/v3/kv/txn") && first.contains(r#""lease":"99""#));
        assert_eq!(first.matches("request_put").count(), TXN_WRITES_MAX);
        records.answered(200, br#"{"succeeded":true}"#, now);
        assert!(
            records.take_event().is_none(),
            "half a batch is not durable"
        );
        let second = body_of(&records.next_call(Some(term()), now).unwrap());
        assert_eq!(second.matches("request_put").count(), 50);
        records.answered(200, br#"{"succeeded":true}"#, now);
        match records.take_event() {
            Some(RecordsEvent::Committed(outcome)) => {
                assert_eq!(outcome.batch, BatchId::for_tests(2));
                assert!(outcome.result.is_ok());
            }
            other => panic!("{other:?}"),
        }
        // A refused compare (the term ended) and a lost answer both fail.
        records.submit(request(3), Some(term()), now);
        records.next_call(Some(term()), now).unwrap();
        records.answered(200, br#"{"header":{}}"#, now);
        assert!(matches!(
            records.take_event(),
            Some(RecordsEvent::Committed(CommitOutcome {
                result: Err(_),
                ..
            }))
        ));
        records.submit(request(4), Some(term()), now);
        records.next_call(Some(term()), now).unwrap();
        records.failed(&"timed out", now);
        assert!(matches!(
            records.take_event(),
            Some(RecordsEvent::Committed(CommitOutcome {
                result: Err(_),
                ..
            }))
        ));
    }
}
