//! deploy/: the compose file, Grafana provisioning and alert rules checked by
//! their own tools, and the end-to-end proof against a real Prometheus.

use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
#[ignore = "needs python3-yaml and promtool: run scripts/test"]
fn compose_provisioning_and_rules_are_valid() {
    run("python3", &["scripts/check-deploy.py"], &[]);
    let rules = run(
        "promtool",
        &["check", "rules", "deploy/prometheus/alerts.yml"],
        &[],
    );
    assert!(rules.contains("SUCCESS"), "{rules}");
    let config = run(
        "promtool",
        &["check", "config", "deploy/prometheus/prometheus.yml"],
        &[],
    );
    assert!(config.contains("SUCCESS"), "{config}");
}

#[test]
#[ignore = "needs prometheus and wrk: run scripts/test"]
fn every_panel_and_alert_returns_data_and_the_5xx_alert_fires() {
    // The test build has the commit fault hook the script relies on.
    let out = run(
        "scripts/prometheus-e2e.sh",
        &[],
        &[("FIBD", env!("CARGO_BIN_EXE_fibd"))],
    );
    assert!(out.contains("FIRING FibdHigh5xxRatio"), "{out}");
    assert!(!out.contains("FAIL "), "{out}");
    assert!(out.contains("prometheus-e2e: OK"), "{out}");
}
