//! One call's hedging plan as a sans-IO state machine: events in (a tick of
//! the clock, an attempt's outcome, the deadline), [`Step`]s out (send N
//! more, wait, answer). Time is an argument, so every path is tested
//! without a socket or a sleep.
//!
//! The seed's plan: send one attempt. If it has not succeeded within the
//! hedge delay, or it fails sooner, send two more at once. The first
//! successful answer wins and the others are cancelled; when every attempt
//! sent has failed, the answer is the most telling failure. The plan asks
//! for the attempts it wants; the budget (`super::budget`) may admit fewer,
//! and then a later failure asks again for what is left, so a call under a
//! tight budget retries one attempt at a time. A call whose extra attempts
//! were refused says so in its failure.

use std::time::{Duration, Instant};

use super::{AttemptKind, Failure};

/// Attempts per call at most: the first, then two more.
pub const ATTEMPTS_MAX: u8 = 3;

/// What the plan decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An attempt answered; `attempts` were sent in all.
    Success { attempts: u8 },
    Failure {
        failure: Failure,
        attempts: u8,
        /// The budget refused an extra attempt this call asked for.
        budget_exhausted: bool,
    },
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Wait,
    /// Send up to `count` more attempts now, then report with [`Plan::sent`].
    Send {
        count: u8,
        kind: AttemptKind,
    },
    /// Answer now and cancel what is still in flight.
    Answer(Outcome),
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    hedge_at: Instant,
    hedged: bool,
    sent: u8,
    in_flight: u8,
    /// The most telling failure so far.
    failure: Option<Failure>,
    budget_exhausted: bool,
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
            budget_exhausted: false,
            done: false,
        };
        let first = Step::Send {
            count: 1,
            kind: AttemptKind::First,
        };
        (plan, first)
    }

    /// Attempts sent.
    pub fn attempts(&self) -> u8 {
        self.sent
    }

    /// When the hedges are due, while they are not sent.
    pub fn hedge_at(&self) -> Option<Instant> {
        (!self.hedged && !self.done && self.sent < ATTEMPTS_MAX).then_some(self.hedge_at)
    }

    /// Of `asked` attempts, the budget admitted `admitted` and `sent` of
    /// those went out; the rest found no free connection.
    pub fn sent(&mut self, asked: u8, admitted: u8, sent: u8) -> Step {
        self.sent += sent;
        self.in_flight += sent;
        if admitted < asked {
            self.budget_exhausted = true;
        }
        if sent < admitted {
            self.note(Failure::Saturated);
        }
        if self.in_flight == 0 && !self.done {
            return self.fail();
        }
        Step::Wait
    }

    /// The clock moved: the hedges go once their moment has come.
    pub fn tick(&mut self, now: Instant) -> Step {
        if self.hedge_at().is_none_or(|at| now < at) {
            return Step::Wait;
        }
        self.hedged = true;
        self.more(AttemptKind::Hedge)
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

    /// An attempt failed: ask for what is left of the attempts at once,
    /// answer when nothing is left in flight.
    pub fn failed(&mut self, failure: Failure) -> Step {
        if self.done {
            return Step::Wait;
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        self.note(failure);
        if self.sent < ATTEMPTS_MAX {
            return self.more(AttemptKind::Retry);
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
            budget_exhausted: self.budget_exhausted,
        })
    }

    fn more(&mut self, kind: AttemptKind) -> Step {
        match ATTEMPTS_MAX - self.sent {
            0 => Step::Wait,
            count => Step::Send { count, kind },
        }
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
            budget_exhausted: self.budget_exhausted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A plan started at `t0` with a 300 ms delay, its first attempt out.
    fn first_sent(t0: Instant) -> Plan {
        let (mut plan, _) = Plan::start(t0, ms(300));
        plan.sent(1, 1, 1);
        plan
    }

    fn send(count: u8, kind: AttemptKind) -> Step {
        Step::Send { count, kind }
    }

    fn failure(failure: Failure, attempts: u8, budget_exhausted: bool) -> Step {
        Step::Answer(Outcome::Failure {
            failure,
            attempts,
            budget_exhausted,
        })
    }

    #[test]
    fn a_fast_success_sends_one_attempt() {
        let t0 = Instant::now();
        let (mut plan, step) = Plan::start(t0, ms(300));
        assert_eq!(step, send(1, AttemptKind::First));
        assert_eq!(plan.sent(1, 1, 1), Step::Wait);
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
        let mut plan = first_sent(t0);
        assert_eq!(plan.hedge_at(), Some(t0 + ms(300)));
        assert_eq!(plan.tick(t0 + ms(300)), send(2, AttemptKind::Hedge));
        assert_eq!(plan.sent(2, 2, 2), Step::Wait);
        assert_eq!(plan.tick(t0 + ms(900)), Step::Wait, "hedges go once");
        assert_eq!(
            plan.succeeded(),
            Step::Answer(Outcome::Success { attempts: 3 })
        );
    }

    #[test]
    fn a_fast_failure_retries_at_once() {
        let t0 = Instant::now();
        let mut plan = first_sent(t0);
        assert_eq!(
            plan.failed(Failure::Status(500)),
            send(2, AttemptKind::Retry)
        );
        plan.sent(2, 2, 2);
        assert_eq!(plan.hedge_at(), None, "every attempt is out");
        assert_eq!(plan.failed(Failure::Refused), Step::Wait);
        assert_eq!(
            plan.succeeded(),
            Step::Answer(Outcome::Success { attempts: 3 })
        );
    }

    #[test]
    fn all_failing_answers_the_most_telling_failure_at_once() {
        let t0 = Instant::now();
        let mut plan = first_sent(t0);
        plan.failed(Failure::Refused);
        plan.sent(2, 2, 2);
        assert_eq!(plan.failed(Failure::Status(502)), Step::Wait);
        assert_eq!(
            plan.failed(Failure::Closed),
            failure(Failure::Status(502), 3, false)
        );
        assert_eq!(plan.expire(), Step::Wait, "answered once");
    }

    #[test]
    fn the_deadline_answers_timeout_with_what_was_sent() {
        let t0 = Instant::now();
        let mut plan = first_sent(t0);
        plan.tick(t0 + ms(300));
        plan.sent(2, 2, 2);
        plan.failed(Failure::Status(500));
        assert_eq!(plan.expire(), failure(Failure::Timeout, 3, false));
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
        assert_eq!(plan.sent(1, 1, 0), failure(Failure::Saturated, 0, false));
        let mut plan = first_sent(t0);
        assert_eq!(plan.tick(t0 + ms(301)), send(2, AttemptKind::Hedge));
        assert_eq!(plan.sent(2, 2, 1), Step::Wait);
        assert_eq!(plan.failed(Failure::Closed), send(1, AttemptKind::Retry));
        assert_eq!(plan.sent(1, 1, 0), Step::Wait, "one still in flight");
        assert_eq!(plan.failed(Failure::Closed), send(1, AttemptKind::Retry));
        assert_eq!(plan.sent(1, 1, 0), failure(Failure::Closed, 2, false));
    }

    #[test]
    fn a_refused_budget_leaves_the_first_attempt_alone_and_says_so() {
        let t0 = Instant::now();
        // A failure with no budget left: the call fails, naming why.
        let mut plan = first_sent(t0);
        assert_eq!(
            plan.failed(Failure::Status(500)),
            send(2, AttemptKind::Retry)
        );
        assert_eq!(plan.sent(2, 0, 0), failure(Failure::Status(500), 1, true));
        // A refused hedge: the first attempt may still answer, or time out.
        let mut plan = first_sent(t0);
        assert_eq!(plan.tick(t0 + ms(300)), send(2, AttemptKind::Hedge));
        assert_eq!(plan.sent(2, 0, 0), Step::Wait);
        assert_eq!(plan.hedge_at(), None, "a hedge is asked for once");
        assert_eq!(plan.expire(), failure(Failure::Timeout, 1, true));
    }

    #[test]
    fn under_a_tight_budget_failures_are_retried_one_at_a_time() {
        let t0 = Instant::now();
        let mut plan = first_sent(t0);
        assert_eq!(
            plan.failed(Failure::Status(500)),
            send(2, AttemptKind::Retry)
        );
        plan.sent(2, 1, 1);
        assert_eq!(
            plan.hedge_at(),
            Some(t0 + ms(300)),
            "the third attempt may still hedge the retry"
        );
        assert_eq!(
            plan.failed(Failure::Status(503)),
            send(1, AttemptKind::Retry)
        );
        plan.sent(1, 1, 1);
        assert_eq!(plan.tick(t0 + ms(300)), Step::Wait, "all three are out");
        assert_eq!(
            plan.succeeded(),
            Step::Answer(Outcome::Success { attempts: 3 })
        );
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
        /// Whatever happens, in any order, whatever the budget and the pool
        /// allow: at most three attempts, exactly one answer, nothing after
        /// it, and a failure says the budget refused only if it did.
        /// Outcomes only come for attempts in flight, as the client reports
        /// them.
        #[test]
        fn the_plan_answers_once_and_never_sends_more_than_three(
            events in proptest::collection::vec(event(), 0..20),
            budget in proptest::collection::vec(0u8..=3, 4),
            room in proptest::collection::vec(0u8..=3, 4),
        ) {
            let t0 = Instant::now();
            let (mut plan, first) = Plan::start(t0, ms(300));
            let mut in_flight = 0u8;
            let mut answers = 0;
            let mut refused = false;
            let mut budget = budget.into_iter();
            let mut room = room.into_iter();
            let mut step = first;
            for e in events.into_iter().map(Some).chain([Some(Event::Expire), None]) {
                // Carry out the step as the service would.
                while let Step::Send { count, kind } = step {
                    prop_assert!(count >= 1 && plan.attempts() + count <= ATTEMPTS_MAX);
                    let admitted = match kind {
                        AttemptKind::First => count,
                        _ => count.min(budget.next().unwrap_or(count)),
                    };
                    refused |= admitted < count;
                    let sent = admitted.min(room.next().unwrap_or(admitted));
                    in_flight += sent;
                    step = plan.sent(count, admitted, sent);
                }
                if let Step::Answer(outcome) = step {
                    answers += 1;
                    in_flight = 0;
                    if let Outcome::Failure { budget_exhausted, .. } = outcome {
                        prop_assert_eq!(budget_exhausted, refused);
                    }
                }
                prop_assert!(plan.attempts() <= ATTEMPTS_MAX);
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
}
