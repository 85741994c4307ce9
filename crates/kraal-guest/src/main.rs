//! `kraal-guest`: the agent that runs inside every sandbox (container init in gVisor, PID 1
//! in microVMs). It serves processes, PTYs and files to the daemon over one authenticated,
//! multiplexed connection and keeps running processes alive when the daemon goes away.

mod config;
mod files;
mod procs;
mod pty;
mod server;
mod sessions;

use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("kraal-guest {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let config = match config::Config::from_args(&args[1..]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kraal-guest: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kraal-guest: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        let guest = Arc::new(server::Guest::new(config));
        guest.run().await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kraal-guest: {e}");
            ExitCode::FAILURE
        }
    }
}
