//! Completion callbacks: the URL a settled task is POSTed to, how its
//! delivery stands (the part of the task's record it owns), when its next
//! attempt is due (exponential back-off with jitter, for a bounded time
//! after the task settled), and the signature a receiver checks. Sans-IO
//! and sans-clock: the loop sends each attempt through the one outbound
//! client and reports how it ended; `now` and the jitter are arguments.
//!
//! A delivery is at least once: an attempt whose 2xx arrives just before a
//! crash, ahead of its record, is made again after the restart.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::base::deadlines::Deadlines;
use crate::base::secret::SECRET_BYTES_MIN;

/// The longest `callback_url` taken.
pub const CALLBACK_URL_MAX: usize = 1024;
/// Back-off delays stop doubling here.
const BACKOFF_MAX: Duration = Duration::from_secs(600);
/// state, attempts, error kind, error status, URL length: 1 + 2 + 1 + 2 + 2.
const RECORD_HEAD_BYTES: usize = 8;
/// The most a callback adds to its task's record.
pub const RECORD_BYTES_MAX: usize = RECORD_HEAD_BYTES + CALLBACK_URL_MAX;

/// Sizing and timing, from the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallbackLimits {
    /// How long after its task settled a delivery is retried.
    pub retry_for: Duration,
    /// The first retry's delay; each later one doubles, up to ten minutes.
    pub backoff: Duration,
    /// One attempt's deadline, from the send to the whole answer.
    pub attempt_timeout: Duration,
    /// Attempts in flight at most (they share the outbound client's pool).
    pub in_flight_max: usize,
    /// Tasks whose callback is not delivered or failed yet, at most.
    pub undelivered_max: usize,
}

impl Default for CallbackLimits {
    fn default() -> Self {
        CallbackLimits {
            retry_for: Duration::from_secs(3600),
            backoff: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(10),
            in_flight_max: 32,
            undelivered_max: 10_000,
        }
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet: waiting for its task to settle, or for its next attempt.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Given up: the retry time ran out, or the URL is no longer allowed.
    Failed,
}

impl DeliveryState {
    pub fn name(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }
}

/// Why an attempt did not deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptError {
    /// The receiver answered with a status other than 2xx.
    Status(u16),
    Timeout,
    /// The connection could not be opened.
    Connect,
    /// The receiver closed the connection before a whole answer.
    Closed,
    /// The answer was not acceptable HTTP/1.1.
    BadAnswer,
    /// Every outbound connection was in use.
    NoConnection,
    /// After a restart, `--callback-allow` no longer allows the URL.
    NotAllowed,
}

impl AttemptError {
    /// Appends a sentence for the task's `last_error`.
    pub fn describe(self, out: &mut Vec<u8>) {
        let text: &[u8] = match self {
            AttemptError::Status(status) => {
                out.extend_from_slice(b"the receiver answered ");
                crate::base::digits::write_u64(out, u64::from(status));
                b" (only a 2xx counts as delivered)"
            }
            AttemptError::Timeout => b"the receiver did not answer within --callback-timeout-ms",
            AttemptError::Connect => b"the connection to the receiver could not be opened",
            AttemptError::Closed => b"the receiver closed the connection before answering",
            AttemptError::BadAnswer => b"the receiver's answer was not acceptable HTTP/1.1",
            AttemptError::NoConnection => b"no outbound connection was free (--upstream-max-conns)",
            AttemptError::NotAllowed => {
                b"the URL is no longer allowed by this server's --callback-allow"
            }
        };
        out.extend_from_slice(text);
    }

    fn encode(error: Option<AttemptError>) -> (u8, u16) {
        match error {
            None => (0, 0),
            Some(AttemptError::Status(status)) => (1, status),
            Some(AttemptError::Timeout) => (2, 0),
            Some(AttemptError::Connect) => (3, 0),
            Some(AttemptError::Closed) => (4, 0),
            Some(AttemptError::BadAnswer) => (5, 0),
            Some(AttemptError::NoConnection) => (6, 0),
            Some(AttemptError::NotAllowed) => (7, 0),
        }
    }

