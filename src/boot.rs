//! The wiring: from a validated [`Config`] to a serving loop. It opens the
//! LMDB store and recovers what it holds, builds the store of the index
//! `--store` names (and only that: with etcd no local cursor is built), the
//! services, the listeners (or the sockets systemd passed) and the app, and
//! runs the loop until a graceful stop. Nothing here decides anything the
//! modules could.

use std::error::Error;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use crate::access::Access;
use crate::access::ratelimit::RateLimiter;
use crate::base::secret::Secret;
use crate::base::time::unix_ms;
use crate::config::Config;
use crate::net::systemd::{self, Notifier};
use crate::net::upstream::{Client, ClientConfig, HttpUrl, ResponseLimits};
use crate::ops::metrics::{ListenAddrs, Watched, WatchedStore};
use crate::routes::{App, Parts};
use crate::server::{self, Server};
use crate::services::compute::ComputeWorker;
use crate::services::fib::service::FibService;
use crate::services::primes::callback::{Callback, Deliveries};
use crate::services::primes::service::PrimesService;
use crate::services::primes::task::{self, Task, TaskId};
use crate::services::random::RandomSource;
use crate::services::smart::service::SmartService;
use crate::services::stepper::Stepper;
use crate::store::IndexStore;
use crate::store::committer::Committer;
use crate::store::etcd::{EtcdIndex, ReadMode, wire};
use crate::store::journal;
use crate::store::lmdb::{Store, map_bytes_for};
use crate::store::wal::Wal;

