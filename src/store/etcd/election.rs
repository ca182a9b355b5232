//! Leader election through etcd: which node of the cluster batches every
//! node's steps. Sans-IO and sans-clock, like the index (`super`).
//!
//! Each node holds a lease (`--lease-ttl-ms`, kept alive every third of
//! it) and campaigns for the leader key with a put bound to the lease,
//! under a compare that the key has never been created (`create_revision
//! == 0`): at most one node holds it, and it goes when its holder's lease
//! does. A node that did not win reads who did, and asks again every
//! quarter of the TTL, so a dead leader is replaced within its lease plus
//! one campaign.
//!
//! The leader steps down on its own as soon as its lease may have
//! expired: the lease is counted from when the keep-alive was *sent*, so
//! it ends here before it ends in etcd. Safety does not rest on that: the
//! leader's every transaction compares the leader key's create_revision and
//! lease ([`Term`]), so a node deposed without knowing it can never apply.

use std::time::{Duration, Instant};

use super::wire::{self, CampaignAnswer, Keys, LeaderKey, Term};
use crate::net::upstream::Target;

/// A failed election call is tried again after this long, on the next
/// endpoint.
const RETRY: Duration = Duration::from_millis(100);

/// The node that batches the steps, as a follower knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    pub node: String,
    /// Where its internal endpoint listens; None when its URL is not an
    /// `http://IP:PORT` (then nothing can be relayed to it).
    pub target: Option<Target>,
    pub create_revision: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// No lease, or no campaign answered yet.
    Unknown,
    Leader(Term),
    Follower(Leader),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionCall {
    Grant,
    KeepAlive,
    Campaign,
    /// The lease revoked at a graceful stop, so another node takes over at
    /// once.
    Resign,
}

