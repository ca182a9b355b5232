//! The event loop: the only code that knows `mio::Poll`. One thread serves
//! every socket; each pass runs a few named phases:
//!
//! 1. poll, then read the clock once and hand it to the app;
//! 2. accept (from the public listener and, with `--admin-listen` or a
//!    passed `admin` socket, the admin one: one path, a cap each), and drive
//!    every ready connection (read, parse, route, reply);
//! 3. the app's phases: commit outcomes, finished computations, timers and
//!    outbound calls, housekeeping (about once a second), then the next
//!    batch to its store;
//! 4. deliver the replies those phases decided to the connections that wait
//!    for them, and resume connections the shared budget had starved;
//! 5. tell systemd, sweep timeouts (once a second), and read the clock a
//!    second time for what measures the pass (latencies, span ends);
//! 6. signals (a graceful stop waits for in-flight commits, then for the
//!    spans still to export, bounded; SIGHUP rereads the API keys) are
//!    handled as their event arrives.
//!
//! Outbound sockets (`crate::net::upstream`) live in a token range of their
//! own, from [`UPSTREAM_TOKEN_BASE`]: readiness there goes to the app's
//! client, which registers new sockets through [`Registrar`], the one piece
//! of the poller it sees.
//!
//! The commit thread's fsync never runs here, so /current is answered from
//! durable state while a commit is in flight.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::base::slab::Slab;
use crate::config::Config;
use crate::net::conn::{Conn, Drive, Shared};
use crate::net::session::{Expiry, Listener};
use crate::net::systemd::Notifier;
use crate::net::upstream::Registrar;
use crate::reply::park::ConnId;
use crate::routes::App;
use crate::store::ledger::CommitOutcome;

const PUBLIC_LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);
const SIGNALS: Token = Token(usize::MAX - 3);
const ADMIN_LISTENER: Token = Token(usize::MAX - 4);
/// Tokens from here up to the four above belong to the outbound client;
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

/// Connections the admin listener may hold, beside `--max-connections`: a
/// public port flooded up to its cap still lets the operator in.
pub const ADMIN_CONNECTIONS_MAX: usize = 16;

/// A listening socket, what it serves, its connections against its cap, and
/// whether connections may wait in its backlog (set by its event, cleared
/// when accept says WouldBlock: edge triggered, so one left at the cap is
/// taken up later).
struct Bound {
    socket: TcpListener,
    listener: Listener,
    open: usize,
    open_max: usize,
    backlog: bool,
}

impl Bound {
    fn token(&self) -> Token {
        match self.listener {
            Listener::Public => PUBLIC_LISTENER,
            Listener::Admin => ADMIN_LISTENER,
        }
    }
}

pub struct Server {
    poll: Poll,
    /// The admin listener if there is one, then the public one; empty once
    /// a stop began.
    listeners: Vec<Bound>,
    signals: Signals,
    app: App,
    config: Config,
    /// Open connections; a connection's key is its token.
    conns: Slab<Conn>,
    shared: Shared,
    /// Connections that stopped reading because `shared`'s budget was spent.
    starved: Vec<usize>,
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
    /// Registers the listeners and signal handlers; the waker is created by
    /// the caller from `poll` because the commit thread needs it first.
    pub fn new(
        poll: Poll,
        public: TcpListener,
        admin: Option<TcpListener>,
        app: App,
        config: Config,
        notifier: Notifier,
        now: Instant,
    ) -> io::Result<Server> {
        let mut listeners = Vec::with_capacity(2);
        let sockets = [
            (admin, Listener::Admin, ADMIN_CONNECTIONS_MAX),
            (Some(public), Listener::Public, config.connections_max),
        ];
        for (socket, listener, open_max) in sockets {
            if let Some(socket) = socket {
                // Connections may already wait (socket activation).
                let mut bound = Bound {
                    socket,
                    listener,
                    open: 0,
                    open_max,
                    backlog: true,
                };
                let token = bound.token();
                poll.registry()
                    .register(&mut bound.socket, token, Interest::READABLE)?;
                listeners.push(bound);
            }
        }
        let mut signals = Signals::new(HANDLED_SIGNALS)?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        Ok(Server {
            poll,
            listeners,
            signals,
            app,
            config,
            conns: Slab::default(),
            shared: Shared::new(SCRATCH_BYTES, KEPT_BYTES_MAX),
            starved: Vec::new(),
            accept_paused_until: None,
            stopping_since: None,
            watchdog_due: notifier.watchdog_interval().map(|_| now),
            notifier,
            status_index: None,
            serial: 0,
            fd_exhaustion_reported: false,
            now,
            next_sweep: now + SWEEP_INTERVAL,
            next_housekeeping: now,
        })
    }

    /// The token the caller must create the commit thread's waker with.
    pub fn waker(poll: &Poll) -> io::Result<Arc<Waker>> {
        Ok(Arc::new(Waker::new(poll.registry(), WAKER)?))
    }

