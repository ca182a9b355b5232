//! The built-in dashboard: served whole from the binary, and, in a real
//! headless Chromium against fibd under load, every chart fed with data,
//! the upstream's extra load included.

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
    assert!(html.len() < 20 * 1024, "{} bytes", html.len());
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

/// Runs scripts/dashboard-check.py on fibd's page for a few seconds; the
/// page's state as it reports it.
fn check_in_chromium(fibd: &Fibd, name: &str) -> Value {
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}.png"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dashboard-check.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(format!("http://{}/dashboard", fibd.addr))
        .args(["--seconds", "8", "--screenshot"])
        .arg(&screenshot)
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
