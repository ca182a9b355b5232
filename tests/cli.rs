//! Start-up: help, version, and clear failures with a non-zero exit.

mod support;

use support::{DataDir, Fibd, run_to_exit};

#[test]
fn help_and_version() {
    let (status, _) = run_to_exit(&["--help"]);
    assert!(status.success());
    let (status, _) = run_to_exit(&["--version"]);
    assert!(status.success());
}

#[test]
fn an_unknown_flag_is_a_usage_error() {
    let (status, stderr) = run_to_exit(&["--frobnicate"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("--frobnicate"), "{stderr}");
}

#[test]
fn a_port_in_use_is_a_clear_error() {
    let data = DataDir::new("busy-a");
    let first = Fibd::start(&data, &[]);
    let other = DataDir::new("busy-b");
    let addr = first.addr.to_string();
    let dir = other.path().to_str().unwrap().to_owned();
    let (status, stderr) = run_to_exit(&["--listen", &addr, "--data-dir", &dir]);
    assert!(!status.success());
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[test]
fn an_unwritable_data_dir_is_a_clear_error() {
    let (status, stderr) = run_to_exit(&["--listen", "127.0.0.1:0", "--data-dir", "/proc/fibd"]);
    assert!(!status.success());
    assert!(stderr.contains("/proc/fibd"), "{stderr}");
}

#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let data = DataDir::new("locked");
    let _first = Fibd::start(&data, &[]);
    let dir = data.path().to_str().unwrap().to_owned();
    let (status, stderr) = run_to_exit(&["--listen", "127.0.0.1:0", "--data-dir", &dir]);
    assert!(!status.success());
    assert!(stderr.contains("in use by another fibd"), "{stderr}");
}
