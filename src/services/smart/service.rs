//! The live /api/smart calls by park ticket and their hedge moments, and
//! what every call shares: the hosts, the budget and the hedge delay.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::AttemptKind;
use super::budget::{Budget, BudgetConfig, BudgetState};
use super::delay::{self, HedgeAfter, HedgeDelay};
use super::hosts::{HOSTS_MAX, HostOutcome, HostStats, Hosts};
use super::plan::{Outcome, Plan, Step};
use crate::base::deadlines::Deadlines;
use crate::net::upstream::{CallId, Outbound, Target};
use crate::ops::trace::SpanStart;
use crate::reply::park::Ticket;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmartConfig {
    /// Where attempts go (`--upstream`, repeatable), resolved once at
    /// start-up; at most [`HOSTS_MAX`].
    pub upstreams: Vec<Target>,
    pub hedge_after: HedgeAfter,
    /// `None`: `--hedge-budget off`.
    pub budget: Option<BudgetConfig>,
    /// Outbound connections at most, idle pooled ones included, across
    /// every host.
    pub conns_max: usize,
}

impl Default for SmartConfig {
    fn default() -> Self {
        SmartConfig {
            upstreams: Vec::new(),
            hedge_after: HedgeAfter::Fixed(delay::DELAY_DEFAULT),
            budget: Some(BudgetConfig::default()),
            conns_max: 512,
        }
    }
}

/// A decided call: what the plan concluded, how long it took, and the
/// winning attempt's JSON (trimmed; empty for a failure).
#[derive(Debug)]
pub struct SmartReply {
    pub outcome: Outcome,
    pub time_ms: u64,
    pub answer: Vec<u8>,
}

/// What the service counts, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmartCounts {
    /// Attempts sent, by [`AttemptKind::slot`].
    pub sent: [u64; 3],
    /// Attempts whose answer was the call's, by kind.
    pub won: [u64; 3],
    /// Attempts cancelled in flight: another answered first, the caller
    /// left, or the deadline passed.
    pub cancelled: u64,
    /// Extra attempts a plan asked for that the budget refused.
    pub budget_refused: u64,
}

/// The service's state at scrape time.
#[derive(Clone, Copy, Debug, Default)]
pub struct SmartGauges {
    pub counts: SmartCounts,
    pub hedge_delay: Duration,
    pub budget: BudgetState,
    /// One entry for each host, in `--upstream` order; `None` past them.
    pub hosts: [Option<HostStats>; HOSTS_MAX],
}

/// One attempt in flight.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub call: CallId,
    /// The host it went to, by its place in `--upstream` order.
    pub host: usize,
    pub kind: AttemptKind,
    pub sent_at: Instant,
    /// Its client span, a child of the request's; its context went out in
    /// the attempt's `traceparent`.
    pub span: Option<SpanStart>,
}

/// A call in progress.
#[derive(Debug)]
pub struct Live {
    pub plan: Plan,
    pub started: Instant,
    pub deadline: Instant,
    /// Attempts in flight.
    pub attempts: Vec<Attempt>,
    /// Bit `i` set: the call has sent an attempt to host `i`.
    pub tried: u16,
}

impl Live {
    /// Takes the attempt that made `call` out of those in flight.
    pub fn take_attempt(&mut self, call: CallId) -> Option<Attempt> {
        let i = self.attempts.iter().position(|a| a.call == call)?;
        Some(self.attempts.swap_remove(i))
    }
}

/// The fields every attempt sends.
const ATTEMPT_FIELDS: [(&str, &str); 2] = [("Accept", "application/json"), ("User-Agent", "fibd")];

/// The live calls by park ticket and their hedge moments in time order,
/// and what every call shares: the hosts, the budget and the delay.
#[derive(Debug)]
pub struct SmartService {
    config: SmartConfig,
    /// One request per host, encoded once.
    requests: Vec<Outbound>,
    hosts: Hosts,
    budget: Budget,
    delay: HedgeDelay,
    counts: SmartCounts,
    live: HashMap<Ticket, Live>,
    /// Hedge moments; a call that settled or hedged already is skipped.
    hedges: Deadlines<Ticket>,
}

impl SmartService {
    pub fn new(config: SmartConfig) -> SmartService {
        SmartService {
            requests: config
                .upstreams
                .iter()
                .map(|upstream| upstream.request("GET", &ATTEMPT_FIELDS, b""))
                .collect(),
            hosts: Hosts::new(config.upstreams.iter().map(|u| u.addr)),
            budget: Budget::new(config.budget),
            delay: HedgeDelay::new(config.hedge_after),
            counts: SmartCounts::default(),
            config,
            live: HashMap::new(),
            hedges: Deadlines::default(),
        }
    }

    /// The `--upstream` hosts, in the order attempts count them.
    pub fn upstreams(&self) -> &[Target] {
        &self.config.upstreams
    }

    /// Whether any `--upstream` was given.
    pub fn is_configured(&self) -> bool {
        !self.requests.is_empty()
    }

    /// The request attempts to `host` send.
    pub fn request(&self, host: usize) -> Option<&Outbound> {
        self.requests.get(host)
    }

