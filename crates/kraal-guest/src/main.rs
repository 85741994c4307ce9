//! `kraal-guest`: the agent that runs inside every sandbox (container init in gVisor, PID 1
//! in microVMs). It serves processes, PTYs and files to the daemon over one authenticated,
//! multiplexed connection and keeps running processes alive when the daemon goes away.

mod config;
mod files;
mod ports;
mod procs;
mod pty;
mod server;
mod sessions;
mod vminit;

use std::process::ExitCode;
use std::sync::Arc;

/// musl's allocator maps and unmaps pages for ordinary allocations, and inside gVisor each
/// `mmap`/`munmap` costs hundreds of microseconds (measured with `runsc --strace`: 0.4 ms
/// of them per streamed session event); mimalloc keeps and reuses its memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("kraal-guest {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // Started by the kernel as /init of the microVM initramfs: boot the machine first.
    let vm = args.len() == 1 && std::process::id() == 1;
    let config = if vm {
        match vminit::boot() {
            Ok(mut c) => {
                c.vm = true;
                c
            }
            Err(e) => {
                eprintln!("kraal-guest: boot failed: {e}");
                std::thread::sleep(std::time::Duration::from_secs(1));
                vminit::power_off();
            }
        }
    } else {
        match config::Config::from_args(&args[1..]) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kraal-guest: {e}");
                return ExitCode::from(2);
            }
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
            if vm {
                // PID 1 must not exit (the kernel would panic): end the VM instead.
                vminit::power_off();
            }
            ExitCode::FAILURE
        }
    }
}
