//! Cost of one decision on the embedded store: `MemoryStore::decide` with the real `SystemClock`.
//!
//! What is measured: one call of `decide` — read the clock, build the
//! composite map key in the thread-local buffer, look the entry up in the
//! `DashMap` (write lock of one shard), run the algorithm, update the entry.
//! Nothing else: no HTTP, no JSON, no Tokio, no Redis. Every case measures the
//! *admit* path of a key that already has state; keys are created before
//! timing starts and the benchmark never sweeps, so no insert is timed.
//!
//! Limits are chosen so that checks stay admitted for the whole run:
//!
//! - `gcra` and `sliding_window`: 1,000,000,000 per hour. A hot key at ~10^7
//!   decisions/s uses a few percent of that burst over the run.
//! - `sliding_log`: its limit is capped at 100,000 (one log entry per unit),
//!   and a hot key would fill a 1 h log within milliseconds, after which every
//!   check would be a denial — a different, cheaper path. So it runs with a
//!   window of 1 ms (the smallest allowed) and the maximum limit: the hot key's
//!   log then holds the last millisecond of admissions (~10^4 units in up to
//!   ~1,000 per-microsecond runs, far below the limit), and each decision
//!   evicts what left the window and appends, i.e. the steady state of a busy
//!   key. With 100,000 keys each key is revisited only every few milliseconds,
//!   so its log holds one run that is evicted and replaced at every decision.
//!
//! Cases:
//!
//! - `single/<algorithm>/hot_key`: one thread, one key (best case: the entry
//!   stays in cache).
//! - `single/<algorithm>/100k_keys`: one thread, keys drawn uniformly at random
//!   from 100,000 distinct keys (precomputed strings and a precomputed draw
//!   sequence, so the timed loop allocates nothing beyond what `decide` does).
//! - `single/gcra/new_key_full_store`: one thread, every decision a key the
//!   store has never seen, into a store already holding its bound of 100,000
//!   keys, none of them idle: the insert path with its share of the evictions
//!   that keep the store within `limiter.max_keys` (one pass over the map per
//!   10,000 new keys). The key is formatted into a reused buffer inside the
//!   timed loop, so that cost (tens of nanoseconds) is included.
//! - `contended/<algorithm>/{hot_key,100k_keys}`: two threads (the machine has
//!   two cores) deciding on the same store at once. Reported time is wall time
//!   per decision *across both threads* (wall time of the sample divided by the
//!   total decisions of both threads): perfect scaling would halve the
//!   single-thread figure; the hot key shows the cost of two cores fighting
//!   over one shard lock and one cache line.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use slidegate_core::memory::MemoryStore;
use slidegate_core::{Algorithm, LimiterKey, Policy, PolicyName, SystemClock, Window};

/// Distinct keys in the "many keys" cases.
const KEY_SPACE: usize = 100_000;
/// Length of the precomputed random draw sequence (a power of two, so the
/// index wraps with a mask). 4 MiB of `u32`, read sequentially.
const DRAWS: usize = 1 << 20;
/// Decision threads in the contended cases: one per core on this machine.
const THREADS: usize = 2;
const HOT_KEY: &str = "user-hot";

fn policy(algorithm: Algorithm) -> Policy {
    let (limit, window) = match algorithm {
        Algorithm::SlidingLog => (100_000, "1ms"),
        Algorithm::SlidingWindow | Algorithm::Gcra => (1_000_000_000, "1h"),
    };
    Policy::new(
        PolicyName::parse(&format!("bench-{algorithm}")).expect("a valid policy name"),
        algorithm,
        limit,
        Window::parse(window).expect("a valid window"),
        1,
    )
    .expect("a valid policy")
}

/// The key strings and a uniformly random sequence of indices into them.
struct KeySet {
    keys: Vec<String>,
    draws: Vec<u32>,
}

impl KeySet {
    fn new() -> Self {
        let keys = (0..KEY_SPACE).map(|i| format!("user-{i:06}")).collect();
        // xorshift64*: deterministic, good enough to scatter keys over the map.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let draws = (0..DRAWS)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let random = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
                ((random >> 32) % KEY_SPACE as u64) as u32
            })
            .collect();
        Self { keys, draws }
    }

    /// The `n`-th drawn key.
    fn key(&self, n: usize) -> LimiterKey<'_> {
        let index = self.draws[n & (DRAWS - 1)] as usize;
        LimiterKey::parse(&self.keys[index]).expect("a valid key")
    }
}

