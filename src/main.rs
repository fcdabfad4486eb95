//! `tollgate`: the node agent and its command-line tools. This file only
//! parses arguments and maps outcomes to exit codes; the work is in the
//! library crates and `commands/`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;

/// mimalloc rather than glibc's malloc (why: the `allocator` crate).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

fn main() -> ExitCode {
    // Freed memory goes back to the system at once, not a second later:
    // each rebuild of a large cluster's model frees tens of megabytes.
    allocator::return_freed_memory_at_once();
    // No transparent huge pages for this process (every subcommand, and
    // the short-lived `nft`/`ip` children, which inherit it): the agent's
    // heap is many small objects allocated over time, and a 2 MiB page
    // that a mimalloc arena has only partly used counts whole in RSS (at
    // 50,000 pods 136 of the agent's 241 MiB of anonymous memory were
    // huge pages; BENCHMARKS.md). What `MIMALLOC_ALLOW_THP=0` does, without
    // the environment. Best effort: a kernel without the setting keeps its
    // default.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
