//! The budget for extra attempts: what keeps hedging from multiplying the
//! load on an upstream that is already failing or slow.
//!
//! Over a sliding window of the last 10 seconds, extra attempts (every
//! attempt of a call beyond its first: retries after a failure and hedges
//! after the delay) may not exceed `share` of the first attempts sent in
//! the same window, plus `min_per_sec` a second so that a quiet service
//! still retries (Finagle's and Linkerd's retry budgets: 20 % plus 10 a
//! second). So the upstream sees at most 1 + share attempts per call
//! whatever it does, and the cap follows the traffic as it moves.
//!
//! Two kinds of extra attempt draw on it differently, as in gRPC's retry
//! throttling, where hedges stop below half of the bucket:
//! - a hedge only buys latency, so hedges stop once half the budget is spent;
//! - a retry after a failure may save the call, so it may spend the rest.
//!
//!   While more than half is left, a failure is answered with the seed's
//!   plan (two more attempts at once). Past half, it is one retry at a
//!   time, so the budget spreads over more of the calls that need it.
//!
//! Sans-IO: `now` is an argument.

use std::time::{Duration, Instant};

use super::AttemptKind;
use crate::base::window::Window;

/// How far back the budget looks.
pub const WINDOW: Duration = Duration::from_secs(10);
const SLICES: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Extra attempts allowed per 1,000 first attempts (200: 20 %).
    pub per_mille: u32,
    /// Extra attempts a second allowed on top, whatever the traffic.
    pub min_per_sec: u32,
}

impl Default for BudgetConfig {
    /// Envoy's and Finagle's default share, 20 %, and Finagle's and
    /// Linkerd's floor of 10 a second.
    fn default() -> Self {
        BudgetConfig {
            per_mille: 200,
            min_per_sec: 10,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    firsts: u64,
    extras: u64,
}

/// The window's allowance and what was spent of it, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetState {
    /// Extra attempts the window allows in all (`None`: no budget).
    pub allowed: Option<u64>,
    pub spent: u64,
}

#[derive(Debug)]
pub struct Budget {
    /// `None`: `--hedge-budget off`, the seed's plan without a cap.
    config: Option<BudgetConfig>,
    window: Window<Counts>,
}

impl Budget {
    pub fn new(config: Option<BudgetConfig>) -> Budget {
        Budget {
            config,
            window: Window::new(WINDOW, SLICES),
        }
    }

    /// `n` attempts of this kind went out: a first attempt adds to the
    /// allowance, an extra one spends it.
    pub fn sent(&mut self, kind: AttemptKind, n: u8, now: Instant) {
        self.window.advance(now);
        let counts = self.window.newest();
        match kind {
            AttemptKind::First => counts.firsts += u64::from(n),
            AttemptKind::Hedge | AttemptKind::Retry => counts.extras += u64::from(n),
        }
    }

    /// How many of `asked` attempts of this kind may go now (first
    /// attempts always may). Nothing is spent until [`Budget::sent`] says
    /// how many went.
    pub fn admit(&mut self, kind: AttemptKind, asked: u8, now: Instant) -> u8 {
        let Some(config) = self.config.filter(|_| kind != AttemptKind::First) else {
            return asked;
        };
        self.window.advance(now);
        let (firsts, spent) = self.sums(now);
        // In thousandths of an attempt, so a share like 12.5 % is exact.
        let span_ms = u64::try_from(self.window.span().as_millis()).unwrap_or(u64::MAX);
        let allowed = firsts
            .saturating_mul(u64::from(config.per_mille))
            .saturating_add(u64::from(config.min_per_sec).saturating_mul(span_ms));
        let spent = spent.saturating_mul(1000);
        let room = |limit: u64| u8::try_from(limit.saturating_sub(spent) / 1000).unwrap_or(u8::MAX);
        let above_half = room(allowed / 2).min(asked);
        match kind {
            AttemptKind::First | AttemptKind::Hedge => above_half,
            AttemptKind::Retry if above_half == asked => asked,
            AttemptKind::Retry => room(allowed).min(asked).min(1),
        }
    }

    /// The allowance and what was spent of it at `now`.
    pub fn state(&self, now: Instant) -> BudgetState {
        let (firsts, spent) = self.sums(now);
        let allowed = self.config.map(|c| {
            let floor = u64::from(c.min_per_sec) * self.window.span().as_secs();
            firsts * u64::from(c.per_mille) / 1000 + floor
        });
        BudgetState { allowed, spent }
    }

