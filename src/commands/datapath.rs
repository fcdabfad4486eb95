//! `tollgate datapath uninstall|status`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use egress_bpf::redirect::{self, RedirectConfig};
use egress_bpf::{Datapath, KernelDatapath, Monitor};

pub fn uninstall(pin_dir: &Path) -> anyhow::Result<ExitCode> {
    let removed =
        egress_bpf::kernel::uninstall(pin_dir).context("removing pinned programs and maps")?;
    redirect::uninstall(&RedirectConfig::default()).context("removing the proxy redirect")?;
    let links = removed
        .iter()
        .filter(|p| p.to_string_lossy().contains("/links/"))
        .count();
    println!(
        "removed {links} program link(s) and {} map(s) under {}; traffic is no longer enforced",
        removed.len() - links,
        pin_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn status(pin_dir: &Path) -> anyhow::Result<ExitCode> {
    if !pin_dir.join("maps").exists() {
        println!("no datapath pinned under {}", pin_dir.display());
        return Ok(ExitCode::from(1));
    }
    // Looking must not change what a running agent uses.
    let dp = KernelDatapath::open_keeping_pins(pin_dir).context("opening the pinned datapath")?;
    let state = dp.current()?;
    println!(
        "{} endpoint(s), {} ipcache, {} allow, {} deny, {} FQDN entries",
        state.endpoints.len(),
        state.ipcache.len(),
        state.allow.len(),
        state.deny.len(),
        state.fqdn.len()
    );
    for (name, value) in dp.counters()?.0 {
        println!("{name:>20} {value}");
    }
    Ok(ExitCode::SUCCESS)
}
