//! The /api/smart service: hedged calls to a slow, flaky upstream that still
//! answer within the caller's deadline whenever any attempt can, without
//! multiplying the load on an upstream that is already in trouble.
//!
//! - `plan`: one call's hedging plan, a sans-IO state machine (the seed's
//!   rule: after the hedge delay or a failure, two more attempts at once;
//!   the first success wins);
//! - `budget`: the cap on extra attempts, a share of recent first attempts
//!   over a sliding window;
//! - `delay`: the hedge delay, a constant or a percentile of the
//!   upstream's recent successful latency;
//! - `hosts`: which upstream host an attempt goes to, with outlier
//!   ejection and probes.
//!
//! - `service`: [`service::SmartService`] holds them, the live calls by
//!   park ticket and their hedge timers (`base::deadlines`).
//!
//! This file is the calls' vocabulary (why an attempt goes out, why a call
//! failed) and the query's validation. The glue that sends through the
//! outbound client and writes replies is in `routes/smart.rs`. Deadlines are
//! the park's (`crate::reply::park`): the loop expires them.

pub mod budget;
pub mod delay;
pub mod hosts;
pub mod plan;
pub mod service;

use std::time::Duration;

use crate::http::query::{self, Lookup};
use crate::http::upstream::ResponseError;

/// The accepted range of `timeout`, in milliseconds.
pub const TIMEOUT_MS_MIN: u64 = 1;
pub const TIMEOUT_MS_MAX: u64 = 60_000;

/// Why an attempt goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptKind {
    /// A call's first attempt.
    First,
    /// The hedge delay passed with no answer.
    Hedge,
    /// An attempt failed.
    Retry,
}

impl AttemptKind {
    /// The `kind` label of each, by [`AttemptKind::slot`].
    pub const LABELS: [&'static str; 3] = ["first", "hedge", "retry"];

    pub fn slot(self) -> usize {
        match self {
            AttemptKind::First => 0,
            AttemptKind::Hedge => 1,
            AttemptKind::Retry => 2,
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
    /// The budget refused an extra attempt the call asked for.
    pub budget_exhausted: bool,
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
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