    fn decode(kind: u8, status: u16) -> Option<Option<AttemptError>> {
        Some(Some(match kind {
            0 => return Some(None),
            1 => AttemptError::Status(status),
            2 => AttemptError::Timeout,
            3 => AttemptError::Connect,
            4 => AttemptError::Closed,
            5 => AttemptError::BadAnswer,
            6 => AttemptError::NoConnection,
            7 => AttemptError::NotAllowed,
            _ => return None,
        }))
    }
}

/// A task's callback: where, and how its delivery stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Callback {
    /// The URL as the client gave it.
    pub url: Box<str>,
    /// Where it goes, resolved through `--callback-allow` at acceptance (or
    /// at start-up, for one read from the store); None once not allowed.
    pub addr: Option<SocketAddr>,
    pub state: DeliveryState,
    pub attempts: u16,
    pub last_error: Option<AttemptError>,
}

impl Callback {
    pub fn new(url: &str, addr: SocketAddr) -> Callback {
        Callback {
            url: url.into(),
            addr: Some(addr),
            state: DeliveryState::Pending,
            attempts: 0,
            last_error: None,
        }
    }

    pub fn is_final(&self) -> bool {
        self.state != DeliveryState::Pending
    }

    /// Appends the callback's part of its task's record.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let state = match self.state {
            DeliveryState::Pending => 0u8,
            DeliveryState::Delivered => 1,
            DeliveryState::Failed => 2,
        };
        let (kind, status) = AttemptError::encode(self.last_error);
        let url = self.url.as_bytes();
        let url_len = u16::try_from(url.len()).unwrap_or(u16::MAX);
        out.push(state);
        out.extend_from_slice(&self.attempts.to_be_bytes());
        out.push(kind);
        out.extend_from_slice(&status.to_be_bytes());
        out.extend_from_slice(&url_len.to_be_bytes());
        out.extend_from_slice(&url[..usize::from(url_len)]);
    }

    /// A callback from its part of a record (the address is not stored: the
    /// allow-list resolves it again at start-up).
    pub fn decode(bytes: &[u8]) -> Option<Callback> {
        let head: &[u8; RECORD_HEAD_BYTES] = bytes.first_chunk()?;
        let word = |i: usize| u16::from_be_bytes([head[i], head[i + 1]]);
        let state = match head[0] {
            0 => DeliveryState::Pending,
            1 => DeliveryState::Delivered,
            2 => DeliveryState::Failed,
            _ => return None,
        };
        let last_error = AttemptError::decode(head[3], word(4))?;
        let url = bytes.get(RECORD_HEAD_BYTES..)?;
        if url.len() != usize::from(word(6)) || url.len() > CALLBACK_URL_MAX {
            return None;
        }
        Some(Callback {
            url: std::str::from_utf8(url).ok()?.into(),
            addr: None,
            state,
            attempts: word(1),
            last_error,
        })
    }
}

/// An attempt to make now (its URL is the callback's, [`Deliveries::get`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt<K> {
    pub key: K,
    /// 1 for the first.
    pub number: u16,
    pub addr: SocketAddr,
}

/// What an attempt's end decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Delivered; this long after the delivery first became due.
    Delivered { latency: Duration },
    /// Another attempt is scheduled.
    Retrying,
    /// Given up.
    Failed,
}

/// Counters for /metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallbackCounts {
    pub delivered: u64,
    /// Attempts that failed with another one scheduled.
    pub retried: u64,
    pub failed: u64,
}

/// A callback and who it is for (the client whose share it holds).
#[derive(Debug)]
struct Tracked<O> {
    callback: Callback,
    owner: O,
}

/// Callbacks not delivered or failed yet, in all and per owner (owners
/// with none are absent).
#[derive(Debug)]
struct Undelivered<O> {
    total: usize,
    by_owner: HashMap<O, usize>,
}

impl<O: Copy + Eq + Hash> Undelivered<O> {
    fn hold(&mut self, owner: O) {
        self.total += 1;
        *self.by_owner.entry(owner).or_default() += 1;
    }

