//! Helper processes a test starts (servers, the agent, etcd, kube-apiserver),
//! each owned by a [`Helper`] that stops it whatever happens to the test.
//!
//! Why each piece:
//! - **Its own process group** (`process_group(0)`): a helper is often a
//!   wrapper (`ip netns exec`, `nsenter`, `sh -c`) or forks workers (nsd,
//!   a shell's `sleep`); signalling the group reaches all of them, not only
//!   the PID the test knows.
//! - **SIGTERM, then SIGKILL after a bounded wait**: a clean stop where the
//!   helper offers one (the agent saves its cache), a stop in any case
//!   (kube-apiserver ignores SIGTERM once its etcd is gone).
//! - **Reaped**, so no zombie is left, and only after the group was killed:
//!   until then the leader's PID, which is the group's ID, cannot be reused,
//!   so the signal cannot reach a stranger.
//! - **A parent-death signal** (`PR_SET_PDEATHSIG` = SIGKILL): when the test
//!   binary itself is killed (SIGKILL, a CI timeout), no `Drop` runs; the
//!   kernel kills the helper instead. The signal fires when the *thread*
//!   that spawned the helper exits, so spawn a helper from the thread that
//!   owns it (the test's own thread), never from a short-lived one.
//!
//! Not covered: a process that leaves the group (`setsid`, a server that
//! daemonizes). Run servers in the foreground (`nsd -d`, `unbound -d`,
//! `dnsmasq -k`); `scripts/check-leftovers.sh` catches the rest.

use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a helper gets to exit after SIGTERM before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// One helper process and its process group, stopped on drop.
pub struct Helper {
    name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
    grace: Duration,
}

impl Helper {
    /// Starts `cmd` (stdin from /dev/null) as the leader of a new process
    /// group that is killed if the spawning thread dies. Panics, naming
    /// `name`, if it cannot be started.
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> Helper {
        let name = name.into();
        // SAFETY: getpid has no preconditions and cannot fail.
        let test = unsafe { libc::getpid() };
        cmd.stdin(Stdio::null()).process_group(0);
        // SAFETY: the closure runs in the forked child before exec; it only
        // makes async-signal-safe system calls and does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                let sig = libc::SIGKILL as libc::c_ulong;
                if libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Had the test died between fork and prctl, no signal would
                // ever come: do not start an orphan.
                if libc::getppid() != test {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Helper {
            name,
            child: Some(child),
            status: None,
            grace: DEFAULT_GRACE,
        }
    }

    /// How long it gets after SIGTERM before SIGKILL (default
    /// [`DEFAULT_GRACE`]).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Its PID (also its process group's ID).
    pub fn pid(&self) -> u32 {
        match &self.child {
            Some(c) => c.id(),
            None => 0,
        }
    }

    /// Its standard output, if it was piped (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// Whether it is still running (it is not reaped by asking).
    pub fn is_running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| !exited(c.id()))
    }

    /// SIGTERM to its group; SIGKILL to whatever is left of the group when
    /// the leader has exited or the grace period is over; reaped. Stopping
    /// a stopped helper returns the same status.
    pub fn stop(&mut self) -> ExitStatus {
        self.end(Some(libc::SIGTERM))
    }

    /// SIGKILL to its group (no chance to clean up), reaped.
    pub fn kill(&mut self) -> ExitStatus {
        self.end(None)
    }

    fn end(&mut self, first: Option<libc::c_int>) -> ExitStatus {
        let Some(mut child) = self.child.take() else {
            return self.status.expect("a stopped helper has a status");
        };
        let pid = child.id();
        let mut ignored_term = false;
        if let Some(sig) = first {
            signal_group(pid, sig);
            let deadline = Instant::now() + self.grace;
            while !exited(pid) {
                if Instant::now() >= deadline {
                    ignored_term = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // The leader is not reaped yet: its PID still names this group.
        signal_group(pid, libc::SIGKILL);
        let status = child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {} (pid {pid}): {e}", self.name));
        if ignored_term {
            eprintln!(
                "testkit: {} (pid {pid}) was still running {:?} after SIGTERM; killed",
                self.name, self.grace
            );
        }
        self.status = Some(status);
        status
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

impl std::fmt::Debug for Helper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Helper")
            .field("name", &self.name)
            .field("pid", &self.pid())
            .field("status", &self.status)
            .finish()
    }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions; a negative PID names
    // the process group this Helper created and has not reaped the leader
    // of, so it is ours. ESRCH (the group is already empty) is fine.
    unsafe { libc::kill(-(pgid as libc::pid_t), sig) };
}

/// Whether child `pid` has exited, without reaping it.
fn exited(pid: u32) -> bool {
    // SAFETY: an all-zero siginfo_t is valid; waitid writes into our own
    // value. WNOWAIT leaves the child waitable (std's `wait` reaps it).
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        // rc != 0: not our child any more (reaped): gone.
        rc != 0 || info.si_pid() != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: u32) -> bool {
        // /proc/PID exists for zombies too; its state letter tells them apart.
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| !r.starts_with(" Z")))
    }

    fn shell(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn stop_reaches_the_whole_group_not_only_the_leader() {
        let dir = std::env::temp_dir().join(format!("testkit-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("grandchild");
        // The shell forks a sleep (a grandchild of the test) and waits.
        let mut h = Helper::spawn(
            "sh with a sleep",
            shell(&format!(
                "sleep 600 & echo $! > {}; wait",
                pidfile.display()
            )),
        );
        assert!(crate::wait::until(Duration::from_secs(5), || {
            std::fs::read_to_string(&pidfile).is_ok_and(|s| s.ends_with('\n'))
        }));
        let grandchild: u32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(h.is_running() && alive(grandchild));
        h.stop();
        assert!(!h.is_running());
        assert!(
            crate::wait::until(Duration::from_secs(5), || !alive(grandchild)),
            "the shell's sleep outlived the helper"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_helper_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let mut h = Helper::spawn("stubborn", shell("trap '' TERM; while :; do sleep 1; done"))
            .grace(Duration::from_millis(300));
        let pid = h.pid();
        let ignores_term = || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
        };
        assert!(crate::wait::until(Duration::from_secs(5), ignores_term));
        let start = Instant::now();
        let status = h.stop();
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(!status.success());
        assert!(!alive(pid));
        assert_eq!(h.stop(), status, "stopping twice is harmless");
    }

    #[test]
    fn drop_stops_it_when_the_test_panics() {
        let pid = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = pid.clone();
        let result = std::thread::spawn(move || {
            let h = Helper::spawn("sleeper", shell("exec sleep 600"));
            seen.store(h.pid(), std::sync::atomic::Ordering::SeqCst);
            panic!("the test fails");
        })
        .join();
        assert!(result.is_err());
        let pid = pid.load(std::sync::atomic::Ordering::SeqCst);
        assert!(pid != 0 && !alive(pid), "pid {pid} outlived the panic");
    }

    #[test]
    fn the_kernel_kills_it_when_the_spawning_thread_dies_without_drop() {
        let pid = std::thread::spawn(|| {
            let h = Helper::spawn("orphan", shell("exec sleep 600"));
            let pid = h.pid();
            std::mem::forget(h); // as if the test binary were killed: no Drop
            pid
        })
        .join()
        .unwrap();
        assert!(
            crate::wait::until(Duration::from_secs(5), || !alive(pid)),
            "no parent-death signal for pid {pid}"
        );
        // It was our child: reap it.
        // SAFETY: waitpid on a PID we spawned, into a local status.
        unsafe {
            let mut status = 0;
            libc::waitpid(pid as libc::pid_t, &mut status, 0);
        }
    }
}