/// Pooled upstream connections unused this long are closed: shorter than
/// the usual server keep-alive timeouts (uvicorn 5 s, nginx 75 s), so fibd
/// usually closes first.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Serves until SIGTERM or SIGINT, then drains. The start-up and stop lines
/// are logged under the target `fibd`, the daemon's own voice.
pub fn serve(config: Config) -> Result<(), Box<dyn Error>> {
    // Taken first: nothing else may run before the environment is cleaned.
    let activated = systemd::take_activated_listeners()?;
    let no_rng = |e: getrandom::Error| format!("no OS random number generator: {e}");
    let mut random = RandomSource::new().map_err(no_rng)?;
    let secret = hash_key(&mut random).map_err(no_rng)?;
    let access = Access::new(config.access.clone(), config.rate_limit, secret).map_err(|e| {
        let path = config
            .access
            .api_keys
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        format!("API key file {}: {e}", path.display())
    })?;
    let map_bytes = map_bytes_for(config.primes.tasks_max, task::RECORD_BYTES_MAX);
    let store = Store::open(&config.data_dir, map_bytes)?;
    let wal = Wal::open(&config.data_dir)
        .map_err(|e| format!("write-ahead log in {}: {e}", config.data_dir.display()))?;
    let recovered = store.with_table(|table| journal::recover(&table, &wal))??;
    if recovered.replayed > 0 {
        log::info!(target: "fibd", "replayed {} batch(es) from the write-ahead log", recovered.replayed);
    }
    let tasks: Vec<(TaskId, Task, Option<Callback>)> = recovered
        .records
        .into_iter()
        .filter_map(|(seq, value)| {
            let Some((id, task, mut callback)) = Task::decode(seq, &value) else {
                log::warn!(target: "fibd", "skipping task record {seq}: this version cannot read it");
                return None;
            };
            // Where a stored callback goes is decided by today's allow-list.
            if let Some(callback) = &mut callback {
                callback.addr = HttpUrl::parse(&callback.url)
                    .ok()
                    .and_then(|url| config.callbacks.allow.admit(&url).ok());
            }
            Some((id, task, callback))
        })
        .collect();
    // A passed socket wins over the address (the unit decides); a passed
    // admin socket is served even without --admin-listen.
    let public = match activated.public {
        Some(socket) => Listening::passed(socket),
        None => Listening::bind(config.listen)?,
    };
    let admin = match (activated.admin, config.admin_listen) {
        (Some(socket), _) => Some(Listening::passed(socket)),
        (None, Some(addr)) => Some(Listening::bind(addr)?),
        (None, None) => None,
    };
    let now = Instant::now();
    let stepper = match &config.cluster {
        // The index is etcd's: the cursor is built from its first read.
        Some(cluster) => {
            // Makes this process's writer tags unique.
            let nonce = random.next_u64().map_err(no_rng)?;
            let url = match &cluster.url {
                Some(url) => url.clone(),
                None => {
                    let bound = public.socket.local_addr()?;
                    if bound.ip().is_unspecified() {
                        return Err(format!(
                            "cluster mode on {bound}: set --cluster-url to the address the \
                             other nodes reach this one at"
                        )
                        .into());
                    }
                    format!("http://{bound}")
                }
            };
            let etcd = EtcdIndex::new(cluster.clone(), &url, nonce, now);
            Stepper::new(IndexStore::Etcd(Box::new(etcd)), config.max_index, None)
        }
        None => Stepper::new(IndexStore::lmdb(), config.max_index, Some(recovered.index)),
    };
    let poll = mio::Poll::new()?;
    let waker = Server::waker(&poll)?;
    let commit_waker = waker.clone();
    let committer = Committer::spawn(store, wal, &config.data_dir, move || {
        if let Err(e) = commit_waker.wake() {
            log::error!(target: "fibd", "cannot wake the event loop after a commit: {e}");
        }
    })?;
    let compute = Rc::new(ComputeWorker::spawn(
        config.fib.threads,
        config.fib.queue_max,
        move || {
            if let Err(e) = waker.wake() {
                log::error!(target: "fibd", "cannot wake the event loop after a computation: {e}");
            }
        },
    )?);
    // In cluster mode the tasks are the cluster's, in etcd; the leader
    // loads them when it wins its term (`store::etcd::records`).
    let tasks = if config.cluster.is_some() {
        if !tasks.is_empty() {
            log::warn!(
                target: "fibd",
                "{} task record(s) in {} are this node's own from before cluster mode: they \
                 are not served while the tasks are in etcd",
                tasks.len(),
                config.data_dir.display()
            );
        }
        Vec::new()
    } else {
        tasks
    };
    let task_count = tasks.len();
    let secret = config.callbacks.secret.as_ref().map(Secret::bytes);
    let deliveries = Deliveries::new(config.callbacks.limits, secret)
        .ok_or("the callback secret is shorter than 16 bytes")?;
    let primes = PrimesService::new(
        config.primes,
        deliveries,
        compute.clone(),
        tasks,
        unix_ms(SystemTime::now()),
        now,
    );
    log::info!(
        target: "fibd",
        "fibd {} listening on {} with data in {}; {}{}",
        env!("CARGO_PKG_VERSION"),
        public.describe()?,
        config.data_dir.display(),
        match config.cluster {
            Some(_) => "the index is in etcd".to_owned(),
            None => format!("recovered index {}", recovered.index),
        },
        match &admin {
            Some(admin) => format!("; admin endpoints on {}", admin.describe()?),
            None => String::new(),
        }
    );
    if task_count > 0 {
        log::info!(target: "fibd", "recovered {task_count} primes task(s); pending ones are resumed");
    }
    log_settings(&config, &access);
    let upstream = Client::new(ClientConfig {
        conns_max: config.smart.conns_max,
        idle_timeout: UPSTREAM_IDLE_TIMEOUT,
        limits: ResponseLimits::default(),
        token_base: server::UPSTREAM_TOKEN_BASE,
    });
    let parts = Parts {
        stepper,
        committer,
        fib: FibService::new(config.fib, compute.clone()),
        primes,
        compute,
        smart: SmartService::new(config.smart.clone()),
        upstream,
        access,
        limiter: RateLimiter::new(config.rate_limit.clients_max),
        random,
        tracing: config.trace.clone(),
        callback_allow: config.callbacks.allow.clone(),
        connections_max: config.connections_max,
        watched: watched(
            &config,
            ListenAddrs {
                public: public.socket.local_addr().ok(),
                admin: admin.as_ref().and_then(|a| a.socket.local_addr().ok()),
            },
        ),
    };
    let app = App::new(parts, now, SystemTime::now());
    let admin = admin.map(|admin| admin.socket);
    let notifier = Notifier::from_env();
    let server = Server::new(poll, public.socket, admin, app, config, notifier, now)?;
    for outcome in server.run()? {
        if let Err(e) = outcome.result {
            log::error!(target: "fibd", "a final commit failed: {e}");
        }
    }
    log::info!(target: "fibd", "stopped cleanly");
    Ok(())
}

/// A listening socket: the one systemd passed, else one bound here.
struct Listening {
    socket: mio::net::TcpListener,
    from_systemd: bool,
}

impl Listening {
    fn passed(socket: std::net::TcpListener) -> Listening {
        Listening {
            socket: mio::net::TcpListener::from_std(socket),
            from_systemd: true,
        }
    }

    fn bind(addr: SocketAddr) -> Result<Listening, String> {
        let bind = || {
            let socket = std::net::TcpListener::bind(addr)?;
            socket.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(socket)
        };
        let socket = bind().map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        Ok(Listening {
            socket: mio::net::TcpListener::from_std(socket),
            from_systemd: false,
        })
    }

