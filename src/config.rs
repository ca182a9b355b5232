//! Settings in two stages: raw strings from the command line and the
//! environment, then one validated `Config` that the rest of the daemon reads
//! by reference. No globals.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::access::destinations::Destinations;
use crate::access::ratelimit::RateLimitConfig;
use crate::access::{AccessConfig, Cidr};
use crate::base::secret::Secret;
use crate::http::parse::Limits;
use crate::net::session::Timeouts;
use crate::net::upstream::{HttpUrl, Target};
use crate::ops::trace::{DEFAULT_BUFFER_SPANS, DEFAULT_SAMPLE_RATIO, ExportFormat, TraceConfig};
use crate::services::fib::service::FibLimits;
use crate::services::primes::PrimesLimits;
use crate::services::primes::callback::CallbackLimits;
use crate::services::smart::budget::BudgetConfig;
use crate::services::smart::delay::HedgeAfter;
use crate::services::smart::hosts::HOSTS_MAX;
use crate::services::smart::service::SmartConfig;
use crate::store::backup::BackupConfig;
use crate::store::etcd::{ClusterConfig, ReadMode};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "fibd-data";
pub const DEFAULT_MAX_INDEX: u64 = 10_000_000;
/// Building the cursor at start-up is O(n log² n); past this it takes minutes
/// and values no longer fit a 512 MB box's replies comfortably.
pub const MAX_INDEX_CEILING: u64 = 100_000_000;
pub const DEFAULT_CONNECTIONS_MAX: usize = 10_000;
/// Slowloris guard: a request, once begun, must be complete within this.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 60_000;

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// `--admin-listen`: a second listener for the operator's endpoints
    /// (metrics, dashboard, docs), which then leave the public one.
    pub admin_listen: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub max_index: u64,
    pub connections_max: usize,
    pub limits: Limits,
    pub fib: FibLimits,
    pub timeouts: Timeouts,
    pub rate_limit: RateLimitConfig,
    pub access: AccessConfig,
    pub smart: SmartConfig,
    /// None unless `--trace-zipkin` names a collector: tracing off, at no cost.
    pub trace: Option<TraceConfig>,
    pub primes: PrimesLimits,
    pub callbacks: CallbackConfig,
    /// `--store etcd`: the index lives in etcd, shared with other nodes;
    /// None keeps it in the embedded LMDB store.
    pub cluster: Option<ClusterConfig>,
}

/// Where primes tasks' completion callbacks may go, how they are signed,
/// and their bounds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallbackConfig {
    /// Empty: no task may name a `callback_url`.
    pub allow: Destinations,
    /// Set whenever `allow` is not empty.
    pub secret: Option<Secret>,
    pub limits: CallbackLimits,
}

#[derive(Debug)]
pub enum Command {
    /// Boxed: a `Config` is far larger than the other commands.
    Serve(Box<Config>),
    /// `fibd healthcheck`: GET /healthz on the configured address, for
    /// container HEALTHCHECKs that have no curl.
    Healthcheck(SocketAddr),
    /// `fibd backup`: a hot copy of the store into a new data directory.
    Backup(BackupConfig),
    BackupHelp,
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    UnknownFlag(String),
    MissingValue(String),
    Invalid {
        setting: &'static str,
        value: String,
        expected: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::UnknownFlag(flag) => {
                write!(f, "unknown argument {flag:?}; see fibd --help")
            }
            ConfigError::MissingValue(flag) => write!(f, "{flag} needs a value; see fibd --help"),
            ConfigError::Invalid {
                setting,
                value,
                expected,
            } => write!(f, "invalid {setting} {value:?}: expected {expected}"),
        }
    }
}

impl std::error::Error for ConfigError {}

pub const HELP: &str = "\
fibd: a durable HTTP Fibonacci stepper

USAGE:
    fibd [OPTIONS]
    fibd healthcheck [--listen ADDR:PORT]    exit 0 if GET /healthz answers 200, else 1
    fibd backup --to DIR [--compact]         a hot, consistent copy of the store while fibd
                                             runs; see fibd backup --help

