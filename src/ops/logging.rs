//! Log format: journald's priority prefixes when stderr is the journal, a
//! human format with timestamps otherwise. env_logger does the filtering
//! (RUST_LOG), this file only picks the line format.

use std::io::Write;
use std::os::unix::fs::MetadataExt;

use log::Level;

/// Installs the logger; `RUST_LOG` overrides the default level (info).
pub fn init() {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if stderr_is_journal(std::env::var("JOURNAL_STREAM").ok().as_deref()) {
        builder.format(|buf, record| {
            writeln!(
                buf,
                "<{}>{}: {}",
                priority(record.level()),
                record.target(),
                record.args()
            )
        });
    }
    builder.init();
}

/// sd-daemon(3) priorities: the journal reads `<N>` at a line's start.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// systemd sets `JOURNAL_STREAM=dev:ino` for the stream it connects to
/// stderr; a redirected stderr (a pipe in a test, a file) must not get the
/// journal format, so the pair is compared with what fd 2 really is.
fn stderr_is_journal(journal_stream: Option<&str>) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(parse_dev_ino) else {
        return false;
    };
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

fn parse_dev_ino(text: &str) -> Option<(u64, u64)> {
    let (dev, ino) = text.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
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
    fn journal_stream_must_name_the_real_stderr() {
        assert_eq!(parse_dev_ino("8:1234"), Some((8, 1234)));
        assert_eq!(parse_dev_ino("8-1234"), None);
        assert!(!stderr_is_journal(None));
        assert!(!stderr_is_journal(Some("garbage")));
        assert!(!stderr_is_journal(Some("0:0")));
        let m = std::fs::metadata("/proc/self/fd/2").unwrap();
        assert!(stderr_is_journal(Some(&format!("{}:{}", m.dev(), m.ino()))));
    }
}
