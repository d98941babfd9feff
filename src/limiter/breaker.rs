//! A circuit breaker between the limiter and the shared store: after repeated failures, stop waiting on the store for a while.
//!
//! Why it sits here and not inside the Redis store: what the breaker guards is
//! the *request path's* dependence on a shared store, and what to do while it
//! is open (answer by the failure mode) is a limiter decision. The limiter
//! asks [`CircuitBreaker::try_acquire`] before each shared-store call and
//! reports the result on the [`Permit`]; the store itself stays one script
//! call per decision and knows nothing of breakers.
//!
//! States:
//! - **closed**: every check goes to the store. `failures` failures in a row,
//!   or a `failure_ratio` of failures among at least `min_calls` calls within
//!   `ratio_window`, open it. Failures are counted as *events*: a call that
//!   was already in flight when a failure was counted and then fails too is
//!   part of the same event and does not count again. A multiplexed
//!   connection carries every check in flight, so one stall of the store
//!   (or of this replica's thread) of a little over `command_timeout` times
//!   them all out together; counted one by one, a single 60 ms hiccup at
//!   5,000 checks/s would make hundreds of "consecutive" failures and open
//!   the breaker for a whole cool-down. Counted as events, the breaker opens
//!   after `failures` failures each seen after the one before: a store that
//!   stays down is still cut off within a few timeouts.
//! - **open**: no check goes to the store (each returns at once and is
//!   answered by its failure mode) until `cool_down` has passed.
//! - **half-open**: up to `probes` checks go to the store as probes; `probes`
//!   successes close the breaker, one failure opens it again for another
//!   cool-down. Other checks meanwhile are answered as if it were open.
//!
//! Cost on the request path: a closed breaker is one atomic load to admit a
//! check, one counter increment per call, and one load to record a success.
//! The state, the probes in flight, the probe successes and a transition
//! epoch share one atomic word, so every transition is a single
//! compare-and-swap: exactly one caller wins it, and that caller logs and
//! counts it. Each permit remembers the epoch it was given in, and a result
//! from an earlier epoch (a slow call that outlived an outage, a probe of an
//! earlier half-open spell) is ignored.
//!
//! Time comes from the injected [`Clock`], so cool-downs are tested by
//! advancing a fake clock rather than by sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::clock::{Clock, Micros};
use super::counters::{FailureCounters, bump};

/// Largest `probes` setting: the probe counts live in 16-bit fields.
pub const MAX_PROBES: u32 = 1000;

/// When the breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerSettings {
    /// Consecutive failed calls that open the breaker (at least 1).
    pub failures: u32,
    /// Share of failed calls, in (0, 1], that opens the breaker...
    pub failure_ratio: f64,
    /// ...once at least this many calls were made within...
    pub min_calls: u64,
    /// ...this window, which starts at a failure.
    pub ratio_window: Duration,
    /// How long an open breaker keeps every check away from the store.
    pub cool_down: Duration,
    /// Successful probes that close a half-open breaker (1 to [`MAX_PROBES`]).
    pub probes: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            ratio_window: Duration::from_secs(10),
            cool_down: Duration::from_secs(1),
            probes: 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// The breaker's whole state in one `u64`: 2 bits of state, 16 bits of probes
/// in flight, 16 bits of probe successes, 30 bits of epoch (wrapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: BreakerState,
    in_flight: u64,
    successes: u64,
    epoch: u64,
}

const FIELD: u64 = 0xFFFF;

impl Word {
    fn unpack(word: u64) -> Self {
        let state = match word & 0b11 {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        };
        Self {
            state,
            in_flight: (word >> 2) & FIELD,
            successes: (word >> 18) & FIELD,
            epoch: word >> 34,
        }
    }

    fn pack(self) -> u64 {
        let state = match self.state {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        };
        state
            | (self.in_flight & FIELD) << 2
            | (self.successes & FIELD) << 18
            | (self.epoch & ((1 << 30) - 1)) << 34
    }

