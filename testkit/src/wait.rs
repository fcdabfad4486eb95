//! Bounded waits on a condition, instead of sleeps that guess how long
//! something takes (too short on a loaded machine, too long everywhere else).

use std::time::{Duration, Instant};

/// How often a condition is checked.
const POLL: Duration = Duration::from_millis(100);

/// Polls `cond` until it holds (true) or `timeout` passes (false). It is
/// checked at least once, and once more at the deadline.
pub fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(POLL.min(deadline - now));
    }
}

/// Polls `cond` until it holds; panics naming `what` if `timeout` passes
/// first.
pub fn eventually(timeout: Duration, what: &str, cond: impl FnMut() -> bool) {
    assert!(
        until(timeout, cond),
        "timed out after {timeout:?} waiting for {what}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_as_soon_as_the_condition_holds() {
        let mut n = 0;
        let start = Instant::now();
        assert!(until(Duration::from_secs(10), || {
            n += 1;
            n == 3
        }));
        assert_eq!(n, 3);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn until_gives_up_at_the_deadline_after_a_last_check() {
        let mut n = 0;
        assert!(!until(Duration::from_millis(250), || {
            n += 1;
            false
        }));
        assert!(
            n >= 3,
            "checked first, while waiting and at the deadline: {n}"
        );
    }

    #[test]
    #[should_panic(expected = "waiting for the moon")]
    fn eventually_names_what_it_waited_for() {
        eventually(Duration::from_millis(10), "the moon", || false);
    }
}
