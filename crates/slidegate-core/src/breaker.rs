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
//! - **closed**: every check goes to the store. Two rules open it.
//!   - `failures` failures in a row. Failures are counted here as *events*:
//!     a call that was already in flight when a failure was counted and then
//!     fails too is part of the same event and does not count again. A
//!     multiplexed connection carries every check in flight, so one stall of
//!     the store (or of this replica's thread) of a little over
//!     `command_timeout` times them all out together; counted one by one, a
//!     single 60 ms hiccup at 5,000 checks/s would make hundreds of
//!     "consecutive" failures. Counted as events, the rule fires after
//!     `failures` failures each seen after the one before: a store that stays
//!     down is still cut off within a few timeouts.
//!   - a `failure_ratio` of failed calls among at least `min_calls` calls
//!     over the last `ratio_window`. Here every outcome counts (raw, not
//!     events): de-duplicated, a store failing half of 5,000 checks/s
//!     (every failure overlapping the one before) would show well under 1%.
//!     The window rolls, in [`RATIO_BUCKETS`] buckets of equal length, as
//!     resilience4j's and Hystrix's do: it always holds the last
//!     `ratio_window` of traffic, so a 70 ms stall at 5,000 checks/s is a
//!     few hundred failures among tens of thousands of calls, not a window
//!     that starts at the stall.
//! - **open**: no check goes to the store (each returns at once and is
//!   answered by its failure mode) until `cool_down` has passed.
//! - **half-open**: up to `probes` checks go to the store as probes; `probes`
//!   successes close the breaker, one failure opens it again for another
//!   cool-down. Other checks meanwhile are answered as if it were open.
//!   Every probe is accounted for whatever the interleaving: it reports a
//!   success or a failure, or frees its slot when dropped, and a result that
//!   arrives after the breaker moved on is ignored. As a last resort, a
//!   half-open breaker whose every probe slot is held by probes given out
//!   more than `probe_timeout` ago (the store's own timeouts end a probe
//!   well before) opens again, so nothing can keep it half-open.
//!
//! Cost on the request path: a closed breaker is one atomic load (and a
//! clock read, which the permit needs anyway) to admit a check, one counter
//! increment when it reports, and loads only otherwise; the ratio window's
//! buckets are written once per bucket length, by whichever call starts it,
//! and on failures. The state, the probes in flight, the probe successes and
//! a transition epoch share one atomic word, so every transition is a single
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

/// Buckets the failure-ratio window is divided into. More buckets make the
/// window's edge sharper; each costs three atomics, read on every failure.
pub const RATIO_BUCKETS: usize = 10;

/// When the breaker opens and how it recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerOptions {
    /// Consecutive failed calls that open the breaker (at least 1).
    pub failures: u32,
    /// Share of failed calls, in (0, 1], that opens the breaker...
    pub failure_ratio: f64,
    /// ...once at least this many calls were made within...
    pub min_calls: u64,
    /// ...the last this long (a rolling window).
    pub ratio_window: Duration,
    /// How long an open breaker keeps every check away from the store.
    pub cool_down: Duration,
    /// Successful probes that close a half-open breaker (1 to [`MAX_PROBES`]).
    pub probes: u32,
    /// How long a probe may go unreported before a half-open breaker with no
    /// free probe slot gives up on its probes and opens again. Longer than
    /// any store call can take (the configuration sets twice the store's
    /// timeouts): a probe this late has been lost.
    pub probe_timeout: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self {
            failures: 5,
            failure_ratio: 0.5,
            min_calls: 20,
            ratio_window: Duration::from_secs(10),
            cool_down: Duration::from_secs(1),
            probes: 3,
            // Twice the default Redis timeouts (100 ms + 50 ms).
            probe_timeout: Duration::from_millis(300),
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
const EPOCH_MASK: u64 = (1 << 30) - 1;

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
            | (self.epoch & EPOCH_MASK) << 34
    }

    /// The next state, in a new epoch, with no probes.
    fn moved_to(self, state: BreakerState) -> Self {
        Self {
            state,
            in_flight: 0,
            successes: 0,
            epoch: (self.epoch + 1) & EPOCH_MASK,
        }
    }
}

/// What a permit is for: a check, or readiness probing a breaker that is
/// not closed (see [`CircuitBreaker::try_probe_for_readiness`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Check,
    Readiness,
}