    /// The request a traced attempt sends: the same, with its `traceparent`
    /// (encoded per attempt, as only sampled requests need it).
    pub fn traced_request(&self, host: usize, traceparent: &str) -> Option<Outbound> {
        let [accept, agent] = ATTEMPT_FIELDS;
        let fields = [accept, agent, ("traceparent", traceparent)];
        Some(
            self.config
                .upstreams
                .get(host)?
                .request("GET", &fields, b""),
        )
    }

    /// A new call's plan, with the hedge delay of the moment.
    pub fn plan(&mut self, now: Instant) -> (Plan, Step) {
        Plan::start(now, self.delay.current(now))
    }

    /// How many of `asked` attempts of this kind the budget lets go now.
    pub fn admit(&mut self, kind: AttemptKind, asked: u8, now: Instant) -> u8 {
        let admitted = self.budget.admit(kind, asked, now);
        self.counts.budget_refused += u64::from(asked - admitted);
        admitted
    }

    /// `n` attempts of this kind went out.
    pub fn sent(&mut self, kind: AttemptKind, n: u8, now: Instant) {
        self.budget.sent(kind, n, now);
        self.counts.sent[kind.slot()] += u64::from(n);
    }

    /// The host for a call's next attempt, one it has not tried if it can.
    pub fn pick_host(&mut self, tried: u16, now: Instant) -> usize {
        self.hosts.pick(tried, now)
    }

    /// The attempt meant for `host` found no free connection.
    pub fn attempt_unsent(&mut self, host: usize, now: Instant) {
        self.hosts.unsent(host, now);
    }

    /// An attempt ended so: its host's record, and for a success the
    /// latency the hedge delay learns from.
    pub fn attempt_ended(&mut self, attempt: &Attempt, outcome: HostOutcome, now: Instant) {
        self.hosts.outcome(attempt.host, outcome, now);
        match outcome {
            HostOutcome::Ok => {
                let latency = now.saturating_duration_since(attempt.sent_at);
                self.delay.observe(latency, now);
                self.counts.won[attempt.kind.slot()] += 1;
            }
            HostOutcome::Cancelled => self.counts.cancelled += 1,
            HostOutcome::Failed(_) => {}
        }
    }

    pub fn gauges(&self, now: Instant) -> SmartGauges {
        let mut hosts = [None; HOSTS_MAX];
        for (slot, stats) in hosts.iter_mut().zip(self.hosts.stats()) {
            *slot = Some(stats);
        }
        SmartGauges {
            counts: self.counts,
            hedge_delay: self.delay.latest(),
            budget: self.budget.state(now),
            hosts,
        }
    }

    pub fn insert(&mut self, ticket: Ticket, live: Live) {
        let hedge_at = live.plan.hedge_at();
        self.live.insert(ticket, live);
        if let Some(at) = hedge_at {
            let live = &self.live;
            self.hedges
                .push(at, ticket, live.len(), |t| is_hedge_pending(live, t));
        }
    }

    pub fn get(&self, ticket: Ticket) -> Option<&Live> {
        self.live.get(&ticket)
    }

    pub fn get_mut(&mut self, ticket: Ticket) -> Option<&mut Live> {
        self.live.get_mut(&ticket)
    }

    pub fn remove(&mut self, ticket: Ticket) -> Option<Live> {
        let live = self.live.remove(&ticket);
        if self.live.is_empty() {
            self.hedges.clear();
        }
        live
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// A call whose hedge moment has come (at or before `now`).
    pub fn due_hedge(&mut self, now: Instant) -> Option<Ticket> {
        let live = &self.live;
        self.hedges.pop_due(now, |t| is_hedge_pending(live, t))
    }

    /// The next hedge moment, for the loop's sleep.
    pub fn next_hedge(&mut self) -> Option<Instant> {
        let live = &self.live;
        self.hedges.next(|t| is_hedge_pending(live, t))
    }
}

/// Whether the call under `ticket` is live and has not hedged yet.
fn is_hedge_pending(live: &HashMap<Ticket, Live>, ticket: &Ticket) -> bool {
    live.get(ticket)
        .is_some_and(|l| l.plan.hedge_at().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn hedge_moments_surface_in_order_and_settled_calls_never() {
        let t0 = Instant::now();
        let mut service = SmartService::new(SmartConfig::default());
        let mut parking = crate::reply::park::Parking::new(8);
        let conn = crate::reply::park::ConnId { key: 1, serial: 1 };
        let mut tickets = Vec::new();
        for i in 0..3 {
            let ticket = parking.park(conn, (), None).unwrap();
            let (mut plan, _) = Plan::start(t0 + ms(i * 10), ms(300));
            plan.sent(1, 1, 1);
            let live = Live {
                plan,
                started: t0,
                deadline: t0 + ms(1000),
                attempts: Vec::new(),
                tried: 0,
            };
            service.insert(ticket, live);
            tickets.push(ticket);
        }
        service.remove(tickets[0]);
        assert_eq!(service.next_hedge(), Some(t0 + ms(310)));
        assert_eq!(service.due_hedge(t0 + ms(309)), None);
        assert_eq!(service.due_hedge(t0 + ms(330)), Some(tickets[1]));
        assert_eq!(service.due_hedge(t0 + ms(330)), Some(tickets[2]));
        assert_eq!(service.due_hedge(t0 + ms(330)), None);
        assert_eq!(service.len(), 2);
    }
}