OPTIONS:
    --listen ADDR:PORT        address to serve on [env FIBD_LISTEN] (default 127.0.0.1:8080)
    --admin-listen ADDR:PORT  serve /metrics, /metrics.json, /dashboard and /docs here only
                              (the public listener answers them 404; both serve /healthz
                              and /readyz) [env FIBD_ADMIN_LISTEN] (default: none, all on
                              --listen); a socket systemd passes named `admin` is used too
    --data-dir DIR            LMDB store directory [env FIBD_DATA_DIR, else $STATE_DIRECTORY,
                              else ./fibd-data]
    --max-index N             ceiling for /next [env FIBD_MAX_INDEX] (default 10000000)
    --max-connections N       open connections at most on --listen (the admin listener has
                              16 of its own); more wait in the listen backlog
                              [env FIBD_MAX_CONNECTIONS] (default 10000)
    --max-n N                 largest n for /v1/fib [env FIBD_MAX_N] (default 10000000)
    --fib-cache-bytes N       bytes of rendered F(n) kept for /v1/fib [env FIBD_FIB_CACHE_BYTES]
                              (default 33554432)
    --fib-queue N             F(n) computations waiting at most; more get 503
                              [env FIBD_FIB_QUEUE] (default 64)
    --request-timeout-ms N    a begun request must be complete within this, else 408
                              [env FIBD_REQUEST_TIMEOUT_MS] (default 10000)
    --idle-timeout-ms N       close connections idle this long [env FIBD_IDLE_TIMEOUT_MS]
                              (default 60000)
    --rate-limit N            tokens per second per client (a known API key, else the
                              client address); 0 turns it off for anonymous clients
                              [env FIBD_RATE_LIMIT] (default 5000)
    --rate-burst N            bucket size per client [env FIBD_RATE_BURST] (default 10000)
    --rate-limit-loopback     limit anonymous clients on loopback too (by default a local
                              benchmark is not throttled) [env FIBD_RATE_LIMIT_LOOPBACK=1]
    --api-keys FILE           API keys with names, limits and scopes; reread on SIGHUP; an
                              unknown X-API-Key gets 401 [env FIBD_API_KEYS]
    --protect-steps           /next and /previous need a key with the step scope
                              (needs --api-keys) [env FIBD_PROTECT_STEPS=1]
    --trusted-proxy CIDR      believe Forwarded / X-Forwarded-For from peers in this range;
                              repeatable [env FIBD_TRUSTED_PROXIES, comma-separated]
    --upstream URL            an http:// upstream host /api/smart calls, resolved at start-up;
                              repeatable (up to 16): a call's attempts go to different hosts,
                              and one that keeps failing is taken out of rotation for a while
                              [env FIBD_UPSTREAM, comma-separated] (default none: 503)
    --hedge-after MS|pNN      send two more attempts when the first has not succeeded this
                              long: milliseconds, or a percentile of the upstream's successful
                              latency over the last 10 s (p50 to p99.9, e.g. p95), kept within
                              5 ms to 10 s [env FIBD_HEDGE_AFTER] (default 300)
    --hedge-budget PCT|off    extra attempts (retries and hedges) at most this share of the
                              first attempts of the last 10 s; hedges stop at half of it
                              (0% to 200%, e.g. 20% or 12.5%) [env FIBD_HEDGE_BUDGET]
                              (default 20%)
    --hedge-budget-min N      extra attempts a second allowed on top of the share, so a quiet
                              service still retries [env FIBD_HEDGE_BUDGET_MIN] (default 10)
    --upstream-max-conns N    outbound connections at most, idle ones included; past it
                              /api/smart answers 503 at once [env FIBD_UPSTREAM_MAX_CONNS]
                              (default 512)
    --trace-zipkin URL        send sampled request spans as Zipkin v2 JSON to this http://
                              collector (Zipkin or Jaeger), resolved at start-up, e.g.
                              http://127.0.0.1:9411/api/v2/spans [env FIBD_TRACE_ZIPKIN]
                              (default: no tracing)
    --trace-otlp URL          send them as OTLP/HTTP JSON instead (OpenTelemetry Collector,
                              Jaeger, Tempo), e.g. http://127.0.0.1:4318/v1/traces
                              [env FIBD_TRACE_OTLP]; not with --trace-zipkin. On SIGTERM
                              spans still buffered get 2 s to be delivered
    --trace-sample RATIO      share of requests traced when the caller's traceparent does not
                              decide, 0 to 1 [env FIBD_TRACE_SAMPLE] (default 0.1)
    --primes-max-n N          largest n of a primes task, and of the prime table
                              [env FIBD_PRIMES_MAX_N] (default 1000000)
    --primes-tasks-max N      primes tasks stored at most; at the cap the oldest settled task
                              makes room for a new one [env FIBD_PRIMES_TASKS_MAX]
                              (default 100000)
    --primes-queue N          primes tasks waiting for a sieve at most; more get 503
                              [env FIBD_PRIMES_QUEUE] (default 10000)
    --primes-pending-per-client N
                              unsettled primes tasks one client (API key, else address) may
                              hold; more get 429 [env FIBD_PRIMES_PENDING_PER_CLIENT]
                              (default 1000)
    --primes-retention-secs N settled primes tasks are kept at least this long unless room
                              is needed [env FIBD_PRIMES_RETENTION_SECS] (default 86400)
    --callback-allow ENTRY    where a task's callback_url may point: an address range
                              (127.0.0.1, 10.0.0.0/8) or HOST[:PORT] resolved at start-up;
                              repeatable [env FIBD_CALLBACK_ALLOW, comma-separated]
                              (default none: callback_url is refused)
    --callback-secret-file FILE
                              the HMAC-SHA256 key deliveries are signed with, at least 16
                              bytes (needed with --callback-allow) [env FIBD_CALLBACK_SECRET_FILE]
    --callback-secret SECRET  the key itself, instead of a file [env FIBD_CALLBACK_SECRET]
    --callback-retry-secs N   a failing delivery is retried this long after its task settled,
                              then marked failed [env FIBD_CALLBACK_RETRY_SECS] (default 3600)
    --callback-backoff-ms N   the first retry's delay; it doubles per attempt up to 10 minutes,
                              with jitter [env FIBD_CALLBACK_BACKOFF_MS] (default 1000)
    --callback-timeout-ms N   one delivery attempt's deadline [env FIBD_CALLBACK_TIMEOUT_MS]
                              (default 10000)
    --callback-conns N        delivery attempts in flight at most [env FIBD_CALLBACK_CONNS]
                              (default 32)
    --callback-pending N      tasks whose callback is not delivered yet, at most; past it a
                              POST with a callback_url gets 503 [env FIBD_CALLBACK_PENDING]
                              (default 10000)
    --store lmdb|etcd         where the stepper's index lives: the embedded LMDB store, or
                              an etcd cluster that several fibd nodes share [env FIBD_STORE]
                              (default lmdb)
    --etcd-endpoints URLS     comma-separated http:// client URLs of the etcd members,
                              resolved at start-up (needs --store etcd) [env FIBD_ETCD_ENDPOINTS]
    --cluster-name NAME       the shared index is the etcd key /fibd/NAME/index
                              [env FIBD_CLUSTER_NAME] (default fibd)
    --node-name NAME          this node's name, unique in the cluster [env FIBD_NODE_NAME]
                              (default HOSTNAME:PORT)
    --etcd-reads MODE         /current from a quorum read (linearizable) or from the member's
                              own, possibly stale, copy (serializable) [env FIBD_ETCD_READS]
                              (default linearizable)
    --etcd-timeout-ms N       deadline of one etcd call; then the next endpoint is tried
                              [env FIBD_ETCD_TIMEOUT_MS] (default 1000)
    --etcd-wait-ms N          a step or /current waits this long for etcd, then gets 503
                              [env FIBD_ETCD_WAIT_MS] (default 3000)
    --cluster-secret-file FILE
                              the secret (16 bytes or more) every node of the cluster holds;
                              a follower's steps relayed to the leader carry it
                              (needs --store etcd) [env FIBD_CLUSTER_SECRET_FILE]
    --cluster-url URL         where the other nodes reach this one, http://IP:PORT
                              [env FIBD_CLUSTER_URL] (default http://LISTEN address)
    --lease-ttl SECS          the leader's etcd lease: a dead leader is replaced within it
                              and one campaign (a quarter of it) [env FIBD_LEASE_TTL] (default 3)
    -h, --help                print this help
    -V, --version             print the version

ENDPOINTS:
    GET|POST /current, /next, /previous    the stepper (text/plain; JSON with Accept: application/json)
    GET /v1/fib?n=N                         F(n), exact, cacheable forever (ETag, 304)
    GET /v1/random?min=A&max=B&count=N     unbiased random integers
    GET /api/smart?timeout=MS               the upstream's JSON, hedged, within MS (1 to 60000)
    POST /v1/primes/tasks {\"n\": N}         the first N primes as a durable task (202)
    GET /v1/primes/tasks/ID[?wait=S]        its status and result, now or within S seconds
                                            (also at /tasks and /tasks/ID)
    GET /healthz, /readyz, /metrics         liveness, readiness, Prometheus metrics
    GET /openapi.json, /docs                this API's OpenAPI 3.1 description, as HTML

SIGHUP rereads the --api-keys file; a bad file is logged and the old keys kept.

Under systemd: socket activation (LISTEN_FDS), sd_notify (READY, STATUS,
WATCHDOG, STOPPING) and journald's native protocol are used when present;
a request's log lines carry journal fields (journalctl -u fibd
REQUEST_ID=ID; also ROUTE, STATUS, CLIENT, KEY_NAME).

Logging follows RUST_LOG (default info).
";

pub const BACKUP_HELP: &str = "\
fibd backup: a hot, consistent copy of the store, made while fibd runs

USAGE:
    fibd backup --to DIR [--compact] [--data-dir DIR]

    Copies the data directory's store (LMDB's hot copy, and the write-ahead log's
    batches since its last checkpoint) into DIR, a new data directory that
    `fibd --data-dir DIR` starts on. The copy holds every step and primes task
    acknowledged before the backup began, and is the state after one acknowledged
    batch, never a torn one. The daemon is not paused; the data directory is only
    read. The copy is written under a temporary name beside DIR, flushed, then
    renamed, so DIR is whole or absent.

OPTIONS:
    --to DIR                  where the copy goes: a new or empty directory, outside the
                              data directory; missing parents are made
    --compact                 copy only the pages in use (slower, smaller: LMDB's
                              MDB_CP_COMPACT)
    --data-dir DIR            the store to copy [env FIBD_DATA_DIR, else $STATE_DIRECTORY,
                              else ./fibd-data]
    --store lmdb|etcd         as for serving [env FIBD_STORE]; with etcd, the command refuses:
                              `etcdctl snapshot save FILE` is the backup in cluster mode
    -h, --help                print this help

EXIT STATUS:
    0  the copy is in DIR (its index and task count are printed)
    1  the copy failed; nothing is left in DIR
    2  a bad command line, or refused: etcd mode, no store in the data directory,
       DIR not empty or inside the data directory

Restoring: stop fibd, then start it on the copy (--data-dir DIR), or move the copy
into the data directory's place. Clients see the index go back to the backup's.
";

/// The raw settings, before validation; later sources override earlier ones.
#[derive(Default)]
struct Raw {
    listen: Option<String>,
    admin_listen: Option<String>,
    data_dir: Option<String>,
    max_index: Option<String>,
    connections_max: Option<String>,
    max_n: Option<String>,
    fib_cache_bytes: Option<String>,
    fib_queue: Option<String>,
    request_timeout_ms: Option<String>,
    idle_timeout_ms: Option<String>,
    rate_limit: Option<String>,
    rate_burst: Option<String>,
    rate_limit_loopback: Option<String>,
    api_keys: Option<String>,
    protect_steps: Option<String>,
    /// Comma-separated, from the environment; replaced by any flags.
    trusted_proxies: Option<String>,
    trusted_proxy_flags: Vec<String>,
    /// Comma-separated, from the environment; replaced by any flags.
    upstream: Option<String>,
    upstream_flags: Vec<String>,
    hedge_after: Option<String>,
    hedge_budget: Option<String>,
    hedge_budget_min: Option<String>,
    upstream_conns_max: Option<String>,
    trace_zipkin: Option<String>,
    trace_otlp: Option<String>,
    trace_sample: Option<String>,
    primes_max_n: Option<String>,
    primes_tasks_max: Option<String>,
    primes_queue: Option<String>,
    primes_pending_per_client: Option<String>,
    primes_retention_secs: Option<String>,
    /// Comma-separated, from the environment; replaced by any flags.
    callback_allow: Option<String>,
    callback_allow_flags: Vec<String>,
    callback_secret: Option<String>,
    callback_secret_file: Option<String>,
    callback_retry_secs: Option<String>,
    callback_backoff_ms: Option<String>,
    callback_timeout_ms: Option<String>,
    callback_conns: Option<String>,
    callback_pending: Option<String>,
    store: Option<String>,
    etcd_endpoints: Option<String>,
    cluster_name: Option<String>,
    node_name: Option<String>,
    etcd_reads: Option<String>,
    etcd_timeout_ms: Option<String>,
    etcd_wait_ms: Option<String>,
    cluster_secret_file: Option<String>,
    cluster_url: Option<String>,
    lease_ttl: Option<String>,
}

