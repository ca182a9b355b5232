//! Wires the daemon together: configuration, logging, store, event loop.

use std::process::ExitCode;
use std::time::SystemTime;

use fibd::committer::Committer;
use fibd::config::{self, Command, Config};
use fibd::http::date::HttpDate;
use fibd::random::RandomSource;
use fibd::routes::App;
use fibd::server::Server;
use fibd::stepper::Stepper;
use fibd::store::Store;

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
        Command::Serve(config) => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
                .init();
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&config.data_dir)?;
    let recovered = store.with_table(|table| table.read_index())??;
    let listener = std::net::TcpListener::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    listener.set_nonblocking(true)?;
    let listener = mio::net::TcpListener::from_std(listener);
    let stepper = Stepper::new(recovered, config.max_index);
    let poll = mio::Poll::new()?;
    let committer = Committer::spawn(store, Server::waker(&poll)?)?;
    log::info!(
        "fibd {} listening on {} with data in {}; recovered index {}",
        env!("CARGO_PKG_VERSION"),
        listener.local_addr()?,
        config.data_dir.display(),
        recovered
    );
    let random = RandomSource::new().map_err(|e| format!("no OS random number generator: {e}"))?;
    let app = App::new(stepper, HttpDate::new(SystemTime::now()), random);
    let server = Server::new(poll, listener, committer, app, config)?;
    let committer = server.run()?;
    for outcome in committer.shutdown() {
        if let Err(e) = outcome.result {
            log::error!("a final commit failed: {e}");
        }
    }
    log::info!("stopped cleanly");
    Ok(())
}
