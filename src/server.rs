//! The event loop: the only code that knows `mio::Poll`. One thread serves
//! every socket; each pass runs a few named phases:
//!
//! 1. poll, then read the clock once;
//! 2. accept, and drive every ready connection (read, parse, route, reply);
//! 3. apply commit outcomes: release or withdraw the replies they held;
//! 4. deliver finished computations to their parked requests;
//! 5. timers and outbound calls: expire parked requests whose deadline
//!    passed (through the service that owns them), send due hedges, hand a
//!    due batch of trace spans to the outbound client, send cluster mode's
//!    next etcd call, let the client connect and expire, and deliver the
//!    replies all of that decided;
//! 6. housekeeping (task retention) and hand the batch collected meanwhile
//!    to the commit thread;
//! 7. handle signals (a graceful stop waits for in-flight commits; SIGHUP
//!    rereads the API keys).
//!
//! Outbound sockets (`crate::net::upstream`) live in a token range of their own,
//! from [`UPSTREAM_TOKEN_BASE`]: readiness there goes to the client, and the
//! client registers new sockets through [`Registrar`], the one piece of the
//! poller it sees.
//!
//! The commit thread's fsync never runs here, so /current is answered from
//! committed state while a commit is in flight.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::config::Config;
use crate::net::conn::{Conn, Drive, Expiry, Output, Reply, Shared};
use crate::net::systemd::Notifier;
use crate::net::upstream::Registrar;
use crate::reply::park::Ticket;
use crate::routes::App;
use crate::services::compute::Output as Computed;
use crate::services::stepper::CommitEffect;
use crate::store::committer::{CommitOutcome, Committer};

const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
/// Tokens from here up to the three above belong to the outbound client;
/// client connections count up from 0.
pub const UPSTREAM_TOKEN_BASE: usize = usize::MAX / 2;
/// Reads land here; a connection keeps only what it could not answer yet.
const SCRATCH_BYTES: usize = 64 * 1024;
/// All connections together keep at most about this many bytes of unanswered
/// requests and unsent replies (each also has its own smaller limits).
const KEPT_BYTES_MAX: usize = 16 << 20;
const EVENTS_CAPACITY: usize = 1024;
/// After EMFILE or ENFILE the pending connection stays in the backlog and the
/// listener stays readable; accepting pauses this long instead of spinning.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);
/// A graceful stop gives slow clients this long to take their replies.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Timeouts are checked by a sweep this often: cheaper than a timer per
/// connection, and a second of slack on a 10 s timeout does not matter.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Expired task records are looked for this often (retention is in hours,
/// so a second late costs nothing), and a sieve refused by a full compute
/// queue is retried.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// Open connections, indexed by their token.
#[derive(Default)]
struct Connections {
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
}

impl Connections {
    fn insert(&mut self, conn: Conn) -> Token {
        self.open += 1;
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(conn);
                Token(i)
            }
            None => {
                self.slots.push(Some(conn));
                Token(self.slots.len() - 1)
            }
        }
    }

    fn get_mut(&mut self, token: Token) -> Option<&mut Conn> {
        self.slots.get_mut(token.0).and_then(Option::as_mut)
    }

    fn remove(&mut self, token: Token) -> Option<Conn> {
        let conn = self.slots.get_mut(token.0)?.take()?;
        self.free.push(token.0);
        self.open -= 1;
        Some(conn)
    }

    fn tokens(&self) -> Vec<Token> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].is_some())
            .map(Token)
            .collect()
    }
}

pub struct Server {
    poll: Poll,
    listener: Option<TcpListener>,
    signals: Signals,
    committer: Committer,
    app: App,
    config: Config,
    conns: Connections,
    /// Connections with replies held for a commit; driven again on each outcome.
    waiting: Vec<Token>,
    shared: Shared,
    /// Connections that stopped reading because `shared`'s budget was spent.
    starved: Vec<Token>,
    accept_paused_until: Option<Instant>,
    stopping_since: Option<Instant>,
    notifier: Notifier,
    /// When the next WATCHDOG=1 is due; pinged from the loop itself so a
    /// wedged loop, not only a dead process, gets restarted.
    watchdog_due: Option<Instant>,
    /// The index last reported in STATUS=, to send it only on change.
    status_index: Option<u64>,
    /// Numbers connections so late replies never reach a reused token.
    serial: u64,
    /// EMFILE is logged once per streak, not once per retry.
    fd_exhaustion_reported: bool,
    /// The clock, read once per loop pass.
    now: Instant,
    next_sweep: Instant,
    next_housekeeping: Instant,
}