/// Reads the command line (without the program name) and the environment.
pub fn from_args(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let mut args = args.into_iter().peekable();
    if args.next_if(|a| a == "backup").is_some() {
        return backup(args, &env);
    }
    let mut raw = Raw {
        listen: env("FIBD_LISTEN"),
        admin_listen: env("FIBD_ADMIN_LISTEN"),
        data_dir: env("FIBD_DATA_DIR").or_else(|| env("STATE_DIRECTORY")),
        max_index: env("FIBD_MAX_INDEX"),
        connections_max: env("FIBD_MAX_CONNECTIONS"),
        max_n: env("FIBD_MAX_N"),
        fib_cache_bytes: env("FIBD_FIB_CACHE_BYTES"),
        fib_queue: env("FIBD_FIB_QUEUE"),
        request_timeout_ms: env("FIBD_REQUEST_TIMEOUT_MS"),
        idle_timeout_ms: env("FIBD_IDLE_TIMEOUT_MS"),
        rate_limit: env("FIBD_RATE_LIMIT"),
        rate_burst: env("FIBD_RATE_BURST"),
        rate_limit_loopback: env("FIBD_RATE_LIMIT_LOOPBACK"),
        api_keys: env("FIBD_API_KEYS"),
        protect_steps: env("FIBD_PROTECT_STEPS"),
        trusted_proxies: env("FIBD_TRUSTED_PROXIES"),
        trusted_proxy_flags: Vec::new(),
        upstream: env("FIBD_UPSTREAM"),
        upstream_flags: Vec::new(),
        hedge_after: env("FIBD_HEDGE_AFTER"),
        hedge_budget: env("FIBD_HEDGE_BUDGET"),
        hedge_budget_min: env("FIBD_HEDGE_BUDGET_MIN"),
        upstream_conns_max: env("FIBD_UPSTREAM_MAX_CONNS"),
        trace_zipkin: env("FIBD_TRACE_ZIPKIN"),
        trace_otlp: env("FIBD_TRACE_OTLP"),
        trace_sample: env("FIBD_TRACE_SAMPLE"),
        primes_max_n: env("FIBD_PRIMES_MAX_N"),
        primes_tasks_max: env("FIBD_PRIMES_TASKS_MAX"),
        primes_queue: env("FIBD_PRIMES_QUEUE"),
        primes_pending_per_client: env("FIBD_PRIMES_PENDING_PER_CLIENT"),
        primes_retention_secs: env("FIBD_PRIMES_RETENTION_SECS"),
        callback_allow: env("FIBD_CALLBACK_ALLOW"),
        callback_allow_flags: Vec::new(),
        callback_secret: env("FIBD_CALLBACK_SECRET"),
        callback_secret_file: env("FIBD_CALLBACK_SECRET_FILE"),
        callback_retry_secs: env("FIBD_CALLBACK_RETRY_SECS"),
        callback_backoff_ms: env("FIBD_CALLBACK_BACKOFF_MS"),
        callback_timeout_ms: env("FIBD_CALLBACK_TIMEOUT_MS"),
        callback_conns: env("FIBD_CALLBACK_CONNS"),
        callback_pending: env("FIBD_CALLBACK_PENDING"),
        store: env("FIBD_STORE"),
        etcd_endpoints: env("FIBD_ETCD_ENDPOINTS"),
        cluster_name: env("FIBD_CLUSTER_NAME"),
        node_name: env("FIBD_NODE_NAME"),
        etcd_reads: env("FIBD_ETCD_READS"),
        etcd_timeout_ms: env("FIBD_ETCD_TIMEOUT_MS"),
        etcd_wait_ms: env("FIBD_ETCD_WAIT_MS"),
        cluster_secret_file: env("FIBD_CLUSTER_SECRET_FILE"),
        cluster_url: env("FIBD_CLUSTER_URL"),
        lease_ttl: env("FIBD_LEASE_TTL"),
    };
    let healthcheck = args.next_if(|a| a == "healthcheck").is_some();
    while let Some(arg) = args.next() {
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        let switch = match flag.as_str() {
            "--rate-limit-loopback" => Some(&mut raw.rate_limit_loopback),
            "--protect-steps" => Some(&mut raw.protect_steps),
            _ => None,
        };
        if let Some(switch) = switch {
            *switch = Some(inline_value.unwrap_or_else(|| "1".to_owned()));
            continue;
        }
        let (mut proxy, mut allow, mut upstream) = (None, None, None);
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--trusted-proxy" => &mut proxy,
            "--callback-allow" => &mut allow,
            "--callback-secret" => &mut raw.callback_secret,
            "--callback-secret-file" => &mut raw.callback_secret_file,
            "--callback-retry-secs" => &mut raw.callback_retry_secs,
            "--callback-backoff-ms" => &mut raw.callback_backoff_ms,
            "--callback-timeout-ms" => &mut raw.callback_timeout_ms,
            "--callback-conns" => &mut raw.callback_conns,
            "--callback-pending" => &mut raw.callback_pending,
            "--api-keys" => &mut raw.api_keys,
            "-V" | "--version" => return Ok(Command::Version),
            "--listen" => &mut raw.listen,
            "--admin-listen" => &mut raw.admin_listen,
            "--data-dir" => &mut raw.data_dir,
            "--max-index" => &mut raw.max_index,
            "--max-connections" => &mut raw.connections_max,
            "--max-n" => &mut raw.max_n,
            "--fib-cache-bytes" => &mut raw.fib_cache_bytes,
            "--fib-queue" => &mut raw.fib_queue,
            "--request-timeout-ms" => &mut raw.request_timeout_ms,
            "--idle-timeout-ms" => &mut raw.idle_timeout_ms,
            "--rate-limit" => &mut raw.rate_limit,
            "--rate-burst" => &mut raw.rate_burst,
            "--upstream" => &mut upstream,
            "--hedge-after" => &mut raw.hedge_after,
            "--hedge-budget" => &mut raw.hedge_budget,
            "--hedge-budget-min" => &mut raw.hedge_budget_min,
            "--upstream-max-conns" => &mut raw.upstream_conns_max,
            "--trace-zipkin" => &mut raw.trace_zipkin,
            "--trace-otlp" => &mut raw.trace_otlp,
            "--trace-sample" => &mut raw.trace_sample,
            "--primes-max-n" => &mut raw.primes_max_n,
            "--primes-tasks-max" => &mut raw.primes_tasks_max,
            "--primes-queue" => &mut raw.primes_queue,
            "--primes-pending-per-client" => &mut raw.primes_pending_per_client,
            "--primes-retention-secs" => &mut raw.primes_retention_secs,
            "--store" => &mut raw.store,
            "--etcd-endpoints" => &mut raw.etcd_endpoints,
            "--cluster-name" => &mut raw.cluster_name,
            "--node-name" => &mut raw.node_name,
            "--etcd-reads" => &mut raw.etcd_reads,
            "--etcd-timeout-ms" => &mut raw.etcd_timeout_ms,
            "--etcd-wait-ms" => &mut raw.etcd_wait_ms,
            "--cluster-secret-file" => &mut raw.cluster_secret_file,
            "--cluster-url" => &mut raw.cluster_url,
            "--lease-ttl" => &mut raw.lease_ttl,
            _ => return Err(ConfigError::UnknownFlag(arg)),
        };
        let value = match inline_value {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| ConfigError::MissingValue(flag.clone()))?,
        };
        *slot = Some(value);
        raw.trusted_proxy_flags.extend(proxy);
        raw.callback_allow_flags.extend(allow);
        raw.upstream_flags.extend(upstream);
    }
    let config = validate(raw)?;
    Ok(if healthcheck {
        Command::Healthcheck(config.listen)
    } else {
        Command::Serve(Box::new(config))
    })
}