    fn release(&mut self, owner: O) {
        self.total -= 1;
        if let Some(held) = self.by_owner.get_mut(&owner) {
            *held -= 1;
            if *held == 0 {
                self.by_owner.remove(&owner);
            }
        }
    }
}

/// The callbacks of every stored task, keyed by the task's key, with the
/// owner `O` whose share each holds until it is final, and the schedule of
/// their attempts.
pub struct Deliveries<K, O> {
    limits: CallbackLimits,
    /// Keyed once with the secret, cloned for each signature; None when the
    /// server takes no callbacks (then none is ever sent).
    mac: Option<Hmac<Sha256>>,
    callbacks: HashMap<K, Tracked<O>>,
    /// Attempts waiting for their time, by (key, attempt number): a
    /// rescheduled key's older entry is dead.
    due: Deadlines<(K, u16)>,
    /// The attempt number each scheduled key waits for, and since when its
    /// delivery is due (for the latency).
    scheduled: HashMap<K, (u16, Instant)>,
    /// Keys with an attempt in flight, and since when they are due.
    in_flight: HashMap<K, Instant>,
    undelivered: Undelivered<O>,
    counts: CallbackCounts,
}

impl<K: Copy + Eq + Hash + Ord, O: Copy + Eq + Hash> Deliveries<K, O> {
    /// Deliveries signed with `secret`; without one, stored callbacks fail
    /// when due and none is sent. None if the secret is shorter than
    /// [`SECRET_BYTES_MIN`].
    pub fn new(limits: CallbackLimits, secret: Option<&[u8]>) -> Option<Deliveries<K, O>> {
        let mac = match secret {
            Some(secret) if secret.len() < SECRET_BYTES_MIN => return None,
            Some(secret) => Some(Hmac::new_from_slice(secret).ok()?),
            None => None,
        };
        Some(Deliveries {
            limits,
            mac,
            callbacks: HashMap::new(),
            due: Deadlines::default(),
            scheduled: HashMap::new(),
            in_flight: HashMap::new(),
            undelivered: Undelivered {
                total: 0,
                by_owner: HashMap::new(),
            },
            counts: CallbackCounts::default(),
        })
    }

    pub fn limits(&self) -> CallbackLimits {
        self.limits
    }

    /// The same limits and key with no callback, keeping the counters: a
    /// cluster node's tasks replaced by the ones its new term loaded.
    pub fn emptied(&self) -> Deliveries<K, O> {
        Deliveries {
            limits: self.limits,
            mac: self.mac.clone(),
            callbacks: HashMap::new(),
            due: Deadlines::default(),
            scheduled: HashMap::new(),
            in_flight: HashMap::new(),
            undelivered: Undelivered {
                total: 0,
                by_owner: HashMap::new(),
            },
            counts: self.counts,
        }
    }

    /// Whether another task with a callback may be accepted.
    pub fn has_room(&self) -> bool {
        self.undelivered.total < self.limits.undelivered_max
    }

    /// Callbacks of `owner`'s not delivered or failed yet.
    pub fn undelivered_of(&self, owner: O) -> usize {
        self.undelivered.by_owner.get(&owner).copied().unwrap_or(0)
    }

    /// Adds a task's callback (accepted now, or read from the store).
    pub fn add(&mut self, key: K, callback: Callback, owner: O) {
        self.remove(key);
        if !callback.is_final() {
            self.undelivered.hold(owner);
        }
        self.callbacks.insert(key, Tracked { callback, owner });
    }

    /// Forgets a task's callback (its task is gone).
    pub fn remove(&mut self, key: K) {
        if let Some(old) = self.callbacks.remove(&key)
            && !old.callback.is_final()
        {
            self.undelivered.release(old.owner);
        }
        self.scheduled.remove(&key);
        self.in_flight.remove(&key);
    }

    pub fn get(&self, key: K) -> Option<&Callback> {
        self.callbacks.get(&key).map(|t| &t.callback)
    }

    /// Whether the task's callback, if it has one, is delivered or failed:
    /// only then may the task be evicted or expire.
    pub fn is_settled(&self, key: K) -> bool {
        self.get(key).is_none_or(Callback::is_final)
    }

