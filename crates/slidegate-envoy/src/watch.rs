//! Keeps the rules in force equal to the files: polls them, and on a change parses them and swaps the rule set; an invalid change keeps the last good rules, logged and counted.
//!
//! Polling, not file-system events: a Kubernetes ConfigMap volume changes by
//! swapping a `..data` symlink, which inotify-style watches on the files
//! miss, and polling a few small files every second costs nothing. A change
//! is what is read, not modification times (a swap can keep them): the
//! names and bytes of every rule file, compared with the last read. A change
//! is read twice and used only if both reads agree, so a file caught half
//! written, or a directory caught mid-swap, waits for the next poll instead
//! of being judged.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use slidegate_core::Store;
use tokio::task::JoinHandle;

use crate::engine::Engine;
use crate::rules::{self, RuleSet, RulesError, Source};

/// Reloads by result, for the server's metrics (`reloads{result="ok"|"invalid"}`).
#[derive(Debug, Default)]
pub struct ReloadCounters {
    ok: AtomicU64,
    invalid: AtomicU64,
}

impl ReloadCounters {
    /// Changes put in force.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
    /// Changes refused (the last good rules stayed in force).
    pub fn invalid(&self) -> u64 {
        self.invalid.load(Ordering::Relaxed)
    }
}

/// What a reload did, for [`OnReload`].
#[derive(Debug)]
pub enum ReloadOutcome<'a> {
    /// The changed files are in force.
    Loaded { domains: usize, rules: usize },
    /// The changed files were refused; the last good rules stay in force.
    Invalid(&'a RulesError),
}

/// Called after every reload attempt (from the watcher's task).
pub type OnReload = Arc<dyn Fn(&ReloadOutcome<'_>) + Send + Sync>;

/// The first load, at start-up: there are no good rules to keep yet, so an
/// invalid file is the caller's error (start-up should fail).
///
/// # Errors
/// As [`rules::load`].
pub fn load_initial(path: &std::path::Path) -> Result<(RuleSet, Vec<Source>), RulesError> {
    let sources = rules::read_sources(path)?;
    let rules = RuleSet::parse(&sources)?;
    Ok((rules, sources))
}

/// The background task re-reading the rules; stopped when dropped.
pub struct RulesWatcher {
    counters: Arc<ReloadCounters>,
    task: JoinHandle<()>,
}

impl RulesWatcher {
    /// Polls `path` every `interval` and installs changed rules in `engine`.
    /// `seen`: the sources the rules in force came from (see [`load_initial`]).
    pub fn start<S: Store>(
        engine: Arc<Engine<S>>,
        path: PathBuf,
        interval: Duration,
        seen: Vec<Source>,
        on_reload: Option<OnReload>,
    ) -> Self {
        let counters = Arc::new(ReloadCounters::default());
        let task = tokio::spawn(watch(
            engine,
            path,
            interval,
            seen,
            Arc::clone(&counters),
            on_reload,
        ));
        Self { counters, task }
    }

    pub fn counters(&self) -> &Arc<ReloadCounters> {
        &self.counters
    }
}

impl Drop for RulesWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the last poll read: the files, or why they could not be read.
#[derive(PartialEq)]
enum Seen {
    Sources(Vec<Source>),
    Unreadable(String),
}

async fn read(path: &std::path::Path) -> Result<Vec<Source>, RulesError> {
    let path = path.to_owned();
    // Blocking reads belong off the async workers that answer Envoy.
    tokio::task::spawn_blocking(move || rules::read_sources(&path))
        .await
        .unwrap_or_else(|join| {
            Err(RulesError::Read {
                file: PathBuf::new(),
                source: std::io::Error::other(join.to_string()),
            })
        })
}

async fn watch<S: Store>(
    engine: Arc<Engine<S>>,
    path: PathBuf,
    interval: Duration,
    seen: Vec<Source>,
    counters: Arc<ReloadCounters>,
    on_reload: Option<OnReload>,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = Seen::Sources(seen);
    loop {
        ticks.tick().await;
        let first = read(&path).await;
        let now = match &first {
            Ok(sources) => Seen::Sources(sources.clone()),
            Err(error) => Seen::Unreadable(error.to_string()),
        };
        if now == last {
            continue;
        }
        // Judge only what reads the same twice (see the module).
        let second = read(&path).await;
        let stable = match (&first, &second) {
            (Ok(a), Ok(b)) => a == b,
            (Err(a), Err(b)) => a.to_string() == b.to_string(),
            _ => false,
        };
        if !stable {
            continue;
        }
        last = now;
        let parsed = first.and_then(|sources| RuleSet::parse(&sources));
        match parsed {
            Ok(rules) => {
                let outcome = ReloadOutcome::Loaded {
                    domains: rules.domains().len(),
                    rules: rules.rule_count(),
                };
                engine.install(rules).await;
                counters.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(path = %path.display(), ?outcome, "envoy rate limit rules reloaded");
                if let Some(callback) = &on_reload {
                    callback(&outcome);
                }
            }
            Err(error) => {
                counters.invalid.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    path = %path.display(),
                    error = %error,
                    "envoy rate limit rules not reloaded; the last good rules stay in force"
                );
                if let Some(callback) = &on_reload {
                    callback(&ReloadOutcome::Invalid(&error));
                }
            }
        }
    }
}