impl Server {
    /// Registers the listener and signal handlers; the waker is created by
    /// the caller from `poll` because the commit thread needs it first.
    pub fn new(
        poll: Poll,
        mut listener: TcpListener,
        committer: Committer,
        app: App,
        config: Config,
        notifier: Notifier,
    ) -> io::Result<Server> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut signals = Signals::new(HANDLED_SIGNALS)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut app = app;
        app.connections_max = config.connections_max;
        if let Some(trace) = config.trace.clone() {
            log::info!(
                "tracing: {} of requests without a caller's decision; spans go to {} at {} \
                 in batches of up to {}, with up to {} waiting (more are dropped and counted \
                 in fibd_trace_spans_dropped_total)",
                trace.sample_ratio,
                trace.collector,
                trace.collector.addr,
                crate::ops::trace::BATCH_SPANS,
                trace.buffer_spans
            );
            app.enable_tracing(trace);
        }
        Ok(Server {
            poll,
            listener: Some(listener),
            signals,
            committer,
            app,
            config,
            conns: Connections::default(),
            waiting: Vec::new(),
            shared: Shared::new(SCRATCH_BYTES, KEPT_BYTES_MAX),
            starved: Vec::new(),
            accept_paused_until: None,
            stopping_since: None,
            watchdog_due: notifier.watchdog_interval().map(|_| Instant::now()),
            notifier,
            status_index: None,
            serial: 0,
            fd_exhaustion_reported: false,
            now: Instant::now(),
            next_sweep: Instant::now() + SWEEP_INTERVAL,
            next_housekeeping: Instant::now(),
        })
    }

    /// The token the caller must create the commit thread's waker with.
    pub fn waker(poll: &Poll) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
    }

    /// Serves until SIGTERM or SIGINT, then drains and hands back the commit
    /// thread for the caller to stop.
    pub fn run(mut self) -> io::Result<Committer> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        self.notifier.notify("READY=1");
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.now = Instant::now();
            self.app.now = self.now;
            let wall = SystemTime::now();
            self.app.date.update(wall);
            self.app.now_unix_ms = unix_ms(wall);
            let mut accept_ready = false;
            for event in &events {
                match event.token() {
                    LISTENER => accept_ready = true,
                    WAKER => {}
                    SIGNALS => self.on_signals(),
                    token if self.app.upstream.owns(token) => self.app.upstream.on_ready(
                        token,
                        event.is_readable() || event.is_read_closed() || event.is_error(),
                        event.is_writable() || event.is_write_closed() || event.is_error(),
                        self.now,
                    ),
                    token => {
                        if let Some(conn) = self.conns.get_mut(token) {
                            conn.set_ready(
                                event.is_readable() || event.is_read_closed() || event.is_error(),
                                event.is_writable() || event.is_write_closed(),
                            );
                            self.drive(token);
                        }
                    }
                }
            }
            if accept_ready || self.accept_pause_over() {
                self.accept();
            }
            self.apply_commit_outcomes()?;
            self.deliver_computations();
            self.timers_and_calls();
            self.feed_starved();
            self.housekeeping();
            self.submit_batch();
            self.tell_systemd();
            self.sweep_timeouts();
            if self.stopping_since.is_some() && self.drained() {
                return Ok(self.committer);
            }
        }
    }

    /// Sleeps until the earliest timer: an accept pause, the shutdown grace,
    /// the watchdog ping, a parked request's deadline or an outbound call's
    /// timer; or until an event. Not at all while replies wait to be delivered.
    fn poll_timeout(&mut self) -> Option<Duration> {
        if self.app.has_work() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        [
            self.app.next_timer(),
            self.accept_paused_until,
            self.stopping_since.map(|t| t + SHUTDOWN_GRACE),
            self.watchdog_due,
            (self.conns.open > 0).then_some(self.next_sweep),
            self.app.parking.next_deadline(),
            (self.app.primes.stored() > 0).then_some(self.next_housekeeping),
        ]
        .into_iter()
        .flatten()
        .map(|t| t.saturating_duration_since(now))
        .min()
    }

    /// WATCHDOG=1 when due, and STATUS= when the committed index changed.
    fn tell_systemd(&mut self) {
        if let (Some(due), Some(interval)) = (self.watchdog_due, self.notifier.watchdog_interval())
        {
            let now = Instant::now();
            if now >= due {
                self.notifier.notify("WATCHDOG=1");
                self.watchdog_due = Some(now + interval);
            }
        }
        let index = self.app.committed_index();
        if self.status_index != Some(index) {
            self.status_index = Some(index);
            self.notifier
                .notify(&format!("STATUS=serving; committed index {index}"));
        }
    }

    fn accept_pause_over(&mut self) -> bool {
        match self.accept_paused_until {
            Some(t) if Instant::now() >= t => {
                self.accept_paused_until = None;
                true
            }
            _ => false,
        }
    }

    /// Accepts until the backlog is empty or the connection cap is reached;
    /// beyond the cap clients wait in the kernel's backlog, not refused.
    fn accept(&mut self) {
        if self.accept_paused_until.is_some() {
            return;
        }
        while self.conns.open < self.config.connections_max {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, peer)) => {
                    self.fd_exhaustion_reported = false;
                    self.open(stream, peer.ip());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    if !self.fd_exhaustion_reported {
                        self.fd_exhaustion_reported = true;
                        log::warn!("accept: {e}; pausing accepts for {ACCEPT_PAUSE:?} at a time");
                    }
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
                // The peer went away before we accepted it; nothing to do.
                Err(e) => log::debug!("accept: {e}"),
            }
        }
    }

    fn open(&mut self, stream: TcpStream, peer: IpAddr) {
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("set TCP_NODELAY: {e}");
        }
        self.serial += 1;
        let token = self
            .conns
            .insert(Conn::new(stream, peer, self.serial, self.now));
        self.app.metrics.connection_opened();
        let registered = match self.conns.get_mut(token) {
            Some(conn) => self.poll.registry().register(
                conn.stream_mut(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            ),
            None => return,
        };
        if let Err(e) = registered {
            log::warn!("cannot register a connection: {e}");
            self.conns.remove(token);
        }
    }

    fn drive(&mut self, token: Token) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let drive = conn.drive(
            token,
            self.now,
            &mut self.shared,
            &mut self.app,
            &self.config.limits,
        );
        if self.app.answered > 0 {
            let answered = std::mem::take(&mut self.app.answered);
            self.app.metrics.answered(answered, self.now.elapsed());
        }
        if drive == Drive::Closed {
            self.close(token);
            return;
        }
        if conn.is_holding(&self.app) && !self.waiting.contains(&token) {
            self.waiting.push(token);
        }
        if conn.is_starved() && !self.starved.contains(&token) {
            self.starved.push(token);
        }
    }

    fn close(&mut self, token: Token) {
        // Dropping the stream closes the socket, which also takes it out of
        // the epoll set: no deregister call needed.
        if let Some(conn) = self.conns.remove(token) {
            self.shared.kept_bytes -= conn.accounted_bytes();
            self.app.metrics.connection_closed();
            // A client that left gives up the request it waited for.
            if let Some((ticket, owner)) = self.app.parking.left_by(token, conn.serial()) {
                self.app.abandon(ticket, owner);
            }
        }
        // A freed slot may let a connection waiting in the backlog in.
        if self.stopping_since.is_none() {
            self.accept();
        }
    }

    fn apply_commit_outcomes(&mut self) -> io::Result<()> {
        loop {
            let outcome = match self.committer.try_outcome() {
                Ok(Some(outcome)) => outcome,
                Ok(None) => return Ok(()),
                Err(_) => {
                    return Err(io::Error::other(
                        "the commit thread stopped; refusing to acknowledge more steps",
                    ));
                }
            };
            self.apply(outcome);
        }
    }

    fn apply(&mut self, outcome: CommitOutcome) {
        let succeeded = outcome.result.is_ok();
        self.app
            .metrics
            .commit(outcome.result.as_ref().ok().copied());
        if self.app.store_ready != succeeded {
            self.app.store_ready = succeeded;
            if succeeded {
                log::info!("commits succeed again; ready");
            }
        }
        let effect = self.app.stepper.on_commit(outcome.batch, succeeded);
        self.app.primes.on_commit(effect);
        let waiting = std::mem::take(&mut self.waiting);
        for token in waiting {
            if let (CommitEffect::Failed { .. }, Some(conn)) = (effect, self.conns.get_mut(token)) {
                conn.withdraw_held(&mut self.app);
            }
            self.drive(token);
        }
    }

    /// Closes connections that ran into a timeout: 408 for a request that
    /// stalled half-way (slowloris), silence for an idle keep-alive.
    fn sweep_timeouts(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        self.next_sweep = self.now + SWEEP_INTERVAL;
        for token in self.conns.tokens() {
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            match conn.expired(self.now, &self.config.timeouts, &self.app) {
                None => {}
                Some(Expiry::Idle) => self.close(token),
                Some(Expiry::Request) => {
                    conn.time_out(&mut self.app);
                    self.drive(token);
                }
            }
        }
    }

    /// Resumes connections that stopped reading for the shared budget, once
    /// half of it is free again.
    fn feed_starved(&mut self) {
        if self.starved.is_empty() || !self.shared.has_room() {
            return;
        }
        for token in std::mem::take(&mut self.starved) {
            self.drive(token);
        }
    }

    /// Hands each finished computation to its service and answers every
    /// request that waited for it.
    fn deliver_computations(&mut self) {
        while let Some(computed) = self.app.compute.try_result() {
            match computed.output {
                Computed::Fib { n, digits } => {
                    let finished = self.app.fib.computed(n, digits, computed.elapsed);
                    self.app.metrics.fib_computed(finished.elapsed);
                    for waiter in &finished.waiters {
                        self.resume_parked(waiter.ticket, |app, out| {
                            app.fib_reply(waiter, finished.n, &finished.value, out)
                        });
                    }
                }
                Computed::Cursor(cursor) => self.app.cluster_jumped(*cursor),
                Computed::Primes(table) => {
                    log::debug!("{} primes sieved in {:?}", table.len(), computed.elapsed);
                    let sieved = self.app.primes.sieved(table, self.app.now_unix_ms);
                    for elapsed_ms in sieved.durations_ms {
                        self.app.metrics.primes_task_done(elapsed_ms);
                    }
                    for waiter in &sieved.ready {
                        self.resume_parked(waiter.ticket, |app, out| app.primes_reply(waiter, out));
                    }
                }
            }
        }
    }

    /// Expired parks, due hedges, a due span batch and the outbound
    /// client's own work, then the replies they decided.
    fn timers_and_calls(&mut self) {
        // Answers that arrived are delivered before any deadline is looked
        // at: a call that succeeded in the pass its deadline passed is
        // answered with its success, and its ticket is gone before expiry.
        self.app.settle_upstream();
        self.deliver_settled();
        while let Some((ticket, owner)) = self.app.parking.expired(self.now) {
            self.app.expire(ticket, owner);
        }
        self.app.run_smart_timers(self.now);
        self.app.export_spans();
        self.app.drive_cluster();
        let mut registrar = PollRegistrar(self.poll.registry());
        self.app.upstream.drive(self.now, &mut registrar);
        self.app.settle_upstream();
        self.deliver_settled();
    }

    /// Writes every reply decided for a parked request to its connection.
    fn deliver_settled(&mut self) {
        while let Some((ticket, reply)) = self.app.take_settled() {
            self.resume_parked(ticket, |app, out| app.write_late(reply, out));
        }
    }

    /// Deletes expired task records (through the next commit) and retries a
    /// sieve the compute queue refused.
    fn housekeeping(&mut self) {
        if self.now < self.next_housekeeping {
            return;
        }
        self.next_housekeeping = self.now + HOUSEKEEPING_INTERVAL;
        let expired = self.app.primes.expire(self.app.now_unix_ms);
        if expired > 0 {
            log::debug!("{expired} expired primes task(s) to delete");
        }
        self.app.primes.kick();
    }

    /// Writes the later answer of a parked request, if its client is still
    /// connected, and drives the connection on.
    fn resume_parked(
        &mut self,
        ticket: Ticket,
        reply: impl FnOnce(&mut App, &mut Output) -> Reply,
    ) {
        let Some((conn_ref, _)) = self.app.parking.take(ticket) else {
            return;
        };
        let token = conn_ref.token;
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        if conn.serial() != conn_ref.serial {
            return; // that client left; its token now names another
        }
        let app = &mut self.app;
        conn.resume(&self.config.limits, |out| reply(app, out));
        self.drive(token);
    }

    /// Hands the collected batch to the commit thread: the stepper's index
    /// and the task records, in one transaction.
    fn submit_batch(&mut self) {
        if self.app.primes.take_join() {
            self.app.stepper.join_batch();
        }
        if let Some(mut request) = self.app.stepper.take_batch() {
            request.records = self.app.primes.take_writes(request.batch);
            self.app.metrics.batch_submitted(request.steps);
            self.committer.submit(request);
        }
    }

    fn on_signals(&mut self) {
        let mut stop = false;
        let mut reload = false;
        for signal in self.signals.pending() {
            stop |= signal == SIGTERM || signal == SIGINT;
            reload |= signal == SIGHUP;
            #[cfg(any(debug_assertions, feature = "test-hooks"))]
            test_hooks::on_signal(signal);
        }
        if reload {
            // A small, bounded file (`access::keyfile::FILE_BYTES_MAX`), read
            // between requests; connections and buckets are untouched.
            self.app.access.reload();
        }
        if stop && self.stopping_since.is_none() {
            log::info!("stopping: finishing in-flight requests and commits");
            self.notifier.notify("STOPPING=1");
            self.stopping_since = Some(Instant::now());
            if let Some(mut listener) = self.listener.take() {
                let _ = self.poll.registry().deregister(&mut listener);
            }
            for token in self.conns.tokens() {
                if let Some(conn) = self.conns.get_mut(token) {
                    conn.finish();
                }
                self.drive(token);
            }
        }
    }

    /// Stopped when nothing awaits a commit and every reply is out, or the
    /// grace period is over (slow readers lose their replies; no step does).
    fn drained(&self) -> bool {
        let commits_done = self.app.stepper.is_settled() && self.waiting.is_empty();
        let computations_done = self.app.parking.is_empty();
        let grace_over = self
            .stopping_since
            .is_some_and(|t| t.elapsed() >= SHUTDOWN_GRACE);
        commits_done && ((computations_done && self.conns.open == 0) || grace_over)
    }
}