    /// Ends a delivery: `state` (delivered or failed) is final, and its
    /// owner's share is free again.
    fn conclude(&mut self, key: K, state: DeliveryState) {
        let Some(tracked) = self.callbacks.get_mut(&key) else {
            return;
        };
        tracked.callback.state = state;
        self.undelivered.release(tracked.owner);
        match state {
            DeliveryState::Delivered => self.counts.delivered += 1,
            DeliveryState::Failed => self.counts.failed += 1,
            DeliveryState::Pending => {}
        }
    }

    /// The task's settled state is durable: its first attempt is due now.
    /// A callback whose URL is no longer allowed fails instead (true: its
    /// record changed).
    pub fn ready(&mut self, key: K, now: Instant) -> bool {
        let Some(tracked) = self.callbacks.get_mut(&key) else {
            return false;
        };
        let callback = &mut tracked.callback;
        if callback.is_final()
            || self.scheduled.contains_key(&key)
            || self.in_flight.contains_key(&key)
        {
            return false;
        }
        if callback.addr.is_none() || self.mac.is_none() {
            callback.last_error = Some(AttemptError::NotAllowed);
            self.conclude(key, DeliveryState::Failed);
            return true;
        }
        let number = callback.attempts + 1;
        self.schedule(key, number, now, now);
        false
    }

    /// The next attempt due at `now`, if the in-flight bound allows one.
    pub fn next_attempt(&mut self, now: Instant) -> Option<Attempt<K>> {
        if self.in_flight.len() >= self.limits.in_flight_max {
            return None;
        }
        loop {
            let scheduled = &self.scheduled;
            let (key, number) = self.due.pop_due(now, |(key, number)| {
                scheduled.get(key).is_some_and(|(n, _)| n == number)
            })?;
            let Some((_, since)) = self.scheduled.remove(&key) else {
                continue;
            };
            let Some(tracked) = self.callbacks.get_mut(&key) else {
                continue;
            };
            let Some(addr) = tracked.callback.addr else {
                continue;
            };
            tracked.callback.attempts = number;
            self.in_flight.insert(key, since);
            return Some(Attempt { key, number, addr });
        }
    }

    /// How an attempt ended. A failure is retried after the back-off
    /// (`jitter` draws the delay within it) unless that would pass
    /// `give_up_ms`, the Unix time (ms) its task settled plus the retry time.
    pub fn attempt_done(
        &mut self,
        key: K,
        result: Result<(), AttemptError>,
        now: Instant,
        now_ms: u64,
        give_up_ms: u64,
        jitter: u64,
    ) -> Option<AttemptEnd> {
        let since = self.in_flight.remove(&key)?;
        let callback = &mut self.callbacks.get_mut(&key)?.callback;
        let error = match result {
            Ok(()) => {
                self.conclude(key, DeliveryState::Delivered);
                return Some(AttemptEnd::Delivered {
                    latency: now.saturating_duration_since(since),
                });
            }
            Err(error) => error,
        };
        callback.last_error = Some(error);
        let attempts = callback.attempts;
        let delay = backoff(self.limits.backoff, attempts, jitter);
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_add(delay_ms) > give_up_ms {
            self.conclude(key, DeliveryState::Failed);
            return Some(AttemptEnd::Failed);
        }
        let number = attempts.saturating_add(1);
        self.counts.retried += 1;
        self.schedule(key, number, now + delay, since);
        Some(AttemptEnd::Retrying)
    }

    /// The earliest scheduled attempt, for the loop's sleep.
    pub fn next_due(&mut self) -> Option<Instant> {
        let scheduled = &self.scheduled;
        self.due
            .next(|(key, number)| scheduled.get(key).is_some_and(|(n, _)| n == number))
    }

    /// Whether an attempt is due at `now` and may be sent.
    pub fn has_due(&mut self, now: Instant) -> bool {
        self.in_flight.len() < self.limits.in_flight_max
            && self.next_due().is_some_and(|at| at <= now)
    }

