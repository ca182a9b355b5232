//! A closed-loop load on /api/smart: a number of clients, each on its own
//! keep-alive connection, calling one after another until a shared count
//! of calls is reached (a count, not a duration, so a slow machine runs
//! the same calls, only longer). Every call's status, wall time and
//! attempts are kept for the test to summarise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::Client;

/// One call as the client saw it.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub status: u16,
    pub elapsed: Duration,
    /// The body's `attempts`.
    pub attempts: u64,
    /// A failure's `budget_exhausted`.
    pub budget_exhausted: bool,
}

/// `calls` calls of `path` from `clients` closed-loop clients.
pub fn closed_loop(addr: SocketAddr, clients: usize, calls: usize, path: &str) -> Vec<Call> {
    let issued = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (issued, path) = (issued.clone(), path.to_owned());
            thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut seen = Vec::new();
                while issued.fetch_add(1, Ordering::SeqCst) < calls {
                    let started = Instant::now();
                    let r = client.request("GET", &path, &[]);
                    let elapsed = started.elapsed();
                    let json: serde_json::Value =
                        serde_json::from_slice(&r.body).expect("a JSON body");
                    seen.push(Call {
                        status: r.status,
                        elapsed,
                        attempts: json["attempts"].as_u64().expect("attempts"),
                        budget_exhausted: json["budget_exhausted"] == true,
                    });
                }
                seen
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().expect("a load client"))
        .collect()
}

/// The `q` quantile (0 to 1) of the calls' wall times.
pub fn quantile(calls: &[Call], q: f64) -> Duration {
    let mut times: Vec<Duration> = calls.iter().map(|c| c.elapsed).collect();
    times.sort();
    let rank = ((times.len() as f64 * q).ceil() as usize).clamp(1, times.len().max(1));
    times.get(rank - 1).copied().unwrap_or_default()
}

/// How many calls answered `status`.
pub fn count(calls: &[Call], status: u16) -> usize {
    calls.iter().filter(|c| c.status == status).count()
}
