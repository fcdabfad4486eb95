//! # tollgate-alloc: the agent's memory allocator and its one setting
//!
//! The agent allocates with mimalloc rather than glibc's malloc: the
//! proxies' worker threads allocate what the agent's event pump frees on
//! another thread, and most allocations are small and short-lived; glibc's
//! allocator took about a tenth of the CPU at saturation (BENCHMARKS.md).
//!
//! mimalloc keeps memory it no longer uses for a while before giving it
//! back to the system (its `purge_delay`: a second in mimalloc 3), in case
//! it is asked for again. On a node agent that holds a large cluster's
//! model, each rebuild frees and allocates tens of megabytes, and the delay
//! left that much resident above what is live: at 50,000 pods 236 MiB
//! after the initial sync with the delay, 204 MiB without (BENCHMARKS.md,
//! the same evening's runs). [`return_freed_memory_at_once`] sets the
//! delay to zero. The hot paths' memory is steady, so purging at once
//! costs them next to nothing (a handful of `madvise` calls per 5 s at
//! saturation, measured on the DNS proxy).
//!
//! This crate is the only one of the agent's that calls mimalloc directly:
//! those calls are `unsafe` (C functions), and the other crates forbid
//! unsafe code.

use std::os::raw::{c_int, c_long};

/// The allocator type, for `#[global_allocator]` in the binaries.
pub use mimalloc::MiMalloc as Allocator;

/// `mi_option_purge_delay` of mimalloc's `mi_option_e` (`mimalloc.h`; the
/// same place in mimalloc 2 and 3). libmimalloc-sys names only some of the
/// options, not this one; `the_option_number_is_purge_delay` below checks
/// the number against the option's environment variable.
const PURGE_DELAY: c_int = 15;

/// Makes mimalloc give freed memory back to the system at once instead of
/// after its purge delay, unless the environment says otherwise
/// (`MIMALLOC_PURGE_DELAY` keeps precedence, for measuring; a value mimalloc
/// cannot read counts as unset). Call it first thing in `main`, before any
/// thread is started: mimalloc's option table is plain memory that its
/// other threads read when they purge.
pub fn return_freed_memory_at_once() {
    // SAFETY: `mi_option_set_default` takes an option number and a value
    // and only stores the value in mimalloc's option table (when the
    // environment did not set that option); it reads no pointer, and
    // `PURGE_DELAY` is a valid option number (checked by the tests). The
    // store is not atomic: the callers (`main`, the DNS benchmark) make
    // it before starting any thread, as documented above.
    unsafe { libmimalloc_sys::mi_option_set_default(PURGE_DELAY, 0) }
}

/// mimalloc's purge delay in milliseconds, as it will apply it.
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads one entry of mimalloc's option table by a valid
    // option number; no pointer is involved.
    unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: Allocator = Allocator;

    /// mimalloc reads its environment once, as the process starts: each
    /// case runs as a child process of this test binary, running only
    /// `test` with `TG_ALLOC_CHILD=child` and `MIMALLOC_PURGE_DELAY` as
    /// given (unset if `None`). Panics unless that one test passed.
    fn run_child(test: &str, child: &str, purge_delay: Option<&str>) {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", test])
            .env("TG_ALLOC_CHILD", child)
            .env_remove("MIMALLOC_PURGE_DELAY");
        if let Some(v) = purge_delay {
            cmd.env("MIMALLOC_PURGE_DELAY", v);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{child}: {stdout}"
        );
    }

    /// The environment variable of that option number is
    /// `MIMALLOC_PURGE_DELAY`: a child test process started with it reads
    /// it back through the number. A wrong number reads another option.
    #[test]
    fn the_option_number_is_purge_delay() {
        if std::env::var("TG_ALLOC_CHILD").as_deref() == Ok("number") {
            assert_eq!(purge_delay_ms(), 4321);
            return;
        }
        run_child(
            "tests::the_option_number_is_purge_delay",
            "number",
            Some("4321"),
        );
    }

    /// The setting takes (mimalloc's own default is a positive delay), and
    /// an explicit `MIMALLOC_PURGE_DELAY` still wins over it.
    #[test]
    fn freed_memory_goes_back_at_once_unless_the_environment_says_otherwise() {
        match std::env::var("TG_ALLOC_CHILD").as_deref() {
            Ok("default") => {
                assert!(purge_delay_ms() > 0, "mimalloc's default");
                return_freed_memory_at_once();
                assert_eq!(purge_delay_ms(), 0);
                return;
            }
            Ok("env") => {
                return_freed_memory_at_once();
                assert_eq!(purge_delay_ms(), 250);
                return;
            }
            _ => {}
        }
        let test = "tests::freed_memory_goes_back_at_once_unless_the_environment_says_otherwise";
        run_child(test, "default", None);
        run_child(test, "env", Some("250"));
    }
}