/// Guards calls to the shared store; see the module documentation.
pub struct CircuitBreaker {
    settings: BreakerOptions,
    clock: Arc<dyn Clock>,
    counters: Arc<FailureCounters>,
    word: AtomicU64,
    /// The end of an open spell (clock micros), valid for the epoch in
    /// `open_epoch`: the opener publishes both after winning the switch, and
    /// a breaker that is open in another epoch has not published its end yet
    /// (so it is not over).
    open_until: AtomicU64,
    open_epoch: AtomicU64,
    /// Half-open: the latest instant a probe was given out (clock micros).
    last_probe_at: AtomicU64,
    consecutive_failures: AtomicU32,
    /// When the last failure that counted for the consecutive rule was
    /// recorded (clock micros): a call that started before it and fails
    /// belongs to the same event.
    last_counted_failure: AtomicU64,
    ratio: RatioWindow,
}

/// Leave to make one call to the store. Report its result with
/// [`Permit::succeeded`] or [`Permit::failed`]; a permit dropped without a
/// result (the request was cancelled) frees its probe slot and counts as a
/// call, but neither as a success nor as a failure.
#[must_use = "report the call's result on the permit"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// The epoch of the state the permit was given in: results that arrive
    /// after the breaker has moved on belong to no current run or probe.
    epoch: u64,
    /// Whether this call is a half-open probe.
    probe: bool,
    purpose: Purpose,
    /// When the permit was given (clock micros).
    started: Micros,
    reported: bool,
}

impl CircuitBreaker {
    pub fn new(
        settings: BreakerOptions,
        clock: Arc<dyn Clock>,
        counters: Arc<FailureCounters>,
    ) -> Self {
        Self {
            ratio: RatioWindow::new(settings.ratio_window),
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
            // No epoch has this value: nothing has been published yet.
            open_epoch: AtomicU64::new(u64::MAX),
            last_probe_at: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            last_counted_failure: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> BreakerState {
        Word::unpack(self.word.load(Ordering::Acquire)).state
    }

    /// While open: how long until probes may start.
    pub fn cool_down_remaining(&self) -> Option<Duration> {
        let word = Word::unpack(self.word.load(Ordering::Acquire));
        (word.state == BreakerState::Open).then(|| match self.open_end(word) {
            Some(until) => Duration::from_micros(until.saturating_sub(self.clock.now())),
            // Just opened: its end is being published.
            None => self.settings.cool_down,
        })
    }

    /// The end of the open spell `word` is in, once its opener has published it.
    fn open_end(&self, word: Word) -> Option<Micros> {
        (self.open_epoch.load(Ordering::Acquire) == word.epoch)
            .then(|| self.open_until.load(Ordering::Acquire))
    }

    pub fn settings(&self) -> &BreakerOptions {
        &self.settings
    }

    /// A permit to call the store, or `None` when the call must not be made
    /// (open, or half-open with every probe slot taken). Never waits.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        self.acquire(Purpose::Check)
    }

    /// A probe for readiness's own round-trip to the store, when the breaker
    /// is probing (open past its cool-down, or half-open with a free slot);
    /// `None` otherwise, and always while closed. Without it a replica that a
    /// load balancer stopped routing to (not ready while the breaker is not
    /// closed and a policy fails `closed`) would get no check to probe with,
    /// and stay unready after the store came back.
    pub fn try_probe_for_readiness(&self) -> Option<Permit<'_>> {
        self.acquire(Purpose::Readiness)
    }

