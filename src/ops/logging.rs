//! Where log lines go. Under journald (stderr is the journal stream) each
//! line is a journal entry sent through the native protocol
//! (systemd-journal-logger), so a line about one request carries its
//! [`RequestFields`] as fields `journalctl` can match; errors, and every line
//! when the native socket cannot be opened, go to stderr as text lines with
//! `<N>` priority prefixes.
//! Elsewhere the format is human, with timestamps. env_logger's filter
//! (RUST_LOG) decides what is logged in every mode.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::panic::Location;

use log::kv::{self, Key, Source, Value, VisitSource};
use log::{Level, Log, Metadata, Record};
use systemd_journal_logger::JournalLog;

/// Installs the logger; `RUST_LOG` overrides the default level (info).
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if !systemd_journal_logger::connected_to_journal() {
        builder.init();
        return;
    }
    match JournalLog::new() {
        Ok(journal) => {
            let filter = builder.build();
            log::set_max_level(filter.filter());
            log::set_boxed_logger(Box::new(Journal { filter, journal }))
                .expect("the logger is installed once");
        }
        Err(e) => {
            builder.format(write_prefixed_line);
            builder.init();
            log::warn!("journald's native socket: {e}; logging text lines to stderr (no fields)");
        }
    }
}

/// A line for the journal's stream reader: it takes `<N>` at a line's start
/// as the priority and stamps the time itself.
fn write_prefixed_line(out: &mut impl Write, record: &Record) -> std::io::Result<()> {
    writeln!(
        out,
        "<{}>{}: {}",
        priority(record.level()),
        record.target(),
        record.args()
    )
}

/// sd-daemon(3) priorities, the same in the native protocol's `PRIORITY`
/// field and the `<N>` prefixes: info is 6, debug 7.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// The level systemd-journal-logger maps to [`priority`]`(level)`: it
/// writes info as 5 (notice) and debug as 6, one step above sd-daemon's, so
/// info and debug records are handed to it one level down.
fn journal_level(level: Level) -> Level {
    match level {
        Level::Error => Level::Error,
        Level::Warn => Level::Warn,
        Level::Info => Level::Debug,
        Level::Debug | Level::Trace => Level::Trace,
    }
}

/// The native journal writer behind env_logger's filter.
struct Journal {
    filter: env_logger::Logger,
    journal: JournalLog,
}

impl Log for Journal {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.filter.matches(record) {
            return;
        }
        // An error is often a process's last word (a start that fails, a
        // panic). journald learns a datagram's unit from its sender's
        // /proc entry, gone once the process exited, so `journalctl -u fibd`
        // and `systemctl status` would miss it; the stream was tied to the
        // unit when systemd opened it.
        if record.level() == Level::Error {
            let _ = write_prefixed_line(&mut std::io::stderr().lock(), record);
            return;
        }
        let level = journal_level(record.level());
        // A journald that stopped reading loses the line; logging never fails.
        let _ = self
            .journal
            .journal_send(&record.to_builder().level(level).build());
    }

    fn flush(&self) {}
}

/// What a line about one request carries: journal fields under journald
/// (`journalctl -u fibd REQUEST_ID=k3q9xm-1f`), and nothing in the text
/// formats, whose message says it already.
#[derive(Debug, Clone, Copy)]
pub struct RequestFields<'a> {
    pub request_id: &'a str,
    /// The route's path (`/next`), or `(no route)`.
    pub route: &'a str,
    pub status: u16,
    /// The client's address, as resolved through trusted proxies.
    pub client: IpAddr,
    /// The API key's name, `-` for none; never the key.
    pub key_name: &'a str,
}

