//! The /api/smart service: hedged calls to a slow, flaky upstream that still
//! answer within the caller's deadline whenever any attempt can.
//!
//! The plan: send one request. If it has not answered successfully within the
//! hedge delay, or it fails sooner, send two more at once. The first
//! successful answer (a 2xx whose body is JSON) wins and the others are
//! cancelled; when every attempt sent has failed, the answer is the most
//! telling failure; at the caller's deadline it is `upstream_timeout`.
//!
//! [`Plan`] is that rule as a sans-IO state machine: events in (a tick of the
//! clock, an attempt's outcome, the deadline), [`Step`]s out (send N more,
//! wait, answer). Time is an argument, so every path is tested without a
//! socket or a sleep. [`SmartService`] keeps the live plans by park ticket and
//! their hedge timers (`base::deadlines`); the glue that sends through the outbound client and
//! writes replies is in `routes/smart.rs`. Deadlines are the park's
//! (`crate::reply::park`): the loop expires them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::base::deadlines::Deadlines;
use crate::http::query::{self, Lookup};
use crate::http::upstream::ResponseError;
use crate::net::upstream::{CallId, Outbound, Target};
use crate::ops::trace::SpanStart;
use crate::reply::park::Ticket;

/// Attempts per call at most: the first, then two hedges.
pub const ATTEMPTS_MAX: u8 = 3;
/// The accepted range of `timeout`, in milliseconds.
pub const TIMEOUT_MS_MIN: u64 = 1;
pub const TIMEOUT_MS_MAX: u64 = 60_000;
pub const DEFAULT_HEDGE_AFTER: Duration = Duration::from_millis(300);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmartConfig {
    /// Where attempts go, resolved once at start-up.
    pub upstream: Option<Target>,
    pub hedge_after: Duration,
    /// Outbound connections at most, idle pooled ones included.
    pub conns_max: usize,
}

impl Default for SmartConfig {
    fn default() -> Self {
        SmartConfig {
            upstream: None,
            hedge_after: DEFAULT_HEDGE_AFTER,
            conns_max: 512,
        }
    }
}

/// Why an attempt, or the whole call, failed. The variants group into the
/// kinds a client sees ([`Failure::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The deadline passed with no successful answer.
    Timeout,
    /// The upstream answered with a status other than 2xx.
    Status(u16),
    /// The connection could not be opened.
    Refused,
    /// The upstream closed or reset the connection before a whole answer.
    Closed,
    /// Every outbound connection fibd may open is busy.
    Saturated,
    /// The answer was not HTTP/1.1 fibd accepts, or over the size cap.
    BadHttp(ResponseError),
    /// A 2xx whose body is not JSON.
    NotJson,
    /// No `--upstream` was given.
    NotConfigured,
}

impl Failure {
    /// The `error` field: what kind of failure, for programs.
    pub fn code(self) -> &'static str {
        match self {
            Failure::Timeout => "upstream_timeout",
            Failure::Status(_) => "upstream_error",
            Failure::Refused | Failure::Closed | Failure::Saturated => "upstream_unavailable",
            Failure::BadHttp(_) | Failure::NotJson => "upstream_malformed",
            Failure::NotConfigured => "upstream_not_configured",
        }
    }

    /// Which failure the answer names when attempts failed differently: an
    /// upstream that answered says more than one that could not be reached.
    fn rank(self) -> u8 {
        match self {
            Failure::Status(_) => 5,
            Failure::BadHttp(_) | Failure::NotJson => 4,
            Failure::Closed => 3,
            Failure::Refused => 2,
            Failure::Saturated => 1,
            Failure::Timeout | Failure::NotConfigured => 0,
        }
    }
}

/// How a call ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    Ok,
    /// The caller hung up first.
    ClientGone,
    Failed(Failure),
}

impl CallEnd {
    /// The `outcome` label of each end, by [`CallEnd::slot`].
    pub const LABELS: [&'static str; 7] = [
        "ok",
        "client_gone",
        "upstream_timeout",
        "upstream_error",
        "upstream_unavailable",
        "upstream_malformed",
        "upstream_not_configured",
    ];

    /// Its place in [`CallEnd::LABELS`]; a failure counts under its code.
    pub fn slot(self) -> usize {
        match self {
            CallEnd::Ok => 0,
            CallEnd::ClientGone => 1,
            CallEnd::Failed(Failure::Timeout) => 2,
            CallEnd::Failed(Failure::Status(_)) => 3,
            CallEnd::Failed(Failure::Refused | Failure::Closed | Failure::Saturated) => 4,
            CallEnd::Failed(Failure::BadHttp(_) | Failure::NotJson) => 5,
            CallEnd::Failed(Failure::NotConfigured) => 6,
        }
    }
}

