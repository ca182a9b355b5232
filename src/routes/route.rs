//! The route table: every resource fibd serves, its paths (the primes
//! task paths with their id), the methods it takes, the scope a key needs
//! and which listener serves it. A leaf: the metrics name their rows after it without knowing the
//! app.

use crate::access::Scope;
use crate::http::message::Method;

/// Which listener serves a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Served {
    /// The API: the public listener only.
    Public,
    /// The operator's endpoints: the admin listener when there is one (the
    /// public one answers 404), else the public one.
    Admin,
    /// The probes: every listener, since balancers probe the public port.
    Both,
}

/// The resources fibd serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Current,
    Next,
    Previous,
    Fib,
    Random,
    Healthz,
    Readyz,
    Metrics,
    Smart,
    MetricsJson,
    Dashboard,
    /// POST a primes task (also at /tasks).
    PrimesTasks,
    /// GET one primes task by id, or DELETE (cancel) it (also at /tasks/{id}).
    PrimesTask,
    /// This API's OpenAPI description (`openapi.json`, built in).
    OpenApi,
    /// The same description as an HTML reference.
    Docs,
    /// Cluster mode: a follower's steps relayed to the leader. Internal:
    /// not in the public API, and only with the cluster secret.
    Relay,
    /// Cluster mode: a follower's primes task request forwarded to the
    /// leader, which holds the tasks. Internal, like [`Route::Relay`].
    TaskForward,
}

impl Route {
    pub const ALL: [Route; 17] = [
        Route::Current,
        Route::Next,
        Route::Previous,
        Route::Fib,
        Route::Random,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::Smart,
        Route::MetricsJson,
        Route::Dashboard,
        Route::PrimesTasks,
        Route::PrimesTask,
        Route::OpenApi,
        Route::Docs,
        Route::Relay,
        Route::TaskForward,
    ];

    pub fn path(self) -> &'static str {
        match self {
            Route::Current => "/current",
            Route::Next => "/next",
            Route::Previous => "/previous",
            Route::Fib => "/v1/fib",
            Route::Random => "/v1/random",
            Route::Healthz => "/healthz",
            Route::Readyz => "/readyz",
            Route::Metrics => "/metrics",
            Route::Smart => "/api/smart",
            Route::MetricsJson => "/metrics.json",
            Route::Dashboard => "/dashboard",
            Route::PrimesTasks => "/v1/primes/tasks",
            Route::PrimesTask => "/v1/primes/tasks/{id}",
            Route::OpenApi => "/openapi.json",
            Route::Docs => "/docs",
            Route::Relay => crate::store::etcd::relay::RELAY_PATH,
            Route::TaskForward => crate::services::primes::forward::FORWARD_PATH,
        }
    }

    /// Other paths of the same resource, kept for clients of the services
    /// fibd replaces. A path with `{name}` is a template: the route matches
    /// it itself, and the template is how openapi.json names it.
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Route::PrimesTasks => &["/tasks"],
            Route::PrimesTask => &["/tasks/{id}"],
            _ => &[],
        }
    }

    /// Whether the route is between fibd's own nodes, not for clients:
    /// not in openapi.json.
    pub fn is_internal(self) -> bool {
        matches!(self, Route::Relay | Route::TaskForward)
    }

    pub fn from_path(path: &[u8]) -> Option<Route> {
        Route::ALL
            .into_iter()
            .find(|r| {
                r.path().as_bytes() == path || r.aliases().iter().any(|a| a.as_bytes() == path)
            })
            .or_else(|| task_route(path))
    }

    /// The methods a route takes, as the Allow header lists them.
    pub fn allow(self) -> &'static str {
        match self {
            Route::Current | Route::Next | Route::Previous => "GET, HEAD, POST",
            Route::PrimesTasks | Route::Relay | Route::TaskForward => "POST",
            Route::PrimesTask => "GET, HEAD, DELETE",
            _ => "GET, HEAD",
        }
    }

    pub fn served(self) -> Served {
        match self {
            Route::Healthz | Route::Readyz => Served::Both,
            Route::Metrics | Route::MetricsJson | Route::Dashboard | Route::Docs => Served::Admin,
            _ => Served::Public,
        }
    }

    /// What a key needs beyond reading, when `crate::access` enforces it.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Route::Next | Route::Previous => Some(Scope::Step),
            _ => None,
        }
    }

    pub fn accepts(self, method: Method) -> bool {
        match self {
            Route::Current | Route::Next | Route::Previous => {
                matches!(method, Method::Get | Method::Head | Method::Post)
            }
            Route::PrimesTasks | Route::Relay | Route::TaskForward => method == Method::Post,
            Route::PrimesTask => matches!(method, Method::Get | Method::Head | Method::Delete),
            _ => matches!(method, Method::Get | Method::Head),
        }
    }
}

pub const API_PREFIX: &[u8] = b"/v1/primes/tasks";
pub const LEGACY_PREFIX: &[u8] = b"/tasks";
/// `/v1/primes/tasks/{id}` and `/tasks/{id}` with a concrete id: the route
/// table matches exact paths (and `/tasks` as an alias), not templates.
fn task_route(path: &[u8]) -> Option<Route> {
    task_id_text(path).map(|_| Route::PrimesTask)
}

/// The id part of `/v1/primes/tasks/{id}` or `/tasks/{id}`.
pub fn task_id_text(path: &[u8]) -> Option<&[u8]> {
    [API_PREFIX, LEGACY_PREFIX]
        .into_iter()
        .find_map(|prefix| path.strip_prefix(prefix)?.strip_prefix(b"/"))
}