    fn sums(&self, now: Instant) -> (u64, u64) {
        self.window
            .live(now)
            .fold((0, 0), |(f, e), c| (f + c.firsts, e + c.extras))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(per_mille: u32, min_per_sec: u32) -> Budget {
        Budget::new(Some(BudgetConfig {
            per_mille,
            min_per_sec,
        }))
    }

    /// Sends `calls` first attempts and retries every one as far as the
    /// budget lets it (as a storm against an all-failing upstream would);
    /// returns the extras sent.
    fn storm(b: &mut Budget, calls: u32, now: Instant) -> u64 {
        let mut extras = 0;
        for _ in 0..calls {
            b.sent(AttemptKind::First, 1, now);
            let n = b.admit(AttemptKind::Retry, 2, now);
            b.sent(AttemptKind::Retry, n, now);
            extras += u64::from(n);
        }
        extras
    }

    #[test]
    fn extras_stay_within_the_share_of_first_attempts() {
        let t0 = Instant::now();
        let mut b = budget(100, 0);
        let extras = storm(&mut b, 10_000, t0);
        assert!((999..=1000).contains(&extras), "{extras} of 10,000 calls");
        assert_eq!(
            b.state(t0),
            BudgetState {
                allowed: Some(1000),
                spent: extras
            }
        );
    }

    #[test]
    fn the_floor_lets_a_quiet_service_retry() {
        let t0 = Instant::now();
        let mut b = budget(200, 10);
        // 10 a second over a 10 s window: 100 extra attempts with no traffic.
        assert_eq!(storm(&mut b, 100, t0), 100 + 20);
        assert_eq!(b.admit(AttemptKind::Retry, 2, t0), 0);
    }

    #[test]
    fn hedges_stop_at_half_and_retries_spend_the_rest_one_at_a_time() {
        let t0 = Instant::now();
        let mut b = budget(200, 0);
        for _ in 0..100 {
            b.sent(AttemptKind::First, 1, t0);
        }
        // Allowance 20: hedges and two-at-once retries up to 10.
        assert_eq!(b.admit(AttemptKind::Hedge, 2, t0), 2);
        assert_eq!(b.admit(AttemptKind::Retry, 2, t0), 2);
        b.sent(AttemptKind::Hedge, 9, t0);
        assert_eq!(b.admit(AttemptKind::Hedge, 2, t0), 1);
        assert_eq!(
            b.admit(AttemptKind::Retry, 2, t0),
            1,
            "past half: one at a time"
        );
        b.sent(AttemptKind::Hedge, 1, t0);
        assert_eq!(b.admit(AttemptKind::Hedge, 2, t0), 0);
        assert_eq!(b.admit(AttemptKind::Retry, 1, t0), 1);
        b.sent(AttemptKind::Hedge, 10, t0);
        assert_eq!(b.admit(AttemptKind::Retry, 2, t0), 0, "all spent");
    }

    #[test]
    fn the_allowance_recovers_as_the_window_moves_on() {
        let t0 = Instant::now();
        let mut b = budget(100, 0);
        storm(&mut b, 1000, t0);
        assert_eq!(b.admit(AttemptKind::Retry, 2, t0), 0);
        // Later, healthy traffic: first attempts only, nothing spent.
        let later = t0 + WINDOW + Duration::from_secs(1);
        for _ in 0..100 {
            b.sent(AttemptKind::First, 1, later);
        }
        assert_eq!(b.state(later).spent, 0, "the storm fell out of the window");
        assert_eq!(b.admit(AttemptKind::Hedge, 2, later), 2);
    }

    #[test]
    fn the_state_read_later_has_forgotten_the_old_window() {
        let t0 = Instant::now();
        let mut b = budget(100, 0);
        storm(&mut b, 1000, t0);
        assert_eq!(b.state(t0).spent, 100);
        assert_eq!(b.state(t0 + WINDOW).spent, 0, "read only, no traffic since");
    }

    #[test]
    fn without_a_budget_everything_asked_goes() {
        let t0 = Instant::now();
        let mut b = Budget::new(None);
        assert_eq!(storm(&mut b, 1000, t0), 2000);
        assert_eq!(b.admit(AttemptKind::Hedge, 2, t0), 2);
        assert_eq!(b.state(t0).allowed, None);
        let mut b = budget(0, 0);
        assert_eq!(
            b.admit(AttemptKind::First, 1, t0),
            1,
            "a first attempt always goes"
        );
    }
}