#[cfg(not(any(debug_assertions, feature = "test-hooks")))]
const HANDLED_SIGNALS: [i32; 3] = [SIGTERM, SIGINT, SIGHUP];
#[cfg(any(debug_assertions, feature = "test-hooks"))]
const HANDLED_SIGNALS: [i32; 5] = [
    SIGTERM,
    SIGINT,
    SIGHUP,
    signal_hook::consts::SIGUSR1,
    signal_hook::consts::SIGUSR2,
];

/// Faults on demand, for the tests that show what a wedged or panicking loop
/// costs (debug builds, or release builds with the `test-hooks` feature).
#[cfg(any(debug_assertions, feature = "test-hooks"))]
mod test_hooks {
    use signal_hook::consts::{SIGUSR1, SIGUSR2};

    pub fn on_signal(signal: i32) {
        if signal == SIGUSR1 {
            log::warn!("SIGUSR1: wedging the event loop (test hook)");
            loop {
                std::thread::park();
            }
        }
        if signal == SIGUSR2 {
            panic!("SIGUSR2: a panic in the event loop (test hook)");
        }
    }
}

/// The outbound client's view of the poller: registration only.
struct PollRegistrar<'r>(&'r Registry);

impl Registrar for PollRegistrar<'_> {
    fn register(&mut self, stream: &mut TcpStream, token: Token) -> io::Result<()> {
        self.0
            .register(stream, token, Interest::READABLE | Interest::WRITABLE)
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23): per-process and system-wide fd limits.
    matches!(e.raw_os_error(), Some(23 | 24))
}
