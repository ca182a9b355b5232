//! Where fibd keeps what it promised: the local store and its group commit
//! (the primes tasks' records always; the stepper's index with
//! `--store lmdb`), each batch durable at one flush of the write-ahead log
//! and checkpointed into LMDB ([`journal`]), and the stepper's index in
//! etcd (`--store etcd`), written by one elected leader for every node.
//!
//! # The index behind one interface
//! The stepper (`services::stepper`) collects steps and reads into batches,
//! one in flight, and renders every reply from the index its batch was
//! applied on. Where the index is kept is [`IndexStore`]: it takes a batch
//! ([`IndexBatch`]) and says what became of it ([`IndexOutcome`]). Both
//! stores answer the same questions, so the stepper has no store branch:
//!
//! - *Is this node the only writer?* ([`IndexStore::is_exclusive`]) LMDB:
//!   yes, so the durable index is current and a read that follows no step of
//!   its own is answered at once. etcd: no, so a read waits for the next
//!   call, a quorum read or a transaction, which it shares with every read
//!   that arrived meanwhile.
//! - *May a batch be taken now?* LMDB: when no commit is in flight. etcd:
//!   when no call is in flight and no back-off runs.
//! - *May a step whose wait ended have happened?* LMDB: steps do not time
//!   out. etcd: while an attempt of its batch may still apply.
//! - *May other nodes' steps join this node's batches?* LMDB: there are no
//!   other nodes. etcd: while this node leads the cluster; a follower
//!   relays its batches to the leader instead.
//!
//! LMDB's batches ride the ledger's group commit ([`ledger`]), one log
//! frame with the task records; etcd's go out through the outbound
//! client as the calls [`IndexStore::next_call`] makes.
//!
//! `fibd backup` ([`backup`]) copies the local store from a second process
//! while the daemon runs: LMDB's hot copy plus the log's newer frames.

pub mod backup;
pub mod committer;
pub mod etcd;
pub mod index;
pub mod journal;
pub mod ledger;
pub mod lmdb;
pub mod wal;

use std::time::Instant;

use crate::net::upstream::{CallError, Response};
use etcd::{EtcdIndex, EtcdStats};
pub use index::{Channel, IndexBatch, IndexOutcome, Step, StoreCall, WriterPut};
use ledger::{CommitEffect, Committed, Ledger};

/// The one interface the stepper's index is kept behind.
pub enum IndexStore {
    /// In the LMDB ledger, written with the task records; `riding` is set
    /// while a batch of the stepper's is in the ledger's commit.
    Lmdb { riding: Option<(u64, u64)> },
    /// In etcd, shared with other nodes.
    Etcd(Box<EtcdIndex>),
}

impl IndexStore {
    pub fn lmdb() -> IndexStore {
        IndexStore::Lmdb { riding: None }
    }

    /// Whether this node is the index's only writer, so the index it last
    /// made durable is current: reads need not ask anyone.
    pub fn is_exclusive(&self) -> bool {
        matches!(self, IndexStore::Lmdb { .. })
    }

    /// Whether a batch handed over now leaves at once.
    pub fn accepts(&self, ledger: &Ledger, now: Instant) -> bool {
        match self {
            IndexStore::Lmdb { riding } => riding.is_none() && ledger.is_idle(),
            IndexStore::Etcd(etcd) => etcd.accepts(now),
        }
    }

    /// Takes a batch (after [`IndexStore::accepts`]).
    pub fn submit(&mut self, batch: IndexBatch, ledger: &mut Ledger) {
        match self {
            IndexStore::Lmdb { riding } => {
                ledger.put_index(batch.target, batch.steps);
                *riding = Some((batch.base, batch.target));
            }
            IndexStore::Etcd(etcd) => etcd.submit(batch),
        }
    }

    /// A commit of the ledger finished: the outcome of the batch that rode
    /// in it, if one did.
    pub fn on_commit(&mut self, committed: &Committed) -> Option<IndexOutcome> {
        let IndexStore::Lmdb { riding } = self else {
            return None;
        };
        if !committed.carried_index {
            return None;
        }
        let (base, target) = riding.take()?;
        Some(match committed.effect {
            CommitEffect::Released(_) => IndexOutcome::Applied {
                base,
                then: target,
                revision: 0,
            },
            CommitEffect::Failed { .. } => IndexOutcome::Failed,
        })
    }

    /// Whether a step whose wait ended may still have happened, or happen.
    pub fn may_apply(&self) -> bool {
        match self {
            IndexStore::Lmdb { riding } => riding.is_some(),
            IndexStore::Etcd(etcd) => etcd.may_apply(),
        }
    }

    /// Whether the store answers, for /readyz.
    pub fn is_ready(&self, now: Instant) -> bool {
        match self {
            IndexStore::Lmdb { .. } => true,
            IndexStore::Etcd(etcd) => etcd.is_ready(now),
        }
    }

    /// Whether other nodes' steps may join this node's batches: it leads
    /// the cluster now.
    pub fn takes_relays(&self, now: Instant) -> bool {
        match self {
            IndexStore::Lmdb { .. } => false,
            IndexStore::Etcd(etcd) => etcd.leads(now),
        }
    }

    /// Whether nothing the store started still runs (a resignation).
    pub fn is_settled(&self) -> bool {
        match self {
            IndexStore::Lmdb { .. } => true,
            IndexStore::Etcd(etcd) => etcd.is_settled(),
        }
    }

    /// A graceful stop begins: a leader hands the leadership on.
    pub fn resign(&mut self) {
        if let IndexStore::Etcd(etcd) = self {
            etcd.resign();
        }
    }

    /// What became of the batch without a call, if the store found out
    /// while making one (see [`EtcdIndex::next_call`]).
    pub fn take_outcome(&mut self) -> Option<IndexOutcome> {
        match self {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => etcd.take_outcome(),
        }
    }

    /// The call to send now, if one is due.
    pub fn next_call(&mut self, now: Instant) -> Option<StoreCall> {
        match self {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => etcd.next_call(now),
        }
    }

    /// The call [`IndexStore::next_call`] made was answered, or failed.
    pub fn call_done(
        &mut self,
        channel: Channel,
        result: Result<Response, CallError>,
        now: Instant,
    ) -> Option<IndexOutcome> {
        match self {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => match result {
                Ok(response) => etcd.answered(channel, response.status, &response.body, now),
                // Even a refused connect may follow a first copy of the
                // request on a pooled connection that the client retried:
                // any failure leaves the outcome unknown.
                Err(e) => etcd.failed(channel, &e, now),
            },
        }
    }

    /// The call could not be handed to the outbound client (every
    /// connection busy): it certainly did not happen.
    pub fn call_not_sent(&mut self, channel: Channel, now: Instant) -> Option<IndexOutcome> {
        match self {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => etcd.not_sent(channel, now),
        }
    }

    /// When the loop should wake for the store (a back-off ending).
    pub fn next_timer(&self) -> Option<Instant> {
        match self {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => etcd.next_timer(),
        }
    }

    /// Whether a call is due now: the loop must not sleep.
    pub fn has_work(&self, now: Instant) -> bool {
        match self {
            IndexStore::Lmdb { .. } => false,
            IndexStore::Etcd(etcd) => etcd.has_work(now),
        }
    }

    /// etcd's counters, for the metrics.
    pub fn etcd_stats(&self, now: Instant) -> Option<EtcdStats> {
        match self {
            IndexStore::Lmdb { .. } => None,
            IndexStore::Etcd(etcd) => Some(etcd.stats(now)),
        }
    }
}
