//! Time as the datapath sees it: nanoseconds on CLOCK_MONOTONIC, the clock of
//! `bpf_ktime_get_ns()`. This crate never reads a clock; callers pass `now`.

use serde::{Deserialize, Serialize};

/// A point on the monotonic clock, in nanoseconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Time(pub u64);

pub const NANOS_PER_SEC: u64 = 1_000_000_000;

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_secs(secs: u64) -> Self {
        Time(secs.saturating_mul(NANOS_PER_SEC))
    }

    pub fn from_millis(ms: u64) -> Self {
        Time(ms.saturating_mul(1_000_000))
    }

    /// `self + secs`, saturating (a huge TTL must not wrap into the past).
    pub fn plus_secs(self, secs: u64) -> Self {
        Time(self.0.saturating_add(secs.saturating_mul(NANOS_PER_SEC)))
    }

    pub fn plus(self, other: Time) -> Self {
        Time(self.0.saturating_add(other.0))
    }

    /// Rounded up to the next multiple of `step` (itself if already one).
    pub fn round_up(self, step: Time) -> Self {
        match self.0 % step.0.max(1) {
            0 => self,
            r => Time(self.0.saturating_add(step.0 - r)),
        }
    }
}
