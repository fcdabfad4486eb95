//! `tollgate healthz`: the DaemonSet's readiness probe.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::HealthzArgs;

const WITHIN: Duration = Duration::from_secs(2);

/// Exit 0 if the agent answers `/healthz` at `--metrics-addr` and, given a
/// pod, is that pod's agent; 1 otherwise, saying why on stderr.
pub fn run(args: &HealthzArgs) -> anyhow::Result<ExitCode> {
    let answer = match get_healthz(args) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("no agent answers at {}: {e}", args.metrics_addr);
            return Ok(ExitCode::FAILURE);
        }
    };
    if !answer.starts_with("HTTP/1.1 200") {
        eprintln!(
            "the agent at {} is not healthy: {}",
            args.metrics_addr,
            answer.lines().next().unwrap_or("")
        );
        return Ok(ExitCode::FAILURE);
    }
    if let (Some(namespace), Some(name)) = (&args.pod_namespace, &args.pod_name) {
        let own = format!("{namespace}/{name}");
        let serving = answer
            .lines()
            .find_map(|l| l.strip_prefix("pod: "))
            .unwrap_or("(none)");
        if serving != own {
            // An upgrade in progress: the previous agent still holds the
            // port, until this pod's agent takes its sockets over.
            eprintln!(
                "the agent at {} is pod {serving}'s, not {own}'s",
                args.metrics_addr
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn get_healthz(args: &HealthzArgs) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&args.metrics_addr, WITHIN)?;
    conn.set_read_timeout(Some(WITHIN))?;
    conn.set_write_timeout(Some(WITHIN))?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")?;
    let mut answer = String::new();
    conn.take(4096).read_to_string(&mut answer)?;
    Ok(answer)
}