    fn acquire(&self, purpose: Purpose) -> Option<Permit<'_>> {
        let now = self.clock.now();
        let word = Word::unpack(self.word.load(Ordering::Acquire));
        let (epoch, probe) = match word.state {
            BreakerState::Closed if purpose == Purpose::Readiness => return None,
            BreakerState::Closed => {
                self.ratio.note_call(now, &self.counters.store_calls);
                (word.epoch, false)
            }
            BreakerState::Open | BreakerState::HalfOpen => match self.take_probe_slot(now) {
                Ok(epoch) => (epoch, true),
                // Closed meanwhile: an ordinary call.
                Err(current)
                    if current.state == BreakerState::Closed && purpose == Purpose::Check =>
                {
                    self.ratio.note_call(now, &self.counters.store_calls);
                    (current.epoch, false)
                }
                Err(_) => {
                    if purpose == Purpose::Check {
                        bump(&self.counters.short_circuited);
                    }
                    return None;
                }
            },
        };
        Some(Permit {
            breaker: self,
            epoch,
            probe,
            purpose,
            started: now,
            reported: false,
        })
    }

    /// Takes a probe slot: the first one moves an open breaker whose
    /// cool-down is over to half-open. `Err(current)` when there is none.
    fn take_probe_slot(&self, now: Micros) -> Result<u64, Word> {
        let probes = u64::from(self.settings.probes);
        let taken = self.update(|word| {
            let grant = match word.state {
                BreakerState::Closed => None,
                BreakerState::Open => {
                    self.open_end(word)
                        .is_some_and(|until| now >= until)
                        .then(|| Word {
                            in_flight: 1,
                            ..word.moved_to(BreakerState::HalfOpen)
                        })
                }
                BreakerState::HalfOpen => {
                    (word.in_flight + word.successes < probes).then_some(Word {
                        in_flight: word.in_flight + 1,
                        ..word
                    })
                }
            };
            if grant.is_some() {
                // Before the switch, so that a caller who finds every slot
                // taken never sees a probe time older than the newest probe.
                self.last_probe_at.fetch_max(now, Ordering::AcqRel);
            }
            grant
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
                Ok(after.epoch)
            }
            Err(current) => {
                let overdue = current.state == BreakerState::HalfOpen
                    && current.in_flight > 0
                    && now.saturating_sub(self.last_probe_at.load(Ordering::Acquire))
                        >= self.settings.probe_timeout.as_micros() as u64;
                if overdue {
                    // Every slot is held by probes older than any store call
                    // can take: they are lost. Waiting for them would keep the
                    // breaker half-open for ever.
                    let _ = self.open(
                        current.epoch,
                        BreakerState::HalfOpen,
                        now,
                        "probes did not report in time",
                    );
                }
                Err(current)
            }
        }
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
        let probes = u64::from(self.settings.probes);
        let (_, after) = self
            .update(|word| {
                (word.state == BreakerState::HalfOpen && word.epoch == epoch).then(|| {
                    if word.successes + 1 >= probes {
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
        // The ratio starts afresh: failures from before the outage are not
        // evidence against the store that just answered every probe.
        self.ratio
            .restart(self.clock.now(), &self.counters.store_calls);
        bump(&self.counters.breaker_closed);
        tracing::info!(
            probes = self.settings.probes,
            "circuit breaker closed: the shared store answers again"
        );
        Some(BreakerState::Closed)
    }

    fn record_failure(&self, epoch: u64, probe: bool, started: Micros) -> Option<BreakerState> {
        let now = self.clock.now();
        let word = Word::unpack(self.word.load(Ordering::Acquire));
        if word.epoch != epoch {
            // A late result: the breaker has moved on since this call began
            // (opened, or even closed again after an outage).
            return None;
        }
        match word.state {
            BreakerState::HalfOpen if probe => {
                self.open(epoch, BreakerState::HalfOpen, now, "a probe failed")
            }
            BreakerState::Closed if !probe => {
                self.ratio.note_failure(now);
                let consecutive = if started < self.last_counted_failure.load(Ordering::Acquire) {
                    // In flight when a failure was counted: the same event.
                    false
                } else {
                    self.last_counted_failure.fetch_max(now, Ordering::AcqRel);
                    let run = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                    run >= self.settings.failures
                };
                if consecutive {
                    self.open(epoch, BreakerState::Closed, now, "consecutive failures")
                } else if self.ratio_exceeded(now) {
                    self.open(epoch, BreakerState::Closed, now, "failure ratio")
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Whether the failed calls over the last `ratio_window` reach the ratio.
    /// Runs on failures only, so successes never read the buckets.
    fn ratio_exceeded(&self, now: Micros) -> bool {
        let (calls, failures) = self.ratio.totals(now, &self.counters.store_calls);
        calls >= self.settings.min_calls
            && failures as f64 >= self.settings.failure_ratio * calls as f64
    }

    /// Moves from `from` (closed or half-open) in `epoch` to open; `None`
    /// when the breaker was no longer there (another caller moved first, and
    /// that caller accounted for every probe of the epoch).
    fn open(
        &self,
        epoch: u64,
        from: BreakerState,
        now: Micros,
        reason: &'static str,
    ) -> Option<BreakerState> {
        let (_, after) = self
            .update(|word| {
                (word.state == from && word.epoch == epoch)
                    .then(|| word.moved_to(BreakerState::Open))
            })
            .ok()?;
        let cool_down = self.settings.cool_down;
        // Published after the switch, and only by its winner: until then the
        // spell has no end and nobody probes (see `open_end`).
        self.open_until
            .store(now + cool_down.as_micros() as u64, Ordering::Release);
        self.open_epoch.store(after.epoch, Ordering::Release);
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
            // `then`, not `then_some`: the subtraction must not run (and
            // overflow) for a probe of an epoch that is over.
            (word.state == BreakerState::HalfOpen && word.epoch == epoch && word.in_flight > 0)
                .then(|| Word {
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
        self.count_call();
        self.breaker.record_success(self.epoch, self.probe)
    }

    /// The store failed or timed out. Returns the state this caused the breaker to enter, if any.
    pub fn failed(mut self) -> Option<BreakerState> {
        self.reported = true;
        self.count_call();
        if self.purpose == Purpose::Check {
            bump(&self.breaker.counters.store_failures);
        }
        self.breaker
            .record_failure(self.epoch, self.probe, self.started)
    }

    /// Calls are counted when they end, as failures are, so the ratio never
    /// compares failures already known with calls whose outcome is not.
    fn count_call(&self) {
        if self.purpose == Purpose::Check {
            bump(&self.breaker.counters.store_calls);
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.count_call();
            if self.probe {
                self.breaker.release_probe(self.epoch);
            }
        }
    }
}

/// Raw call outcomes over the last `ratio_window`, in [`RATIO_BUCKETS`]
/// buckets of equal length, without a lock.
///
/// Calls are not counted per bucket: the breaker's `store_calls` counter
/// counts them (once per call, as it must anyway), and each bucket notes its
/// value when the bucket starts, so the calls in the window are the counter
/// now minus its value when the oldest bucket in the window started. A
/// bucket starts with the first call whose permit falls in it; failures are
/// added to the bucket they happen in.
///
/// Races at a bucket's edge (a failure landing while the bucket is being
/// recycled, a reader seeing half a recycled bucket) can misplace a count or
/// two: the ratio is a trend detector, not a contract.
struct RatioWindow {
    bucket_micros: u64,
    /// The newest bucket number (clock micros / `bucket_micros`) started.
    newest: AtomicU64,
    buckets: [Bucket; RATIO_BUCKETS],
}

struct Bucket {
    /// Which bucket number this slot holds (`u64::MAX`: none).
    number: AtomicU64,
    /// `store_calls` when the bucket started.
    calls_before: AtomicU64,
    failures: AtomicU64,
}

impl RatioWindow {
    fn new(window: Duration) -> Self {
        let window = (window.as_micros() as u64).max(RATIO_BUCKETS as u64);
        Self {
            bucket_micros: window.div_ceil(RATIO_BUCKETS as u64),
            newest: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| Bucket {
                number: AtomicU64::new(u64::MAX),
                calls_before: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    fn slot(&self, number: u64) -> &Bucket {
        &self.buckets[(number % RATIO_BUCKETS as u64) as usize]
    }

    /// A call starts at `now`: the first of its bucket starts the bucket.
    /// Otherwise one load: the hot path writes nothing here.
    fn note_call(&self, now: Micros, calls: &AtomicU64) {
        let number = now / self.bucket_micros;
        let newest = self.newest.load(Ordering::Acquire);
        if number > newest
            && self
                .newest
                .compare_exchange(newest, number, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.start(number, calls.load(Ordering::Relaxed));
        }
    }

    fn start(&self, number: u64, calls_before: u64) {
        let bucket = self.slot(number);
        // Invalid while it is being refilled, valid again as the new bucket.
        bucket.number.store(u64::MAX, Ordering::Release);
        bucket.failures.store(0, Ordering::Relaxed);
        bucket.calls_before.store(calls_before, Ordering::Relaxed);
        bucket.number.store(number, Ordering::Release);
    }

    fn note_failure(&self, now: Micros) {
        let number = now / self.bucket_micros;
        let bucket = self.slot(number);
        if bucket.number.load(Ordering::Acquire) == number {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        } else if let Some(newest) = self.newest_at_or_before(number) {
            // No call has started this bucket yet (a failure reported in a
            // bucket of its own, with no new call since): the newest bucket
            // still in the window takes it.
            newest.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn newest_at_or_before(&self, number: u64) -> Option<&Bucket> {
        let oldest = number.saturating_sub(RATIO_BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|bucket| {
                let held = bucket.number.load(Ordering::Acquire);
                held != u64::MAX && (oldest..=number).contains(&held)
            })
            .max_by_key(|bucket| bucket.number.load(Ordering::Relaxed))
    }

    /// Calls and failures over the window that ends at `now`.
    fn totals(&self, now: Micros, calls: &AtomicU64) -> (u64, u64) {
        let number = now / self.bucket_micros;
        let oldest = number.saturating_sub(RATIO_BUCKETS as u64 - 1);
        let mut failures = 0;
        let mut calls_before = None::<u64>;
        for bucket in &self.buckets {
            let held = bucket.number.load(Ordering::Acquire);
            if held == u64::MAX || !(oldest..=number).contains(&held) {
                continue;
            }
            failures += bucket.failures.load(Ordering::Relaxed);
            let before = bucket.calls_before.load(Ordering::Relaxed);
            calls_before = Some(calls_before.map_or(before, |known| known.min(before)));
        }
        let calls = calls_before.map_or(0, |before| {
            calls.load(Ordering::Relaxed).saturating_sub(before)
        });
        (calls, failures)
    }

    /// Forgets everything: the window starts again at `now`.
    fn restart(&self, now: Micros, calls: &AtomicU64) {
        for bucket in &self.buckets {
            bucket.number.store(u64::MAX, Ordering::Release);
        }
        let number = now / self.bucket_micros;
        self.newest.fetch_max(number, Ordering::AcqRel);
        self.start(number, calls.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeClock;

    fn breaker(settings: BreakerOptions) -> (CircuitBreaker, FakeClock, Arc<FailureCounters>) {
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

    const RUN_OF_THREE: BreakerOptions = BreakerOptions {
        failures: 3,
        failure_ratio: 1.0,
        min_calls: 1000,
        ratio_window: Duration::from_secs(10),
        cool_down: Duration::from_secs(1),
        probes: 2,
        probe_timeout: Duration::from_millis(300),
    };

    /// Opens on the failure ratio only (half of at least 10 calls in 10 s).
    const RATIO_ONLY: BreakerOptions = BreakerOptions {
        failures: 1000,
        failure_ratio: 0.5,
        min_calls: 10,
        ratio_window: Duration::from_secs(10),
        cool_down: Duration::from_secs(1),
        probes: 1,
        probe_timeout: Duration::from_millis(300),
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
        let (breaker, clock, _) = breaker(BreakerOptions {
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

    /// Calls at `per_ms` per millisecond for `millis`, every one answered
    /// at once: `fail(n)` says whether the n-th (from 1) fails.
    fn traffic(
        breaker: &CircuitBreaker,
        clock: &FakeClock,
        per_ms: usize,
        millis: usize,
        mut fail: impl FnMut(usize) -> bool,
    ) -> Option<BreakerState> {
        let mut call = 0;
        for _ in 0..millis {
            clock.advance(Duration::from_millis(1));
            for _ in 0..per_ms {
                call += 1;
                let permit = breaker.try_acquire()?;
                let moved = if fail(call) {
                    permit.failed()
                } else {
                    permit.succeeded()
                };
                if moved.is_some() {
                    return moved;
                }
            }
        }
        None
    }

    #[test]
    fn a_short_stall_at_a_high_rate_does_not_trip_the_failure_ratio() {
        let (breaker, clock, counters) = breaker(RATIO_ONLY);
        // Two seconds at 5,000 checks/s, all answered.
        assert_eq!(traffic(&breaker, &clock, 5, 2_000, |_| false), None);
        // Then the store stalls for 70 ms: the 250 checks in flight (50 ms
        // worth) and the 350 sent during the stall all time out.
        let in_flight: Vec<_> = (0..250).map(|_| breaker.try_acquire().unwrap()).collect();
        let mut stalled = Vec::new();
        for _ in 0..70 {
            clock.advance(Duration::from_millis(1));
            stalled.extend((0..5).map(|_| breaker.try_acquire().unwrap()));
        }
        for permit in in_flight.into_iter().chain(stalled) {
            assert_eq!(permit.failed(), None);
        }
        // 600 failures among 10,600 calls: far under half.
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert_eq!(counters.store_failures(), 600);
        assert_eq!(traffic(&breaker, &clock, 5, 1_000, |_| false), None);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    /// 5,000 checks/s for up to `millis`, where the checks `fails` picks
    /// (by their number from 0) time out after 50 ms and the others are
    /// answered at once. Every failure was in flight when the one before it
    /// was counted: as events they are one long failure. Returns the
    /// millisecond at which the breaker opened.
    fn overlapping_timeouts(
        breaker: &CircuitBreaker,
        clock: &FakeClock,
        millis: u64,
        fails: impl Fn(u64) -> bool,
    ) -> Option<u64> {
        let mut timing_out: std::collections::VecDeque<(u64, Permit<'_>)> =
            std::collections::VecDeque::new();
        for ms in 0..millis {
            clock.advance(Duration::from_millis(1));
            while timing_out.front().is_some_and(|(due, _)| *due <= ms) {
                let (_, permit) = timing_out.pop_front().unwrap();
                if let Some(state) = permit.failed() {
                    assert_eq!(state, BreakerState::Open);
                    return Some(ms);
                }
            }
            for call in ms * 5..ms * 5 + 5 {
                let permit = breaker.try_acquire().expect("closed");
                if fails(call) {
                    timing_out.push_back((ms + 50, permit));
                } else {
                    assert_eq!(permit.succeeded(), None);
                }
            }
        }
        None
    }

    #[test]
    fn most_calls_failing_at_a_high_rate_opens_the_breaker_though_every_failure_overlaps_another() {
        let (breaker, clock, counters) = breaker(BreakerOptions {
            min_calls: 20,
            ..RATIO_ONLY
        });
        // Three of every five fail: as events that was about 0.2% of the
        // calls (one failure per 50 ms timeout among 250 calls).
        let opened = overlapping_timeouts(&breaker, &clock, 2_000, |call| call % 5 < 3);
        let at = opened.expect("the failure ratio never opened the breaker");
        // Failures are known once they time out, successes at once, so the
        // ratio of ended calls passes a half after 150 ms.
        assert!(at <= 200, "opened only after {at} ms");
        assert_eq!(counters.breaker_opened(), 1);
    }

    #[test]
    fn half_the_calls_failing_opens_the_breaker_once_the_window_holds_only_that_traffic() {
        let (breaker, clock, _) = breaker(BreakerOptions {
            min_calls: 20,
            ..RATIO_ONLY
        });
        // A healthy second first: its successes dilute the window until
        // they leave it, ratio_window (10 s) later.
        assert_eq!(
            overlapping_timeouts(&breaker, &clock, 1_000, |_| false),
            None
        );
        let opened = overlapping_timeouts(&breaker, &clock, 12_000, |call| call % 2 == 0);
        let at = opened.expect("half the calls failing never opened the breaker");
        // `failure_ratio` is "at least": exactly half opens it, at the
        // latest when the healthy second has left the window (it opens in
        // the bucket where that happens, 10 s in).
        assert!(at <= 11_000, "opened only after {at} ms");
    }

    #[test]
    fn calls_and_failures_older_than_the_ratio_window_no_longer_count() {
        let (breaker, clock, _) = breaker(RATIO_ONLY);
        // Many successes, then a quiet spell longer than the window.
        assert_eq!(traffic(&breaker, &clock, 1, 1_000, |_| false), None);
        clock.advance(Duration::from_secs(11));
        // Now a failure ratio of one half opens it as soon as 10 calls are in
        // the window: the thousand old successes no longer dilute it.
        let mut last = 0;
        let state = traffic(&breaker, &clock, 1, 100, |call| {
            last = call;
            call % 2 == 1
        });
        assert_eq!(state, Some(BreakerState::Open));
        assert_eq!(last, 11, "6 failures of 11 calls");
    }

    #[test]
    fn a_failure_ratio_opens_the_breaker_when_failures_are_not_consecutive() {
        let (breaker, clock, counters) = breaker(RATIO_ONLY);
        // Successes long enough ago have left the window.
        for _ in 0..50 {
            let _ = succeed(&breaker);
        }
        clock.advance(Duration::from_secs(11));
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
        let (breaker, clock, _) = breaker(BreakerOptions {
            ratio_window: Duration::from_secs(1),
            ..RATIO_ONLY
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

    #[test]
    fn a_half_open_breaker_whose_probes_never_report_opens_again_after_the_probe_timeout() {
        let (breaker, clock, counters) = breaker(RUN_OF_THREE);
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        clock.advance(Duration::from_secs(1));
        // Both probe slots taken by calls that never come back (a bug, or a
        // store call without its timeout).
        let lost = [
            breaker.try_acquire().unwrap(),
            breaker.try_acquire().unwrap(),
        ];
        clock.advance(Duration::from_millis(299));
        assert!(breaker.try_acquire().is_none());
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "still within the probe timeout"
        );
        clock.advance(Duration::from_millis(1));
        assert!(breaker.try_acquire().is_none());
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "given up on its probes"
        );
        assert_eq!(counters.breaker_opened(), 2);
        // Their late results belong to a spell that is over.
        for permit in lost {
            assert_eq!(permit.succeeded(), None);
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(succeed(&breaker), None);
        assert_eq!(succeed(&breaker), Some(BreakerState::Closed));
    }

    #[test]
    fn a_probe_slot_given_out_recently_is_not_taken_for_lost() {
        let (breaker, clock, _) = breaker(RUN_OF_THREE);
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        clock.advance(Duration::from_secs(1));
        let early = breaker.try_acquire().unwrap();
        clock.advance(Duration::from_millis(250));
        let recent = breaker.try_acquire().unwrap();
        clock.advance(Duration::from_millis(100));
        // The first probe is overdue, the second is not: wait for it.
        assert!(breaker.try_acquire().is_none());
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(early.succeeded(), None);
        assert_eq!(recent.succeeded(), Some(BreakerState::Closed));
    }

    #[test]
    fn readiness_probes_only_a_breaker_that_is_probing_and_counts_no_check() {
        let (breaker, clock, counters) = breaker(RUN_OF_THREE);
        assert!(breaker.try_probe_for_readiness().is_none(), "closed");
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        assert!(breaker.try_probe_for_readiness().is_none(), "cooling down");
        assert_eq!(counters.short_circuited(), 0, "readiness is not a check");
        clock.advance(Duration::from_secs(1));
        // With no check arriving, readiness alone closes the breaker...
        let probe = breaker.try_probe_for_readiness().unwrap();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(probe.succeeded(), None);
        assert_eq!(
            breaker.try_probe_for_readiness().unwrap().succeeded(),
            Some(BreakerState::Closed)
        );
        // ...and its failure opens it again, like any probe's.
        for _ in 0..3 {
            let _ = fail(&breaker);
        }
        clock.advance(Duration::from_secs(1));
        assert_eq!(
            breaker.try_probe_for_readiness().unwrap().failed(),
            Some(BreakerState::Open)
        );
        assert_eq!(counters.store_calls(), 6, "the checks only");
        assert_eq!(counters.store_failures(), 6);
    }

    /// A barrier that a panicking party breaks, so the others stop instead of waiting for ever.
    struct Checkpoint {
        parties: u64,
        /// Arrived so far, and how many times everyone has arrived.
        state: std::sync::Mutex<(u64, u64)>,
        all_arrived: std::sync::Condvar,
        broken: std::sync::atomic::AtomicBool,
    }

    impl Checkpoint {
        fn new(parties: u64) -> Self {
            Self {
                parties,
                state: std::sync::Mutex::new((0, 0)),
                all_arrived: std::sync::Condvar::new(),
                broken: std::sync::atomic::AtomicBool::new(false),
            }
        }

        /// Waits for every party; `false` when one panicked meanwhile.
        fn wait(&self) -> bool {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let round = state.1;
            state.0 += 1;
            if state.0 == self.parties {
                *state = (0, round + 1);
                self.all_arrived.notify_all();
            }
            while state.1 == round && !self.broken.load(Ordering::Acquire) {
                state = self
                    .all_arrived
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            !self.broken.load(Ordering::Acquire)
        }

        fn poison_on_panic(&self) -> impl Drop + '_ {
            struct Guard<'a>(&'a Checkpoint);
            impl Drop for Guard<'_> {
                fn drop(&mut self) {
                    if std::thread::panicking() {
                        let _state = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
                        self.0.broken.store(true, Ordering::Release);
                        self.0.all_arrived.notify_all();
                    }
                }
            }
            Guard(self)
        }
    }

    /// xorshift64*: a seeded sequence, so a failing interleaving's seed can be rerun.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
        }
    }

    /// Reports a permit's result at random: success, failure, or dropped.
    fn finish(permit: Permit<'_>, rng: &mut Rng) {
        match rng.below(8) {
            0..=3 => drop(permit.succeeded()),
            4..=6 => drop(permit.failed()),
            _ => drop(permit),
        }
    }

    /// When no permit is outstanding, the breaker must be able to move on:
    /// half-open with no probe in flight and a free slot for the next one,
    /// open with a published end, and every transition counted once.
    fn assert_quiescent(breaker: &CircuitBreaker, counters: &FailureCounters, seed: u64) {
        let word = Word::unpack(breaker.word.load(Ordering::Acquire));
        let open_now = u64::from(word.state == BreakerState::Open);
        assert_eq!(
            counters.breaker_opened(),
            counters.breaker_half_opened() + open_now,
            "seed {seed}: every open spell ends by half-opening, once"
        );
        match word.state {
            BreakerState::HalfOpen => {
                assert_eq!(
                    word.in_flight, 0,
                    "seed {seed}: a probe slot leaked: {word:?}"
                );
                // Leaves half-open with the probes it still needs.
                let needed = u64::from(breaker.settings.probes) - word.successes;
                let probes: Vec<_> = (0..needed)
                    .map(|_| breaker.try_acquire().expect("a free probe slot"))
                    .collect();
                let mut last = None;
                for probe in probes {
                    last = probe.succeeded();
                }
                assert_eq!(last, Some(BreakerState::Closed), "seed {seed}: {word:?}");
            }
            BreakerState::Open => {
                assert!(
                    breaker.open_end(word).is_some(),
                    "seed {seed}: no end published"
                );
            }
            BreakerState::Closed => {}
        }
    }

    #[test]
    fn under_any_interleaving_every_probe_is_accounted_for_and_the_breaker_always_leaves_half_open()
    {
        const THREADS: u64 = 8;
        const ROUNDS: u64 = 4_000;
        const CHECKPOINT: u64 = 50;
        for seed in [1u64, 0x5EED, 0xDEAD_BEEF] {
            let (breaker, clock, counters) = breaker(BreakerOptions {
                failures: 2,
                failure_ratio: 0.5,
                min_calls: 6,
                ratio_window: Duration::from_millis(40),
                cool_down: Duration::from_millis(2),
                probes: 3,
                probe_timeout: Duration::from_millis(20),
            });
            let checkpoint = Checkpoint::new(THREADS);
            std::thread::scope(|scope| {
                for thread in 0..THREADS {
                    let (breaker, clock, counters, checkpoint) =
                        (&breaker, &clock, &counters, &checkpoint);
                    scope.spawn(move || {
                        // A panicking thread (a failed assertion) releases the others.
                        let _poison = checkpoint.poison_on_panic();
                        let mut rng = Rng(seed.wrapping_mul(31).wrapping_add(thread) | 1);
                        let mut held = Vec::new();
                        for round in 0..ROUNDS {
                            match rng.below(16) {
                                0..=7 => {
                                    if let Some(permit) = breaker.try_acquire() {
                                        // Some calls stay in flight across rounds.
                                        if rng.below(3) == 0 {
                                            held.push(permit);
                                        } else {
                                            finish(permit, &mut rng);
                                        }
                                    }
                                }
                                8 => {
                                    if let Some(probe) = breaker.try_probe_for_readiness() {
                                        finish(probe, &mut rng);
                                    }
                                }
                                9..=11 if !held.is_empty() => {
                                    let index = rng.below(held.len() as u64) as usize;
                                    finish(held.swap_remove(index), &mut rng);
                                }
                                _ => clock.advance(Duration::from_micros(rng.below(1_500))),
                            }
                            if round % CHECKPOINT == CHECKPOINT - 1 {
                                for permit in held.drain(..) {
                                    finish(permit, &mut rng);
                                }
                                if !checkpoint.wait() {
                                    return;
                                }
                                if thread == 0 {
                                    assert_quiescent(breaker, counters, seed);
                                }
                                if !checkpoint.wait() {
                                    return;
                                }
                            }
                        }
                    });
                }
            });
            // It went round the whole cycle many times, not once.
            assert!(
                counters.breaker_closed() > 50,
                "seed {seed}: {:?}",
                counters.snapshot()
            );
            assert!(
                counters.breaker_opened() > 50,
                "seed {seed}: {:?}",
                counters.snapshot()
            );
        }
    }
}