    /// Its address, and where it came from, for the start-up line.
    fn describe(&self) -> std::io::Result<String> {
        let origin = if self.from_systemd {
            " (socket activation)"
        } else {
            ""
        };
        Ok(format!("{}{origin}", self.socket.local_addr()?))
    }
}

/// What a new operator most needs to know, once at start: exposure, the
/// upstream, tracing and cluster mode.
fn log_settings(config: &Config, access: &Access) {
    let a = &config.access;
    let proxies: Vec<String> = a.trusted_proxies.iter().map(ToString::to_string).collect();
    log::info!(
        target: "fibd",
        "access: {} API keys{}; steps {}; trusted proxies [{}]; anonymous loopback clients {}",
        access.key_counts().count(),
        a.api_keys
            .as_ref()
            .map(|p| format!(" from {}", p.display()))
            .unwrap_or_default(),
        if a.protect_steps {
            "need a key with the step scope"
        } else {
            "open to all"
        },
        proxies.join(", "),
        if a.rate_limit_loopback || !config.rate_limit.enabled {
            "limited like everyone"
        } else {
            "not rate limited"
        },
    );
    for upstream in &config.smart.upstreams {
        log::info!(
            target: "fibd",
            "/api/smart calls http://{}{} at {}",
            upstream.host,
            upstream.target,
            upstream.addr
        );
    }
    if !config.smart.upstreams.is_empty() {
        let budget = match config.smart.budget {
            Some(b) => format!(
                "{}.{}% of first attempts plus {}/s",
                b.per_mille / 10,
                b.per_mille % 10,
                b.min_per_sec
            ),
            None => "off".to_owned(),
        };
        log::info!(
            target: "fibd",
            "/api/smart hedges after {}; extra-attempt budget {budget}",
            config.smart.hedge_after
        );
    }
    if let Some(trace) = &config.trace {
        log::info!(
            target: "fibd",
            "tracing: {} of requests without a caller's decision; spans go as {} to {} at {} \
             in batches of up to {}, with up to {} waiting (more are dropped and counted \
             in fibd_trace_spans_dropped_total)",
            trace.sample_ratio,
            trace.format.name(),
            trace.collector,
            trace.collector.addr,
            crate::ops::trace::BATCH_SPANS,
            trace.buffer_spans
        );
    }
    if !config.callbacks.allow.is_empty() {
        let limits = config.callbacks.limits;
        log::info!(
            target: "fibd",
            "primes callbacks may go to {}; signed, retried for {} s, up to {} in flight",
            config.callbacks.allow,
            limits.retry_for.as_secs(),
            limits.in_flight_max
        );
    }
    if let Some(cluster) = &config.cluster {
        log::info!(
            target: "fibd",
            "cluster mode: the index is {} in etcd at {} (node {}, {} reads), written by \
             the leader elected at {} (lease {} s); primes tasks stay in {}",
            wire::index_key(&cluster.name),
            cluster
                .endpoints
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            cluster.node,
            match cluster.reads {
                ReadMode::Linearizable => "linearizable",
                ReadMode::Serializable => "serializable",
            },
            wire::leader_key(&cluster.name),
            cluster.lease_ttl.as_secs(),
            config.data_dir.display()
        );
    }
}

/// Which fibd this is, for the dashboard: its version, the addresses it is
/// bound to and where it keeps the index.
fn watched(config: &Config, listeners: ListenAddrs) -> Watched {
    let store = match &config.cluster {
        Some(cluster) => WatchedStore::Etcd {
            cluster: cluster.name.clone(),
            node: cluster.node.clone(),
            endpoints: cluster.endpoints.iter().map(ToString::to_string).collect(),
        },
        // Absolute, so the page names the directory wherever fibd started.
        None => WatchedStore::Lmdb {
            data_dir: std::fs::canonicalize(&config.data_dir)
                .unwrap_or_else(|_| config.data_dir.clone())
                .display()
                .to_string(),
        },
    };
    Watched {
        version: env!("CARGO_PKG_VERSION"),
        listeners,
        store,
    }
}

/// A per-process secret for hashing API keys: nobody can relate a hash, or
/// how long comparing it takes, to a key.
fn hash_key(random: &mut RandomSource) -> Result<[u8; 16], getrandom::Error> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random.next_u64()?.to_le_bytes());
    key[8..].copy_from_slice(&random.next_u64()?.to_le_bytes());
    Ok(key)
}
