//! Cluster mode's plumbing: the etcd calls go out through the outbound
//! client, a far cursor jump through the compute worker, and what comes back
//! goes to the cluster state machine (`crate::store::etcd`), whose replies join
//! the delivery queue. The replies themselves are written in `stepper.rs`.

use super::{App, CallOwner, ClusterNode};
use crate::net::upstream::Completion;
use crate::services::compute::Job;
use crate::services::fib::cursor::Cursor;

impl App {
    /// /readyz: commits succeed (LMDB), or etcd answers and the index is
    /// known (cluster mode).
    pub(super) fn is_ready(&self) -> bool {
        self.store_ready && self.cluster.as_ref().is_none_or(ClusterNode::is_ready)
    }

    /// The committed index: the local one, or the one last seen in etcd.
    pub fn committed_index(&self) -> u64 {
        match &self.cluster {
            Some(cluster) => cluster.known_index().unwrap_or(0),
            None => self.stepper.committed_index(),
        }
    }

    /// Sends the cluster's next etcd call and starts a cursor jump, when due.
    pub fn drive_cluster(&mut self) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        if let Some(index) = cluster.wanted_jump() {
            let started = self.compute.submit(Job::Cursor(index)).is_ok();
            cluster.jump_started(started, self.now);
        }
        let Some(call) = cluster.next_call(self.now) else {
            return;
        };
        let config = cluster.config();
        let endpoint = &config.endpoints[call.endpoint];
        let request = endpoint.request_to(
            "POST",
            call.path,
            &[("Content-Type", "application/json")],
            &call.body,
        );
        let deadline = self.now + config.call_timeout;
        if let Err(e) = self
            .upstream
            .send(CallOwner::Etcd, &request, deadline, self.now)
        {
            cluster.not_sent(&format!("{e:?}"), self.now);
        }
        self.collect_cluster_replies();
    }

    /// etcd answered (or did not): the cluster decides what that means.
    pub(super) fn etcd_call_done(&mut self, done: Completion<CallOwner>) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        self.metrics.etcd_call(done.elapsed);
        match done.result {
            Ok(response) => cluster.answered(response.status, &response.body, self.now),
            // Even a refused connect may follow a first copy of the request
            // on a pooled connection that the client retried: any failure
            // leaves the outcome unknown.
            Err(e) => cluster.failed(&e, self.now),
        }
        self.collect_cluster_replies();
    }

    /// A cursor computed on the compute worker arrived.
    pub fn cluster_jumped(&mut self, cursor: Cursor) {
        if let Some(cluster) = &mut self.cluster {
            cluster.jumped(cursor);
        }
        self.collect_cluster_replies();
    }
}
