//! Real network partitions on loopback, without namespaces: a process run
//! under a uid of its own (`setpriv`) has its packets to chosen ports
//! dropped by an iptables `owner` rule, so its connections there hang as
//! across a cut cable (no reset, no refusal). Each `Partition` keeps its
//! rules in a chain of its own, jumped to from OUTPUT, and removes both
//! when dropped, a failing test included. Needs iptables and root.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A uid for a process a test will cut off; unique within this run of the
/// test binary and unlikely to be anyone's (no such user needs to exist).
pub fn test_uid() -> u32 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) as u32;
    40_000 + (std::process::id() % 1000) * 16 + n % 16
}

fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .args(["-w", "5"])
        .args(args)
        .output()
        .map_err(|e| format!("run iptables (Debian: apt-get install iptables): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub struct Partition {
    chain: String,
}

impl Partition {
    /// An empty partition: nothing is cut yet.
    pub fn new() -> Partition {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let chain = format!("FIBD-T{}-{n}", std::process::id());
        iptables(&["-N", &chain]).expect("an iptables chain for the test (root?)");
        let partition = Partition { chain };
        iptables(&["-I", "OUTPUT", "-j", &partition.chain]).expect("jump to the test's chain");
        partition
    }

    /// Drops every TCP packet a process of `uid` sends to `port` on
    /// loopback, from now until [`Partition::heal`].
    pub fn cut(&self, uid: u32, port: u16) {
        self.drop_packets(uid, "--dport", port);
    }

    /// Drops every TCP packet a process of `uid` sends from its own `port`
    /// on loopback: the answers of a listener on that port.
    pub fn cut_from(&self, uid: u32, port: u16) {
        self.drop_packets(uid, "--sport", port);
    }

    /// One DROP rule: packets of `uid` on loopback whose `side` port
    /// (`--dport` or `--sport`) is `port`.
    fn drop_packets(&self, uid: u32, side: &str, port: u16) {
        let (uid, port) = (uid.to_string(), port.to_string());
        iptables(&[
            "-A",
            &self.chain,
            "-o",
            "lo",
            "-p",
            "tcp",
            "-m",
            "owner",
            "--uid-owner",
            &uid,
            side,
            &port,
            "-j",
            "DROP",
        ])
        .expect("add the cut");
    }

    /// Every cut of this partition is mended at once.
    pub fn heal(&self) {
        iptables(&["-F", &self.chain]).expect("flush the test's chain");
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = iptables(&["-D", "OUTPUT", "-j", &self.chain]);
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
