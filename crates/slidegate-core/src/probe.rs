//! Background probes of Redis and Postgres: readiness reads their last answers and never waits on a dependency.
//!
//! Each dependency has one probe task: probe, keep the answer and when it
//! came, sleep `interval`, probe again. So there is one probe at a time per
//! dependency, each bounded by `timeout`: a stalled dependency costs one
//! pending probe, never one per readiness request, and probes cannot take
//! more than one pooled connection from the reloads and admin writes that
//! need them. An answer older than [`ProbeOptions::stale_after`] (the task
//! itself is stuck) reads as a failure, never as the last good answer.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::{Clock, DependencyHealth, Micros, MonotonicClock, StoreHealth};

/// How often dependencies are probed and how long a probe may take (`[health]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeOptions {
    pub interval: Duration,
    pub timeout: Duration,
}

impl ProbeOptions {
    /// An answer older than this reads as failed. Answers normally come at
    /// most `interval + timeout` apart; this is three intervals and a
    /// timeout, so a late answer or two are not mistaken for a stuck probe.
    pub fn stale_after(&self) -> Duration {
        self.interval * 3 + self.timeout
    }
}

/// What a probe answers: it can be turned into a failure that says why.
pub trait ProbeAnswer: Clone + Send + Sync + 'static {
    /// The same answer, failed because of `reason` (no answer in time, or a stale one).
    #[must_use]
    fn failed(self, reason: &str) -> Self;
}

impl ProbeAnswer for DependencyHealth {
    fn failed(mut self, reason: &str) -> Self {
        self.ok = false;
        self.latency_ms = None;
        self.error = Some(reason.to_owned());
        self
    }
}

impl ProbeAnswer for StoreHealth {
    fn failed(mut self, reason: &str) -> Self {
        // A store without dependencies (the embedded one) has nothing a probe
        // could find wrong: it decides whatever the probe task does.
        if self.dependencies.is_empty() {
            return self;
        }
        self.ok = false;
        self.dependencies = self
            .dependencies
            .into_iter()
            .map(|dependency| dependency.failed(reason))
            .collect();
        self
    }
}

/// Every dependency's probe of one replica: the store's (Redis; the
/// embedded store's answers never change) and, with a catalog, Postgres's.
#[derive(Debug, Clone)]
pub struct Probes {
    pub store: Arc<Probe<StoreHealth>>,
    pub postgres: Option<Arc<Probe<DependencyHealth>>>,
}

/// The last answer of one dependency's probe.
pub struct Probe<T> {
    settings: ProbeOptions,
    /// Judges the answers' age; a monotonic clock, never the limiter's (tests move that one).
    clock: Arc<dyn Clock>,
    last: ArcSwap<Answered<T>>,
}

struct Answered<T> {
    answer: T,
    at: Micros,
}

/// A probe's answer as readiness reports it.
#[derive(Debug, Clone)]
pub struct Reading<T> {
    /// The last answer; failed if it is older than [`ProbeOptions::stale_after`].
    pub answer: T,
    /// How long ago it came.
    pub age: Duration,
}

impl<T> std::fmt::Debug for Probe<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<T: ProbeAnswer> Probe<T> {
    /// A probe whose answer is `initial` until it first answers; `initial`
    /// is also what a probe that never answered in time reports, failed.
    pub fn new(settings: ProbeOptions, initial: T) -> Self {
        Self::with_clock(settings, initial, Arc::new(MonotonicClock::new()))
    }

    /// As [`Probe::new`], judging ages by `clock`.
    pub fn with_clock(settings: ProbeOptions, initial: T, clock: Arc<dyn Clock>) -> Self {
        let at = clock.now();
        Self {
            settings,
            clock,
            last: ArcSwap::from_pointee(Answered {
                answer: initial,
                at,
            }),
        }
    }

    pub fn settings(&self) -> ProbeOptions {
        self.settings
    }

    /// Waits for `probe` at most `timeout` and keeps its answer, or the last
    /// answer failed with "no answer within …". `probe` is told the deadline,
    /// so that it can give up (and say why, and count it) at that instant
    /// itself: the deadline's timer is polled after the probe.
    pub async fn refresh<Fut: Future<Output = T>>(
        &self,
        probe: impl FnOnce(tokio::time::Instant) -> Fut,
    ) {
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let answer = match tokio::time::timeout_at(deadline, probe(deadline)).await {
            Ok(answer) => answer,
            Err(_) => self.last.load().answer.clone().failed(&format!(
                "no answer to the health probe within {:?}",
                self.settings.timeout
            )),
        };
        let at = self.clock.now();
        self.last.store(Arc::new(Answered { answer, at }));
    }