/// `fibd backup`'s own few settings; the daemon's other settings do not
/// matter to it, so the environment a unit sets for fibd can be shared.
fn backup(
    mut args: impl Iterator<Item = String>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<Command, ConfigError> {
    let mut data_dir = env("FIBD_DATA_DIR").or_else(|| env("STATE_DIRECTORY"));
    let mut store = env("FIBD_STORE");
    let (mut to, mut compact) = (None, false);
    while let Some(arg) = args.next() {
        let (flag, inline_value) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value)),
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(Command::BackupHelp),
            "--compact" if inline_value.is_none() => {
                compact = true;
                continue;
            }
            "--to" => &mut to,
            "--data-dir" => &mut data_dir,
            "--store" => &mut store,
            _ => {
                return Err(invalid(
                    "fibd backup argument",
                    &arg,
                    "--to DIR, --compact, --data-dir DIR or --store lmdb|etcd (fibd backup --help)",
                ));
            }
        };
        let value = match inline_value {
            Some(v) => v.to_owned(),
            None => args
                .next()
                .ok_or_else(|| ConfigError::MissingValue(flag.clone()))?,
        };
        *slot = Some(value);
    }
    let etcd = match store.as_deref().unwrap_or("lmdb") {
        "lmdb" => false,
        "etcd" => true,
        other => return Err(invalid("store", other, "lmdb or etcd")),
    };
    let to = to
        .filter(|to| !to.is_empty())
        .ok_or_else(|| invalid("backup target", "", "--to DIR, a new directory"))?;
    let data_dir = data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned());
    if data_dir.is_empty() {
        return Err(invalid("data directory", "", "a directory path"));
    }
    Ok(Command::Backup(BackupConfig {
        data_dir: PathBuf::from(data_dir),
        to: PathBuf::from(to),
        compact,
        etcd,
    }))
}

fn validate(raw: Raw) -> Result<Config, ConfigError> {
    let primes = primes_limits(&raw)?;
    let callbacks = callbacks(&raw)?;
    let smart = smart_config(&raw)?;
    let listen_text = raw
        .listen
        .clone()
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = resolve(&listen_text).ok_or(ConfigError::Invalid {
        setting: "listen address",
        value: listen_text,
        expected: "ADDR:PORT, e.g. 127.0.0.1:8080 or [::1]:8080",
    })?;
    let admin_listen = admin_listen(raw.admin_listen.clone(), listen)?;
    let cluster = cluster(&raw, listen)?;
    let data_dir = PathBuf::from(raw.data_dir.unwrap_or_else(|| DEFAULT_DATA_DIR.to_owned()));
    if data_dir.as_os_str().is_empty() {
        return Err(ConfigError::Invalid {
            setting: "data directory",
            value: String::new(),
            expected: "a directory path",
        });
    }
    let max_index = number(
        raw.max_index,
        DEFAULT_MAX_INDEX,
        "max index",
        1..=MAX_INDEX_CEILING,
        "an integer from 1 to 100000000",
    )?;
    let connections_max = number(
        raw.connections_max,
        DEFAULT_CONNECTIONS_MAX as u64,
        "max connections",
        1..=1_000_000,
        "an integer from 1 to 1000000",
    )? as usize;
    let defaults = FibLimits::default();
    let fib = FibLimits {
        max_n: number(
            raw.max_n,
            defaults.max_n,
            "max n",
            0..=MAX_INDEX_CEILING,
            "an integer from 0 to 100000000",
        )?,
        cache_bytes_max: number(
            raw.fib_cache_bytes,
            defaults.cache_bytes_max as u64,
            "fib cache bytes",
            0..=(1 << 40),
            "a byte count from 0 to 2^40",
        )? as usize,
        queue_max: number(
            raw.fib_queue,
            defaults.queue_max as u64,
            "fib queue",
            1..=100_000,
            "an integer from 1 to 100000",
        )? as usize,
        ..defaults
    };
    let timeouts = Timeouts {
        request: Duration::from_millis(number(
            raw.request_timeout_ms,
            DEFAULT_REQUEST_TIMEOUT_MS,
            "request timeout",
            100..=3_600_000,
            "milliseconds from 100 to 3600000",
        )?),
        idle: Duration::from_millis(number(
            raw.idle_timeout_ms,
            DEFAULT_IDLE_TIMEOUT_MS,
            "idle timeout",
            100..=86_400_000,
            "milliseconds from 100 to 86400000",
        )?),
    };
    let defaults = RateLimitConfig::default();
    let rate_per_sec = number(
        raw.rate_limit,
        u64::from(defaults.rate_per_sec),
        "rate limit",
        0..=10_000_000,
        "requests per second per client from 0 (off) to 10000000",
    )? as u32;
    let rate_limit = RateLimitConfig {
        enabled: rate_per_sec > 0,
        rate_per_sec,
        burst: number(
            raw.rate_burst,
            u64::from(defaults.burst),
            "rate burst",
            1..=100_000_000,
            "tokens from 1 to 100000000",
        )? as u32,
        ..defaults
    };
    let access = access(
        raw.api_keys,
        raw.protect_steps,
        raw.rate_limit_loopback,
        raw.trusted_proxies,
        raw.trusted_proxy_flags,
    )?;
    let trace = trace(raw.trace_zipkin, raw.trace_otlp, raw.trace_sample)?;
    Ok(Config {
        listen,
        admin_listen,
        data_dir,
        max_index,
        connections_max,
        limits: Limits::default(),
        fib,
        timeouts,
        rate_limit,
        access,
        smart,
        trace,
        primes,
        callbacks,
        cluster,
    })
}

/// The callbacks' allow-list (its names resolved here, once), secret and
/// bounds. An allow-list without a secret is refused: deliveries are
/// always signed.
fn callbacks(raw: &Raw) -> Result<CallbackConfig, ConfigError> {
    let entries: Vec<String> = if raw.callback_allow_flags.is_empty() {
        raw.callback_allow
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::to_owned)
            .collect()
    } else {
        raw.callback_allow_flags.clone()
    };
    let allow = Destinations::resolve(&entries).map_err(|bad| ConfigError::Invalid {
        setting: "callback allow entry",
        value: bad.entry,
        expected: bad.reason,
    })?;
    let secret_text = match (&raw.callback_secret_file, &raw.callback_secret) {
        (Some(path), _) if !path.is_empty() => {
            let text = std::fs::read(path).map_err(|_| ConfigError::Invalid {
                setting: "callback secret file",
                value: path.clone(),
                expected: "a readable file holding the signing secret",
            })?;
            Some(text.trim_ascii().to_vec())
        }
        (_, Some(secret)) if !secret.is_empty() => Some(secret.trim().as_bytes().to_vec()),
        _ => None,
    };
    let secret = match secret_text {
        Some(text) => Some(Secret::new(&text).ok_or_else(|| {
            invalid(
                "callback secret",
                "(not shown)",
                "at least 16 bytes, e.g. from openssl rand -hex 32",
            )
        })?),
        None if !allow.is_empty() => {
            return Err(invalid(
                "callback allow",
                &allow.to_string(),
                "a --callback-secret-file (or --callback-secret) too: deliveries are signed",
            ));
        }
        None => None,
    };
    let defaults = CallbackLimits::default();
    let ms = |raw: &Option<String>, default: Duration, setting, range, expected| {
        number(
            raw.clone(),
            default.as_millis() as u64,
            setting,
            range,
            expected,
        )
        .map(Duration::from_millis)
    };
    let limits = CallbackLimits {
        retry_for: Duration::from_secs(number(
            raw.callback_retry_secs.clone(),
            defaults.retry_for.as_secs(),
            "callback retry",
            0..=7 * 86_400,
            "seconds from 0 (one attempt) to 604800",
        )?),
        backoff: ms(
            &raw.callback_backoff_ms,
            defaults.backoff,
            "callback backoff",
            1..=600_000,
            "milliseconds from 1 to 600000",
        )?,
        attempt_timeout: ms(
            &raw.callback_timeout_ms,
            defaults.attempt_timeout,
            "callback timeout",
            10..=600_000,
            "milliseconds from 10 to 600000",
        )?,
        in_flight_max: number(
            raw.callback_conns.clone(),
            defaults.in_flight_max as u64,
            "callback conns",
            1..=10_000,
            "an integer from 1 to 10000",
        )? as usize,
        undelivered_max: number(
            raw.callback_pending.clone(),
            defaults.undelivered_max as u64,
            "callback pending",
            1..=1_000_000,
            "an integer from 1 to 1000000",
        )? as usize,
    };
    Ok(CallbackConfig {
        allow,
        secret,
        limits,
    })
}