impl ElectionCall {
    pub const ALL: [ElectionCall; 4] = [
        ElectionCall::Grant,
        ElectionCall::KeepAlive,
        ElectionCall::Campaign,
        ElectionCall::Resign,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ElectionCall::Grant => "lease_grant",
            ElectionCall::KeepAlive => "lease_keepalive",
            ElectionCall::Campaign => "campaign",
            ElectionCall::Resign => "lease_revoke",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Lease {
    id: i64,
    /// When the lease may have expired in etcd, counted from the send.
    until: Instant,
}

/// Counters for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ElectionStats {
    /// Calls by [`ElectionCall::ALL`] position: [answered, failed].
    pub calls: [[u64; 2]; 4],
    /// Terms this node won.
    pub won: u64,
    /// Times this node stopped being the leader.
    pub stepped_down: u64,
}

pub struct Election {
    keys: Keys,
    node: String,
    url: String,
    ttl: Duration,
    endpoints: Vec<Target>,
    endpoint: usize,
    lease: Option<Lease>,
    role: Role,
    in_flight: Option<ElectionCall>,
    sent_at: Instant,
    next_keepalive: Instant,
    next_campaign: Instant,
    /// No call before this (after a failure).
    retry_at: Option<Instant>,
    resigning: bool,
    /// A lease of this process's that still holds the leader key (it ran
    /// out here first): revoked, so the key is free at once.
    stale: Option<i64>,
    /// The revoke in flight is of `stale`, not of `lease`.
    revoking_stale: bool,
    call_timeout: Duration,
    stats: ElectionStats,
}

/// A call the election makes, for the loop to send.
pub struct ElectionRequest {
    pub kind: ElectionCall,
    pub body: Vec<u8>,
    pub path: &'static str,
    pub endpoint: Target,
    pub deadline: Instant,
}

impl Election {
    pub fn new(
        keys: Keys,
        node: &str,
        url: &str,
        ttl: Duration,
        endpoints: Vec<Target>,
        call_timeout: Duration,
        now: Instant,
    ) -> Election {
        Election {
            keys,
            node: node.to_owned(),
            url: url.to_owned(),
            ttl,
            endpoints,
            endpoint: 0,
            lease: None,
            role: Role::Unknown,
            in_flight: None,
            sent_at: now,
            next_keepalive: now,
            next_campaign: now,
            retry_at: None,
            resigning: false,
            stale: None,
            revoking_stale: false,
            call_timeout,
            stats: ElectionStats::default(),
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn stats(&self) -> ElectionStats {
        self.stats
    }

    /// The leadership this node holds, if it does and its lease may not
    /// have run out by `now`.
    pub fn term(&self, now: Instant) -> Option<Term> {
        match self.role {
            Role::Leader(term) if self.lease.is_some_and(|l| now < l.until) => Some(term),
            _ => None,
        }
    }

    /// The leader this node relays to, if it follows one.
    pub fn leader(&self) -> Option<&Leader> {
        match &self.role {
            Role::Follower(leader) => Some(leader),
            _ => None,
        }
    }

    /// A transaction found the leader key changed: this node is not the
    /// leader (any more); `holder` is who is, if anyone.
    pub fn deposed(&mut self, holder: Option<LeaderKey>, now: Instant) {
        match holder {
            Some(key) if self.lease.is_some_and(|l| l.id == key.lease) => {}
            Some(key) if key.node == self.node => {
                self.step_down("its old lease still holds the leader key");
                self.stale = Some(key.lease);
            }
            Some(key) => self.follow(key),
            None => {
                self.step_down("the leader key is gone");
                self.next_campaign = now;
            }
        }
    }

    /// The leader did not take a relay: ask etcd who leads now.
    pub fn leader_unreachable(&mut self, now: Instant) {
        if matches!(self.role, Role::Follower(_)) {
            self.next_campaign = self.next_campaign.min(now + self.ttl / 8);
        }
    }

    /// A graceful stop: a leader revokes its lease so another node takes
    /// over at once, instead of after the TTL.
    pub fn resign(&mut self) {
        self.resigning = true;
    }

    /// Whether a resignation asked for is over.
    pub fn resign_settled(&self) -> bool {
        !(self.resigning && self.lease.is_some())
    }

    /// When the loop should wake for the election.
    pub fn next_timer(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return None;
        }
        if let Some(t) = self.retry_at {
            return Some(t);
        }
        match self.lease {
            None => Some(self.sent_at),
            Some(lease) => {
                let campaign =
                    (!matches!(self.role, Role::Leader(_))).then_some(self.next_campaign);
                [Some(self.next_keepalive), campaign, Some(lease.until)]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    /// The call to send now, if one is due.
    pub fn next_call(&mut self, now: Instant) -> Option<ElectionRequest> {
        self.expire(now);
        if self.in_flight.is_some() || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        self.retry_at = None;
        self.revoking_stale = false;
        let (kind, path, body) = match self.lease {
            _ if self.stale.is_some() && !self.resigning => {
                self.revoking_stale = true;
                let stale = self.stale.unwrap_or_default();
                (
                    ElectionCall::Resign,
                    wire::REVOKE_PATH,
                    wire::lease_body(stale),
                )
            }
            Some(lease) if self.resigning => (
                ElectionCall::Resign,
                wire::REVOKE_PATH,
                wire::lease_body(lease.id),
            ),
            _ if self.resigning => return None,
            None => (
                ElectionCall::Grant,
                wire::GRANT_PATH,
                wire::grant_body(self.ttl.as_secs().max(1)),
            ),
            Some(lease) if now >= self.next_keepalive => (
                ElectionCall::KeepAlive,
                wire::KEEPALIVE_PATH,
                wire::lease_body(lease.id),
            ),
            Some(lease) if !matches!(self.role, Role::Leader(_)) && now >= self.next_campaign => (
                ElectionCall::Campaign,
                wire::TXN_PATH,
                self.keys.campaign_body(lease.id, &self.node, &self.url),
            ),
            Some(_) => return None,
        };
        self.in_flight = Some(kind);
        self.sent_at = now;
        Some(ElectionRequest {
            kind,
            body,
            path,
            endpoint: self.endpoints[self.endpoint].clone(),
            deadline: now + self.call_timeout.min(self.ttl / 3),
        })
    }

    /// The call in flight got an HTTP answer.
    pub fn answered(&mut self, status: u16, body: &[u8], now: Instant) {
        let Some(kind) = self.in_flight.take() else {
            return;
        };
        let result = match kind {
            ElectionCall::Grant => wire::read_grant(status, body).map(|(id, ttl)| {
                let granted = Duration::from_secs(ttl).min(self.ttl);
                self.lease = Some(Lease {
                    id,
                    until: self.sent_at + granted,
                });
                self.next_keepalive = now + self.ttl / 3;
                self.next_campaign = now;
            }),
            ElectionCall::KeepAlive => wire::read_keepalive(status, body).map(|ttl| {
                if ttl == 0 {
                    self.lease = None;
                    self.step_down("the lease expired in etcd");
                    return;
                }
                if let Some(lease) = &mut self.lease {
                    lease.until = self.sent_at + Duration::from_secs(ttl).min(self.ttl);
                }
                self.next_keepalive = now + self.ttl / 3;
            }),
            ElectionCall::Campaign => wire::read_campaign(status, body).map(|answer| {
                self.next_campaign = now + self.ttl / 4;
                self.campaigned(answer);
            }),
            ElectionCall::Resign if self.revoking_stale => {
                wire::read_keepalive(status, body).map(|_| {
                    self.stale = None;
                    self.next_campaign = now;
                })
            }
            ElectionCall::Resign => wire::read_keepalive(status, body).map(|_| {
                self.lease = None;
                self.step_down("resigned at a graceful stop");
            }),
        };
        match result {
            Ok(()) => self.count(kind, true),
            Err(e) => self.failed(&e, now),
        }
    }

    /// The call in flight got no answer, or was never sent.
    pub fn failed(&mut self, why: &dyn std::fmt::Display, now: Instant) {
        let Some(kind) = self.in_flight.take() else {
            return;
        };
        self.count(kind, false);
        log::debug!(
            "etcd {} at {} failed: {why}",
            kind.name(),
            self.endpoints[self.endpoint]
        );
        if kind == ElectionCall::Resign {
            // The lease runs out on its own.
            if self.revoking_stale {
                self.stale = None;
            } else {
                self.resigning = false;
            }
        }
        self.endpoint = (self.endpoint + 1) % self.endpoints.len();
        self.retry_at = Some(now + RETRY);
    }

    fn campaigned(&mut self, answer: CampaignAnswer) {
        let Some(lease) = self.lease else {
            return;
        };
        match answer {
            CampaignAnswer::Won { create_revision } => self.lead(Term {
                create_revision,
                lease: lease.id,
            }),
            // A campaign whose answer was lost, tried again: the key is ours.
            CampaignAnswer::Held(key) if key.lease == lease.id => self.lead(Term {
                create_revision: key.create_revision,
                lease: lease.id,
            }),
            // This node's own key, under a lease that ran out here first:
            // it is nobody's to follow; revoke it and campaign again.
            CampaignAnswer::Held(key) if key.node == self.node => {
                self.step_down("its old lease still holds the leader key");
                self.stale = Some(key.lease);
            }
            CampaignAnswer::Held(key) => self.follow(key),
        }
    }

    fn lead(&mut self, term: Term) {
        if self.role != Role::Leader(term) {
            self.stats.won += 1;
            log::warn!(
                "this node ({}) is the cluster's leader now (leader key at revision {})",
                self.node,
                term.create_revision
            );
        }
        self.role = Role::Leader(term);
    }

    fn follow(&mut self, key: LeaderKey) {
        if matches!(self.role, Role::Leader(_)) {
            self.stats.stepped_down += 1;
        }
        let changed = match &self.role {
            Role::Follower(leader) => leader.create_revision != key.create_revision,
            _ => true,
        };
        let target = wire_target(&key.url);
        if changed {
            match &target {
                Some(_) => log::info!("following {} at {}", key.node, key.url),
                None => log::error!(
                    "the leader {} gives {:?}, not an http://IP:PORT URL: nothing can be relayed to it",
                    key.node,
                    key.url
                ),
            }
        }
        self.role = Role::Follower(Leader {
            node: key.node,
            target,
            create_revision: key.create_revision,
        });
    }

    /// Steps down once the lease may have run out.
    fn expire(&mut self, now: Instant) {
        if self.lease.is_some_and(|l| now >= l.until) {
            self.lease = None;
            self.step_down("its lease may have expired (no keep-alive answered in time)");
            self.next_campaign = now;
        }
    }

    fn step_down(&mut self, why: &str) {
        if matches!(self.role, Role::Leader(_)) {
            self.stats.stepped_down += 1;
            log::warn!("this node ({}) stops leading: {why}", self.node);
        }
        self.role = Role::Unknown;
    }

    fn count(&mut self, kind: ElectionCall, answered: bool) {
        let row = ElectionCall::ALL
            .iter()
            .position(|&k| k == kind)
            .unwrap_or(0);
        self.stats.calls[row][usize::from(!answered)] += 1;
    }
}

/// A peer's URL as a target, when it names an IP address: a host name
/// would need a DNS lookup, which never runs on the loop.
fn wire_target(url: &str) -> Option<Target> {
    let parsed = crate::net::upstream::HttpUrl::parse(url).ok()?;
    let ip = parsed.ip()?;
    Some(Target {
        addr: std::net::SocketAddr::new(ip, parsed.port),
        host: parsed.authority,
        target: "/".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn election(now: Instant) -> Election {
        let etcd = Target {
            addr: "127.0.0.1:2379".parse().unwrap(),
            host: "127.0.0.1:2379".into(),
            target: "/".into(),
        };
        Election::new(
            Keys::new("x", "n1"),
            "n1",
            "http://127.0.0.1:8081",
            Duration::from_secs(3),
            vec![etcd],
            Duration::from_secs(1),
            now,
        )
    }

    fn answer(e: &mut Election, kind: ElectionCall, body: &str, now: Instant) {
        let call = e.next_call(now).expect("a call is due");
        assert_eq!(call.kind, kind);
        e.answered(200, body.as_bytes(), now);
    }

    const GRANT: &str = r#"{"ID":"77","TTL":"3"}"#;
    const WON: &str = r#"{"header":{"revision":"9"},"succeeded":true}"#;

    fn held(node: &str, lease: i64) -> String {
        use base64::Engine;
        let value = base64::engine::general_purpose::STANDARD
            .encode(format!("{node} http://127.0.0.1:8082"));
        format!(
            r#"{{"responses":[{{"response_range":{{"kvs":[{{"value":"{value}","create_revision":"5","lease":"{lease}"}}]}}}}]}}"#
        )
    }

    #[test]
    fn a_node_grants_a_lease_then_campaigns_and_leads() {
        let t0 = Instant::now();
        let mut e = election(t0);
        answer(&mut e, ElectionCall::Grant, GRANT, t0);
        assert_eq!(e.term(t0), None);
        answer(&mut e, ElectionCall::Campaign, WON, t0);
        assert_eq!(
            e.term(t0),
            Some(Term {
                create_revision: 9,
                lease: 77
            })
        );
        assert!(e.next_call(t0).is_none(), "a leader does not campaign");
        let t1 = t0 + Duration::from_secs(1);
        answer(
            &mut e,
            ElectionCall::KeepAlive,
            r#"{"result":{"TTL":"3"}}"#,
            t1,
        );
        assert!(e.term(t1 + Duration::from_millis(2_900)).is_some());
        assert_eq!(e.stats().won, 1);
    }

    #[test]
    fn a_node_that_loses_follows_and_campaigns_again() {
        let t0 = Instant::now();
        let mut e = election(t0);
        answer(&mut e, ElectionCall::Grant, GRANT, t0);
        answer(&mut e, ElectionCall::Campaign, &held("n2", 55), t0);
        let leader = e.leader().cloned().expect("a follower");
        assert_eq!(leader.node, "n2");
        assert_eq!(
            leader.target.map(|t| t.addr),
            Some("127.0.0.1:8082".parse().unwrap())
        );
        assert!(e.next_call(t0).is_none());
        let later = t0 + Duration::from_millis(750);
        assert_eq!(
            e.next_call(later).map(|c| c.kind),
            Some(ElectionCall::Campaign)
        );
    }

    #[test]
    fn a_leader_steps_down_when_its_lease_may_have_run_out() {
        let t0 = Instant::now();
        let mut e = election(t0);
        answer(&mut e, ElectionCall::Grant, GRANT, t0);
        answer(&mut e, ElectionCall::Campaign, WON, t0);
        // Keep-alives sent but never answered: the lease counts from the
        // grant's send and ends here before it can end in etcd.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            e.next_call(t1).map(|c| c.kind),
            Some(ElectionCall::KeepAlive)
        );
        e.failed(&"timeout", t1);
        assert!(e.term(t0 + Duration::from_millis(2_999)).is_some());
        let t2 = t0 + Duration::from_secs(3);
        assert_eq!(e.term(t2), None);
        assert_eq!(e.next_call(t2).map(|c| c.kind), Some(ElectionCall::Grant));
        assert_eq!(*e.role(), Role::Unknown);
        assert_eq!(e.stats().stepped_down, 1);
    }

    #[test]
    fn an_expired_lease_in_etcd_deposes_and_a_lost_answer_is_recognised() {
        let t0 = Instant::now();
        let mut e = election(t0);
        answer(&mut e, ElectionCall::Grant, GRANT, t0);
        // The campaign's answer was lost, then asked again: the key holds
        // this node's lease, so it leads.
        answer(&mut e, ElectionCall::Campaign, &held("n1", 77), t0);
        assert!(e.term(t0).is_some());
        let t1 = t0 + Duration::from_secs(1);
        answer(
            &mut e,
            ElectionCall::KeepAlive,
            r#"{"result":{"ID":"77"}}"#,
            t1,
        );
        assert_eq!(e.term(t1), None);
        assert_eq!(e.next_call(t1).map(|c| c.kind), Some(ElectionCall::Grant));
    }

    #[test]
    fn a_refused_txn_hands_over_to_the_node_that_holds_the_key() {
        let t0 = Instant::now();
        let mut e = election(t0);
        answer(&mut e, ElectionCall::Grant, GRANT, t0);
        answer(&mut e, ElectionCall::Campaign, WON, t0);
        e.deposed(
            Some(LeaderKey {
                node: "n3".into(),
                url: "http://host.example:80".into(),
                create_revision: 12,
                lease: 5,
            }),
            t0,
        );
        let leader = e.leader().cloned().expect("a follower");
        assert_eq!(leader.node, "n3");
        assert_eq!(
            leader.target, None,
            "a host name is not resolved on the loop"
        );
    }

    #[test]
    fn a_node_that_finds_its_own_stale_key_revokes_it_instead_of_following_itself() {
        let t0 = Instant::now();
        let mut e = election(t0);
        answer(&mut e, ElectionCall::Grant, GRANT, t0);
        answer(&mut e, ElectionCall::Campaign, &held("n1", 55), t0);
        assert_eq!(*e.role(), Role::Unknown, "not a follower of itself");
        let revoke = e.next_call(t0).expect("the stale lease revoked");
        assert_eq!(revoke.kind, ElectionCall::Resign);
        assert!(String::from_utf8_lossy(&revoke.body).contains("\"55\""));
        e.answered(200, b"{}", t0);
        assert_eq!(
            e.next_call(t0).map(|c| c.kind),
            Some(ElectionCall::Campaign)
        );
    }

    #[test]
    fn a_resigning_leader_revokes_its_lease() {
        let t0 = Instant::now();
        let mut e = election(t0);
        answer(&mut e, ElectionCall::Grant, GRANT, t0);
        answer(&mut e, ElectionCall::Campaign, WON, t0);
        e.resign();
        answer(&mut e, ElectionCall::Resign, r#"{"header":{}}"#, t0);
        assert_eq!(*e.role(), Role::Unknown);
        assert!(e.next_call(t0).is_none());
    }
}
