//! Rules reloaded while Envoy calls: every answer is one version's, and an invalid file keeps the last good rules.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitResponse;
use slidegate_envoy::watch::{ReloadOutcome, RulesWatcher};

use crate::helpers::{OK, descriptor, eventually, request, spawn};

const V1: &str = "domain: reload\ndescriptors:\n  - key: k\n    rate_limit: { name: v1, unit: minute, requests_per_unit: 1000 }\n  - key: only_v1\n    rate_limit: { name: v1, unit: minute, requests_per_unit: 1000 }\n";
const V2: &str = "domain: reload\ndescriptors:\n  - key: k\n    rate_limit: { name: v2, unit: minute, requests_per_unit: 2000, algorithm: sliding_window }\n  - key: only_v2\n    rate_limit: { name: v2, unit: minute, requests_per_unit: 2000 }\n";
const INVALID: &str = "domain: reload\ndescriptors:\n  - key: k\n    rate_limt: { name: v3, unit: minute, requests_per_unit: 5 }\n";

const WAIT: Duration = Duration::from_secs(20);

fn three(value: &str) -> envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest {
    request(
        "reload",
        vec![
            descriptor(&[("k", value)]),
            descriptor(&[("only_v1", value)]),
            descriptor(&[("only_v2", value)]),
        ],
    )
}

/// Which version answered, or a panic if the answer mixes them.
fn version(response: &RateLimitResponse) -> &'static str {
    assert_eq!(response.overall_code, OK);
    let limit = |index: usize| {
        response.statuses[index]
            .current_limit
            .as_ref()
            .map(|limit| (limit.name.as_str(), limit.requests_per_unit))
    };
    match (limit(0), limit(1), limit(2)) {
        (Some(("v1", 1000)), Some(("v1", 1000)), None) => "v1",
        (Some(("v2", 2000)), None, Some(("v2", 2000))) => "v2",
        other => panic!("an answer mixing rule versions: {other:?}"),
    }
}

/// Writes `text` to `path` as editors and deploy tools do: a new file renamed over the old.
fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// Swaps a ConfigMap-style directory to a new version: `..data` is a
/// symlink to a versioned directory, replaced by a rename, as the kubelet does.
fn swap_configmap(dir: &Path, version: usize, text: &str) {
    let versioned = format!("..v{version}");
    std::fs::create_dir(dir.join(&versioned)).unwrap();
    std::fs::write(dir.join(&versioned).join("rules.yaml"), text).unwrap();
    let link = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&versioned, &link).unwrap();
    std::fs::rename(&link, dir.join("..data")).unwrap();
    if !dir.join("rules.yaml").exists() {
        std::os::unix::fs::symlink("..data/rules.yaml", dir.join("rules.yaml")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rules_flipping_under_load_answer_one_version_at_a_time() {
    let rls = Arc::new(spawn(V1).await);
    let configmap = rls.dir.path().join("configmap");
    std::fs::create_dir(&configmap).unwrap();
    swap_configmap(&configmap, 0, V1);
    let invalid_seen = Arc::new(AtomicU64::new(0));
    let on_reload = {
        let invalid_seen = Arc::clone(&invalid_seen);
        Arc::new(move |outcome: &ReloadOutcome<'_>| {
            if let ReloadOutcome::Invalid(error) = outcome {
                assert!(
                    error.to_string().contains("descriptors[0].rate_limt"),
                    "{error}"
                );
                invalid_seen.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Nothing seen yet: the first poll loads the ConfigMap.
    let watcher = RulesWatcher::start(
        Arc::clone(&rls.engine),
        configmap.clone(),
        Duration::from_millis(5),
        Vec::new(),
        Some(on_reload),
    );
    let counters = Arc::clone(watcher.counters());
    eventually(WAIT, "the first load", || async { counters.ok() == 1 }).await;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let callers: Vec<_> = (0..8)
        .map(|caller| {
            let (rls, stop, seen) = (Arc::clone(&rls), Arc::clone(&stop), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let value = format!("caller-{caller}-{}", calls % 50);
                    let response = rls
                        .call(three(&value))
                        .await
                        .expect("no error while reloading");
                    let index = usize::from(version(&response) == "v2");
                    seen[index].fetch_add(1, Ordering::Relaxed);
                    calls += 1;
                }
                calls
            })
        })
        .collect();

    let mut loaded = 1;
    let mut invalid = 0;
    for round in 1..=12 {
        let (text, is_valid) = match round % 3 {
            0 => (INVALID, false),
            1 => (V2, true),
            _ => (V1, true),
        };
        swap_configmap(&configmap, round, text);
        if is_valid {
            loaded += 1;
            eventually(WAIT, "a reload", || async { counters.ok() == loaded }).await;
        } else {
            invalid += 1;
            eventually(WAIT, "an invalid reload", || async {
                counters.invalid() == invalid
            })
            .await;
        }
        // Let some calls land on this version.
        let before = seen[0].load(Ordering::Relaxed) + seen[1].load(Ordering::Relaxed);
        eventually(WAIT, "calls on this version", || async {
            seen[0].load(Ordering::Relaxed) + seen[1].load(Ordering::Relaxed) > before + 8
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for caller in callers {
        assert!(caller.await.unwrap() > 0);
    }
    assert!(seen[0].load(Ordering::Relaxed) > 0 && seen[1].load(Ordering::Relaxed) > 0);
    assert_eq!(invalid_seen.load(Ordering::Relaxed), invalid);
}

#[tokio::test]
async fn an_invalid_file_keeps_the_last_good_rules() {
    let rls = spawn(V1).await;
    let (_, seen) = slidegate_envoy::watch::load_initial(&rls.rules_path).unwrap();
    let watcher = RulesWatcher::start(
        Arc::clone(&rls.engine),
        rls.rules_path.clone(),
        Duration::from_millis(5),
        seen,
        None,
    );
    let counters = Arc::clone(watcher.counters());
    replace_file(&rls.rules_path, INVALID);
    eventually(WAIT, "the invalid file to be judged", || async {
        counters.invalid() == 1
    })
    .await;
    assert_eq!(version(&rls.ok(three("a")).await), "v1");
    // A missing file is no reason to forget the rules either.
    std::fs::remove_file(&rls.rules_path).unwrap();
    eventually(WAIT, "the missing file to be judged", || async {
        counters.invalid() == 2
    })
    .await;
    assert_eq!(version(&rls.ok(three("a")).await), "v1");
    replace_file(&rls.rules_path, V2);
    eventually(WAIT, "the good file to load", || async {
        counters.ok() == 1
    })
    .await;
    assert_eq!(version(&rls.ok(three("a")).await), "v2");
    // Unchanged files are not reloaded again.
    assert_eq!((counters.ok(), counters.invalid()), (1, 2));
}
