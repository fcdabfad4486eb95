//! # tollgate-testkit: what Tollgate's test suites stand on
//!
//! A development-only crate (`publish = false`, used only as a
//! dev-dependency) holding the helpers the privileged suites share: network
//! namespaces wired like a node and its pods, the processes a scenario needs
//! (nsd, HTTP servers, the `tollgate agent` binary, etcd and kube-apiserver),
//! and bounded waits on the condition a test needs.
//!
//! ## What this crate must never do
//! - Leave anything behind. Every process, namespace, pin directory and
//!   file it creates belongs to a guard whose `Drop` removes it, and `Drop`
//!   runs when a test panics too. Helper processes are tracked by PID and
//!   process group, stopped with SIGTERM then SIGKILL after a bounded wait,
//!   reaped, and die with the test binary if it is killed
//!   ([`process::Helper`]). `scripts/check-leftovers.sh` checks it in CI.
//! - Sleep for a condition it can poll: [`eventually`] waits for the
//!   condition itself, with a bound and a message naming it.
//! - Skip a privileged test silently: [`privileged()`] fails without root
//!   unless `TOLLGATE_SKIP_PRIVILEGED=1` opts out explicitly.
//! - Depend on the datapath crate (`tollgate-egress-bpf` uses this crate
//!   for its own tests): a sandbox's pin directory is plain bpffs files to
//!   it, removed like any directory.
//!
//! It needs `unsafe` for what the standard library does not wrap (`setns`,
//! `prctl`, `kill` of a process group, `waitid` without reaping); each use
//! says why it is sound.
//!
//! ## Layout
//! - [`mod@privileged`]: may this privileged test run here (root, tools)?
//! - [`wait`]: [`eventually`] and [`wait::until`], bounded polls.
//! - [`process`]: [`Helper`], one supervised helper process (and its group).
//! - [`netns`]: [`NetnsGuard`], a thread inside a named network namespace.
//! - [`sandbox`]: [`Sandbox`], a node namespace, pods on veths, an "ext"
//!   world, and servers and streams inside them.
//! - [`cluster`]: [`Cluster`], a sandbox with nsd, HTTP sites and the agent
//!   binary in local mode, driven like a user would.
//! - [`apiserver`]: [`ApiServer`], a real etcd + kube-apiserver and `kubectl`.

pub mod apiserver;
pub mod cluster;
pub mod frames;
pub mod netns;
pub mod privileged;
pub mod process;
pub mod resolver;
pub mod sandbox;
pub mod wait;

use std::path::{Path, PathBuf};

pub use apiserver::ApiServer;
pub use cluster::Cluster;
pub use netns::NetnsGuard;
pub use privileged::{privileged, privileged_with};
pub use process::Helper;
pub use sandbox::{url, Pod, Sandbox, StreamStats, EXT_V4, EXT_V6};
pub use wait::eventually;

/// A path in the repository (this crate lives at its top level).
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ sits in the repository")
        .join(rel)
}

/// A file under the repository's `testdata/`.
pub fn testdata(rel: &str) -> PathBuf {
    repo("testdata").join(rel)
}
