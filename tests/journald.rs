//! Under a real journald (support::journald: systemd-journald in a private
//! mount namespace, fibd on its stream as systemd starts a service), fibd's
//! lines are journal entries with fields: the access line and a warning
//! about a request carry REQUEST_ID, ROUTE, STATUS, CLIENT and KEY_NAME, read
//! back with `journalctl -o json`. With the native socket hidden, the lines
//! go to the stream with `<N>` prefixes the journal takes as priorities.

mod support;

use support::journald::{Journald, field};
use support::{Client, DataDir, KeyFile};

const ALICE: &str = "alice-key-0123456789abcdef";

#[test]
#[ignore = "needs journald (and root): run scripts/test"]
fn access_lines_and_warnings_are_journal_entries_with_request_fields() {
    let journal = Journald::start();
    let data = DataDir::new("journald-fields");
    let keys = KeyFile::new(&data, &format!("alice {ALICE}\n"));
    let fibd = journal.start_fibd(
        data.path(),
        &["--api-keys", keys.arg()],
        &[("RUST_LOG", "info,fibd::access=debug")],
    );
    let listening = &fibd.listening;
    assert_eq!(
        field(listening, "_TRANSPORT"),
        Some("journal"),
        "{listening}"
    );
    assert_eq!(field(listening, "PRIORITY"), Some("6"), "info: {listening}");
    assert_eq!(field(listening, "SYSLOG_IDENTIFIER"), Some("fibd"));
    assert_eq!(field(listening, "TARGET"), Some("fibd"));
    let message = field(listening, "MESSAGE").unwrap();
    assert!(
        message.starts_with("fibd "),
        "no prefix, no timestamp: {message:?}"
    );

    let headers = [("X-Request-Id", "journald-read-1"), ("X-API-Key", ALICE)];
    let r = Client::connect(fibd.addr).request("GET", "/current", &headers);
    assert_eq!(r.status, 200);
    let access = journal.wait_entry("the access line", |e| {
        field(e, "REQUEST_ID") == Some("journald-read-1")
    });
    let fields = |entry| {
        [
            "PRIORITY", "TARGET", "ROUTE", "STATUS", "CLIENT", "KEY_NAME", "MESSAGE",
        ]
        .map(|name| field(entry, name).unwrap_or("(absent)").to_owned())
    };
    assert_eq!(
        fields(&access),
        [
            "7",
            "fibd::access",
            "/current",
            "200",
            "127.0.0.1",
            "alice",
            "journald-read-1 127.0.0.1 key=alice Get /current -> 200",
        ],
        "{access}"
    );

    // A step whose durability flush fails: a 503 and a warning naming it.
    std::fs::write(data.path().join("fail-syncs"), b"").unwrap();
    let headers = [("X-Request-Id", "journald-step-2"), ("X-API-Key", ALICE)];
    let r = Client::connect(fibd.addr).request("POST", "/next", &headers);
    assert_eq!(r.status, 503);
    let warning = journal.wait_entry("the warning", |e| {
        field(e, "REQUEST_ID") == Some("journald-step-2") && field(e, "PRIORITY") == Some("4")
    });
    let [priority, target, route, status, client, key_name, message] = fields(&warning);
    assert_eq!(
        [priority, target, route, status, client, key_name].map(String::from),
        ["4", "fibd::routes", "/next", "503", "127.0.0.1", "alice"].map(String::from),
        "{warning}"
    );
    assert!(
        message.starts_with("journald-step-2 Post /next: answered 503: "),
        "{message:?}"
    );
    let access = journal.wait_entry("the step's access line", |e| {
        field(e, "REQUEST_ID") == Some("journald-step-2") && field(e, "PRIORITY") == Some("7")
    });
    assert_eq!(field(&access, "STATUS"), Some("503"), "{access}");
}

#[test]
#[ignore = "needs journald (and root): run scripts/test"]
fn without_the_native_socket_lines_are_prefixed_text_on_the_stream() {
    let journal = Journald::start();
    let data = DataDir::new("journald-fallback");
    let fibd = journal.start_fibd_without_native_socket(data.path(), &[], &[]);
    let listening = &fibd.listening;
    assert_eq!(
        field(listening, "_TRANSPORT"),
        Some("stdout"),
        "{listening}"
    );
    assert_eq!(field(listening, "PRIORITY"), Some("6"), "<6>: {listening}");
    let message = field(listening, "MESSAGE").unwrap();
    assert!(message.starts_with("fibd: fibd "), "{message:?}");
    assert!(
        !message.contains("[20"),
        "no timestamp of its own: {message:?}"
    );
    let warning = journal.wait_entry("the fallback's warning", |e| {
        field(e, "MESSAGE").is_some_and(|m| m.contains("journald's native socket"))
    });
    assert_eq!(field(&warning, "PRIORITY"), Some("4"), "<4>: {warning}");
    assert_eq!(field(&warning, "_TRANSPORT"), Some("stdout"), "{warning}");
}

/// A start that fails says why at error priority on the stream, which
/// journald ties to the unit whenever the process exits (a datagram from a
/// process already gone would reach no `journalctl -u`).
#[test]
#[ignore = "needs journald (and root): run scripts/test"]
fn a_failed_start_logs_its_error_on_the_stream() {
    let journal = Journald::start();
    let data = DataDir::new("journald-failed-start");
    std::fs::create_dir_all(data.path()).unwrap();
    let not_a_dir = data.path().join("a-file");
    std::fs::write(&not_a_dir, b"").unwrap();
    let status = journal.run_fibd(&not_a_dir.join("store"), &[]);
    assert!(!status.success(), "fibd started on a data dir under a file");
    let error = journal.wait_entry("the start's error", |e| field(e, "PRIORITY") == Some("3"));
    assert_eq!(field(&error, "_TRANSPORT"), Some("stdout"), "{error}");
    let message = field(&error, "MESSAGE").unwrap();
    assert!(message.contains("data directory"), "{message:?}");
}

/// RUST_LOG decides under journald too, per target: the access line is on,
/// the routes' warnings are off, and the warning (logged before its
/// request's access line, both through the same socket, so in the journal
/// before it) is not there.
#[test]
#[ignore = "needs journald (and root): run scripts/test"]
fn rust_log_filters_journal_entries_by_target() {
    let journal = Journald::start();
    let data = DataDir::new("journald-filter");
    let fibd = journal.start_fibd(
        data.path(),
        &[],
        &[("RUST_LOG", "info,fibd::access=debug,fibd::routes=off")],
    );
    std::fs::write(data.path().join("fail-syncs"), b"").unwrap();
    let headers = [("X-Request-Id", "journald-filtered-1")];
    let r = Client::connect(fibd.addr).request("POST", "/next", &headers);
    assert_eq!(r.status, 503);
    let access = journal.wait_entry("the access line", |e| {
        field(e, "REQUEST_ID") == Some("journald-filtered-1")
    });
    assert_eq!(
        (field(&access, "TARGET"), field(&access, "PRIORITY")),
        (Some("fibd::access"), Some("7")),
        "the first entry with the request's id is its access line: {access}"
    );
}