    /// Probes every `interval` (after the previous probe ended) until the
    /// task is aborted: one probe at a time, never piling up.
    pub async fn run<F, Fut>(self: Arc<Self>, mut probe: F)
    where
        F: FnMut(tokio::time::Instant) -> Fut,
        Fut: Future<Output = T>,
    {
        loop {
            tokio::time::sleep(self.settings.interval).await;
            self.refresh(&mut probe).await;
        }
    }

    /// The last answer and its age, without waiting: a stale answer reads as failed.
    pub fn read(&self) -> Reading<T> {
        let last = self.last.load();
        let age = Duration::from_micros(self.clock.now().saturating_sub(last.at));
        let answer = if age > self.settings.stale_after() {
            last.answer.clone().failed(&format!(
                "the last health probe answered {} ms ago (more than {:?}): the probe is stuck",
                age.as_millis(),
                self.settings.stale_after()
            ))
        } else {
            last.answer.clone()
        };
        Reading { answer, age }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use super::*;
    use crate::FakeClock;

    fn healthy() -> DependencyHealth {
        DependencyHealth {
            name: "postgres",
            ok: true,
            latency_ms: Some(0.3),
            error: None,
            pool: None,
            topology: None,
        }
    }

    fn settings(interval_ms: u64, timeout_ms: u64) -> ProbeOptions {
        ProbeOptions {
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn an_answer_older_than_three_intervals_and_a_timeout_reads_as_failed() {
        let clock = FakeClock::default();
        let probe = Probe::with_clock(
            settings(1000, 500),
            healthy().failed("not probed yet"),
            Arc::new(clock.clone()),
        );
        probe.refresh(|_| async { healthy() }).await;
        clock.advance(Duration::from_millis(3500));
        let fresh = probe.read();
        assert!(fresh.answer.ok, "{:?}", fresh.answer);
        assert_eq!(fresh.age, Duration::from_millis(3500));

        clock.advance(Duration::from_millis(1));
        let stale = probe.read();
        assert!(
            !stale.answer.ok,
            "the last good answer must not be reported"
        );
        let error = stale.answer.error.unwrap();
        assert!(error.contains("3501 ms ago"), "{error}");
        assert!(error.contains("stuck"), "{error}");
        assert_eq!(stale.answer.latency_ms, None);

        // The next answer is fresh again.
        probe.refresh(|_| async { healthy() }).await;
        assert!(probe.read().answer.ok);
    }

    #[tokio::test]
    async fn a_probe_without_an_answer_in_time_is_kept_as_a_failure_saying_so() {
        let probe = Probe::new(settings(1000, 10), healthy());
        probe.refresh(|_| std::future::pending()).await;
        let reading = probe.read();
        assert!(!reading.answer.ok);
        assert_eq!(
            reading.answer.error.as_deref(),
            Some("no answer to the health probe within 10ms")
        );
        assert_eq!(
            reading.answer.name, "postgres",
            "the rest of the answer stays"
        );
    }

    #[tokio::test]
    async fn the_embedded_store_has_nothing_a_probe_could_fail() {
        let memory = StoreHealth {
            store: "memory",
            ok: true,
            dependencies: Vec::new(),
            scripts: Vec::new(),
        };
        assert!(memory.failed("stuck").ok);
    }

    /// Counts the probes in flight; decremented when a probe ends or is dropped.
    struct InFlight<'a>(&'a AtomicUsize);

    impl Drop for InFlight<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn probes_of_a_hung_dependency_run_one_at_a_time_and_never_pile_up() {
        static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
        static MOST: AtomicUsize = AtomicUsize::new(0);
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let probe = Arc::new(Probe::new(settings(1, 5), healthy()));
        let task = tokio::spawn(Arc::clone(&probe).run(|_| async {
            let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
            MOST.fetch_max(now, Ordering::SeqCst);
            STARTED.fetch_add(1, Ordering::SeqCst);
            let _counted = InFlight(&IN_FLIGHT);
            std::future::pending::<DependencyHealth>().await
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while STARTED.load(Ordering::SeqCst) < 5 {
            assert!(Instant::now() < deadline, "the probe task stopped probing");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        assert_eq!(MOST.load(Ordering::SeqCst), 1, "probes overlapped");
        assert!(!probe.read().answer.ok, "a hung dependency reads as failed");
    }
}
