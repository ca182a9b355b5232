//! The upstream hosts (`--upstream`, repeated) and which of them an attempt
//! goes to. Hedging pays most when a backup attempt goes to another
//! replica, so the attempts of one call go to hosts it has not tried yet,
//! round robin among those in rotation (and back to one it has tried
//! rather than to an ejected one).
//!
//! Outlier ejection, as Envoy's `consecutive_5xx` does it: a host whose
//! last [`EJECT_AFTER`] attempts all failed is taken out of rotation for a
//! back-off (1 s, doubling with each ejection in a row, at most 30 s).
//! When the back-off is over, the next attempt that picks it is a probe:
//! a success puts it back in rotation and forgets its ejections, a failure
//! ejects it again at once. With every host out, attempts go to them
//! anyway (Envoy's panic routing): out of rotation is a preference, and
//! the budget is what bounds the load then.
//!
//! Sans-IO: `now` is an argument.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Failure;

/// `--upstream` may be given this many times at most (a call's hosts
/// tried are a bit set).
pub const HOSTS_MAX: usize = 16;
/// Failures in a row that take a host out of rotation.
pub const EJECT_AFTER: u32 = 5;
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// How one attempt on a host ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostOutcome {
    Ok,
    Failed(Failure),
    /// Another attempt answered first, or the caller left: says nothing
    /// about the host.
    Cancelled,
}

impl HostOutcome {
    /// The `outcome` label of each, by [`HostOutcome::slot`].
    pub const LABELS: [&'static str; 6] = [
        "ok",
        "error",
        "unavailable",
        "malformed",
        "timeout",
        "cancelled",
    ];

    pub fn slot(self) -> usize {
        match self {
            HostOutcome::Ok => 0,
            HostOutcome::Failed(Failure::Status(_)) => 1,
            HostOutcome::Failed(
                Failure::Refused | Failure::Closed | Failure::Saturated | Failure::NotConfigured,
            ) => 2,
            HostOutcome::Failed(Failure::BadHttp(_) | Failure::NotJson) => 3,
            HostOutcome::Failed(Failure::Timeout) => 4,
            HostOutcome::Cancelled => 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    InRotation,
    /// Ejected; the first attempt after `until` is a probe.
    Out {
        until: Instant,
    },
    /// One attempt is out to see whether the host is back.
    Probing,
}

/// One host, as the metrics show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostStats {
    pub addr: SocketAddr,
    pub in_rotation: bool,
    pub ejections: u64,
    /// Attempts by how they ended, by [`HostOutcome::slot`].
    pub outcomes: [u64; HostOutcome::LABELS.len()],
}

#[derive(Debug)]
struct Host {
    addr: SocketAddr,
    state: State,
    failures_in_a_row: u32,
    ejections_in_a_row: u32,
    ejections: u64,
    /// Attempts by how they ended, by [`HostOutcome::slot`].
    outcomes: [u64; HostOutcome::LABELS.len()],
}

#[derive(Debug)]
pub struct Hosts {
    hosts: Vec<Host>,
    /// Where the round robin goes on from.
    next: usize,
}

impl Hosts {
    /// At most [`HOSTS_MAX`] hosts are kept (the configuration checks it).
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Hosts {
        let hosts = addrs
            .into_iter()
            .take(HOSTS_MAX)
            .map(|addr| Host {
                addr,
                state: State::InRotation,
                failures_in_a_row: 0,
                ejections_in_a_row: 0,
                ejections: 0,
                outcomes: [0; HostOutcome::LABELS.len()],
            })
            .collect();
        Hosts { hosts, next: 0 }
    }

    /// The host for a call's next attempt; `tried` has bit `i` set for
    /// each host `i` the call has sent to. A host whose back-off is over
    /// becomes a probe by being picked.
    pub fn pick(&mut self, tried: u16, now: Instant) -> usize {
        let n = self.hosts.len();
        if n <= 1 {
            return 0;
        }
        let untried = |h: usize| tried & (1 << h) == 0;
        let healthy = |h: usize| self.hosts[h].takes_attempts(now);
        let order = (0..n).map(|i| (self.next + i) % n);
        // A host in rotation the call has not tried; else one in rotation
        // it has (a retry to a healthy host beats one to an ejected host);
        // else, every host out, one it has not tried; else any.
        let choice = order
            .clone()
            .find(|&h| untried(h) && healthy(h))
            .or_else(|| order.clone().find(|&h| healthy(h)))
            .or_else(|| order.clone().find(|&h| untried(h)))
            .unwrap_or(self.next % n);
        self.next = (choice + 1) % n;
        if let Some(host) = self.hosts.get_mut(choice)
            && matches!(host.state, State::Out { until } if now >= until)
        {
            host.state = State::Probing;
        }
        choice
    }

