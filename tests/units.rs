//! The systemd units in `systemd/`: they agree with each other and with the
//! daemon's defaults, `systemd-analyze verify` accepts them, and their
//! sandbox keeps `systemd-analyze security` exposure at or below 1.0. The
//! systemd-analyze checks are skipped (with a message) where it is not
//! installed; they need no root and change nothing outside a temp directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use fibd::config::{DEFAULT_CONNECTIONS_MAX, DEFAULT_LISTEN};
use fibd::net::systemd::ADMIN_FD_NAME;

const EXPOSURE_MAX: f64 = 1.0;

fn unit_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name)
}

fn unit_text(name: &str) -> String {
    let path = unit_path(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A unit file as (section, key, value) triples, in order; comments and
/// blank lines dropped. Enough for these files (no line continuations).
fn parse_unit(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a key=value line: {line:?}"));
        entries.push((
            section.clone(),
            key.trim().to_owned(),
            value.trim().to_owned(),
        ));
    }
    entries
}

/// Every value a key has in a section (a key may repeat).
fn values<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    entries
        .iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The last value of a key, as systemd reads a single-valued setting.
fn value<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    values(entries, section, key)
        .last()
        .copied()
        .unwrap_or_else(|| panic!("[{section}] {key}= is missing"))
}

fn words<'a>(entries: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    values(entries, section, key)
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect()
}

#[test]
fn service_and_socket_agree() {
    let service = parse_unit(&unit_text("fibd.service"));
    let socket = parse_unit(&unit_text("fibd.socket"));

    // The service needs its socket, and starts after it.
    assert!(words(&service, "Unit", "Requires").contains(&"fibd.socket"));
    assert!(words(&service, "Unit", "After").contains(&"fibd.socket"));
    // The socket activates this service, one process for all connections.
    let activates = values(&socket, "Socket", "Service");
    assert!(
        activates.is_empty() || activates == ["fibd.service"],
        "{activates:?}"
    );
    assert!(matches!(
        values(&socket, "Socket", "Accept")[..],
        [] | ["no"] | ["false"]
    ));
    assert_eq!(words(&socket, "Install", "WantedBy"), ["sockets.target"]);

    // The socket listens where fibd would by default, so `fibd healthcheck`
    // and the docs' curl lines work unchanged.
    assert_eq!(value(&socket, "Socket", "ListenStream"), DEFAULT_LISTEN);

    // sd_notify: READY=1 and WATCHDOG=1 come from the main process.
    assert_eq!(value(&service, "Service", "Type"), "notify");
    assert_eq!(value(&service, "Service", "NotifyAccess"), "main");
    assert!(!value(&service, "Service", "WatchdogSec").is_empty());
    assert_eq!(value(&service, "Service", "Restart"), "always");
    // Without this systemd gives up after 5 crashes in 10 s.
    assert_eq!(value(&service, "Unit", "StartLimitIntervalSec"), "0");
    // The data directory comes from $STATE_DIRECTORY.
    assert_eq!(value(&service, "Service", "StateDirectory"), "fibd");
    assert!(!value(&service, "Service", "ExecStart").contains("--data-dir"));

    // Room for the connection cap plus the store, listener and loop.
    let nofile: usize = value(&service, "Service", "LimitNOFILE")
        .parse()
        .expect("numeric LimitNOFILE");
    assert!(
        nofile > DEFAULT_CONNECTIONS_MAX + 64,
        "LimitNOFILE={nofile} leaves no room above {DEFAULT_CONNECTIONS_MAX} connections"
    );
    // sd_notify needs AF_UNIX, whatever else the sandbox forbids.
    assert!(words(&service, "Service", "RestrictAddressFamilies").contains(&"AF_UNIX"));
}