/// What a client is told when no attempt succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpstreamFailure {
    pub failure: Failure,
    /// Elapsed since the request was read.
    pub time_ms: u64,
    pub attempts: u8,
}

/// What the plan decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An attempt answered; `attempts` were sent in all.
    Success {
        attempts: u8,
    },
    Failure {
        failure: Failure,
        attempts: u8,
    },
}

/// A decided call: what the plan concluded, how long it took, and the
/// winning attempt's JSON (trimmed; empty for a failure).
#[derive(Debug)]
pub struct SmartReply {
    pub outcome: Outcome,
    pub time_ms: u64,
    pub answer: Vec<u8>,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Send this many more attempts now, then report with [`Plan::sent`].
    Send(u8),
    /// Answer now and cancel what is still in flight.
    Answer(Outcome),
}

/// One call's hedging plan.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    hedge_at: Instant,
    hedged: bool,
    sent: u8,
    in_flight: u8,
    /// The most telling failure so far.
    failure: Option<Failure>,
    done: bool,
}

impl Plan {
    /// A plan started at `now`; its first step is to send one attempt.
    pub fn start(now: Instant, hedge_after: Duration) -> (Plan, Step) {
        let plan = Plan {
            hedge_at: now + hedge_after,
            hedged: false,
            sent: 0,
            in_flight: 0,
            failure: None,
            done: false,
        };
        (plan, Step::Send(1))
    }

    /// Attempts sent (attempts counts what was sent).
    pub fn attempts(&self) -> u8 {
        self.sent
    }

    /// When the hedges are due, while they are not sent.
    pub fn hedge_at(&self) -> Option<Instant> {
        (!self.hedged && !self.done).then_some(self.hedge_at)
    }

    /// `sent` of the attempts last asked for went out; the rest found no
    /// free connection.
    pub fn sent(&mut self, asked: u8, sent: u8) -> Step {
        self.sent += sent;
        self.in_flight += sent;
        if sent < asked {
            self.note(Failure::Saturated);
        }
        if self.in_flight == 0 && !self.done {
            return self.fail();
        }
        Step::Wait
    }

    /// The clock moved: the hedges go once their moment has come.
    pub fn tick(&mut self, now: Instant) -> Step {
        if self.done || self.hedged || now < self.hedge_at {
            return Step::Wait;
        }
        self.hedge()
    }