impl Source for RequestFields<'_> {
    fn visit<'kvs>(&'kvs self, visitor: &mut dyn VisitSource<'kvs>) -> Result<(), kv::Error> {
        visitor.visit_pair(Key::from_str("REQUEST_ID"), Value::from(self.request_id))?;
        visitor.visit_pair(Key::from_str("ROUTE"), Value::from(self.route))?;
        visitor.visit_pair(Key::from_str("STATUS"), Value::from(self.status))?;
        visitor.visit_pair(Key::from_str("CLIENT"), Value::from_display(&self.client))?;
        visitor.visit_pair(Key::from_str("KEY_NAME"), Value::from(self.key_name))
    }

    fn count(&self) -> usize {
        5
    }
}

/// Logs `message` about one request with its `fields`, when `level` is on
/// for `target`. The caller's file and line go with it, as with `log!`.
#[track_caller]
pub fn request_line(
    level: Level,
    target: &'static str,
    fields: &RequestFields<'_>,
    message: fmt::Arguments<'_>,
) {
    let logger = log::logger();
    let metadata = Metadata::builder().level(level).target(target).build();
    if level > log::max_level() || !logger.enabled(&metadata) {
        return;
    }
    let caller = Location::caller();
    logger.log(
        &Record::builder()
            .metadata(metadata)
            .args(message)
            .key_values(fields)
            .file_static(Some(caller.file()))
            .line(Some(caller.line()))
            .build(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_follow_sd_daemon() {
        assert_eq!(priority(Level::Error), 3);
        assert_eq!(priority(Level::Warn), 4);
        assert_eq!(priority(Level::Info), 6);
        assert_eq!(priority(Level::Debug), 7);
    }

    #[test]
    fn the_journal_gets_info_and_debug_one_level_down() {
        // systemd-journal-logger's table: error 3, warn 4, info 5, debug 6, trace 7.
        let crate_priority = |level| match level {
            Level::Error => 3,
            Level::Warn => 4,
            Level::Info => 5,
            Level::Debug => 6,
            Level::Trace => 7,
        };
        for level in [
            Level::Error,
            Level::Warn,
            Level::Info,
            Level::Debug,
            Level::Trace,
        ] {
            assert_eq!(
                crate_priority(journal_level(level)),
                priority(level),
                "{level}"
            );
        }
    }

    #[test]
    fn prefixed_lines_carry_priority_and_target_and_no_timestamp() {
        let mut out = Vec::new();
        let fields = RequestFields {
            request_id: "id-1",
            route: "/next",
            status: 500,
            client: IpAddr::from([203, 0, 113, 7]),
            key_name: "ci",
        };
        let record = Record::builder()
            .level(Level::Warn)
            .target("fibd::routes")
            .args(format_args!("id-1 Post /next: answered 500"))
            .key_values(&fields)
            .build();
        write_prefixed_line(&mut out, &record).unwrap();
        assert_eq!(out, b"<4>fibd::routes: id-1 Post /next: answered 500\n");
    }

    /// Collects what a [`Source`] hands a writer, as the journal logger sees it.
    struct Collect(Vec<(String, String)>);

    impl<'kvs> VisitSource<'kvs> for Collect {
        fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
            self.0.push((key.to_string(), value.to_string()));
            Ok(())
        }
    }

    #[test]
    fn request_fields_become_journal_fields() {
        let fields = RequestFields {
            request_id: "client-7f3a",
            route: "/next",
            status: 200,
            client: "2001:db8::7".parse().unwrap(),
            key_name: "ci-bot",
        };
        let mut seen = Collect(Vec::new());
        fields.visit(&mut seen).unwrap();
        let pairs: Vec<(&str, &str)> = seen
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("REQUEST_ID", "client-7f3a"),
                ("ROUTE", "/next"),
                ("STATUS", "200"),
                ("CLIENT", "2001:db8::7"),
                ("KEY_NAME", "ci-bot"),
            ]
        );
        assert_eq!(fields.count(), pairs.len());
        // Each is a valid journal field name as it stands (A-Z, 0-9, _,
        // not starting with _ or a digit), so the logger sends it unchanged.
        for (key, _) in pairs {
            assert!(key.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
            assert!(key.as_bytes()[0].is_ascii_uppercase());
        }
    }
}