/// `--store` and the etcd settings; the etcd ones without `--store etcd`
/// are a mistake worth refusing, not ignoring.
fn cluster(raw: &Raw, listen: SocketAddr) -> Result<Option<ClusterConfig>, ConfigError> {
    let etcd = match raw.store.as_deref().unwrap_or("lmdb") {
        "lmdb" => false,
        "etcd" => true,
        other => return Err(invalid("store", other, "lmdb or etcd")),
    };
    if !etcd {
        return match raw.etcd_endpoints {
            Some(_) => Err(invalid(
                "etcd endpoints",
                "",
                "no endpoints unless --store etcd",
            )),
            None => Ok(None),
        };
    }
    let endpoints_text = raw.etcd_endpoints.clone().unwrap_or_default();
    let expected = "comma-separated http://HOST:PORT URLs of etcd members";
    let endpoints = endpoints_text
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            Target::resolve(url)
                .ok()
                .filter(|t| t.target == "/")
                .ok_or_else(|| invalid("etcd endpoint", url, expected))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if endpoints.is_empty() || endpoints.len() > 16 {
        return Err(invalid("etcd endpoints", &endpoints_text, expected));
    }
    let name = raw
        .cluster_name
        .clone()
        .unwrap_or_else(|| "fibd".to_owned());
    let node = raw
        .node_name
        .clone()
        .unwrap_or_else(|| format!("{}:{}", hostname(), listen.port()));
    for (setting, value) in [("cluster name", &name), ("node name", &node)] {
        let valid = (1..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
        if !valid {
            return Err(invalid(setting, value, "1 to 64 of A-Z a-z 0-9 . _ - :"));
        }
    }
    let reads = match raw.etcd_reads.as_deref().unwrap_or("linearizable") {
        "linearizable" => ReadMode::Linearizable,
        "serializable" => ReadMode::Serializable,
        other => return Err(invalid("etcd reads", other, "linearizable or serializable")),
    };
    let call_timeout = Duration::from_millis(number(
        raw.etcd_timeout_ms.clone(),
        1000,
        "etcd timeout",
        10..=60_000,
        "milliseconds from 10 to 60000",
    )?);
    let wait = Duration::from_millis(number(
        raw.etcd_wait_ms.clone(),
        3000,
        "etcd wait",
        10..=600_000,
        "milliseconds from 10 to 600000",
    )?);
    let lease_ttl = Duration::from_secs(number(
        raw.lease_ttl.clone(),
        3,
        "lease ttl",
        2..=60,
        "seconds from 2 to 60 (etcd's shortest lease is about 2 s)",
    )?);
    let secret_path = raw.cluster_secret_file.clone().unwrap_or_default();
    let secret = std::fs::read(&secret_path)
        .ok()
        .and_then(|text| Secret::new(&text))
        .filter(|secret| secret.as_field().is_some())
        .ok_or_else(|| {
            invalid(
                "cluster secret file",
                &secret_path,
                "a readable file holding 16 or more printable ASCII bytes, the same on every node",
            )
        })?;
    let url = match &raw.cluster_url {
        Some(url) => {
            let parsed = HttpUrl::parse(url).ok().filter(|u| u.target == "/");
            if parsed.is_none_or(|u| u.ip().is_none_or(|ip| ip.is_unspecified())) {
                return Err(invalid(
                    "cluster url",
                    url,
                    "http://IP:PORT (an address, not a name: peers reach it without a DNS lookup)",
                ));
            }
            Some(url.clone())
        }
        None if listen.ip().is_unspecified() => {
            return Err(invalid(
                "cluster url",
                "",
                "an http://IP:PORT the other nodes reach this one at (the listen address is a wildcard)",
            ));
        }
        // The address bound, once it is known (the port may be 0 here).
        None => None,
    };
    Ok(Some(ClusterConfig {
        endpoints,
        name,
        node,
        url,
        secret,
        lease_ttl,
        reads,
        call_timeout,
        wait,
    }))
}

fn invalid(setting: &'static str, value: &str, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        setting,
        value: value.to_owned(),
        expected,
    }
}

/// The kernel's host name, for the default node name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "fibd".to_owned())
}

/// The primes tasks' bounds. The table's ceiling keeps its JSON (about 8 MB
/// per million primes) and the sieve (under a second here) within a small box.
fn primes_limits(raw: &Raw) -> Result<PrimesLimits, ConfigError> {
    let defaults = PrimesLimits::default();
    Ok(PrimesLimits {
        max_n: number(
            raw.primes_max_n.clone(),
            defaults.max_n,
            "primes max n",
            1..=10_000_000,
            "an integer from 1 to 10000000",
        )?,
        tasks_max: number(
            raw.primes_tasks_max.clone(),
            defaults.tasks_max as u64,
            "primes tasks max",
            1..=1_000_000,
            "an integer from 1 to 1000000",
        )? as usize,
        pending_max: number(
            raw.primes_queue.clone(),
            defaults.pending_max as u64,
            "primes queue",
            1..=1_000_000,
            "an integer from 1 to 1000000",
        )? as usize,
        pending_per_client: number(
            raw.primes_pending_per_client.clone(),
            defaults.pending_per_client as u64,
            "primes pending per client",
            1..=1_000_000,
            "an integer from 1 to 1000000",
        )? as usize,
        retention: Duration::from_secs(number(
            raw.primes_retention_secs.clone(),
            defaults.retention.as_secs(),
            "primes retention",
            1..=365 * 86_400,
            "seconds from 1 to 31536000",
        )?),
    })
}

