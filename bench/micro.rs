//! Micro-benchmarks of fibd's CPU-bound pieces, without sockets or a disk:
//!
//! - `parse/*`: the request head parser ([`fibd::http::parse::parse`]) on a
//!   wrk-style GET, a curl-style GET with four header fields, and 16 pipelined
//!   requests parsed one after the other until the buffer is consumed; with
//!   time per request and requests per second.
//! - `fib/*`: [`fibd::services::fib::big`] (ibig, binary, compute only),
//!   [`fibd::services::fib::decimal`] (the decimal engine, digits included) and
//!   `fib::big(n).to_string()` (ibig plus its binary-to-decimal conversion,
//!   the path before the engine) at n = 10^5, 10^6 and 10^7; `cursor/at/*`:
//!   [`Cursor::at`] at the same n.
//! - `engine/*`: the engine's [`mul::mul`] and [`mul::square`] at 16 to
//!   65,536 limbs, across the schoolbook, Karatsuba and transform switches.
//! - `cursor/*`: the stepper's per-step cost at index 10^6:
//!   [`Cursor::forward`], [`Cursor::write_decimal`], and both together (what
//!   one /next does to the value).
//! - `digits/*`: [`fibd::base::digits::write_u128`] on F(186), the largest
//!   table value.
//! - `primes/*`: [`fibd::services::primes::sieve::first_primes`], the segmented sieve
//!   and the JSON rendering of the first 10^5 and 10^6 primes (what a primes
//!   task computes on a compute thread).
//!
//! Run it with
//!
//! ```text
//! cargo bench --bench micro              # every case (about 25 s)
//! cargo bench --bench micro -- parse     # only cases whose name contains "parse"
//! cargo bench --bench micro -- --quick   # short budgets: checks that it all works
//! cargo bench --bench micro -- --fib N   # one F(N), for bench/fib-gmp
//! ```
//!
//! Each case warms up, then takes samples of a batch of iterations until its
//! time budget is spent (at least three samples), and prints the median and
//! the minimum time per iteration over the samples. The 10^7 cases take about
//! a second per call, so they run a fixed count instead: one warm-up call and
//! three samples of one call (`--quick`: one call).
//!
//! `cargo bench` passes `--bench` to the binary; without it (as under
//! `cargo test --all-targets`) every case but the 10^7 ones runs once as a
//! smoke test and nothing is timed.

use std::hint::black_box;
use std::time::{Duration, Instant};

use fibd::base::digits;
use fibd::http::parse::{self, Limits, Parsed};
use fibd::services::fib;
use fibd::services::fib::cursor::Cursor;
use fibd::services::fib::engine::limbs::BASE;
use fibd::services::fib::engine::mul;
use fibd::services::fib::engine::ntt::Transforms;

const USAGE: &str = "usage: cargo bench --bench micro -- [FILTER] [--quick]
       cargo bench --bench micro -- --fib N
  FILTER   run only the cases whose name contains FILTER
  --quick  short budgets (about 0.2 s a case, the 10^7 cases once)
  --fib N  F(N) with its decimal digits once untimed, once timed, then one
           line: N DIGITS SECONDS VMHWM_KIB START_KIB HEAD TAIL (for bench/fib-gmp)";

/// `wrk -c100 URL` sends exactly this.
const WRK_GET: &[u8] = b"GET /current HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n";

/// What `curl -H 'Accept: application/json' -H 'If-None-Match: ...'` sends
/// for an exact value: four header fields, three of which the parser keeps.
const CURL_GET: &[u8] = b"GET /v1/fib?n=1000 HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\n\
User-Agent: curl/8.5.0\r\n\
Accept: application/json\r\n\
If-None-Match: \"fib-1000\"\r\n\
\r\n";

/// Requests per write in `bench/wrk/pipeline.lua` (the TechEmpower depth).
const PIPELINE_DEPTH: usize = 16;

/// Index of the cursor cases: 208,988 digits, 11,611 limbs per value.
const CURSOR_INDEX: u64 = 1_000_000;

#[derive(Clone, Copy)]
enum Mode {
    /// Timing runs: full or `--quick` budgets.
    Bench { quick: bool },
    /// No `--bench` flag: run each case once, time nothing.
    Smoke,
}