    /// Serves until SIGTERM or SIGINT, drains, and stops the commit thread;
    /// returns the outcomes of the last commits.
    pub fn run(mut self) -> io::Result<Vec<CommitOutcome>> {
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
            self.app.tick(self.now, SystemTime::now());
            let mut accept_ready = false;
            for event in &events {
                let readable = event.is_readable() || event.is_read_closed() || event.is_error();
                match event.token() {
                    token @ (PUBLIC_LISTENER | ADMIN_LISTENER) => {
                        for bound in &mut self.listeners {
                            bound.backlog |= bound.token() == token;
                        }
                        accept_ready = true;
                    }
                    WAKER => {}
                    SIGNALS => self.on_signals(),
                    Token(token) if self.app.upstream_owns(token) => self.app.upstream_ready(
                        token,
                        readable,
                        event.is_writable() || event.is_write_closed() || event.is_error(),
                    ),
                    Token(key) => {
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.set_ready(
                                readable,
                                event.is_writable() || event.is_write_closed(),
                            );
                            self.drive(key);
                        }
                    }
                }
            }
            if accept_ready || self.accept_pause_over() {
                self.accept();
            }
            self.app.commits().map_err(|_| {
                io::Error::other("the commit thread stopped; refusing to acknowledge more steps")
            })?;
            self.app.computations();
            self.app
                .timers_and_calls(&mut PollRegistrar(self.poll.registry()));
            if self.app.has_tasks() && self.now >= self.next_housekeeping {
                self.next_housekeeping = self.now + HOUSEKEEPING_INTERVAL;
                self.app.housekeeping();
            }
            self.app.submit();
            self.deliver();
            self.feed_starved();
            self.tell_systemd();
            self.sweep_timeouts();
            self.app.pass_done(Instant::now());
            if self.stopping_since.is_some() && self.drained() && self.app.spans_flushed() {
                return Ok(self.app.shutdown());
            }
        }
    }

    /// Sleeps until the earliest timer: an accept pause, the shutdown grace,
    /// the watchdog ping, the timeout sweep, housekeeping or one of the
    /// app's; or until an event. Not at all while the app has work due.
    fn poll_timeout(&mut self) -> Option<Duration> {
        if self.app.has_work() {
            return Some(Duration::ZERO);
        }
        let now = self.now;
        [
            self.app.next_timer(),
            self.accept_paused_until,
            // Once over, the grace is no timer: a stop still waiting (for
            // commits, or the spans' flush) sleeps on their events.
            self.stopping_since
                .map(|t| t + SHUTDOWN_GRACE)
                .filter(|&t| t > now),
            self.watchdog_due,
            (!self.conns.is_empty()).then_some(self.next_sweep),
            self.app.has_tasks().then_some(self.next_housekeeping),
        ]
        .into_iter()
        .flatten()
        .map(|t| t.saturating_duration_since(now))
        .min()
    }

    /// WATCHDOG=1 when due, and STATUS= when the committed index changed.
    fn tell_systemd(&mut self) {
        if let (Some(due), Some(interval)) = (self.watchdog_due, self.notifier.watchdog_interval())
            && self.now >= due
        {
            self.notifier.notify("WATCHDOG=1");
            self.watchdog_due = Some(self.now + interval);
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
            Some(t) if self.now >= t => {
                self.accept_paused_until = None;
                true
            }
            _ => false,
        }
    }

    /// Accepts from every listener until its backlog is empty or its
    /// connection cap is reached; beyond the cap clients wait in the kernel's
    /// backlog, not refused. Each listener has its own cap; fd exhaustion
    /// pauses both.
    fn accept(&mut self) {
        for index in 0..self.listeners.len() {
            if !self.accept_from(index) {
                return;
            }
        }
    }

    /// Accepts from one listener; false when accepting must stop for all
    /// (fd exhaustion).
    fn accept_from(&mut self, index: usize) -> bool {
        loop {
            if self.accept_paused_until.is_some() {
                return false;
            }
            let Some(bound) = self
                .listeners
                .get_mut(index)
                .filter(|b| b.backlog && b.open < b.open_max)
            else {
                return true;
            };
            let listener = bound.listener;
            match bound.socket.accept() {
                Ok((stream, peer)) => {
                    bound.open += 1;
                    self.fd_exhaustion_reported = false;
                    self.open(stream, peer.ip(), listener);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    bound.backlog = false;
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_fd_exhaustion(&e) => {
                    if !self.fd_exhaustion_reported {
                        self.fd_exhaustion_reported = true;
                        log::warn!("accept: {e}; pausing accepts for {ACCEPT_PAUSE:?} at a time");
                    }
                    self.accept_paused_until = Some(self.now + ACCEPT_PAUSE);
                    return false;
                }
                // The peer went away before we accepted it; nothing to do.
                Err(e) => log::debug!("accept: {e}"),
            }
        }
    }

    fn open(&mut self, stream: TcpStream, peer: IpAddr, listener: Listener) {
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("set TCP_NODELAY: {e}");
        }
        self.serial += 1;
        let serial = self.serial;
        let now = self.now;
        let key = self
            .conns
            .insert_with(|key| Conn::new(stream, ConnId { key, serial }, peer, listener, now));
        self.app.connection(true);
        let registered = match self.conns.get_mut(key) {
            Some(conn) => self.poll.registry().register(
                conn.stream_mut(),
                Token(key),
                Interest::READABLE | Interest::WRITABLE,
            ),
            None => return,
        };
        if let Err(e) = registered {
            log::warn!("cannot register a connection: {e}");
            self.close(key);
        }
    }

    fn drive(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let drive = conn.drive(
            self.now,
            &mut self.shared,
            &mut self.app,
            &self.config.limits,
        );
        if drive == Drive::Closed {
            self.close(key);
            return;
        }
        if conn.is_starved() && !self.starved.contains(&key) {
            self.starved.push(key);
        }
    }

    fn close(&mut self, key: usize) {
        // Dropping the stream closes the socket, which also takes it out of
        // the epoll set: no deregister call needed.
        if let Some(conn) = self.conns.remove(key) {
            let listener = conn.listener();
            if let Some(bound) = self.listeners.iter_mut().find(|b| b.listener == listener) {
                bound.open -= 1;
            }
            self.shared.kept_bytes -= conn.accounted_bytes();
            self.app.connection(false);
            // A client that left gives up the replies it waited for.
            for ticket in conn.open_slots() {
                self.app.abandon(ticket);
            }
        }
        // A freed slot may let a connection waiting in the backlog in.
        if self.stopping_since.is_none() {
            self.accept();
        }
    }

    /// Writes every reply the app decided for a parked request to its
    /// connection, and drives the connection on.
    fn deliver(&mut self) {
        while let Some(delivery) = self.app.next_delivery() {
            let id = delivery.conn;
            let Some(conn) = self.conns.get_mut(id.key).filter(|c| c.id() == id) else {
                // Not reachable: a connection gives its tickets up as it closes.
                continue;
            };
            let (ticket, withdraw) = (delivery.ticket, delivery.withdraws());
            let app = &mut self.app;
            let dropped = conn.deliver(ticket, withdraw, &self.config.limits, |out| {
                app.write_delivery(delivery, out)
            });
            // Replies queued behind a withdrawn one go with it.
            for ticket in dropped.unwrap_or_default() {
                self.app.abandon(ticket);
            }
            self.drive(id.key);
        }
    }

    /// Closes connections that ran into a timeout: 408 for a request that
    /// stalled half-way (slowloris), silence for an idle keep-alive.
    fn sweep_timeouts(&mut self) {
        if self.now < self.next_sweep {
            return;
        }
        self.next_sweep = self.now + SWEEP_INTERVAL;
        for key in self.conns.keys() {
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            match conn.expired(self.now, &self.config.timeouts) {
                None => {}
                Some(Expiry::Idle) => self.close(key),
                Some(Expiry::Request) => {
                    conn.time_out(&mut self.app);
                    self.drive(key);
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
        for key in std::mem::take(&mut self.starved) {
            self.drive(key);
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
            self.app.reload_keys();
        }
        if stop && self.stopping_since.is_none() {
            log::info!("stopping: finishing in-flight requests and commits");
            self.notifier.notify("STOPPING=1");
            self.stopping_since = Some(self.now);
            self.app.begin_stop();
            for mut bound in std::mem::take(&mut self.listeners) {
                let _ = self.poll.registry().deregister(&mut bound.socket);
            }
            for key in self.conns.keys() {
                if let Some(conn) = self.conns.get_mut(key) {
                    conn.finish();
                }
                self.drive(key);
            }
        }
    }

    /// Stopped when every write taken is durable and every reply is out, or
    /// the grace period is over (slow readers lose their replies; no step
    /// a client was told of is lost); then the spans still to export get a
    /// bounded time of their own (`App::spans_flushed`).
    fn drained(&self) -> bool {
        let grace_over = self
            .stopping_since
            .is_some_and(|t| self.now.saturating_duration_since(t) >= SHUTDOWN_GRACE);
        self.app.writes_settled()
            && ((self.app.replies_settled() && self.conns.is_empty()) || grace_over)
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
    fn register(&mut self, stream: &mut TcpStream, token: usize) -> io::Result<()> {
        self.0.register(
            stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        )
    }
}

fn is_fd_exhaustion(e: &io::Error) -> bool {
    // EMFILE (24) and ENFILE (23): per-process and system-wide fd limits.
    matches!(e.raw_os_error(), Some(23 | 24))
}
