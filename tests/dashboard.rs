//! The built-in dashboard: served whole from the binary, and, in a real
//! headless Chromium against fibd under load, every chart fed with data,
//! the upstream's extra load included; axes at round values, legends that
//! do not read 0 after a burst, and a header naming the fibd it watches.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use serde_json::Value;
use support::upstream::{Answer, FakeUpstream};
use support::{DataDir, Fibd};

#[test]
fn the_page_is_self_contained_small_and_locked_down() {
    let data = DataDir::new("dash-page");
    let fibd = Fibd::start(&data, &[]);
    let r = fibd.get("/dashboard");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    let csp = r.header("Content-Security-Policy").expect("a CSP");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = r.text();
    assert!(html.len() < 24 * 1024, "{} bytes", html.len());
    for external in ["http://", "https://", "src=", "href=", "@import", "url("] {
        assert!(
            !html.contains(external),
            "the page must load nothing: {external}"
        );
    }
    assert!(html.contains("/metrics.json"));
    let head = fibd.connect().request("HEAD", "/dashboard", &[]);
    assert_eq!(
        head.header("Content-Length"),
        Some(html.len().to_string().as_str())
    );
}

#[test]
fn metrics_json_names_the_version_the_listener_and_the_store() {
    let data = DataDir::new("dash-watched");
    let fibd = Fibd::start(&data, &[]);
    let doc: Value = serde_json::from_str(&fibd.get("/metrics.json").text()).expect("JSON");
    let watched = &doc["fibd"];
    assert_eq!(watched["version"], env!("CARGO_PKG_VERSION"), "{watched}");
    assert_eq!(
        watched["listeners"],
        serde_json::json!([{"listener": "public", "addr": fibd.addr.to_string()}])
    );
    let data_dir = std::fs::canonicalize(data.path()).expect("the data dir");
    assert_eq!(
        watched["store"],
        serde_json::json!({"kind": "lmdb", "data_dir": data_dir.to_str().unwrap()})
    );
}