    pub fn succeeded(&mut self) -> Step {
        if self.done {
            return Step::Wait;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.done = true;
        Step::Answer(Outcome::Success {
            attempts: self.sent,
        })
    }

    /// An attempt failed: hedge at once if not yet done, answer when nothing
    /// is left in flight.
    pub fn failed(&mut self, failure: Failure) -> Step {
        if self.done {
            return Step::Wait;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.note(failure);
        if !self.hedged {
            return self.hedge();
        }
        if self.in_flight == 0 {
            return self.fail();
        }
        Step::Wait
    }

    /// The caller's deadline passed.
    pub fn expire(&mut self) -> Step {
        if self.done {
            return Step::Wait;
        }
        self.done = true;
        Step::Answer(Outcome::Failure {
            failure: Failure::Timeout,
            attempts: self.sent,
        })
    }

    fn hedge(&mut self) -> Step {
        self.hedged = true;
        Step::Send(ATTEMPTS_MAX - self.sent)
    }

    fn note(&mut self, failure: Failure) {
        if self.failure.is_none_or(|f| failure.rank() >= f.rank()) {
            self.failure = Some(failure);
        }
    }

    fn fail(&mut self) -> Step {
        self.done = true;
        Step::Answer(Outcome::Failure {
            failure: self.failure.unwrap_or(Failure::Saturated),
            attempts: self.sent,
        })
    }
}

/// One attempt in flight.
#[derive(Clone, Copy, Debug)]
pub struct Attempt {
    pub call: CallId,
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

/// The live calls by park ticket, and their hedge moments in time order.
#[derive(Debug)]
pub struct SmartService {
    config: SmartConfig,
    request: Option<Outbound>,
    live: HashMap<Ticket, Live>,
    /// Hedge moments; a call that settled or hedged already is skipped.
    hedges: Deadlines<Ticket>,
}

impl SmartService {
    pub fn new(config: SmartConfig) -> SmartService {
        SmartService {
            request: config
                .upstream
                .as_ref()
                .map(|upstream| upstream.request("GET", &ATTEMPT_FIELDS, b"")),
            config,
            live: HashMap::new(),
            hedges: Deadlines::default(),
        }
    }

    /// The request attempts send; `None` without `--upstream`.
    pub fn request(&self) -> Option<&Outbound> {
        self.request.as_ref()
    }

    /// The request a traced attempt sends: the same, with its `traceparent`
    /// (encoded per attempt, as only sampled requests need it).
    pub fn traced_request(&self, traceparent: &str) -> Option<Outbound> {
        let [accept, agent] = ATTEMPT_FIELDS;
        let fields = [accept, agent, ("traceparent", traceparent)];
        Some(self.config.upstream.as_ref()?.request("GET", &fields, b""))
    }

    pub fn config(&self) -> &SmartConfig {
        &self.config
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

/// `timeout=MS`, required, in the accepted range; no other parameter.
pub fn parse_timeout(query: &[u8]) -> Result<Duration, &'static str> {
    const RANGE: &str = "timeout is required: an integer number of milliseconds from 1 to 60000, as in /api/smart?timeout=800";
    if query::has_unknown(query, &["timeout"]).is_some() {
        return Err(
            "unknown query parameter; /api/smart takes only timeout, milliseconds from 1 to 60000",
        );
    }
    let Lookup::Present(raw) = query::get(query, "timeout") else {
        return Err(RANGE);
    };
    let mut buf = [0u8; 8];
    let len = query::decode_into(raw, &mut buf).map_err(|_| RANGE)?;
    let digits = buf.get(..len).unwrap_or_default();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RANGE);
    }
    let ms = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    if !(TIMEOUT_MS_MIN..=TIMEOUT_MS_MAX).contains(&ms) {
        return Err(RANGE);
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_failure_counts_under_its_own_code() {
        let failures = [
            Failure::Timeout,
            Failure::Status(500),
            Failure::Refused,
            Failure::Closed,
            Failure::Saturated,
            Failure::BadHttp(ResponseError::InvalidStatusLine),
            Failure::NotJson,
            Failure::NotConfigured,
        ];
        for failure in failures {
            assert_eq!(
                CallEnd::LABELS[CallEnd::Failed(failure).slot()],
                failure.code()
            );
        }
        assert_eq!(CallEnd::LABELS[CallEnd::Ok.slot()], "ok");
        assert_eq!(CallEnd::LABELS[CallEnd::ClientGone.slot()], "client_gone");
    }

    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_fast_success_sends_one_attempt() {
        let t0 = Instant::now();
        let (mut plan, step) = Plan::start(t0, ms(300));
        assert_eq!(step, Step::Send(1));
        assert_eq!(plan.sent(1, 1), Step::Wait);
        assert_eq!(plan.tick(t0 + ms(299)), Step::Wait);
        assert_eq!(
            plan.succeeded(),
            Step::Answer(Outcome::Success { attempts: 1 })
        );
        assert_eq!(
            plan.tick(t0 + ms(400)),
            Step::Wait,
            "no hedge after the answer"
        );
        assert_eq!(plan.hedge_at(), None);
    }

    #[test]
    fn a_slow_first_attempt_is_hedged_at_the_delay_and_rescued() {
        let t0 = Instant::now();
        let (mut plan, _) = Plan::start(t0, ms(300));
        plan.sent(1, 1);
        assert_eq!(plan.hedge_at(), Some(t0 + ms(300)));
        assert_eq!(plan.tick(t0 + ms(300)), Step::Send(2));
        assert_eq!(plan.sent(2, 2), Step::Wait);
        assert_eq!(plan.tick(t0 + ms(900)), Step::Wait, "hedges go once");
        assert_eq!(
            plan.succeeded(),
            Step::Answer(Outcome::Success { attempts: 3 })
        );
    }

    #[test]
    fn a_fast_failure_hedges_at_once() {
        let t0 = Instant::now();
        let (mut plan, _) = Plan::start(t0, ms(300));
        plan.sent(1, 1);
        assert_eq!(plan.failed(Failure::Status(500)), Step::Send(2));
        plan.sent(2, 2);
        assert_eq!(plan.failed(Failure::Refused), Step::Wait);
        assert_eq!(
            plan.succeeded(),
            Step::Answer(Outcome::Success { attempts: 3 })
        );
    }

    #[test]
    fn all_failing_answers_the_most_telling_failure_at_once() {
        let t0 = Instant::now();
        let (mut plan, _) = Plan::start(t0, ms(300));
        plan.sent(1, 1);
        plan.failed(Failure::Refused);
        plan.sent(2, 2);
        assert_eq!(plan.failed(Failure::Status(502)), Step::Wait);
        assert_eq!(
            plan.failed(Failure::Closed),
            Step::Answer(Outcome::Failure {
                failure: Failure::Status(502),
                attempts: 3
            })
        );
        assert_eq!(plan.expire(), Step::Wait, "answered once");
    }

    #[test]
    fn the_deadline_answers_timeout_with_what_was_sent() {
        let t0 = Instant::now();
        let (mut plan, _) = Plan::start(t0, ms(300));
        plan.sent(1, 1);
        plan.tick(t0 + ms(300));
        plan.sent(2, 2);
        plan.failed(Failure::Status(500));
        assert_eq!(
            plan.expire(),
            Step::Answer(Outcome::Failure {
                failure: Failure::Timeout,
                attempts: 3
            })
        );
        assert_eq!(
            plan.succeeded(),
            Step::Wait,
            "a late success changes nothing"
        );
    }

    #[test]
    fn no_free_connection_fails_at_once_and_limits_the_hedges() {
        let t0 = Instant::now();
        let (mut plan, _) = Plan::start(t0, ms(300));
        assert_eq!(
            plan.sent(1, 0),
            Step::Answer(Outcome::Failure {
                failure: Failure::Saturated,
                attempts: 0
            })
        );
        let (mut plan, _) = Plan::start(t0, ms(300));
        plan.sent(1, 1);
        assert_eq!(plan.tick(t0 + ms(301)), Step::Send(2));
        assert_eq!(plan.sent(2, 1), Step::Wait);
        plan.failed(Failure::Closed);
        assert_eq!(
            plan.failed(Failure::Closed),
            Step::Answer(Outcome::Failure {
                failure: Failure::Closed,
                attempts: 2
            })
        );
        // Hedges that found no connection after a failure: nothing in flight.
        let (mut plan, _) = Plan::start(t0, ms(300));
        plan.sent(1, 1);
        assert_eq!(plan.failed(Failure::Refused), Step::Send(2));
        assert_eq!(
            plan.sent(2, 0),
            Step::Answer(Outcome::Failure {
                failure: Failure::Refused,
                attempts: 1
            })
        );
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
            plan.sent(1, 1);
            let live = Live {
                plan,
                started: t0,
                deadline: t0 + ms(1000),
                attempts: Vec::new(),
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

    #[derive(Clone, Copy, Debug)]
    enum Event {
        Tick(u64),
        Success,
        Failed(Failure),
        Expire,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u64..1000).prop_map(Event::Tick),
            Just(Event::Success),
            Just(Event::Failed(Failure::Status(500))),
            Just(Event::Failed(Failure::Closed)),
            Just(Event::Failed(Failure::Refused)),
            Just(Event::Expire),
        ]
    }

    proptest! {
        /// Whatever happens, in any order: at most three attempts, hedges
        /// sent once, exactly one answer, and nothing after it. Outcomes
        /// only come for attempts in flight, as the client reports them.
        #[test]
        fn the_plan_answers_once_and_never_sends_more_than_three(
            events in proptest::collection::vec(event(), 0..20),
            room in proptest::collection::vec(0u8..=3, 2),
        ) {
            let t0 = Instant::now();
            let (mut plan, first) = Plan::start(t0, ms(300));
            let mut in_flight = 0u8;
            let mut answers = 0;
            let mut sends = 0;
            let mut room = room.into_iter();
            let mut step = first;
            for e in events.into_iter().map(Some).chain([Some(Event::Expire), None]) {
                // Carry out the step as the service would.
                while let Step::Send(n) = step {
                    sends += 1;
                    let sent = n.min(room.next().unwrap_or(n));
                    in_flight += sent;
                    step = plan.sent(n, sent);
                }
                if let Step::Answer(_) = step {
                    answers += 1;
                    in_flight = 0;
                }
                prop_assert!(plan.attempts() <= ATTEMPTS_MAX);
                prop_assert!(sends <= 2);
                let Some(e) = e else { break };
                step = match e {
                    Event::Tick(at) => plan.tick(t0 + ms(at)),
                    Event::Success if in_flight > 0 => {
                        in_flight -= 1;
                        plan.succeeded()
                    }
                    Event::Failed(f) if in_flight > 0 => {
                        in_flight -= 1;
                        plan.failed(f)
                    }
                    Event::Success | Event::Failed(_) => Step::Wait,
                    Event::Expire => plan.expire(),
                };
                if answers > 0 {
                    prop_assert_eq!(step, Step::Wait, "a step after the answer");
                }
            }
            prop_assert_eq!(answers, 1);
        }
    }

    #[test]
    fn timeouts_outside_the_range_are_refused() {
        for good in [
            "timeout=1",
            "timeout=800",
            "timeout=60000",
            "timeout=%38%30",
        ] {
            assert!(parse_timeout(good.as_bytes()).is_ok(), "{good}");
        }
        assert_eq!(parse_timeout(b"timeout=800"), Ok(ms(800)));
        for bad in [
            "",
            "timeout",
            "timeout=",
            "timeout=0",
            "timeout=60001",
            "timeout=-5",
            "timeout=1.5",
            "timeout=1e3",
            "timeout=99999999999",
            "timeout=1&timeout=2",
            "timeout=5&x=1",
        ] {
            let message = parse_timeout(bad.as_bytes()).unwrap_err();
            assert!(message.contains("1 to 60000"), "{bad}: {message}");
        }
    }
}