    /// The next state, in a new epoch, with no probes.
    fn moved_to(self, state: BreakerState) -> Self {
        Self {
            state,
            in_flight: 0,
            successes: 0,
            epoch: (self.epoch + 1) & ((1 << 30) - 1),
        }
    }
}

/// Guards calls to the shared store; see the module documentation.
pub struct CircuitBreaker {
    settings: BreakerSettings,
    clock: Arc<dyn Clock>,
    counters: Arc<FailureCounters>,
    word: AtomicU64,
    /// While open: the instant (clock micros) from which probes may start.
    open_until: AtomicU64,
    consecutive_failures: AtomicU32,
    /// When the last failure that counted was recorded (clock micros): a
    /// call that started before it and fails belongs to the same event.
    last_counted_failure: AtomicU64,
    /// Failures that counted, since start; the failure ratio uses these.
    counted_failures: AtomicU64,
    /// Start of the current failure-ratio window (0: none yet), and the
    /// cumulative call and failure counts when it started.
    window_start: AtomicU64,
    window_calls: AtomicU64,
    window_failures: AtomicU64,
}

/// Leave to make one call to the store. Report its result with
/// [`Permit::succeeded`] or [`Permit::failed`]; a permit dropped without a
/// result (the request was cancelled) frees its probe slot and counts as neither.
#[must_use = "report the call's result on the permit"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// The epoch of the state the permit was given in: results that arrive
    /// after the breaker has moved on belong to no current run or probe.
    epoch: u64,
    /// Whether this call is a half-open probe.
    probe: bool,
    /// When the permit was given (clock micros).
    started: Micros,
    reported: bool,
}

impl CircuitBreaker {
    pub fn new(
        settings: BreakerSettings,
        clock: Arc<dyn Clock>,
        counters: Arc<FailureCounters>,
    ) -> Self {
        Self {
            settings,
            clock,
            counters,
            word: AtomicU64::new(
                Word {
                    state: BreakerState::Closed,
                    in_flight: 0,
                    successes: 0,
                    epoch: 0,
                }
                .pack(),
            ),
            open_until: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            last_counted_failure: AtomicU64::new(0),
            counted_failures: AtomicU64::new(0),
            window_start: AtomicU64::new(0),
            window_calls: AtomicU64::new(0),
            window_failures: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        Word::unpack(self.word.load(Ordering::Acquire)).state
    }

    /// While open: how long until probes may start.
    pub fn cool_down_remaining(&self) -> Option<Duration> {
        (self.state() == BreakerState::Open).then(|| {
            let until = self.open_until.load(Ordering::Acquire);
            Duration::from_micros(until.saturating_sub(self.clock.now()))
        })
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    /// A permit to call the store, or `None` when the call must not be made
    /// (open, or half-open with every probe slot taken). Never waits.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        let word = Word::unpack(self.word.load(Ordering::Acquire));
        let (epoch, probe) = match word.state {
            BreakerState::Closed => (word.epoch, false),
            BreakerState::Open | BreakerState::HalfOpen => {
                let taken = self.update(|word| match word.state {
                    BreakerState::Closed => None,
                    // The cool-down is over: this call is the first probe.
                    BreakerState::Open => (self.clock.now()
                        >= self.open_until.load(Ordering::Acquire))
                    .then(|| Word {
                        in_flight: 1,
                        ..word.moved_to(BreakerState::HalfOpen)
                    }),
                    BreakerState::HalfOpen => (word.in_flight + word.successes
                        < u64::from(self.settings.probes))
                    .then_some(Word {
                        in_flight: word.in_flight + 1,
                        ..word
                    }),
                });
                match taken {
                    Ok((before, after)) => {
                        if before.state == BreakerState::Open {
                            bump(&self.counters.breaker_half_opened);
                            tracing::info!(
                                probes = self.settings.probes,
                                "circuit breaker half-open: probing the shared store"
                            );
                        }
                        (after.epoch, true)
                    }
                    // Closed meanwhile: an ordinary call.
                    Err(now) if now.state == BreakerState::Closed => (now.epoch, false),
                    Err(_) => {
                        bump(&self.counters.short_circuited);
                        return None;
                    }
                }
            }
        };
        bump(&self.counters.store_calls);
        Some(Permit {
            breaker: self,
            epoch,
            probe,
            started: self.clock.now(),
            reported: false,
        })
    }

    /// Applies `change` to the state word atomically (retrying on races, as
    /// `fetch_update` does); `Ok((before, after))`, or `Err(current)` when
    /// `change` declined.
    fn update(&self, mut change: impl FnMut(Word) -> Option<Word>) -> Result<(Word, Word), Word> {
        let mut after = None;
        self.word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |packed| {
                after = change(Word::unpack(packed));
                after.map(Word::pack)
            })
            .map_err(Word::unpack)
            .and_then(|before| {
                // `after` holds what the accepted attempt returned.
                let before = Word::unpack(before);
                after.map(|after| (before, after)).ok_or(before)
            })
    }

