//! The clock the embedded store judges time by, injectable so window maths is tested without sleeping.
//!
//! Only the embedded store reads this clock. In Redis mode the Lua scripts read
//! Redis's `TIME`, the one clock shared by every replica: application clocks
//! drift, and a limit judged by two clocks is not one limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch: the unit every algorithm computes in,
/// matching what the scripts derive from Redis `TIME`.
pub type Micros = u64;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Micros;
}

/// Wall-clock time of this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Micros {
        // A clock set before 1970 is a broken host; judging everything at the
        // epoch keeps the limiter answering instead of panicking.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_micros() as Micros)
    }
}

/// Wall-clock time read once, then advanced by the monotonic clock: it never
/// jumps when the host's clock is stepped. In-process deadlines (deny-cache
/// entries, breaker cool-downs) use it, because a wall clock stepped back by
/// an hour would otherwise keep a key denied for an hour.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
    origin_micros: Micros,
}

impl MonotonicClock {
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
            origin_micros: SystemClock.now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Micros {
        self.origin_micros + self.origin.elapsed().as_micros() as Micros
    }
}

/// A clock that moves only when told to. Clones share one instant, so a test
/// can hand one clone to the store and advance another.
#[derive(Debug, Clone)]
pub struct FakeClock {
    now: Arc<AtomicU64>,
}

impl FakeClock {
    /// Starts at `start` microseconds since the epoch.
    pub fn starting_at(start: Micros) -> Self {
        Self {
            now: Arc::new(AtomicU64::new(start)),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_micros() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, to: Micros) {
        self.now.store(to, Ordering::SeqCst);
    }
}

impl Default for FakeClock {
    /// An arbitrary but realistic instant (2026-01-01T00:00:00Z), aligned to
    /// every window length that divides a day, which makes boundary tests readable.
    fn default() -> Self {
        Self::starting_at(1_767_225_600_000_000)
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Micros {
        self.now.load(Ordering::SeqCst)
    }
}