    /// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the
    /// `Fibd-Signature` field (Stripe's scheme: the timestamp is signed so a
    /// receiver can refuse a replayed delivery).
    pub fn signature(&self, unix_secs: u64, body: &[u8]) -> Option<String> {
        let mut mac = self.mac.clone()?;
        let t = unix_secs.to_string();
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity(t.len() + 6 + 2 * tag.len());
        out.push_str("t=");
        out.push_str(&t);
        out.push_str(",v1=");
        for byte in tag {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 15)]));
        }
        Some(out)
    }

    /// Callbacks not delivered or failed yet.
    pub fn undelivered(&self) -> usize {
        self.undelivered.total
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    pub fn counts(&self) -> CallbackCounts {
        self.counts
    }

    fn schedule(&mut self, key: K, number: u16, at: Instant, since: Instant) {
        self.scheduled.insert(key, (number, since));
        let scheduled = &self.scheduled;
        self.due
            .push(at, (key, number), scheduled.len(), |(key, number)| {
                scheduled.get(key).is_some_and(|(n, _)| n == number)
            });
    }
}

/// The delay before attempt `attempts + 1`: `base` doubled per attempt
/// made after the first, capped, and drawn uniformly from its upper half.
fn backoff(base: Duration, attempts: u16, jitter: u64) -> Duration {
    let doublings = u32::from(attempts.saturating_sub(1)).min(31);
    let full = base.saturating_mul(1 << doublings).min(BACKOFF_MAX);
    let full_ms = u64::try_from(full.as_millis()).unwrap_or(u64::MAX);
    let half = full_ms / 2;
    Duration::from_millis(full_ms - half + jitter % (half + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-test-secret";

    /// Keys are task numbers; owners are client numbers.
    fn deliveries(limits: CallbackLimits) -> Deliveries<u32, u8> {
        Deliveries::new(limits, Some(SECRET)).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn records_round_trip_and_bad_ones_are_refused() {
        let mut callback = Callback::new("http://127.0.0.1:9/hook?x=1", addr());
        callback.attempts = 3;
        callback.last_error = Some(AttemptError::Status(503));
        callback.state = DeliveryState::Failed;
        let mut bytes = Vec::new();
        callback.encode(&mut bytes);
        assert_eq!(bytes.len(), RECORD_HEAD_BYTES + callback.url.len());
        let decoded = Callback::decode(&bytes).unwrap();
        assert_eq!(
            decoded,
            Callback {
                addr: None,
                ..callback
            }
        );
        assert_eq!(Callback::decode(&bytes[..bytes.len() - 1]), None);
        let mut bad_state = bytes.clone();
        bad_state[0] = 9;
        assert_eq!(Callback::decode(&bad_state), None);
        let mut bad_error = bytes;
        bad_error[3] = 99;
        assert_eq!(Callback::decode(&bad_error), None);
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_the_timestamp_and_body() {
        let d = deliveries(CallbackLimits::default());
        // Computed with Python's hmac module, an independent implementation:
        // hmac.new(SECRET, b"1700000000.{}", hashlib.sha256).hexdigest().
        let signature = d.signature(1_700_000_000, b"{}").unwrap();
        assert_eq!(
            signature,
            "t=1700000000,v1=d71584963629558aee7291fbcf1373e2a5ee4ead78e5c489ebfeed5d13f4f050"
        );
        assert_ne!(d.signature(1_700_000_001, b"{}").unwrap(), signature);
        assert!(Deliveries::<u32, u8>::new(CallbackLimits::default(), Some(b"short")).is_none());
        let unsigned = Deliveries::<u32, u8>::new(CallbackLimits::default(), None).unwrap();
        assert_eq!(unsigned.signature(1, b"{}"), None);
    }

    #[test]
    fn a_failing_receiver_is_retried_with_growing_delays_until_the_retry_time_ends() {
        let limits = CallbackLimits {
            backoff: Duration::from_millis(100),
            ..CallbackLimits::default()
        };
        let mut d = deliveries(limits);
        let t0 = Instant::now();
        d.add(1, Callback::new("http://127.0.0.1:9/", addr()), 1);
        assert_eq!(d.next_attempt(t0), None, "not due before its task settled");
        assert!(!d.ready(1, t0));
        let first = d.next_attempt(t0).unwrap();
        assert_eq!((first.key, first.number), (1, 1));
        assert_eq!(d.next_attempt(t0), None, "one attempt at a time per task");
        let give_up_ms = 10_000;
        let mut at = t0;
        let mut delays = Vec::new();
        for number in 2..=6 {
            let end = d.attempt_done(
                1,
                Err(AttemptError::Status(500)),
                at,
                0,
                give_up_ms,
                u64::MAX,
            );
            assert_eq!(end, Some(AttemptEnd::Retrying));
            let due = d.next_due().unwrap();
            delays.push(due - at);
            assert_eq!(d.next_attempt(due - Duration::from_millis(1)), None);
            let attempt = d.next_attempt(due).unwrap();
            assert_eq!(attempt.number, number);
            at = due;
        }
        // The jitter draws within [d/2, d]; u64::MAX % (half + 1) is some
        // point there, so each delay is at least half the doubled base.
        for (i, delay) in delays.iter().enumerate() {
            let full = Duration::from_millis(100 << i);
            assert!(*delay >= full / 2 && *delay <= full, "{i}: {delay:?}");
        }
        let end = d.attempt_done(1, Err(AttemptError::Timeout), at, give_up_ms, give_up_ms, 0);
        assert_eq!(end, Some(AttemptEnd::Failed));
        let callback = d.get(1).unwrap();
        assert_eq!(callback.state, DeliveryState::Failed);
        assert_eq!(
            (callback.attempts, callback.last_error),
            (6, Some(AttemptError::Timeout))
        );
        assert_eq!(d.undelivered(), 0);
        assert_eq!(
            d.counts(),
            CallbackCounts {
                delivered: 0,
                retried: 5,
                failed: 1
            }
        );
    }

    #[test]
    fn a_delivery_reports_its_latency_and_frees_room() {
        let limits = CallbackLimits {
            undelivered_max: 1,
            in_flight_max: 1,
            ..CallbackLimits::default()
        };
        let mut d = deliveries(limits);
        let t0 = Instant::now();
        d.add(1, Callback::new("http://127.0.0.1:9/a", addr()), 1);
        assert!(!d.has_room());
        d.add(2, Callback::new("http://127.0.0.1:9/b", addr()), 1);
        assert_eq!((d.undelivered_of(1), d.undelivered_of(2)), (2, 0));
        d.ready(1, t0);
        d.ready(2, t0);
        assert!(d.next_attempt(t0).is_some());
        assert!(!d.has_due(t0), "the in-flight bound holds the second");
        assert_eq!(d.next_attempt(t0), None);
        let later = t0 + Duration::from_millis(30);
        let end = d.attempt_done(1, Ok(()), later, 0, u64::MAX, 0);
        assert_eq!(
            end,
            Some(AttemptEnd::Delivered {
                latency: Duration::from_millis(30)
            })
        );
        assert!(d.is_settled(1) && !d.is_settled(2));
        assert_eq!(d.undelivered_of(1), 1, "the delivered one frees its share");
        assert_eq!(d.next_attempt(later).map(|a| a.key), Some(2));
        d.remove(2);
        assert!(d.has_room());
        assert_eq!(d.undelivered_of(1), 0);
        assert_eq!(d.attempt_done(2, Ok(()), later, 0, u64::MAX, 0), None);
    }

    #[test]
    fn a_url_no_longer_allowed_fails_when_it_becomes_due() {
        let mut d = deliveries(CallbackLimits::default());
        let mut stored = Callback::new("http://10.0.0.1/", addr());
        stored.addr = None;
        d.add(7, stored, 1);
        assert!(d.ready(7, Instant::now()), "its record changes");
        let callback = d.get(7).unwrap();
        assert_eq!(
            (callback.state, callback.last_error),
            (DeliveryState::Failed, Some(AttemptError::NotAllowed))
        );
        assert_eq!(d.next_attempt(Instant::now()), None);
    }
}