/// How long a case runs.
#[derive(Clone, Copy)]
enum Budget {
    /// Warm up for `warmup`, then sample until `total` has passed.
    Time { warmup: Duration, total: Duration },
    /// `warmup` untimed calls, then `samples` samples of one call each.
    Count { warmup: u32, samples: u32 },
}

/// Runs `iters` iterations and returns the time they took; anything done
/// outside that time (undoing a cursor's steps) is the routine's business.
type Routine = Box<dyn FnMut(u64) -> Duration>;

struct Case {
    name: String,
    /// About a second a call: a fixed count instead of a time budget, and
    /// skipped in smoke mode.
    heavy: bool,
    /// Requests handled per iteration, for the per-request columns.
    requests: Option<u64>,
    /// Builds the routine; only called when the case is selected, so
    /// expensive setup (a cursor at 10^6) is skipped for filtered-out cases.
    setup: Box<dyn FnOnce() -> Routine>,
}

struct Stats {
    iters: u64,
    median_ns: f64,
    min_ns: f64,
}

fn main() {
    let mut filter: Option<String> = None;
    let mut quick = false;
    let mut bench_flag = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--fib" => {
                let Some(n) = args.next().and_then(|n| n.parse().ok()) else {
                    eprintln!("micro: --fib needs a number\n{USAGE}");
                    std::process::exit(2);
                };
                fib_once(n);
                return;
            }
            "--bench" => bench_flag = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            _ if arg.starts_with('-') => {
                eprintln!("micro: unknown option {arg}\n{USAGE}");
                std::process::exit(2);
            }
            _ if filter.is_none() => filter = Some(arg),
            _ => {
                eprintln!("micro: more than one filter\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let mode = if bench_flag {
        Mode::Bench { quick }
    } else {
        Mode::Smoke
    };

    let selected: Vec<Case> = cases()
        .into_iter()
        .filter(|case| filter.as_deref().is_none_or(|f| case.name.contains(f)))
        .collect();
    if selected.is_empty() {
        eprintln!("micro: no case matches {:?}", filter.unwrap_or_default());
        std::process::exit(2);
    }

    match mode {
        Mode::Smoke => smoke(selected),
        Mode::Bench { quick } => bench(selected, quick),
    }
}

/// One side of bench/fib-gmp: F(n) in decimal as `/v1/fib` computes it
/// (`fib::decimal`), a warm-up call then a timed one, and the process's
/// memory: VmRSS before the first call and VmHWM after the last. HEAD and
/// TAIL (ten digits each) let the script check both sides agree.
fn fib_once(n: u64) {
    let start_kib = proc_status_kib("VmRSS");
    black_box(fib::decimal(n));
    let start = Instant::now();
    let digits = fib::decimal(black_box(n));
    let seconds = start.elapsed().as_secs_f64();
    let hwm_kib = proc_status_kib("VmHWM");
    let head = &digits[..digits.len().min(10)];
    let tail = &digits[digits.len().saturating_sub(10)..];
    println!(
        "{n} {} {seconds:.6} {hwm_kib} {start_kib} {head} {tail}",
        digits.len()
    );
}

/// A `kB` field of /proc/self/status, 0 if it cannot be read.
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn smoke(selected: Vec<Case>) {
    let mut ran = 0;
    for case in selected {
        if case.heavy {
            println!("micro: skip {} (heavy; timed runs only)", case.name);
            continue;
        }
        let mut routine = (case.setup)();
        routine(1);
        ran += 1;
    }
    println!("micro: {ran} cases ran once; use `cargo bench --bench micro` for timings");
}

fn bench(selected: Vec<Case>, quick: bool) {
    if cfg!(debug_assertions) {
        eprintln!("micro: warning: debug assertions are on; timings are not representative");
    }
    let name_width = selected.iter().map(|c| c.name.len()).max().unwrap_or(0);
    println!(
        "{:<name_width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
        "case", "median", "min", "iters", "median/req", "req/s"
    );
    println!("{}", "-".repeat(name_width + 5 * 12));
    for case in selected {
        let budget = match (case.heavy, quick) {
            (false, false) => Budget::Time {
                warmup: Duration::from_millis(200),
                total: Duration::from_secs(1),
            },
            (false, true) => Budget::Time {
                warmup: Duration::from_millis(20),
                total: Duration::from_millis(200),
            },
            (true, false) => Budget::Count {
                warmup: 1,
                samples: 3,
            },
            (true, true) => Budget::Count {
                warmup: 0,
                samples: 1,
            },
        };
        let mut routine = (case.setup)();
        let stats = measure(&mut routine, budget);
        let (per_req, req_s) = match case.requests {
            Some(n) => {
                let ns = stats.median_ns / n as f64;
                (human(ns), format!("{:.2}M", 1e3 / ns))
            }
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<name_width$}  {:>10}  {:>10}  {:>10}  {:>10}  {:>10}",
            case.name,
            human(stats.median_ns),
            human(stats.min_ns),
            stats.iters,
            per_req,
            req_s
        );
    }
}