/// /api/smart's upstream hosts (resolved here, once: never a lookup on the
/// loop), hedge delay, extra-attempt budget and outbound connection bound.
fn smart_config(raw: &Raw) -> Result<SmartConfig, ConfigError> {
    let defaults = SmartConfig::default();
    let urls: Vec<&str> = if raw.upstream_flags.is_empty() {
        raw.upstream
            .iter()
            .flat_map(|list| list.split(','))
            .collect()
    } else {
        raw.upstream_flags.iter().map(String::as_str).collect()
    };
    let urls: Vec<&str> = urls
        .into_iter()
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.len() > HOSTS_MAX {
        return Err(ConfigError::Invalid {
            setting: "upstream",
            value: urls.join(","),
            expected: "at most 16 upstream hosts",
        });
    }
    let upstreams = urls
        .into_iter()
        .map(|url| {
            Target::resolve(url).map_err(|expected| ConfigError::Invalid {
                setting: "upstream",
                value: url.to_owned(),
                expected,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let hedge_after = match raw.hedge_after.as_deref().map(str::trim) {
        None => defaults.hedge_after,
        Some(text) => hedge_after(text).ok_or_else(|| ConfigError::Invalid {
            setting: "hedge delay",
            value: text.to_owned(),
            expected: "milliseconds from 1 to 60000, or a percentile from p50 to p99.9 (e.g. p95)",
        })?,
    };
    let min_per_sec = number(
        raw.hedge_budget_min.clone(),
        u64::from(BudgetConfig::default().min_per_sec),
        "hedge budget minimum",
        0..=100_000,
        "extra attempts a second, from 0 to 100000",
    )? as u32;
    let budget = match raw.hedge_budget.as_deref().map(str::trim) {
        None => defaults.budget.map(|b| BudgetConfig { min_per_sec, ..b }),
        Some("off") => None,
        Some(text) => Some(BudgetConfig {
            per_mille: per_mille(text)
                .filter(|&p| p <= 2000)
                .ok_or_else(|| ConfigError::Invalid {
                    setting: "hedge budget",
                    value: text.to_owned(),
                    expected: "a share from 0% to 200% (at most one decimal, e.g. 20% or 12.5%), or off",
                })?,
            min_per_sec,
        }),
    };
    Ok(SmartConfig {
        upstreams,
        hedge_after,
        budget,
        conns_max: number(
            raw.upstream_conns_max.clone(),
            defaults.conns_max as u64,
            "upstream max conns",
            1..=100_000,
            "an integer from 1 to 100000",
        )? as usize,
    })
}

/// `--hedge-after`: `MS` (1 to 60000) or `pNN[.N]` (p50 to p99.9).
fn hedge_after(text: &str) -> Option<HedgeAfter> {
    if let Some(percentile) = text.strip_prefix('p') {
        return per_mille(percentile)
            .filter(|p| (500..=999).contains(p))
            .and_then(|p| u16::try_from(p).ok())
            .map(HedgeAfter::Percentile);
    }
    let ms: u64 = text
        .parse()
        .ok()
        .filter(|_| text.bytes().all(|b| b.is_ascii_digit()))?;
    (1..=60_000)
        .contains(&ms)
        .then(|| HedgeAfter::Fixed(Duration::from_millis(ms)))
}

/// A percentage with at most one decimal (`20`, `20%`, `12.5%`) in
/// thousandths: 200, 200, 125.
fn per_mille(text: &str) -> Option<u32> {
    let number = text.strip_suffix('%').unwrap_or(text);
    let (whole, tenth) = match number.split_once('.') {
        Some((w, t)) if t.len() == 1 => (w, t),
        Some(_) => return None,
        None => (number, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(tenth) {
        return None;
    }
    Some(whole.parse::<u32>().ok()? * 10 + tenth.parse::<u32>().ok()?)
}

fn access(
    api_keys: Option<String>,
    protect_steps: Option<String>,
    rate_limit_loopback: Option<String>,
    trusted_env: Option<String>,
    trusted_flags: Vec<String>,
) -> Result<AccessConfig, ConfigError> {
    let api_keys = api_keys.filter(|p| !p.is_empty()).map(PathBuf::from);
    let protect_steps = switch(protect_steps, "protect steps")?;
    if protect_steps && api_keys.is_none() {
        return Err(ConfigError::Invalid {
            setting: "protect steps",
            value: "on".to_owned(),
            expected: "an --api-keys file too, with keys that have the step scope",
        });
    }
    let trusted_texts = if trusted_flags.is_empty() {
        trusted_env
            .iter()
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    } else {
        trusted_flags
    };
    let trusted_proxies = trusted_texts
        .into_iter()
        .map(|text| {
            Cidr::parse(&text).ok_or(ConfigError::Invalid {
                setting: "trusted proxy",
                value: text,
                expected: "an address or range such as 127.0.0.1, 10.0.0.0/8 or ::1/128",
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(AccessConfig {
        api_keys,
        protect_steps,
        trusted_proxies,
        rate_limit_loopback: switch(rate_limit_loopback, "rate limit loopback")?,
    })
}

/// An on/off setting: a bare flag, or `1`/`true`/`yes`/`on` and
/// `0`/`false`/`no`/`off` (from the environment or `--flag=VALUE`).
fn switch(raw: Option<String>, setting: &'static str) -> Result<bool, ConfigError> {
    let Some(text) = raw else {
        return Ok(false);
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            setting,
            value: text,
            expected: "1, true, yes or on; 0, false, no or off",
        }),
    }
}

/// An empty URL (as a compose file's unset variable gives) means no tracing.
/// The collector is resolved here, once: never a lookup on the loop. One
/// collector, in one format: both URLs at once is an error, not a choice.
fn trace(
    zipkin: Option<String>,
    otlp: Option<String>,
    sample: Option<String>,
) -> Result<Option<TraceConfig>, ConfigError> {
    let sample_ratio = match sample {
        None => DEFAULT_SAMPLE_RATIO,
        Some(text) => match text.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => {
                return Err(ConfigError::Invalid {
                    setting: "trace sample ratio",
                    value: text,
                    expected: "a number from 0 to 1, e.g. 0.1",
                });
            }
        },
    };
    let given = |url: Option<String>| url.filter(|u| !u.trim().is_empty());
    let (url, format) = match (given(zipkin), given(otlp)) {
        (None, None) => return Ok(None),
        (Some(url), None) => (url, ExportFormat::Zipkin),
        (None, Some(url)) => (url, ExportFormat::Otlp),
        (Some(_), Some(url)) => {
            return Err(ConfigError::Invalid {
                setting: "trace collector (--trace-otlp with --trace-zipkin)",
                value: url,
                expected: "one of --trace-zipkin or --trace-otlp (FIBD_TRACE_ZIPKIN, FIBD_TRACE_OTLP), not both",
            });
        }
    };
    // The outbound client speaks plain HTTP/1.1: http://HOST:PORT/PATH.
    let collector = Target::resolve(url.trim()).map_err(|expected| ConfigError::Invalid {
        setting: "trace collector URL",
        value: url,
        expected,
    })?;
    Ok(Some(TraceConfig {
        collector,
        format,
        sample_ratio,
        buffer_spans: DEFAULT_BUFFER_SPANS,
    }))
}

/// `--admin-listen`: an address other than `--listen`'s (an empty value
/// means none, so an environment file can leave it unset).
fn admin_listen(
    raw: Option<String>,
    listen: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = raw.filter(|t| !t.trim().is_empty()) else {
        return Ok(None);
    };
    match resolve(&text) {
        Some(addr) if addr == listen && addr.port() != 0 => Err(ConfigError::Invalid {
            setting: "admin listen address",
            value: text,
            expected: "an address other than --listen's",
        }),
        Some(addr) => Ok(Some(addr)),
        None => Err(ConfigError::Invalid {
            setting: "admin listen address",
            value: text,
            expected: "ADDR:PORT, e.g. 127.0.0.1:9090 or [::1]:9090",
        }),
    }
}

fn resolve(text: &str) -> Option<SocketAddr> {
    text.to_socket_addrs().ok()?.next()
}

fn number(
    raw: Option<String>,
    default: u64,
    setting: &'static str,
    range: std::ops::RangeInclusive<u64>,
    expected: &'static str,
) -> Result<u64, ConfigError> {
    let Some(text) = raw else {
        return Ok(default);
    };
    match text.trim().replace('_', "").parse::<u64>() {
        Ok(v) if range.contains(&v) => Ok(v),
        _ => Err(ConfigError::Invalid {
            setting,
            value: text,
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<Command, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        from_args(args.iter().map(|s| (*s).to_owned()), move |key| {
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        })
    }

    fn serve(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse(args, env) {
            Ok(Command::Serve(config)) => *config,
            other => panic!("expected a config, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = serve(&[], &[]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("fibd-data"));
        assert_eq!(c.max_index, 10_000_000);
    }

    #[test]
    fn flags_override_env_and_env_overrides_state_directory() {
        let env = [
            ("STATE_DIRECTORY", "/var/lib/fibd"),
            ("FIBD_LISTEN", "127.0.0.1:1"),
        ];
        let c = serve(&[], &env);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/fibd"));
        assert_eq!(c.listen.port(), 1);
        let c = serve(&["--listen", "127.0.0.1:2", "--data-dir=/tmp/x"], &env);
        assert_eq!((c.listen.port(), c.data_dir), (2, PathBuf::from("/tmp/x")));
        let c = serve(&[], &[("FIBD_DATA_DIR", "/d"), ("STATE_DIRECTORY", "/s")]);
        assert_eq!(c.data_dir, PathBuf::from("/d"));
    }

    #[test]
    fn admin_listen_is_optional_and_not_the_public_address() {
        assert_eq!(serve(&[], &[]).admin_listen, None);
        assert_eq!(serve(&[], &[("FIBD_ADMIN_LISTEN", "")]).admin_listen, None);
        let c = serve(&["--admin-listen", "127.0.0.1:9090"], &[]);
        assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        let c = serve(&[], &[("FIBD_ADMIN_LISTEN", "[::1]:9091")]);
        assert_eq!(c.admin_listen, Some("[::1]:9091".parse().unwrap()));
        // Both on port 0: two different ports, chosen by the OS.
        let c = serve(
            &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
            &[],
        );
        assert_eq!(c.admin_listen.map(|a| a.port()), Some(0));
        for bad in ["nonsense", "127.0.0.1", "127.0.0.1:70000", "127.0.0.1:8080"] {
            let err = parse(&["--admin-listen", bad], &[]).unwrap_err();
            assert!(
                err.to_string().contains("admin listen address"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse(&["--admin-listen"], &[]).unwrap_err(),
            ConfigError::MissingValue("--admin-listen".into())
        );
    }

    #[test]
    fn healthcheck_takes_the_listen_address() {
        let parsed = parse(&["healthcheck", "--listen", "127.0.0.1:9"], &[]);
        assert!(matches!(parsed, Ok(Command::Healthcheck(a)) if a.port() == 9));
        let parsed = parse(&["healthcheck"], &[("FIBD_LISTEN", "127.0.0.1:7")]);
        assert!(matches!(parsed, Ok(Command::Healthcheck(a)) if a.port() == 7));
    }

    fn backup(args: &[&str], env: &[(&str, &str)]) -> BackupConfig {
        let mut all = vec!["backup"];
        all.extend_from_slice(args);
        match parse(&all, env) {
            Ok(Command::Backup(config)) => config,
            other => panic!("expected a backup, got {other:?}"),
        }
    }

    #[test]
    fn backup_takes_its_target_and_the_daemons_data_dir_and_store() {
        let b = backup(&["--to", "/b"], &[("STATE_DIRECTORY", "/var/lib/fibd")]);
        assert_eq!(
            b,
            BackupConfig {
                data_dir: PathBuf::from("/var/lib/fibd"),
                to: PathBuf::from("/b"),
                compact: false,
                etcd: false,
            }
        );
        let env = [("FIBD_DATA_DIR", "/d"), ("FIBD_STORE", "etcd")];
        let b = backup(&["--to=/b", "--compact"], &env);
        assert_eq!((b.data_dir, b.compact, b.etcd), ("/d".into(), true, true));
        let b = backup(&["--to", "/b", "--data-dir", "/x", "--store", "lmdb"], &env);
        assert_eq!((b.data_dir, b.etcd), ("/x".into(), false));
        assert_eq!(
            backup(&["--to", "b"], &[]).data_dir,
            PathBuf::from("fibd-data")
        );
        // The daemon's other settings, however odd, are not the backup's.
        let b = backup(&["--to", "/b"], &[("FIBD_LISTEN", "nonsense")]);
        assert_eq!(b.to, PathBuf::from("/b"));
        assert!(matches!(
            parse(&["backup", "-h"], &[]),
            Ok(Command::BackupHelp)
        ));
    }

    #[test]
    fn backup_refuses_a_bad_command_line() {
        for args in [
            &["backup"][..],
            &["backup", "--to", ""],
            &["backup", "--to"],
            &["backup", "--to", "/b", "--listen", "127.0.0.1:1"],
            &["backup", "--to", "/b", "--store", "redis"],
            &["backup", "--to", "/b", "--compact=yes"],
        ] {
            assert!(parse(args, &[]).is_err(), "{args:?}");
        }
    }

    #[test]
    fn help_and_version() {
        assert!(matches!(parse(&["--help"], &[]), Ok(Command::Help)));
        assert!(matches!(parse(&["-V"], &[]), Ok(Command::Version)));
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            parse(&["--bogus"], &[]).unwrap_err(),
            ConfigError::UnknownFlag("--bogus".into())
        );
        assert_eq!(
            parse(&["--listen"], &[]).unwrap_err(),
            ConfigError::MissingValue("--listen".into())
        );
        for bad in ["0", "-1", "1e3", "100000001", "x"] {
            let err = parse(&["--max-index", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("max index"), "{err}");
        }
        assert!(parse(&["--listen", "nonsense"], &[]).is_err());
        let err = parse(&["--upstream", "https://127.0.0.1/"], &[]).unwrap_err();
        assert!(err.to_string().contains("TLS proxy"), "{err}");
        for bad in [
            "0", "60001", "x", "p", "p49", "p100", "p95.55", "-5", "95ms",
        ] {
            let err = parse(&["--hedge-after", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("hedge delay"), "{bad}: {err}");
        }
        for bad in ["201%", "x", "-1%", "12.55%", "%", "1e2", "on"] {
            let err = parse(&["--hedge-budget", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("hedge budget"), "{bad}: {err}");
        }
        let seventeen: Vec<String> = (0..17)
            .map(|i| format!("http://127.0.0.1:{}/", 9000 + i))
            .collect();
        let err = parse(&[], &[("FIBD_UPSTREAM", &seventeen.join(","))]).unwrap_err();
        assert!(err.to_string().contains("at most 16"), "{err}");
        assert!(parse(&["--upstream-max-conns", "0"], &[]).is_err());
    }

    #[test]
    fn the_upstream_is_resolved_at_start_up() {
        let c = serve(
            &[
                "--upstream",
                "http://127.0.0.1:9000/api/data",
                "--hedge-after=50",
            ],
            &[("FIBD_UPSTREAM_MAX_CONNS", "7")],
        );
        let [upstream] = c.smart.upstreams.as_slice() else {
            panic!("one upstream: {:?}", c.smart.upstreams);
        };
        assert_eq!(upstream.addr.to_string(), "127.0.0.1:9000");
        assert_eq!(upstream.target, "/api/data");
        assert_eq!(
            c.smart.hedge_after,
            HedgeAfter::Fixed(Duration::from_millis(50))
        );
        assert_eq!(c.smart.conns_max, 7);
        assert_eq!(serve(&[], &[]).smart, SmartConfig::default());
    }

    #[test]
    fn hedging_takes_several_hosts_a_percentile_and_a_budget() {
        let c = serve(
            &[
                "--upstream",
                "http://127.0.0.1:9000/a",
                "--upstream=http://127.0.0.1:9001/b",
                "--hedge-after",
                "p99.5",
                "--hedge-budget",
                "12.5%",
                "--hedge-budget-min=0",
            ],
            &[("FIBD_UPSTREAM", "http://127.0.0.1:1/ignored")],
        );
        let hosts: Vec<String> = c
            .smart
            .upstreams
            .iter()
            .map(|u| u.addr.to_string())
            .collect();
        assert_eq!(
            hosts,
            ["127.0.0.1:9000", "127.0.0.1:9001"],
            "flags replace the env"
        );
        assert_eq!(c.smart.hedge_after, HedgeAfter::Percentile(995));
        assert_eq!(
            c.smart.budget,
            Some(BudgetConfig {
                per_mille: 125,
                min_per_sec: 0
            })
        );
        let c = serve(
            &[],
            &[
                (
                    "FIBD_UPSTREAM",
                    "http://127.0.0.1:9000/, http://127.0.0.1:9001/",
                ),
                ("FIBD_HEDGE_BUDGET", "off"),
                ("FIBD_HEDGE_AFTER", "p95"),
            ],
        );
        assert_eq!(c.smart.upstreams.len(), 2);
        assert_eq!(c.smart.budget, None);
        assert_eq!(c.smart.hedge_after, HedgeAfter::Percentile(950));
        let c = serve(&["--hedge-budget", "0"], &[]);
        assert_eq!(c.smart.budget.map(|b| b.per_mille), Some(0));
    }

    #[test]
    fn access_settings() {
        let c = serve(&[], &[]);
        assert_eq!(c.access, AccessConfig::default());
        let c = serve(
            &[
                "--api-keys",
                "/etc/fibd/keys",
                "--protect-steps",
                "--trusted-proxy",
                "127.0.0.1",
                "--trusted-proxy=10.0.0.0/8",
                "--rate-limit-loopback",
            ],
            &[("FIBD_TRUSTED_PROXIES", "192.0.2.0/24")],
        );
        assert_eq!(c.access.api_keys, Some(PathBuf::from("/etc/fibd/keys")));
        assert!(c.access.protect_steps && c.access.rate_limit_loopback);
        let proxies: Vec<String> = c
            .access
            .trusted_proxies
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            proxies,
            ["127.0.0.1/32", "10.0.0.0/8"],
            "flags replace the environment"
        );
        let c = serve(
            &[],
            &[
                ("FIBD_TRUSTED_PROXIES", " 192.0.2.0/24, ::1 ,"),
                ("FIBD_API_KEYS", "/k"),
                ("FIBD_PROTECT_STEPS", "yes"),
                ("FIBD_RATE_LIMIT_LOOPBACK", "0"),
            ],
        );
        let proxies: Vec<String> = c
            .access
            .trusted_proxies
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(proxies, ["192.0.2.0/24", "::1/128"]);
        assert!(c.access.protect_steps && !c.access.rate_limit_loopback);
        let err = parse(&["--protect-steps"], &[]).unwrap_err();
        assert!(err.to_string().contains("--api-keys"), "{err}");
        let err = parse(&["--trusted-proxy", "10.0.0.1/8"], &[]).unwrap_err();
        assert!(err.to_string().contains("trusted proxy"), "{err}");
        let err = parse(&["--rate-limit-loopback=maybe"], &[]).unwrap_err();
        assert!(err.to_string().contains("rate limit loopback"), "{err}");
        assert_eq!(
            parse(&["--trusted-proxy"], &[]).unwrap_err(),
            ConfigError::MissingValue("--trusted-proxy".into())
        );
    }

    #[test]
    fn tracing_is_off_without_a_collector_and_its_settings_are_checked() {
        assert_eq!(serve(&[], &[]).trace, None);
        assert_eq!(serve(&[], &[("FIBD_TRACE_ZIPKIN", "")]).trace, None);
        let url = "http://127.0.0.1:9411/api/v2/spans";
        let t = serve(&["--trace-zipkin", url], &[]).trace.unwrap();
        assert_eq!(
            (t.collector.to_string().as_str(), t.sample_ratio),
            (url, 0.1)
        );
        assert_eq!(t.collector.addr.to_string(), "127.0.0.1:9411", "resolved");
        let t = serve(&["--trace-sample=1"], &[("FIBD_TRACE_ZIPKIN", url)])
            .trace
            .unwrap();
        assert_eq!(t.sample_ratio, 1.0);
        for bad in ["-0.1", "1.5", "x", "NaN"] {
            let err = parse(&["--trace-sample", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("trace sample ratio"), "{err}");
        }
        for bad in [
            "https://zipkin/api",
            "zipkin:9411",
            "http:///x",
            "http://a b/",
            "http://no-such-host.invalid:9411/api/v2/spans",
        ] {
            let err = parse(&["--trace-zipkin", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("trace collector URL"), "{err}");
            let err = parse(&["--trace-otlp", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("trace collector URL"), "{err}");
        }
        assert_eq!(t.format, ExportFormat::Zipkin);
        let otlp = "http://127.0.0.1:4318/v1/traces";
        let t = serve(&["--trace-otlp", otlp], &[]).trace.unwrap();
        assert_eq!(
            (t.collector.to_string().as_str(), t.format),
            (otlp, ExportFormat::Otlp)
        );
        let t = serve(&[], &[("FIBD_TRACE_OTLP", otlp), ("FIBD_TRACE_ZIPKIN", "")])
            .trace
            .unwrap();
        assert_eq!(t.format, ExportFormat::Otlp);
        for (flags, env) in [
            (&["--trace-otlp", otlp, "--trace-zipkin", url][..], &[][..]),
            (
                &["--trace-otlp", otlp][..],
                &[("FIBD_TRACE_ZIPKIN", url)][..],
            ),
        ] {
            let err = parse(flags, env).unwrap_err();
            assert!(err.to_string().contains("not both"), "{err}");
        }
        for bad in ["0", "10000001", "1.5"] {
            let err = parse(&["--primes-max-n", bad], &[]).unwrap_err();
            assert!(err.to_string().contains("primes max n"), "{err}");
        }
    }

    #[test]
    fn primes_limits() {
        let c = serve(&[], &[]);
        assert_eq!(c.primes, PrimesLimits::default());
        let c = serve(
            &["--primes-max-n", "500", "--primes-retention-secs=60"],
            &[("FIBD_PRIMES_TASKS_MAX", "7"), ("FIBD_PRIMES_QUEUE", "3")],
        );
        assert_eq!(
            (c.primes.max_n, c.primes.tasks_max, c.primes.pending_max),
            (500, 7, 3)
        );
        assert_eq!(c.primes.retention, Duration::from_secs(60));
    }

    #[test]
    fn callbacks_need_a_secret_and_take_their_bounds() {
        let c = serve(&[], &[]);
        assert_eq!(c.callbacks, CallbackConfig::default());
        let err = parse(&["--callback-allow", "127.0.0.1"], &[]).unwrap_err();
        assert!(err.to_string().contains("--callback-secret-file"), "{err}");
        let short = parse(
            &[
                "--callback-allow",
                "127.0.0.1",
                "--callback-secret",
                "short",
            ],
            &[],
        )
        .unwrap_err();
        assert!(short.to_string().contains("16 bytes"), "{short}");
        assert!(
            !short.to_string().contains("short\""),
            "the secret is never shown"
        );
        let bad = parse(
            &["--callback-allow=ftp://x"],
            &[("FIBD_CALLBACK_SECRET", "s".repeat(16).as_str())],
        );
        assert!(bad.is_err());
        let c = serve(
            &[
                "--callback-allow",
                "127.0.0.1",
                "--callback-allow=10.0.0.0/8",
                "--callback-retry-secs",
                "60",
                "--callback-conns=4",
            ],
            &[
                ("FIBD_CALLBACK_ALLOW", "192.0.2.1"),
                ("FIBD_CALLBACK_SECRET", "  0123456789abcdef  "),
                ("FIBD_CALLBACK_BACKOFF_MS", "250"),
            ],
        );
        assert_eq!(
            c.callbacks.allow.to_string(),
            "127.0.0.1/32, 10.0.0.0/8",
            "flags replace env"
        );
        assert_eq!(c.callbacks.secret, Secret::new(b"0123456789abcdef"));
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "Debug hides the secret"
        );
        let limits = c.callbacks.limits;
        assert_eq!(
            (limits.retry_for, limits.backoff, limits.in_flight_max),
            (Duration::from_secs(60), Duration::from_millis(250), 4)
        );
        assert!(parse(&["--callback-pending", "0"], &[]).is_err());
    }

    /// A cluster secret file for the tests, written once.
    fn secret_file() -> &'static str {
        static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        FILE.get_or_init(|| {
            let path =
                std::env::temp_dir().join(format!("fibd-config-secret-{}", std::process::id()));
            std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
            path.to_string_lossy().into_owned()
        })
    }

    #[test]
    fn cluster_mode_needs_endpoints_and_takes_its_settings() {
        assert!(serve(&[], &[]).cluster.is_none());
        let c = serve(
            &[
                "--cluster-secret-file",
                secret_file(),
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:2379, http://127.0.0.1:22379",
                "--cluster-name",
                "prod",
                "--etcd-reads",
                "serializable",
                "--listen",
                "127.0.0.1:8081",
            ],
            &[("FIBD_ETCD_WAIT_MS", "500")],
        )
        .cluster
        .unwrap();
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.endpoints[1].addr.port(), 22379);
        assert_eq!(c.name, "prod");
        assert!(c.node.ends_with(":8081"), "{}", c.node);
        assert_eq!(c.reads, ReadMode::Serializable);
        assert_eq!(c.wait, Duration::from_millis(500));
        assert_eq!(c.call_timeout, Duration::from_secs(1));
        assert_eq!(c.lease_ttl, Duration::from_secs(3));
        assert_eq!(c.url, None, "the address bound, known at start-up");
        assert_eq!(c.secret.as_field(), Some("0123456789abcdef0123"));
        for bad in [
            &["--store", "etcd"][..],
            &["--store", "redis"],
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                "https://127.0.0.1:2379",
            ],
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:2379/v3",
            ],
            &["--etcd-endpoints", "http://127.0.0.1:2379"],
            &[
                "--store",
                "etcd",
                "--etcd-endpoints",
                "http://127.0.0.1:2379",
                "--cluster-name",
                "a/b",
            ],
        ] {
            assert!(
                matches!(parse(bad, &[]), Err(ConfigError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn cluster_mode_needs_a_secret_an_address_url_and_a_sane_lease() {
        let etcd = [
            "--store",
            "etcd",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
        ];
        let with = |more: &[&str]| {
            let args: Vec<&str> = etcd.iter().chain(more).copied().collect();
            parse(&args, &[])
        };
        let secret = ["--cluster-secret-file", secret_file()];
        let c = serve(
            &[
                &etcd[..],
                &secret,
                &["--cluster-url", "http://10.0.0.1:8080", "--lease-ttl", "5"],
            ]
            .concat(),
            &[],
        )
        .cluster
        .unwrap();
        assert_eq!(c.url.as_deref(), Some("http://10.0.0.1:8080"));
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        let short = std::env::temp_dir().join(format!("fibd-config-short-{}", std::process::id()));
        std::fs::write(&short, "short\n").unwrap();
        let short = short.to_string_lossy().into_owned();
        for bad in [
            &[][..],
            &["--cluster-secret-file", "/nonexistent/secret"],
            &["--cluster-secret-file", &short],
            &[&secret[..], &["--cluster-url", "http://fibd.example:8080"]].concat(),
            &[&secret[..], &["--cluster-url", "http://0.0.0.0:8080"]].concat(),
            &[&secret[..], &["--cluster-url", "http://10.0.0.1:8080/x"]].concat(),
            &[&secret[..], &["--lease-ttl", "1"]].concat(),
            &[&secret[..], &["--listen", "0.0.0.0:8080"]].concat(),
        ] {
            assert!(
                matches!(with(bad), Err(ConfigError::Invalid { .. })),
                "{bad:?}"
            );
        }
    }
}
