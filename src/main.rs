//! Wires the daemon together: configuration, logging, store, listener, event
//! loop. Nothing here decides anything the modules could.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use fibd::access::Access;
use fibd::access::ratelimit::RateLimiter;
use fibd::config::{self, Command, Config};
use fibd::http::date::HttpDate;
use fibd::net::systemd::{self, Notifier};
use fibd::net::upstream::{Client, ClientConfig, ResponseLimits};
use fibd::routes::{App, Services};
use fibd::server::{self as server, Server};
use fibd::services::compute::ComputeWorker;
use fibd::services::fib::service::FibService;
use fibd::services::primes::service::PrimesService;
use fibd::services::primes::task::{Task, TaskId};
use fibd::services::random::RandomSource;
use fibd::services::smart::SmartService;
use fibd::services::stepper::Stepper;
use fibd::store::committer::Committer;
use fibd::store::etcd::{Cluster, ReadMode};
use fibd::store::lmdb::Store;

fn main() -> ExitCode {
    let command = match config::from_args(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("fibd: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", config::HELP);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("fibd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Healthcheck(addr) => healthcheck(addr),
        Command::Serve(config) => {
            fibd::ops::logging::init();
            // A panic ends the process (release builds abort): acknowledged
            // steps are already on disk, and systemd restarts fibd. Say so at
            // error priority so journalctl -p err shows it.
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let location = info.location().map(ToString::to_string).unwrap_or_default();
                let message = info.payload_as_str().unwrap_or("(no message)");
                log::error!(
                    "panic at {location}: {message}; exiting so the service manager restarts fibd"
                );
                default_hook(info);
            }));
            match serve(*config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    // Taken first: nothing else may run before the environment is cleaned.
    let activated = systemd::take_activated_listener()?;
    let mut random =
        RandomSource::new().map_err(|e| format!("no OS random number generator: {e}"))?;
    let secret =
        hash_key(&mut random).map_err(|e| format!("no OS random number generator: {e}"))?;
    // Makes cluster mode's writer tags unique to this process.
    let nonce = random
        .next_u64()
        .map_err(|e| format!("no OS random number generator: {e}"))?;
    let access = Access::new(config.access.clone(), config.rate_limit, secret).map_err(|e| {
        let path = config
            .access
            .api_keys
            .as_deref()
            .unwrap_or(std::path::Path::new(""));
        format!("API key file {}: {e}", path.display())
    })?;
    let store = Store::open(&config.data_dir)?;
    let (recovered, records) = store.with_table(|table| {
        Ok::<_, fibd::store::lmdb::StoreError>((table.read_index()?, table.read_records()?))
    })??;
    let tasks: Vec<(TaskId, Task)> = records
        .into_iter()
        .filter_map(|(seq, value)| {
            let task = Task::decode(seq, &value);
            if task.is_none() {
                log::warn!("skipping task record {seq}: this version cannot read it");
            }
            task
        })
        .collect();
    let from_systemd = activated.is_some();
    let listener = match activated {
        Some(listener) => listener,
        None => {
            let listener = std::net::TcpListener::bind(config.listen)
                .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
            listener.set_nonblocking(true)?;
            listener
        }
    };
    let listener = mio::net::TcpListener::from_std(listener);
    let stepper = Stepper::new(recovered, config.max_index);
    let poll = mio::Poll::new()?;
    let waker = Server::waker(&poll)?;
    let committer = Committer::spawn(store, waker.clone())?;
    let compute = Rc::new(ComputeWorker::spawn(
        config.fib.threads,
        config.fib.queue_max,
        move || {
            if let Err(e) = waker.wake() {
                log::error!("cannot wake the event loop after a computation: {e}");
            }
        },
    )?);
    let fib = FibService::new(config.fib, compute.clone());
    let task_count = tasks.len();
    let primes = PrimesService::new(
        config.primes,
        compute.clone(),
        tasks,
        unix_ms(SystemTime::now()),
    );
    log::info!(
        "fibd {} listening on {}{} with data in {}; {}",
        env!("CARGO_PKG_VERSION"),
        listener.local_addr()?,
        if from_systemd {
            " (socket activation)"
        } else {
            ""
        },
        config.data_dir.display(),
        match config.cluster {
            Some(_) => "the index is in etcd".to_owned(),
            None => format!("recovered index {recovered}"),
        }
    );
    if task_count > 0 {
        log::info!("recovered {task_count} primes task(s); pending ones are resumed");
    }
    log_access_settings(&config, &access);
    let limiter = RateLimiter::new(config.rate_limit.clients_max);
    if let Some(upstream) = &config.smart.upstream {
        log::info!(
            "/api/smart calls http://{}{} at {}",
            upstream.host,
            upstream.target,
            upstream.addr
        );
    }
    let upstream = Client::new(ClientConfig {
        conns_max: config.smart.conns_max,
        idle_timeout: UPSTREAM_IDLE_TIMEOUT,
        limits: ResponseLimits::default(),
        token_base: server::UPSTREAM_TOKEN_BASE,
    });
    let services = Services {
        stepper,
        fib,
        primes,
        compute,
    };
    let app = App::new(
        services,
        HttpDate::new(SystemTime::now()),
        random,
        access,
        limiter,
    )
    .with_upstream(SmartService::new(config.smart.clone()), upstream);
    let app = match &config.cluster {
        Some(cluster) => {
            log::info!(
                "cluster mode: the index is {} in etcd at {} (node {}, {} reads); \
                 primes tasks stay in {}",
                fibd::store::etcd::wire::index_key(&cluster.name),
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
                config.data_dir.display()
            );
            app.with_cluster(Cluster::new(cluster.clone(), config.max_index, nonce))
        }
        None => app,
    };
    let server = Server::new(poll, listener, committer, app, config, Notifier::from_env())?;
    let committer = server.run()?;
    for outcome in committer.shutdown() {
        if let Err(e) = outcome.result {
            log::error!("a final commit failed: {e}");
        }
    }
    log::info!("stopped cleanly");
    Ok(())
}

/// What a new operator most needs to know about exposure, once at start.
fn log_access_settings(config: &Config, access: &Access) {
    let a = &config.access;
    let proxies: Vec<String> = a.trusted_proxies.iter().map(ToString::to_string).collect();
    log::info!(
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
}

/// Pooled upstream connections unused this long are closed: shorter than
/// the usual server keep-alive timeouts (uvicorn 5 s, nginx 75 s), so fibd
/// usually closes first.
const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A per-process secret for hashing API keys: nobody can relate a hash, or
/// how long comparing it takes, to a key.
fn hash_key(random: &mut RandomSource) -> Result<[u8; 16], getrandom::Error> {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&random.next_u64()?.to_le_bytes());
    key[8..].copy_from_slice(&random.next_u64()?.to_le_bytes());
    Ok(key)
}

/// Exit 0 if the daemon at `addr` answers GET /healthz with 200 within 2 s.
fn healthcheck(addr: SocketAddr) -> ExitCode {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: fibd\r\nConnection: close\r\n\r\n")?;
        let mut status_line = [0u8; 12];
        stream.read_exact(&mut status_line)?;
        Ok(&status_line == b"HTTP/1.1 200")
    };
    match attempt() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fibd healthcheck: {addr} answered /healthz with an error");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fibd healthcheck: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