/// Warm-up, batch calibration, sampling. Each sample times a batch of
/// iterations sized to take about 1/50 of the budget, so even a 20 ns case
/// is timed over milliseconds and `Instant`'s own cost disappears.
fn measure(routine: &mut Routine, budget: Budget) -> Stats {
    let mut per_sample: Vec<f64> = Vec::new();
    let mut iters = 0u64;
    match budget {
        Budget::Count { warmup, samples } => {
            for _ in 0..warmup {
                routine(1);
            }
            for _ in 0..samples {
                per_sample.push(routine(1).as_nanos() as f64);
                iters += 1;
            }
        }
        Budget::Time { warmup, total } => {
            // Warm up with doubling batches; the last one gives the estimate.
            let start = Instant::now();
            let mut batch = 1u64;
            let mut estimate_ns;
            loop {
                let took = routine(batch);
                estimate_ns = took.as_nanos() as f64 / batch as f64;
                if start.elapsed() >= warmup {
                    break;
                }
                batch = batch.saturating_mul(2);
            }
            let target_ns = total.as_nanos() as f64 / 50.0;
            let batch = ((target_ns / estimate_ns.max(1.0)) as u64).max(1);
            let start = Instant::now();
            while per_sample.len() < 3 || start.elapsed() < total {
                let took = routine(batch);
                per_sample.push(took.as_nanos() as f64 / batch as f64);
                iters += batch;
            }
        }
    }
    per_sample.sort_by(f64::total_cmp);
    let mid = per_sample.len() / 2;
    let median_ns = if per_sample.len().is_multiple_of(2) {
        (per_sample[mid - 1] + per_sample[mid]) / 2.0
    } else {
        per_sample[mid]
    };
    Stats {
        iters,
        median_ns,
        min_ns: per_sample[0],
    }
}

/// `ns` in the unit that keeps three or four significant digits readable.
fn human(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.3} s", ns / 1e9)
    }
}

/// Times `iters` calls of `f`, each result passed through `black_box`.
fn timed<T>(iters: u64, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        black_box(f());
    }
    start.elapsed()
}

fn case(name: impl Into<String>, setup: impl FnOnce() -> Routine + 'static) -> Case {
    Case {
        name: name.into(),
        heavy: false,
        requests: None,
        setup: Box::new(setup),
    }
}

