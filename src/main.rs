//! `tollgate`: the node agent and its command-line tools. This file only
//! parses arguments and maps outcomes to exit codes; the work is in the
//! library crates and `commands/`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;

/// mimalloc rather than glibc's malloc: the proxies' worker threads
/// allocate what the agent's event pump frees on another thread, and most
/// allocations are small and short-lived; glibc's allocator took about a
/// tenth of the CPU at saturation (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
