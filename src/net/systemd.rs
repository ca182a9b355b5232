//! The systemd protocols, without libsystemd: sd_notify datagrams (READY,
//! STATUS, WATCHDOG, STOPPING) and socket activation (LISTEN_FDS, with
//! LISTEN_FDNAMES telling the public listener from the admin one).

use std::io;
use std::net::TcpListener;
use std::os::fd::FromRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// The first passed file descriptor (sd_listen_fds(3)).
const LISTEN_FDS_START: i32 = 3;

/// Talks to the service manager if there is one; silent otherwise.
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog_interval: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID` once.
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET")
            .ok()
            .and_then(|path| connect(&path).ok());
        let watchdog_interval = watchdog_interval(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        );
        Notifier {
            socket,
            watchdog_interval,
        }
    }

    /// How often to send WATCHDOG=1: half of what systemd waits, so one late
    /// ping is not yet a kill.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    pub fn notify(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            log::warn!("sd_notify {message:?}: {e}");
        }
    }
}

fn connect(path: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
        None => SocketAddr::from_pathname(path)?,
    };
    Ok((UnixDatagram::unbound()?, addr))
}

fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// The listening sockets systemd passed to this process, by what they serve.
#[derive(Debug, Default)]
pub struct Activated {
    pub public: Option<TcpListener>,
    pub admin: Option<TcpListener>,
}

/// The name (`FileDescriptorName=`) that makes a passed socket the admin
/// listener; any other name, or none, is the public one.
pub const ADMIN_FD_NAME: &str = "admin";

/// The sockets systemd passed, if it passed any to this process. The
/// variables are removed so nothing started later inherits them.
pub fn take_activated_listeners() -> io::Result<Activated> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id());
    let count: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let names = std::env::var("LISTEN_FDNAMES").ok();
    clear_listen_env();
    if !for_us {
        return Ok(Activated::default());
    }
    let passed = assign_fds(count, names.as_deref());
    if passed.ignored > 0 {
        log::warn!(
            "systemd passed {count} sockets; serving on one public and one `{ADMIN_FD_NAME}` \
             at most, ignoring {}",
            passed.ignored
        );
    }
    Ok(Activated {
        public: passed.public.map(adopt).transpose()?,
        admin: passed.admin.map(adopt).transpose()?,
    })
}

/// Which passed file descriptor serves what.
#[derive(Debug, PartialEq, Eq)]
struct Passed {
    public: Option<i32>,
    admin: Option<i32>,
    ignored: usize,
}

/// Assigns the `count` descriptors from fd 3 by their names (colon
/// separated, in fd order): the first named `admin` is the admin listener,
/// the first other one the public listener. Without names (or with too few)
/// an unnamed descriptor is public.
fn assign_fds(count: i32, names: Option<&str>) -> Passed {
    let mut names = names.unwrap_or("").split(':');
    let mut passed = Passed {
        public: None,
        admin: None,
        ignored: 0,
    };
    for fd in LISTEN_FDS_START..LISTEN_FDS_START + count.max(0) {
        let slot = if names.next() == Some(ADMIN_FD_NAME) {
            &mut passed.admin
        } else {
            &mut passed.public
        };
        match slot {
            None => *slot = Some(fd),
            Some(_) => passed.ignored += 1,
        }
    }
    passed
}

/// Takes a passed descriptor as a nonblocking listener.
fn adopt(fd: i32) -> io::Result<TcpListener> {
    // SAFETY: systemd (or systemd-socket-activate) passed `fd` to this very
    // process (LISTEN_PID matched, and `fd` is within LISTEN_FDS) and nothing
    // else in fibd owns it, so the listener takes sole ownership. A
    // non-socket fd fails at local_addr below.
    #[allow(unsafe_code)]
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    listener.local_addr()?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

fn clear_listen_env() {
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: called from main before any other thread is started, so no
        // thread can read the environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::remove_var(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_is_half_the_timeout_and_only_for_our_pid() {
        assert_eq!(
            watchdog_interval(Some("2000000"), None, 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            watchdog_interval(Some("2000000"), Some("7"), 7),
            Some(Duration::from_secs(1))
        );
        assert_eq!(watchdog_interval(Some("2000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn passed_fds_are_assigned_by_name() {
        let passed = |public, admin, ignored| Passed {
            public,
            admin,
            ignored,
        };
        assert_eq!(assign_fds(0, None), passed(None, None, 0));
        assert_eq!(assign_fds(-1, None), passed(None, None, 0));
        // One unnamed socket, as before names: the public one.
        assert_eq!(assign_fds(1, None), passed(Some(3), None, 0));
        assert_eq!(assign_fds(2, None), passed(Some(3), None, 1));
        // systemd's default name is the socket unit's; only `admin` differs.
        assert_eq!(assign_fds(1, Some("fibd.socket")), passed(Some(3), None, 0));
        assert_eq!(
            assign_fds(2, Some("fibd:admin")),
            passed(Some(3), Some(4), 0)
        );
        assert_eq!(
            assign_fds(2, Some("admin:fibd")),
            passed(Some(4), Some(3), 0)
        );
        assert_eq!(assign_fds(1, Some("admin")), passed(None, Some(3), 0));
        assert_eq!(
            assign_fds(3, Some("admin:admin:x")),
            passed(Some(5), Some(3), 1)
        );
        // Fewer names than fds: the unnamed rest count as public.
        assert_eq!(assign_fds(2, Some("admin")), passed(Some(4), Some(3), 0));
    }

    #[test]
    fn notify_sends_one_datagram_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("fibd-notify-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier {
            socket: connect(path.to_str().unwrap()).ok(),
            watchdog_interval: None,
        };
        notifier.notify("READY=1\nSTATUS=index 0");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=index 0");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