fn cases() -> Vec<Case> {
    let mut all = vec![
        parse_case("parse/wrk-get", WRK_GET.to_vec(), 1),
        parse_case("parse/curl-4-headers", CURL_GET.to_vec(), 1),
        parse_case(
            "parse/pipelined-16",
            WRK_GET.repeat(PIPELINE_DEPTH),
            PIPELINE_DEPTH,
        ),
    ];

    for (label, n) in [("1e5", 100_000u64), ("1e6", 1_000_000), ("1e7", 10_000_000)] {
        let heavy = n >= 10_000_000;
        let mut big = case(format!("fib/big/{label}"), move || {
            Box::new(move |iters| timed(iters, || fib::big(black_box(n))))
        });
        big.heavy = heavy;
        let mut decimal = case(format!("fib/decimal/{label}"), move || {
            Box::new(move |iters| timed(iters, || fib::decimal(black_box(n))))
        });
        decimal.heavy = heavy;
        let mut ibig_decimal = case(format!("fib/ibig-decimal/{label}"), move || {
            Box::new(move |iters| timed(iters, || fib::big(black_box(n)).to_string()))
        });
        ibig_decimal.heavy = heavy;
        let mut cursor_at = case(format!("cursor/at/{label}"), move || {
            Box::new(move |iters| timed(iters, || Cursor::at(black_box(n))))
        });
        cursor_at.heavy = heavy;
        all.extend([big, decimal, ibig_decimal, cursor_at]);
    }

    for limbs in [16usize, 32, 64, 128, 256, 384, 512, 550, 1024, 4096, 65_536] {
        let a: Vec<u64> = (1..=limbs as u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % BASE)
            .collect();
        let b: Vec<u64> = a.iter().rev().copied().collect();
        all.push(case(format!("engine/mul/{limbs}"), move || {
            let mut transforms = Transforms::new();
            Box::new(move |iters| timed(iters, || mul::mul(&mut transforms, black_box(&a), &b)))
        }));
    }
    for limbs in [16usize, 32, 64, 128, 256, 384, 512, 550, 1024, 4096, 65_536] {
        let a: Vec<u64> = (1..=limbs as u64)
            .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % BASE)
            .collect();
        all.push(case(format!("engine/square/{limbs}"), move || {
            let mut transforms = Transforms::new();
            Box::new(move |iters| timed(iters, || mul::square(&mut transforms, black_box(&a))))
        }));
    }

    for (label, n) in [("1e5", 100_000u64), ("1e6", 1_000_000)] {
        all.push(case(format!("primes/first/{label}"), move || {
            Box::new(move |iters| {
                timed(iters, || {
                    fibd::services::primes::sieve::first_primes(black_box(n))
                })
            })
        }));
    }

    all.extend([
        case("cursor/forward@1e6", || {
            let mut cursor = Cursor::at(CURSOR_INDEX);
            Box::new(move |iters| {
                let took = timed(iters, || cursor.forward());
                undo(&mut cursor, iters);
                took
            })
        }),
        case("cursor/write_decimal@1e6", || {
            let cursor = Cursor::at(CURSOR_INDEX);
            let mut out = Vec::with_capacity(cursor.decimal_len() + 64);
            Box::new(move |iters| {
                timed(iters, || {
                    out.clear();
                    cursor.write_decimal(&mut out);
                    black_box(out.len())
                })
            })
        }),
        case("cursor/forward+write_decimal@1e6", || {
            let mut cursor = Cursor::at(CURSOR_INDEX);
            let mut out = Vec::with_capacity(cursor.decimal_len() + 64);
            Box::new(move |iters| {
                let took = timed(iters, || {
                    cursor.forward();
                    out.clear();
                    cursor.write_decimal(&mut out);
                    black_box(out.len())
                });
                undo(&mut cursor, iters);
                took
            })
        }),
        case("digits/write_u128/F(186)", || {
            let value = fib::small(186).expect("F(186) is in the table");
            let mut out = Vec::with_capacity(64);
            digits::write_u128(&mut out, value);
            assert_eq!(out, value.to_string().as_bytes());
            Box::new(move |iters| {
                timed(iters, || {
                    out.clear();
                    digits::write_u128(&mut out, black_box(value));
                    black_box(out.len())
                })
            })
        }),
    ]);
    all
}

/// Steps a cursor back after a timed batch of `forward`s, untimed, so every
/// sample runs at the same index and the numbers do not grow over the run.
fn undo(cursor: &mut Cursor, steps: u64) {
    for _ in 0..steps {
        cursor.back();
    }
    assert_eq!(cursor.index(), CURSOR_INDEX);
}

/// One iteration parses every request in `buf` from the front, as the
/// connection does with a read that carried several pipelined requests.
fn parse_case(name: &'static str, buf: Vec<u8>, requests: usize) -> Case {
    let mut c = case(name, move || {
        let limits = Limits::default();
        assert_eq!(parse_all(&buf, &limits), requests, "{name}: request count");
        Box::new(move |iters| timed(iters, || parse_all(black_box(&buf), &limits)))
    });
    c.requests = Some(requests as u64);
    c
}

/// Parses requests off the front of `buf` until it is used up; returns how
/// many. Panics on anything but complete heads: the inputs are fixed.
fn parse_all(buf: &[u8], limits: &Limits) -> usize {
    let mut rest = buf;
    let mut count = 0;
    while !rest.is_empty() {
        match parse::parse(rest, limits) {
            Ok(Parsed::Complete { request, head_len }) => {
                black_box(request);
                rest = &rest[head_len..];
                count += 1;
            }
            other => panic!("benchmark input did not parse: {other:?}"),
        }
    }
    count
}
