//! Whether a privileged test may run: it needs root and its tools, and it
//! fails (never skips) without them unless skipping was asked for.

use std::process::Command;

/// The tools every network-namespace test uses.
const NETNS_TOOLS: [&str; 5] = ["ip", "curl", "ping", "nft", "dig"];

/// Returns false (and says so) if privileged tests were explicitly opted
/// out of with `TOLLGATE_SKIP_PRIVILEGED=1`; panics if they cannot run:
/// not root, or a network tool missing.
pub fn privileged() -> bool {
    privileged_with(&NETNS_TOOLS)
}

/// [`privileged`], needing `tools` (commands on `PATH`) instead of the
/// network tools.
pub fn privileged_with(tools: &[&str]) -> bool {
    if std::env::var("TOLLGATE_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        eprintln!("TOLLGATE_SKIP_PRIVILEGED=1: privileged test NOT run");
        return false;
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "privileged test needs root (network namespaces, eBPF, servers). Run as root, or set \
         TOLLGATE_SKIP_PRIVILEGED=1 to skip privileged tests explicitly"
    );
    for tool in tools {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "privileged test needs `{tool}`; run ./scripts/setup.sh"
        );
    }
    true
}