#[test]
fn admin_socket_is_named_admin_and_feeds_the_service() {
    let admin = parse_unit(&unit_text("fibd-admin.socket"));
    let public = parse_unit(&unit_text("fibd.socket"));
    // fibd tells the sockets apart by these names (LISTEN_FDNAMES).
    assert_eq!(value(&admin, "Socket", "FileDescriptorName"), ADMIN_FD_NAME);
    assert_ne!(
        value(&public, "Socket", "FileDescriptorName"),
        ADMIN_FD_NAME
    );
    // Service= makes fibd.service triggered by it, so it inherits its fd.
    assert_eq!(value(&admin, "Socket", "Service"), "fibd.service");
    assert!(matches!(
        values(&admin, "Socket", "Accept")[..],
        [] | ["no"] | ["false"]
    ));
    // Loopback only, and not the public port.
    let listen = value(&admin, "Socket", "ListenStream");
    let addr: std::net::SocketAddr = listen.parse().expect("ADDR:PORT");
    assert!(addr.ip().is_loopback(), "{listen}");
    assert_ne!(listen, value(&public, "Socket", "ListenStream"));
    assert_eq!(words(&admin, "Install", "WantedBy"), ["sockets.target"]);
    // Optional: the service must not need it.
    let service = parse_unit(&unit_text("fibd.service"));
    for key in ["Requires", "Wants", "BindsTo"] {
        assert!(!words(&service, "Unit", key).contains(&"fibd-admin.socket"));
    }
}

fn systemd_analyze(args: &[&str]) -> Option<Output> {
    match Command::new("systemd-analyze").args(args).output() {
        Ok(output) => Some(output),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("run systemd-analyze: {e}"),
    }
}

fn skip(test: &str) {
    eprintln!("{test}: skipped, systemd-analyze is not installed");
}

/// A temp directory holding the units, with ExecStart= pointing at the
/// binary cargo built (verify checks that it exists and is executable).
struct UnitDir(PathBuf);

impl UnitDir {
    fn new() -> UnitDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("fibd-units-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp unit dir");
        let installed = "ExecStart=/usr/local/bin/fibd";
        let service = unit_text("fibd.service");
        assert!(service.contains(installed), "ExecStart is not {installed}");
        let service = service.replace(
            installed,
            &format!("ExecStart={}", env!("CARGO_BIN_EXE_fibd")),
        );
        std::fs::write(dir.join("fibd.service"), service).expect("write service");
        for socket in ["fibd.socket", "fibd-admin.socket"] {
            std::fs::write(dir.join(socket), unit_text(socket)).expect("write socket");
        }
        UnitDir(dir)
    }

    fn path(&self, name: &str) -> String {
        self.0
            .join(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_owned()
    }
}

impl Drop for UnitDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn systemd_analyze_verify_is_clean() {
    let dir = UnitDir::new();
    let (service, socket) = (dir.path("fibd.service"), dir.path("fibd.socket"));
    let admin = dir.path("fibd-admin.socket");
    let Some(output) = systemd_analyze(&["verify", "--man=no", &service, &socket, &admin]) else {
        return skip("systemd_analyze_verify_is_clean");
    };
    // verify exits 0 even for unknown keys; it only warns. Any output fails.
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        output.status
    );
}

#[test]
fn systemd_analyze_security_exposure_is_low() {
    let dir = UnitDir::new();
    let service = dir.path("fibd.service");
    let Some(output) = systemd_analyze(&["security", "--offline=yes", "--no-pager", &service])
    else {
        return skip("systemd_analyze_security_exposure_is_low");
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("--offline") || stderr.contains("unrecognized option") {
        // systemd before 250 has no offline mode.
        eprintln!(
            "systemd_analyze_security_exposure_is_low: skipped: {}",
            stderr.trim()
        );
        return;
    }
    let marker = "Overall exposure level for fibd.service:";
    let exposure: f64 = stdout
        .lines()
        .find_map(|line| line.split_once(marker))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{stdout}\n{stderr}"));
    // The unmet settings: lines ending in their share of the exposure (the
    // ✗/✓ marks become -/+ in a non-UTF-8 locale, so they are not relied on).
    let failing: Vec<&str> = stdout
        .lines()
        .filter(|line| !line.contains(marker))
        .filter(|line| {
            line.split_whitespace()
                .last()
                .and_then(|n| n.parse::<f64>().ok())
                .is_some_and(|n| n > 0.0)
        })
        .collect();
    assert!(
        exposure <= EXPOSURE_MAX,
        "exposure {exposure} > {EXPOSURE_MAX}; unmet:\n{}",
        failing.join("\n")
    );
}
