//! `tollgate policy suggest`: reads event lines (files, stdin or the
//! agent's socket for a while) and prints the policies
//! [`policy::suggest::suggest`] makes of them.

use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use tollgate::suggest::{observation, read_events, Events, Window};

pub struct Request<'a> {
    pub events: &'a [PathBuf],
    /// The agent's state dir and how long to follow its events.
    pub agent: Option<(PathBuf, Duration)>,
    pub since: Option<&'a str>,
    pub until: Option<&'a str>,
    pub output: Option<&'a Path>,
}

fn time(flag: &str, text: Option<&str>) -> anyhow::Result<Option<jiff::Timestamp>> {
    text.map(|t| {
        t.parse::<jiff::Timestamp>().map_err(|e| {
            anyhow!("{flag} {t:?}: expected an RFC 3339 time such as 2026-12-01T10:00:00Z ({e})")
        })
    })
    .transpose()
}

pub fn run(req: &Request) -> anyhow::Result<ExitCode> {
    let window = Window {
        since: time("--since", req.since)?,
        until: time("--until", req.until)?,
    };
    let mut events = Events::default();
    for path in req.events {
        if path.as_os_str() == "-" {
            read_events(std::io::stdin().lock(), "stdin", window, &mut events)?;
            continue;
        }
        let name = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("reading {name}"))?;
        read_events(BufReader::new(file), &name, window, &mut events)?;
    }
    if let Some((state_dir, duration)) = &req.agent {
        follow_agent(state_dir, *duration, window, &mut events)?;
    }
    let observations: Vec<_> = events.lines.iter().filter_map(observation).collect();
    let suggestion = policy::suggest::suggest(&observations);
    let mut yaml = format!(
        "# Suggested by `tollgate policy suggest` from {} events ({} used).\n\
         # Review before enforcing: `tollgate policy check`, then apply.\n",
        events.lines.len(),
        observations.len()
    );
    yaml.push_str(&suggestion.yaml());
    match req.output {
        Some(path) => {
            std::fs::write(path, &yaml).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .write_all(yaml.as_bytes())
            .context("writing to stdout")?,
    }
    eprintln!(
        "{} polic{} for {} event{} ({} counted: what passed; denied, refused and host-to-pod traffic is never suggested)",
        suggestion.policies.len(),
        if suggestion.policies.len() == 1 { "y" } else { "ies" },
        events.lines.len(),
        if events.lines.len() == 1 { "" } else { "s" },
        observations.len()
    );
    if events.outside > 0 {
        eprintln!(
            "{} event(s) outside --since/--until left out",
            events.outside
        );
    }
    if events.lost > 0 {
        eprintln!(
            "warning: the agent lost {} event(s) while they were recorded: the suggestion may miss traffic",
            events.lost
        );
    }
    for s in &suggestion.skipped {
        eprintln!("left out: {s}");
    }
    if suggestion.policies.is_empty() {
        eprintln!("warning: no traffic of a known pod was seen: nothing to suggest");
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads the agent's events socket until `duration` has passed.
fn follow_agent(
    state_dir: &Path,
    duration: Duration,
    window: Window,
    events: &mut Events,
) -> anyhow::Result<()> {
    let path = state_dir.join("events.sock");
    let stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "connecting to the agent's events at {} (is `tollgate agent` running?)",
            path.display()
        )
    })?;
    let deadline = Instant::now() + duration;
    // The socket's lines, until the deadline: a reader thread, so a quiet
    // agent does not keep us past it.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = stream.try_clone().context("the events socket")?;
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut text = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(line) => {
                text.push_str(&line);
                text.push('\n');
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    read_events(
        text.as_bytes(),
        &format!("the agent's events ({})", path.display()),
        window,
        events,
    )
}