    fn record_success(&self, epoch: u64, probe: bool) -> Option<BreakerState> {
        if !probe {
            // Loads first: a healthy store costs no writes to shared cache lines.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return None;
        }
        let (_, after) = self
            .update(|word| {
                (word.state == BreakerState::HalfOpen && word.epoch == epoch).then(|| {
                    if word.successes + 1 >= u64::from(self.settings.probes) {
                        word.moved_to(BreakerState::Closed)
                    } else {
                        Word {
                            in_flight: word.in_flight.saturating_sub(1),
                            successes: word.successes + 1,
                            ..word
                        }
                    }
                })
            })
            .ok()?;
        if after.state != BreakerState::Closed {
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.window_start.store(0, Ordering::Relaxed);
        bump(&self.counters.breaker_closed);
        tracing::info!(
            probes = self.settings.probes,
            "circuit breaker closed: the shared store answers again"
        );
        Some(BreakerState::Closed)
    }

    fn record_failure(&self, epoch: u64, probe: bool, started: Micros) -> Option<BreakerState> {
        bump(&self.counters.store_failures);
        let now = self.clock.now();
        let current = self.word.load(Ordering::Acquire);
        let word = Word::unpack(current);
        if word.epoch != epoch {
            // A late result: the breaker has moved on since this call began
            // (opened, or even closed again after an outage).
            return None;
        }
        match word.state {
            BreakerState::HalfOpen if probe => self.open(current, now, "a probe failed"),
            BreakerState::Closed if !probe => {
                if started < self.last_counted_failure.load(Ordering::Acquire) {
                    // In flight when a failure was counted: the same event.
                    return None;
                }
                self.last_counted_failure.fetch_max(now, Ordering::AcqRel);
                self.counted_failures.fetch_add(1, Ordering::Relaxed);
                let run = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if run >= self.settings.failures {
                    self.open(current, now, "consecutive failures")
                } else if self.ratio_exceeded(now) {
                    self.open(current, now, "failure ratio")
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Whether the failures since the current ratio window began reach the
    /// ratio. Runs on failures only, so successes never touch the window.
    /// Under concurrent failures a window may start a call early or late:
    /// the ratio is a trend detector, not a contract.
    fn ratio_exceeded(&self, now: Micros) -> bool {
        let calls = self.counters.store_calls();
        let failures = self.counted_failures.load(Ordering::Relaxed);
        let start = self.window_start.load(Ordering::Acquire);
        let window = self.settings.ratio_window.as_micros() as u64;
        if start == 0 || now.saturating_sub(start) >= window {
            // A new window, starting with this failed call.
            if self
                .window_start
                .compare_exchange(start, now.max(1), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.window_calls
                    .store(calls.saturating_sub(1), Ordering::Release);
                self.window_failures
                    .store(failures.saturating_sub(1), Ordering::Release);
            }
        }
        let calls = calls.saturating_sub(self.window_calls.load(Ordering::Acquire));
        let failures = failures.saturating_sub(self.window_failures.load(Ordering::Acquire));
        calls >= self.settings.min_calls
            && failures as f64 >= self.settings.failure_ratio * calls as f64
    }

    /// Moves from `from` (closed or half-open) to open; `None` when another caller moved first.
    fn open(&self, from: u64, now: Micros, reason: &'static str) -> Option<BreakerState> {
        let cool_down = self.settings.cool_down;
        // Set before the switch, so whoever sees "open" sees its end too.
        self.open_until
            .store(now + cool_down.as_micros() as u64, Ordering::Release);
        let next = Word::unpack(from).moved_to(BreakerState::Open);
        self.word
            .compare_exchange(from, next.pack(), Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        bump(&self.counters.breaker_opened);
        tracing::warn!(
            reason,
            cool_down_ms = cool_down.as_millis() as u64,
            "circuit breaker opened: checks are answered by their failure mode without waiting on the shared store"
        );
        Some(BreakerState::Open)
    }

    fn release_probe(&self, epoch: u64) {
        let _ = self.update(|word| {
            (word.state == BreakerState::HalfOpen && word.epoch == epoch && word.in_flight > 0)
                .then_some(Word {
                    in_flight: word.in_flight - 1,
                    ..word
                })
        });
    }
}

impl Permit<'_> {
    /// The store answered. Returns the state this caused the breaker to enter, if any.
    pub fn succeeded(mut self) -> Option<BreakerState> {
        self.reported = true;
        self.breaker.record_success(self.epoch, self.probe)
    }

    /// The store failed or timed out. Returns the state this caused the breaker to enter, if any.
    pub fn failed(mut self) -> Option<BreakerState> {
        self.reported = true;
        self.breaker
            .record_failure(self.epoch, self.probe, self.started)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.reported {
            self.breaker.release_probe(self.epoch);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::FakeClock;

    fn breaker(settings: BreakerSettings) -> (CircuitBreaker, FakeClock, Arc<FailureCounters>) {
        let clock = FakeClock::default();
        let counters = Arc::new(FailureCounters::default());
        let breaker = CircuitBreaker::new(settings, Arc::new(clock.clone()), counters.clone());
        (breaker, clock, counters)
    }

    fn fail(breaker: &CircuitBreaker) -> Option<BreakerState> {
        breaker.try_acquire().expect("a permit").failed()
    }

    fn succeed(breaker: &CircuitBreaker) -> Option<BreakerState> {
        breaker.try_acquire().expect("a permit").succeeded()
    }

    const RUN_OF_THREE: BreakerSettings = BreakerSettings {
        failures: 3,
        failure_ratio: 1.0,
        min_calls: 1000,
        ratio_window: Duration::from_secs(10),
        cool_down: Duration::from_secs(1),
        probes: 2,
    };

    /// Opens on the failure ratio only (half of at least 10 calls in 10 s).
    const RATIO_ONLY: BreakerSettings = BreakerSettings {
        failures: 1000,
        failure_ratio: 0.5,
        min_calls: 10,
        ratio_window: Duration::from_secs(10),
        cool_down: Duration::from_secs(1),
        probes: 1,
    };

    #[test]
    fn words_round_trip_through_packing() {
        let word = Word {
            state: BreakerState::HalfOpen,
            in_flight: 3,
            successes: 1000,
            epoch: (1 << 30) - 1,
        };
        assert_eq!(Word::unpack(word.pack()), word);
        assert_eq!(word.moved_to(BreakerState::Closed).epoch, 0, "epochs wrap");
    }

    #[test]
    fn a_run_of_failures_opens_the_breaker_and_a_success_breaks_the_run() {
        let (breaker, _clock, counters) = breaker(RUN_OF_THREE);
        assert_eq!(fail(&breaker), None);
        assert_eq!(fail(&breaker), None);
        assert_eq!(succeed(&breaker), None);
        assert_eq!(fail(&breaker), None);
        assert_eq!(fail(&breaker), None);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(fail(&breaker), Some(BreakerState::Open));
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(counters.breaker_opened(), 1);
        assert_eq!(counters.store_calls(), 6);
        assert_eq!(counters.store_failures(), 5);
    }

    #[test]
    fn an_open_breaker_refuses_calls_until_its_cool_down_has_passed() {
        let (breaker, clock, counters) = breaker(RUN_OF_THREE);
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        assert!(breaker.try_acquire().is_none());
        assert_eq!(breaker.cool_down_remaining(), Some(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(999));
        assert!(breaker.try_acquire().is_none());
        assert_eq!(counters.short_circuited(), 2);
        clock.advance(Duration::from_millis(1));
        let probe = breaker.try_acquire().expect("a probe after the cool-down");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(counters.breaker_half_opened(), 1);
        drop(probe);
    }

    #[test]
    fn enough_successful_probes_close_the_breaker_and_others_wait_meanwhile() {
        let (breaker, clock, counters) = breaker(RUN_OF_THREE);
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        clock.advance(Duration::from_secs(1));
        let first = breaker.try_acquire().expect("probe 1");
        let second = breaker.try_acquire().expect("probe 2");
        assert!(
            breaker.try_acquire().is_none(),
            "only `probes` probes at a time"
        );
        assert_eq!(first.succeeded(), None);
        assert!(
            breaker.try_acquire().is_none(),
            "one success and one in flight make two"
        );
        assert_eq!(second.succeeded(), Some(BreakerState::Closed));
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(counters.breaker_closed(), 1);
        // Closed again: the failure run starts from zero.
        assert_eq!(fail(&breaker), None);
        assert_eq!(fail(&breaker), None);
        assert_eq!(fail(&breaker), Some(BreakerState::Open));
        assert_eq!(counters.breaker_opened(), 2);
    }

    #[test]
    fn a_failed_probe_opens_the_breaker_for_another_cool_down() {
        let (breaker, clock, counters) = breaker(RUN_OF_THREE);
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        clock.advance(Duration::from_secs(1));
        let first = breaker.try_acquire().unwrap();
        let second = breaker.try_acquire().unwrap();
        assert_eq!(first.failed(), Some(BreakerState::Open));
        assert_eq!(
            second.succeeded(),
            None,
            "a probe of the earlier half-open epoch closes nothing"
        );
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(breaker.try_acquire().is_none());
        clock.advance(Duration::from_secs(1));
        assert!(breaker.try_acquire().is_some());
        assert_eq!(counters.breaker_opened(), 2);
        assert_eq!(counters.breaker_half_opened(), 2);
    }

    #[test]
    fn a_probe_dropped_without_a_result_frees_its_slot() {
        let (breaker, clock, _) = breaker(BreakerSettings {
            probes: 1,
            ..RUN_OF_THREE
        });
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        clock.advance(Duration::from_secs(1));
        let cancelled = breaker.try_acquire().unwrap();
        assert!(breaker.try_acquire().is_none());
        drop(cancelled);
        assert_eq!(succeed(&breaker), Some(BreakerState::Closed));
    }

    #[test]
    fn late_results_of_calls_made_while_closed_do_not_move_an_open_breaker() {
        let (breaker, clock, counters) = breaker(RUN_OF_THREE);
        let late = breaker.try_acquire().unwrap();
        let late_failure = breaker.try_acquire().unwrap();
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        assert_eq!(late.succeeded(), None);
        assert_eq!(late_failure.failed(), None);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(counters.breaker_opened(), 1);
        clock.advance(Duration::from_secs(1));
        assert_eq!(succeed(&breaker), None);
        assert_eq!(succeed(&breaker), Some(BreakerState::Closed));
    }

    #[test]
    fn a_late_failure_from_before_an_outage_does_not_count_after_it() {
        let (breaker, clock, _) = breaker(RUN_OF_THREE);
        let slow = breaker.try_acquire().unwrap();
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        clock.advance(Duration::from_secs(1));
        let _ = succeed(&breaker);
        assert_eq!(succeed(&breaker), Some(BreakerState::Closed));
        assert_eq!(slow.failed(), None);
        assert_eq!(fail(&breaker), None);
        assert_eq!(
            fail(&breaker),
            None,
            "the late failure was not the first of three"
        );
        assert_eq!(fail(&breaker), Some(BreakerState::Open));
    }

    #[test]
    fn calls_that_fail_together_in_one_stall_count_as_one_failure() {
        let (breaker, clock, counters) = breaker(RUN_OF_THREE);
        // Forty checks in flight on one connection when the store stalls:
        // they all time out at about the same moment.
        let in_flight: Vec<_> = (0..40).map(|_| breaker.try_acquire().unwrap()).collect();
        clock.advance(Duration::from_millis(60));
        for permit in in_flight {
            assert_eq!(permit.failed(), None);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "one stall, one failure"
        );
        assert_eq!(
            counters.store_failures(),
            40,
            "every failure is still reported"
        );
        // The store answers again: the run is broken.
        assert_eq!(succeed(&breaker), None);
        // A store that stays down: each later call fails after the last
        // failure was counted, so these are consecutive events.
        clock.advance(Duration::from_millis(1));
        assert_eq!(fail(&breaker), None);
        clock.advance(Duration::from_millis(60));
        assert_eq!(fail(&breaker), None);
        clock.advance(Duration::from_millis(60));
        assert_eq!(fail(&breaker), Some(BreakerState::Open));
    }

    #[test]
    fn a_stall_does_not_trip_the_failure_ratio_either() {
        let (breaker, clock, _) = breaker(RATIO_ONLY);
        let in_flight: Vec<_> = (0..200).map(|_| breaker.try_acquire().unwrap()).collect();
        clock.advance(Duration::from_millis(60));
        for permit in in_flight {
            assert_eq!(permit.failed(), None);
        }
        for _ in 0..20 {
            clock.advance(Duration::from_millis(1));
            assert_eq!(succeed(&breaker), None);
        }
        // One more failure: 2 counted failures in 221 calls, not 201 in 21.
        clock.advance(Duration::from_millis(1));
        assert_eq!(fail(&breaker), None, "the stall counted as one failure");
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn a_failure_ratio_opens_the_breaker_when_failures_are_not_consecutive() {
        let (breaker, clock, counters) = breaker(RATIO_ONLY);
        // Successes before any failure belong to no window.
        for _ in 0..50 {
            let _ = succeed(&breaker);
        }
        // Alternating: never two failures in a row, half of them failed.
        let mut calls = 0;
        let opened = loop {
            calls += 1;
            clock.advance(Duration::from_millis(10));
            if calls % 2 == 0 {
                let _ = succeed(&breaker);
            } else if let Some(state) = fail(&breaker) {
                break state;
            }
            assert!(calls < 100, "the ratio never opened the breaker");
        };
        assert_eq!(opened, BreakerState::Open);
        assert_eq!(
            calls, 11,
            "6 failures of 11 calls: at least 10 calls, half failed"
        );
        assert_eq!(counters.breaker_opened(), 1);
    }

    #[test]
    fn failures_spread_thinner_than_the_ratio_or_across_windows_keep_it_closed() {
        let (breaker, clock, _) = breaker(BreakerSettings {
            failures: 1000,
            failure_ratio: 0.5,
            min_calls: 10,
            ratio_window: Duration::from_secs(1),
            cool_down: Duration::from_secs(1),
            probes: 1,
        });
        // One failure in three: below the ratio.
        for call in 0..300 {
            if call % 3 == 0 {
                assert_eq!(fail(&breaker), None);
            } else {
                let _ = succeed(&breaker);
            }
        }
        // Every other call fails, but each window sees fewer than `min_calls`.
        for call in 0..100 {
            clock.advance(Duration::from_millis(200));
            if call % 2 == 0 {
                assert_eq!(fail(&breaker), None);
            } else {
                let _ = succeed(&breaker);
            }
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }
}