/// Keeps fibd busy with every kind of request until dropped: reads, steps,
/// cached and computed F(n), 404s, and 429s once the bucket is spent.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    fn start(fibd: &Fibd) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..3)
            .map(|worker| {
                let stop = stop.clone();
                let addr = fibd.addr;
                thread::spawn(move || {
                    let mut client = support::Client::connect(addr);
                    // Bounded: a few minutes of requests at most.
                    for i in 0..2_000_000u64 {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let path = match (i + worker) % 10 {
                            0 | 1 => "/next".to_owned(),
                            2 => "/previous".to_owned(),
                            3 => format!("/v1/fib?n={}", 20_001 + (i * 7 + worker) % 500),
                            4 => "/v1/fib?n=1000".to_owned(),
                            5 => "/no/such/page".to_owned(),
                            _ => "/current".to_owned(),
                        };
                        let method = if path == "/next" || path == "/previous" {
                            "POST"
                        } else {
                            "GET"
                        };
                        client.request(method, &path, &[]);
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "needs chromium: run scripts/test"]
fn in_chromium_every_chart_has_data_under_load() {
    let data = DataDir::new("dash-chromium");
    let fibd = Fibd::start(
        &data,
        &[
            "--rate-limit",
            "300",
            "--rate-burst",
            "300",
            "--rate-limit-loopback",
        ],
    );
    let load = Load::start(&fibd);
    let page = check_in_chromium(&fibd, "dashboard");
    drop(load);
    assert_eq!(page["errors"], 0, "{page:#}");
    assert!(page["polls"].as_u64() >= Some(5), "{page:#}");
    assert_eq!(page["status"], "live");
    for panel in [
        "requests", "classes", "latency", "steps", "commit", "batch", "index", "conns", "hitrate",
        "limited",
    ] {
        let p = &page["panels"][panel];
        assert_eq!(p["state"], "data", "{panel}: {p}");
        assert!(p["points"].as_u64() >= Some(4), "{panel}: {p}");
    }
    for legend in ["2xx", "4xx", "p99", "/next", "/v1/fib"] {
        assert!(page.to_string().contains(legend), "{legend} in {page:#}");
    }
    for (panel, p) in page["panels"].as_object().unwrap() {
        assert_round_ticks(panel, p["ticks"].as_str().unwrap());
    }
    let limited = page["panels"]["limited"]["legend"].as_str().unwrap();
    assert!(!limited.ends_with("\u{a0}0 "), "429s were drawn: {limited}");
    // Services this build lacks say so instead of drawing nothing.
    for panel in ["primes", "callbacks", "callbacklat", "smart"] {
        let state = page["panels"][panel]["state"].as_str().unwrap();
        assert!(state == "nodata" || state == "data", "{panel}: {state}");
    }
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
}

/// An axis's labels ("0 ms | 0.05 ms | 0.1 ms") are evenly spaced at a
/// step of 1, 2, 2.5 or 5 times a power of ten, with no float noise.
fn assert_round_ticks(panel: &str, ticks: &str) {
    let values: Vec<f64> = ticks
        .split(" | ")
        .map(|label| {
            let number = label
                .trim_end_matches(" ms")
                .trim_end_matches(['%', '/', 's']);
            assert!(
                !number.contains("0000") && !number.contains("9999"),
                "{panel}: {ticks}"
            );
            let (digits, scale) = match number.as_bytes().last() {
                Some(b'k') => (&number[..number.len() - 1], 1e3),
                Some(b'M') => (&number[..number.len() - 1], 1e6),
                Some(b'G') => (&number[..number.len() - 1], 1e9),
                _ => (number, 1.0),
            };
            let value: f64 = digits
                .parse()
                .unwrap_or_else(|_| panic!("{panel}: {ticks}"));
            value * scale
        })
        .collect();
    assert!(values.len() >= 2, "{panel}: {ticks}");
    let step = values[1] - values[0];
    let mantissa = step / 10f64.powf(step.log10().floor());
    assert!(
        [1.0, 2.0, 2.5, 5.0]
            .iter()
            .any(|m| (mantissa - m).abs() < 1e-6),
        "{panel}: step {step} in {ticks}"
    );
    for pair in values.windows(2) {
        assert!(
            ((pair[1] - pair[0]) - step).abs() < step * 1e-6,
            "{panel}: {ticks}"
        );
    }
}

/// Runs scripts/dashboard-check.py on fibd's page for a few seconds; the
/// page's state as it reports it.
fn check_in_chromium(fibd: &Fibd, name: &str) -> Value {
    check_in_chromium_with(fibd, name, &[])
}

/// The same with more of the script's options: a later `--seconds` wins.
fn check_in_chromium_with(fibd: &Fibd, name: &str, options: &[&str]) -> Value {
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dashboard-check.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/dashboard", fibd.addr))
        .args(["--seconds", "8", "--screenshot"])
        .arg(&screenshot)
        .args(options)
        .output()
        .expect("run scripts/dashboard-check.py (python3 and chromium)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the page's state as JSON")
}

#[test]
#[ignore = "needs chromium: run scripts/test"]
fn in_chromium_the_upstream_panels_show_the_extra_load() {
    // A third of the upstream's answers fail, so calls retry: extra load.
    let upstream = FakeUpstream::start(|seen| {
        if seen.index % 3 == 0 {
            Answer::status(0, 500)
        } else {
            Answer::json(0, "{\"v\": 1}")
        }
    });
    let data = DataDir::new("dash-upstream");
    let url = upstream.url();
    let fibd = Fibd::start(&data, &["--upstream", &url, "--rate-limit", "0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let caller = {
        let (stop, addr) = (stop.clone(), fibd.addr);
        thread::spawn(move || {
            let mut client = support::Client::connect(addr);
            // Bounded: a few minutes of calls at most.
            for _ in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                client.request("GET", "/api/smart?timeout=1000", &[]);
                thread::sleep(std::time::Duration::from_millis(2));
            }
        })
    };
    let page = check_in_chromium(&fibd, "dashboard-upstream");
    stop.store(true, Ordering::Relaxed);
    caller.join().expect("the caller");
    assert_eq!(page["errors"], 0, "{page:#}");
    for panel in ["smart", "upstream", "extraload"] {
        let p = &page["panels"][panel];
        assert_eq!(p["state"], "data", "{panel}: {p}");
        assert!(p["points"].as_u64() >= Some(4), "{panel}: {p}");
    }
    let upstream_legend = page["panels"]["upstream"]["legend"].as_str().unwrap();
    for kind in ["first", "retry", "refused"] {
        assert!(
            upstream_legend.contains(kind),
            "{kind} in {upstream_legend}"
        );
    }
    let extra = page["panels"]["extraload"]["legend"].as_str().unwrap();
    assert!(
        extra.contains("extra") && extra.contains("budget used"),
        "{extra}"
    );
}

#[test]
#[ignore = "needs chromium: run scripts/test"]
fn in_chromium_axes_tick_at_round_values_and_the_header_names_what_is_watched() {
    let data = DataDir::new("dash-axes");
    let fibd = Fibd::start(&data, &[]);
    // Ranges to ticks: tiny, zero, large, counts kept whole, a zoomed index.
    let table: [(f64, f64, &str, bool, &[&str]); 10] = [
        (
            0.0,
            0.19,
            "ms",
            false,
            &["0 ms", "0.05 ms", "0.1 ms", "0.15 ms", "0.2 ms"],
        ),
        (
            0.0,
            0.063 * 3.0,
            "ms",
            false,
            &["0 ms", "0.05 ms", "0.1 ms", "0.15 ms", "0.2 ms"],
        ),
        (
            0.0,
            0.0,
            "req/s",
            false,
            &["0/s", "0.2/s", "0.4/s", "0.6/s", "0.8/s", "1/s"],
        ),
        (
            0.0,
            0.00042,
            "ms",
            false,
            &[
                "0 ms",
                "0.0001 ms",
                "0.0002 ms",
                "0.0003 ms",
                "0.0004 ms",
                "0.0005 ms",
            ],
        ),
        (
            0.0,
            1_234_567.0,
            "req/s",
            false,
            &["0/s", "250k/s", "500k/s", "750k/s", "1M/s", "1.25M/s"],
        ),
        (
            0.0,
            2.2e9,
            "",
            false,
            &["0", "500M", "1G", "1.5G", "2G", "2.5G"],
        ),
        (
            0.0,
            100.0,
            "%",
            false,
            &["0%", "20%", "40%", "60%", "80%", "100%"],
        ),
        (0.0, 3.0, "", true, &["0", "1", "2", "3"]),
        (42.0, 42.0, "", true, &["41", "42", "43"]),
        (
            1_234_561.0,
            1_234_598.0,
            "",
            true,
            &["1234560", "1234570", "1234580", "1234590", "1234600"],
        ),
    ];
    let cases: Vec<Value> = table
        .iter()
        .map(|(lo, hi, unit, integer, _)| serde_json::json!([lo, hi, unit, integer]))
        .collect();
    let expression = format!(
        "{}.map(([lo, hi, unit, integer]) => niceAxis(lo, hi, unit, integer).labels)",
        Value::Array(cases)
    );
    let page = check_in_chromium_with(
        &fibd,
        "dashboard-axes",
        &[
            "--seconds",
            "60",
            "--until",
            "document.getElementById('watching').textContent !== ''",
            "--eval",
            &expression,
        ],
    );
    for (i, (lo, hi, unit, _, expected)) in table.iter().enumerate() {
        assert_eq!(
            page["eval"][i],
            serde_json::json!(expected),
            "{lo}..{hi} {unit}"
        );
    }
    let watching = page["watching"].as_str().unwrap();
    let data_dir = std::fs::canonicalize(data.path()).expect("the data dir");
    for shown in [
        fibd.addr.to_string(),
        data_dir.display().to_string(),
        format!("v{}", env!("CARGO_PKG_VERSION")),
        "lmdb".to_owned(),
    ] {
        assert!(watching.contains(&shown), "{shown} in {watching}");
    }
    assert!(
        page["title"]
            .as_str()
            .unwrap()
            .contains(&fibd.addr.to_string())
    );
}

#[test]
#[ignore = "needs chromium: run scripts/test"]
fn in_chromium_a_legend_after_a_burst_shows_the_burst_not_zero() {
    let data = DataDir::new("dash-burst");
    let fibd = Fibd::start(&data, &[]);
    // Done once the page's newest /current rate is 0 and an older one is not.
    let quiet_after_burst = "(() => { const s = charts.requests.series.get('/current'); \
        return !!s && s[s.length - 1][1] === 0 && s.some(p => p[1] > 0); })()";
    let checker = {
        let fibd_addr = fibd.addr;
        thread::spawn(move || {
            let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-burst.png");
            Command::new("python3")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dashboard-check.py"))
                .arg(format!("http://{fibd_addr}/dashboard"))
                .args([
                    "--seconds",
                    "60",
                    "--until",
                    quiet_after_burst,
                    "--screenshot",
                ])
                .arg(screenshot)
                .output()
                .expect("run scripts/dashboard-check.py (python3 and chromium)")
        })
    };
    // The burst comes after the page has a first snapshot to rate it from.
    let polled = "fibd_requests_total{route=\"/metrics.json\",code=\"200\"}";
    let mut client = fibd.connect();
    while !fibd.get("/metrics").text().contains(&format!("{polled} ")) {
        assert!(!checker.is_finished(), "the page never polled");
        thread::sleep(std::time::Duration::from_millis(50));
    }
    for _ in 0..200 {
        assert_eq!(client.request("GET", "/current", &[]).status, 200);
    }
    let output = checker.join().expect("the checker");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let page: Value = serde_json::from_slice(&output.stdout).expect("the page's state as JSON");
    let legend = page["panels"]["requests"]["legend"].as_str().unwrap();
    let shown = legend
        .split("/current\u{a0}")
        .nth(1)
        .unwrap_or_else(|| panic!("/current in {legend}"));
    let value: f64 = shown.split(' ').next().unwrap().parse().expect(legend);
    assert!(
        value > 0.0,
        "the burst's rate, not the quiet second's: {legend}"
    );
    assert!(
        legend.contains("s ago"),
        "and it says how old it is: {legend}"
    );
    let classes = page["panels"]["classes"]["legend"].as_str().unwrap();
    assert!(!classes.contains("2xx\u{a0}0 "), "{classes}");
}
