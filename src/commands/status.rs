//! `tollgate status`: the agent's report from its status socket.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use tollgate::status::{Report, SOCKET};

use crate::cli::{Output, StatusArgs};

pub fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let path = args.state_dir.join(SOCKET);
    let read = || -> std::io::Result<String> {
        let mut conn = UnixStream::connect(&path)?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok(text)
    };
    let report = read().map_err(|e| e.to_string()).and_then(|text| {
        serde_json::from_str::<Report>(&text).map_err(|e| format!("unreadable report: {e}"))
    });
    match report {
        Ok(report) => {
            match args.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Text => print!("{}", report.text()),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let pinned = args.pin_dir.join("maps").exists();
            match args.output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"agent": "down", "error": e, "enforcement_pinned": pinned})
                ),
                Output::Text => {
                    println!("Agent:      DOWN (no answer on {}: {e})", path.display());
                    if pinned {
                        println!(
                            "Datapath:   still pinned under {}: established connections and unexpired names keep working, DNS fails closed (`tollgate datapath status`)",
                            args.pin_dir.display()
                        );
                    } else {
                        println!(
                            "Datapath:   nothing pinned under {}: traffic is not enforced",
                            args.pin_dir.display()
                        );
                    }
                }
            }
            Ok(ExitCode::from(1))
        }
    }
}
