//! A thread inside a named network namespace (`/run/netns/NAME`, as `ip
//! netns add` makes them), back in its own when the guard drops.

use std::fs::File;
use std::os::fd::AsRawFd;

/// Moves the current thread into a named network namespace until dropped.
/// Threads spawned meanwhile start in that namespace too (tokio runtimes
/// built inside one listen there).
pub struct NetnsGuard {
    original: File,
}

impl NetnsGuard {
    /// Enters `/run/netns/{name}`; panics if it cannot.
    pub fn enter(name: &str) -> Self {
        let original = File::open("/proc/thread-self/ns/net").expect("current netns");
        let target = File::open(format!("/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("netns {name}: {e}"));
        // SAFETY: setns on valid namespace fds we hold open; it affects only
        // this thread.
        let rc = unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            rc,
            0,
            "setns into {name}: {}",
            std::io::Error::last_os_error()
        );
        NetnsGuard { original }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: as above, back into the namespace we came from.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}