/// A fresh store where every key of the case already has state, with room
/// for all of them (no case but `new_key_full_store` evicts).
fn store_with(policy: &Policy, keys: &KeySet) -> MemoryStore {
    let store = MemoryStore::bounded(Arc::new(SystemClock), 2 * KEY_SPACE, "embedded");
    store.decide(policy, LimiterKey::parse(HOT_KEY).expect("a valid key"), 1);
    for key in &keys.keys {
        store.decide(policy, LimiterKey::parse(key).expect("a valid key"), 1);
    }
    store
}

/// New keys into a store at its bound: inserts and the evictions they cause.
fn full_store(group: &mut BenchmarkGroup<'_, WallTime>, keys: &KeySet) {
    let policy = policy(Algorithm::Gcra);
    let store = MemoryStore::bounded(Arc::new(SystemClock), KEY_SPACE, "embedded");
    for key in &keys.keys {
        store.decide(&policy, LimiterKey::parse(key).expect("a valid key"), 1);
    }
    group.bench_function("single/gcra/new_key_full_store", |b| {
        let mut buffer = String::with_capacity(32);
        let mut n = 0u64;
        b.iter(|| {
            n += 1;
            buffer.clear();
            std::fmt::Write::write_fmt(&mut buffer, format_args!("new-{n}")).expect("a String");
            let key = LimiterKey::parse(&buffer).expect("a valid key");
            black_box(store.decide(&policy, key, 1))
        });
    });
    assert!(store.len() <= KEY_SPACE, "the bound held");
}

fn single(group: &mut BenchmarkGroup<'_, WallTime>, keys: &KeySet) {
    for algorithm in Algorithm::ALL {
        let policy = policy(algorithm);

        let store = store_with(&policy, keys);
        let hot = LimiterKey::parse(HOT_KEY).expect("a valid key");
        group.bench_function(format!("single/{algorithm}/hot_key"), |b| {
            b.iter(|| black_box(store.decide(&policy, black_box(hot), 1)));
        });
        drop(store);

        let store = store_with(&policy, keys);
        group.bench_function(format!("single/{algorithm}/100k_keys"), |b| {
            let mut n = 0usize;
            b.iter(|| {
                n = n.wrapping_add(1);
                black_box(store.decide(&policy, keys.key(n), 1))
            });
        });
    }
}

/// Runs `iters` decisions split over [`THREADS`] threads that start together;
/// returns the wall time from the common start to the last thread's end.
fn contended_run(iters: u64, decide_nth: &(dyn Fn(usize, usize) + Sync)) -> Duration {
    let barrier = Barrier::new(THREADS);
    let spans: Vec<(Instant, Instant)> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let barrier = &barrier;
                // Thread 0 takes the remainder when iters is odd.
                let share =
                    iters / THREADS as u64 + u64::from(thread == 0) * (iters % THREADS as u64);
                scope.spawn(move || {
                    barrier.wait();
                    let start = Instant::now();
                    for n in 0..share as usize {
                        decide_nth(thread, n);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("a decision thread panicked"))
            .collect()
    });
    let start = spans.iter().map(|span| span.0).min().expect("two threads");
    let end = spans.iter().map(|span| span.1).max().expect("two threads");
    end - start
}

fn contended(group: &mut BenchmarkGroup<'_, WallTime>, keys: &KeySet) {
    for algorithm in Algorithm::ALL {
        let policy = policy(algorithm);

        let store = store_with(&policy, keys);
        let hot = LimiterKey::parse(HOT_KEY).expect("a valid key");
        group.bench_function(format!("contended/{algorithm}/hot_key"), |b| {
            b.iter_custom(|iters| {
                contended_run(iters, &|_, _| {
                    black_box(store.decide(&policy, black_box(hot), 1));
                })
            });
        });
        drop(store);

        let store = store_with(&policy, keys);
        group.bench_function(format!("contended/{algorithm}/100k_keys"), |b| {
            b.iter_custom(|iters| {
                contended_run(iters, &|thread, n| {
                    // Each thread walks its own stretch of the draw sequence.
                    let n = n.wrapping_add(thread * (DRAWS / THREADS));
                    black_box(store.decide(&policy, keys.key(n), 1));
                })
            });
        });
    }
}

fn decisions(c: &mut Criterion) {
    let keys = KeySet::new();
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    single(&mut group, &keys);
    full_store(&mut group, &keys);
    contended(&mut group, &keys);
    group.finish();
}

criterion_group! {
    name = benches;
    // Quick on purpose: ~4 s per case, 13 cases.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    targets = decisions
}
criterion_main!(benches);
