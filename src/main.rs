//! `tollgate`: the node agent and its command-line tools. This file only
//! parses arguments and maps outcomes to exit codes; the work is in the
//! library crates and `commands/`.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

mod cli;
mod commands;

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
