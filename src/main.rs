//! The command line: parse it, then help, version, a health check, a
//! backup (`fibd::store::backup`), or serve (logging and the panic hook
//! first; `fibd::boot` wires the rest).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use fibd::config::{self, Command};
use fibd::store::backup::BackupConfig;

fn main() -> ExitCode {
    let command = match config::from_args(std::env::args().skip(1), |k| std::env::var(k).ok()) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("fibd: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help => {
            print!("{}", config::HELP);
            ExitCode::SUCCESS
        }
        Command::Version => {
            println!("fibd {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Healthcheck(addr) => healthcheck(addr),
        Command::BackupHelp => {
            print!("{}", config::BACKUP_HELP);
            ExitCode::SUCCESS
        }
        Command::Backup(config) => backup(&config),
        Command::Serve(config) => {
            fibd::ops::logging::init();
            // A panic ends the process (release builds abort): acknowledged
            // steps are already on disk, and systemd restarts fibd. Say so at
            // error priority so journalctl -p err shows it.
            let default_hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let location = info.location().map(ToString::to_string).unwrap_or_default();
                let message = info.payload_as_str().unwrap_or("(no message)");
                log::error!(
                    "panic at {location}: {message}; exiting so the service manager restarts fibd"
                );
                default_hook(info);
            }));
            match fibd::boot::serve(*config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Exit 0 with the copy made and described; 2 if refused, 1 if it failed
/// (as `fibd backup --help` says).
fn backup(config: &BackupConfig) -> ExitCode {
    match fibd::store::backup::run(config) {
        Ok(backup) => {
            println!(
                "fibd backup: {} copied to {}: index {}, {} primes task record(s), {} log \
                 frame(s) replayed; {} bytes{}",
                config.data_dir.display(),
                config.to.display(),
                backup.index,
                backup.records,
                backup.replayed,
                backup.bytes,
                if config.compact { ", compacted" } else { "" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fibd backup: {e}");
            ExitCode::from(if e.is_refusal() { 2 } else { 1 })
        }
    }
}

/// Exit 0 if the daemon at `addr` answers GET /healthz with 200 within 2 s.
fn healthcheck(addr: SocketAddr) -> ExitCode {
    const TIMEOUT: Duration = Duration::from_secs(2);
    let attempt = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: fibd\r\nConnection: close\r\n\r\n")?;
        let mut status_line = [0u8; 12];
        stream.read_exact(&mut status_line)?;
        Ok(&status_line == b"HTTP/1.1 200")
    };
    match attempt() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fibd healthcheck: {addr} answered /healthz with an error");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fibd healthcheck: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}