    /// An attempt on `host` ended so.
    pub fn outcome(&mut self, host: usize, outcome: HostOutcome, now: Instant) {
        let Some(h) = self.hosts.get_mut(host) else {
            return;
        };
        h.outcomes[outcome.slot()] += 1;
        match outcome {
            HostOutcome::Ok => {
                h.state = State::InRotation;
                h.failures_in_a_row = 0;
                h.ejections_in_a_row = 0;
            }
            // An unfinished probe proves nothing: the next attempt probes.
            HostOutcome::Cancelled if h.state == State::Probing => {
                h.state = State::Out { until: now };
            }
            HostOutcome::Cancelled => {}
            HostOutcome::Failed(_) => {
                h.failures_in_a_row += 1;
                let eject = match h.state {
                    State::Probing => true,
                    State::InRotation => h.failures_in_a_row >= EJECT_AFTER,
                    State::Out { .. } => false,
                };
                if eject {
                    h.eject(now);
                }
            }
        }
    }

    /// The attempt `pick` chose `host` for was never sent (no free
    /// connection): a probe it would have been is still owed.
    pub fn unsent(&mut self, host: usize, now: Instant) {
        if let Some(h) = self.hosts.get_mut(host)
            && h.state == State::Probing
        {
            h.state = State::Out { until: now };
        }
    }

    /// Every host's counters and whether it is in rotation.
    pub fn stats(&self) -> impl Iterator<Item = HostStats> + '_ {
        self.hosts.iter().map(|h| HostStats {
            addr: h.addr,
            in_rotation: h.state == State::InRotation,
            ejections: h.ejections,
            outcomes: h.outcomes,
        })
    }
}

impl Host {
    /// In rotation, or out with its back-off over (a probe may go).
    fn takes_attempts(&self, now: Instant) -> bool {
        match self.state {
            State::InRotation => true,
            State::Out { until } => now >= until,
            State::Probing => false,
        }
    }

    fn eject(&mut self, now: Instant) {
        let doublings = self.ejections_in_a_row.min(5);
        let backoff = (BACKOFF_FIRST * (1 << doublings)).min(BACKOFF_MAX);
        self.state = State::Out {
            until: now + backoff,
        };
        self.ejections_in_a_row += 1;
        self.failures_in_a_row = 0;
        self.ejections += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(n: u16) -> Hosts {
        Hosts::new((0..n).map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i))))
    }

    /// The hosts of `n` first attempts.
    fn picks(h: &mut Hosts, n: usize, now: Instant) -> Vec<usize> {
        (0..n).map(|_| h.pick(0, now)).collect()
    }

    fn fail(h: &mut Hosts, host: usize, now: Instant) {
        h.outcome(host, HostOutcome::Failed(Failure::Status(500)), now);
    }

    #[test]
    fn first_attempts_take_turns_and_a_call_tries_each_host_once() {
        let t0 = Instant::now();
        let mut h = hosts(3);
        let firsts: Vec<usize> = (0..4).map(|_| h.pick(0, t0)).collect();
        assert_eq!(firsts, [0, 1, 2, 0]);
        let first = h.pick(0, t0);
        let second = h.pick(1 << first, t0);
        let third = h.pick(1 << first | 1 << second, t0);
        let mut all = [first, second, third];
        all.sort();
        assert_eq!(all, [0, 1, 2], "three attempts, three hosts");
        assert!(h.pick(0b111, t0) < 3, "with every host tried, any will do");
    }

    #[test]
    fn a_failing_host_is_ejected_backs_off_and_is_probed_back_in() {
        let t0 = Instant::now();
        let mut h = hosts(2);
        for _ in 0..EJECT_AFTER {
            fail(&mut h, 1, t0);
        }
        assert!(!h.stats().nth(1).unwrap().in_rotation);
        for _ in 0..10 {
            assert_eq!(h.pick(0, t0), 0, "only host 0 is in rotation");
        }
        assert_eq!(
            h.pick(1, t0),
            0,
            "a call that tried 0 retries there, not on the ejected host"
        );
        // After its first back-off (1 s), one probe; it fails: out for 2 s.
        let t1 = t0 + Duration::from_secs(1);
        assert!(picks(&mut h, 2, t1).contains(&1), "the probe");
        assert_eq!(picks(&mut h, 2, t1), [0, 0], "one probe at a time");
        fail(&mut h, 1, t1);
        let t2 = t1 + Duration::from_millis(1500);
        assert_eq!(picks(&mut h, 2, t2), [0, 0], "still backing off");
        let t3 = t1 + Duration::from_secs(2);
        assert!(picks(&mut h, 2, t3).contains(&1), "the second probe");
        h.outcome(1, HostOutcome::Ok, t3);
        assert!(h.stats().all(|s| s.in_rotation));
        assert_eq!(h.stats().nth(1).unwrap().ejections, 2);
        let back = picks(&mut h, 4, t3);
        assert_eq!(back.iter().filter(|&&p| p == 1).count(), 2, "{back:?}");
    }

    #[test]
    fn an_unfinished_probe_is_owed_to_the_next_attempt() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        // Cancelled (another attempt answered first), or never sent (no free
        // connection): either way the next attempt probes.
        let unfinished: [fn(&mut Hosts, Instant); 2] = [
            |h, now| h.outcome(0, HostOutcome::Cancelled, now),
            |h, now| h.unsent(0, now),
        ];
        for (i, end) in unfinished.into_iter().enumerate() {
            let mut h = hosts(2);
            for _ in 0..EJECT_AFTER {
                fail(&mut h, 0, t0);
            }
            assert_eq!(h.pick(0, t1), 0, "probe");
            end(&mut h, t1);
            assert_eq!(h.pick(0, t1), 1);
            assert_eq!(h.pick(0, t1), 0, "probe again");
            let cancelled = h.stats().next().unwrap().outcomes[5];
            assert_eq!(
                cancelled,
                u64::from(i == 0),
                "an unsent attempt counts nowhere"
            );
        }
        let mut h = hosts(2);
        h.unsent(1, t0);
        assert!(
            h.stats().all(|s| s.in_rotation),
            "a host in rotation stays so"
        );
    }

    #[test]
    fn with_every_host_out_attempts_still_go() {
        let t0 = Instant::now();
        let mut h = hosts(2);
        for host in [0, 1] {
            for _ in 0..EJECT_AFTER {
                fail(&mut h, host, t0);
            }
        }
        assert!(h.stats().all(|s| !s.in_rotation));
        let picks = [h.pick(0, t0), h.pick(0, t0)];
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
        // The back-off doubles with each ejection in a row, up to 30 s.
        let mut h = hosts(1);
        let mut now = t0;
        let mut backoffs = Vec::new();
        for _ in 0..8 {
            for _ in 0..EJECT_AFTER {
                fail(&mut h, 0, now);
            }
            let State::Out { until } = h.hosts[0].state else {
                panic!("not ejected")
            };
            backoffs.push((until - now).as_secs());
            now = until;
            h.hosts[0].state = State::InRotation;
        }
        assert_eq!(backoffs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(h.pick(0, now), 0, "one host takes every attempt");
    }

    #[test]
    fn every_outcome_counts_under_its_label() {
        let t0 = Instant::now();
        let mut h = hosts(1);
        for outcome in [
            HostOutcome::Ok,
            HostOutcome::Failed(Failure::Status(502)),
            HostOutcome::Failed(Failure::Refused),
            HostOutcome::Failed(Failure::NotJson),
            HostOutcome::Failed(Failure::Timeout),
            HostOutcome::Cancelled,
        ] {
            h.outcome(0, outcome, t0);
        }
        assert_eq!(h.stats().next().unwrap().outcomes, [1; 6]);
    }
}
