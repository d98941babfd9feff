use super::*;

fn source(name: &str, text: &str) -> Source {
    Source {
        file: PathBuf::from(name),
        text: text.as_bytes().to_vec(),
    }
}

fn parse(text: &str) -> Result<RuleSet, RulesError> {
    RuleSet::parse(&[source("rules.yaml", text)])
}

/// (file, path, reason) of a refused document.
fn refused(text: &str) -> (String, String, String) {
    match parse(text) {
        Err(RulesError::Invalid { file, path, reason }) => {
            (file.display().to_string(), path, reason)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const BASIC: &str = r#"
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: { unit: second, requests_per_unit: 5 }
      - key: subkey1
        value: subvalue1
        rate_limit: { unit: second, requests_per_unit: 10 }
  - key: key2
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: key2
    value: value2
    rate_limit: { unit: MINUTE, requests_per_unit: 30 }
  - key: key2
    value: value3
  - key: key4
    rate_limit: { name: key4_rate_limit, unit: Day, requests_per_unit: 1 }
  - key: key6
    rate_limit: { unlimited: true }
  - key: key7
    detailed_metric: true
    rate_limit: { unit: hour, requests_per_unit: 70 }
  - key: wild
    value: foo*
    rate_limit: { unit: minute, requests_per_unit: 21 }
  - key: wild
    value: foo*bar*baz
    rate_limit: { unit: minute, requests_per_unit: 22 }
  - key: wild
    value: fooexact
    rate_limit: { unit: minute, requests_per_unit: 23 }
  - key: wild
    rate_limit: { unit: minute, requests_per_unit: 24 }
  - key: mid
    value: a*z
    rate_limit: { unit: minute, requests_per_unit: 25 }
"#;

fn limit_of(set: &RuleSet, entries: &[(&str, &str)]) -> Option<u64> {
    set.find("test-domain", entries.iter().copied())
        .map(|rule| rule.requests_per_unit())
}

#[test]
fn matching_follows_envoy_ratelimit() {
    let set = parse(BASIC).unwrap();
    assert_eq!(limit_of(&set, &[("key2", "anything")]), Some(20));
    assert_eq!(limit_of(&set, &[("key2", "value2")]), Some(30));
    // An exact value with no rate_limit shadows the key-only rule: not limited.
    assert_eq!(limit_of(&set, &[("key2", "value3")]), None);
    assert_eq!(
        limit_of(&set, &[("key1", "value1"), ("subkey1", "x")]),
        Some(5)
    );
    assert_eq!(
        limit_of(&set, &[("key1", "value1"), ("subkey1", "subvalue1")]),
        Some(10)
    );
    // Depth must match: the level above has no limit, deeper entries find nothing.
    assert_eq!(limit_of(&set, &[("key1", "value1")]), None);
    assert_eq!(limit_of(&set, &[("key2", "v"), ("extra", "e")]), None);
    assert_eq!(limit_of(&set, &[("key1", "other"), ("subkey1", "x")]), None);
    assert_eq!(limit_of(&set, &[("nokey", "x")]), None);
    assert!(set.find("other-domain", [("key2", "x")]).is_none());
    assert!(set.find("test-domain", std::iter::empty()).is_none());
    // Exact first, then wildcards in file order, then key-only.
    assert_eq!(limit_of(&set, &[("wild", "fooexact")]), Some(23));
    assert_eq!(limit_of(&set, &[("wild", "foo")]), Some(21));
    assert_eq!(limit_of(&set, &[("wild", "foo-bar-baz")]), Some(21));
    assert_eq!(limit_of(&set, &[("wild", "fo")]), Some(24));
    assert_eq!(limit_of(&set, &[("mid", "abcz")]), Some(25));
    assert_eq!(limit_of(&set, &[("mid", "az")]), Some(25));
    assert_eq!(limit_of(&set, &[("mid", "abc")]), None);
    let unlimited = set.find("test-domain", [("key6", "x")]).unwrap();
    assert!(unlimited.is_unlimited());
    let named = set.find("test-domain", [("key4", "x")]).unwrap();
    assert_eq!(named.name(), Some("key4_rate_limit"));
    assert_eq!(named.unit(), Some(Unit::Day));
}

#[test]
fn patterns_match_as_envoy_ratelimit_wildcards() {
    let cases = [
        ("foo*", "foo", true),
        ("foo*", "foobar", true),
        ("foo*", "fo", false),
        ("*bar", "bar", true),
        ("*bar", "xbar", true),
        ("*bar", "barx", false),
        ("a*b*c", "abc", true),
        ("a*b*c", "a-b-c", true),
        ("a*b*c", "acb", false),
        ("ab*ba", "aba", false),
        ("*", "", true),
    ];
    for (pattern, value, expected) in cases {
        assert_eq!(
            Pattern::new(pattern).matches(value),
            expected,
            "{pattern} ~ {value}"
        );
    }
}

#[test]
fn policies_get_readable_stable_unique_names() {
    let set = parse(BASIC).unwrap();
    let names: Vec<String> = set
        .policies()
        .iter_sorted()
        .iter()
        .map(|policy| policy.name().to_string())
        .collect();
    assert!(
        names.contains(&"rls.test-domain.key2".to_owned()),
        "{names:?}"
    );
    assert!(names.contains(&"rls.test-domain.key1_value1.subkey1_subvalue1".to_owned()));
    // `*` is not a policy-name character: sanitized, with a hash.
    assert!(
        names
            .iter()
            .any(|name| name.starts_with("rls.test-domain.wild_foo_-")),
        "{names:?}"
    );
    assert_eq!(set.policies().len(), 11);
    for name in &names {
        assert!(PolicyName::parse(name).is_ok());
    }
    // Stable: the same files name the same policies.
    let again: Vec<String> = parse(BASIC)
        .unwrap()
        .policies()
        .iter_sorted()
        .iter()
        .map(|policy| policy.name().to_string())
        .collect();
    assert_eq!(names, again);

    let long = format!(
        "domain: d\ndescriptors:\n  - key: {}\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}\n  - key: a_b\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}\n  - key: a\n    value: b\n    rate_limit: {{ unit: second, requests_per_unit: 1 }}\n",
        "k".repeat(100)
    );
    let set = parse(&long).unwrap();
    let names: Vec<String> = set
        .policies()
        .iter_sorted()
        .iter()
        .map(|policy| policy.name().to_string())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(names.iter().all(|name| name.len() <= 64));
    // `a_b` and `a`=`b` would both read `rls.d.a_b`: both get a hash.
    assert!(!names.contains(&"rls.d.a_b".to_owned()), "{names:?}");
}

#[test]
fn algorithm_extension_and_the_sliding_log_ceiling() {
    let set = parse(
        "domain: d\ndescriptors:\n  - key: big\n    rate_limit: { unit: second, requests_per_unit: 500000, algorithm: gcra }\n",
    )
    .unwrap();
    let policy = Arc::clone(set.find("d", [("big", "x")]).unwrap().policy().unwrap());
    assert_eq!(policy.algorithm(), Algorithm::Gcra);
    assert_eq!(policy.limit(), 500_000);

    let (file, path, reason) = refused(
        "domain: d\ndescriptors:\n  - key: big\n    rate_limit: { unit: second, requests_per_unit: 500000 }\n",
    );
    assert_eq!(file, "rules.yaml");
    assert_eq!(path, "descriptors[0].rate_limit.requests_per_unit");
    assert!(reason.contains("algorithm: sliding_window"), "{reason}");

    let (_, path, reason) = refused(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: second, requests_per_unit: 5, algorithm: leaky }\n",
    );
    assert_eq!(path, "descriptors[0].rate_limit.algorithm");
    assert!(reason.contains("leaky"), "{reason}");
}

#[test]
fn errors_name_the_file_the_path_and_the_reason() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "domain: d\ndescriptors:\n  - key: a\n  - key: b\n    descriptors:\n      - key: c\n        rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
            "descriptors[1].descriptors[0].rate_limit.unit",
            "unknown unit",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: week, requests_per_unit: 1 }\n",
            "descriptors[0].rate_limit.unit",
            "at most a day",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limt: { unit: second, requests_per_unit: 1 }\n",
            "descriptors[0].rate_limt",
            "unknown field `rate_limt`",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1, burst: 3 }\n",
            "descriptors[0].rate_limit.burst",
            "unknown field `burst`",
        ),
        (
            "domain: d\ndescriptors:\n  - value: a\n",
            "descriptors[0].key",
            "key is missing",
        ),
        ("descriptors: []\n", "domain", "domain is missing"),
        ("domain: \"\"\n", "domain", "domain is missing"),
        (
            "domain: d\ndescriptors:\n  - key: a\n  - key: a\n",
            "descriptors[1]",
            "already defined",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    value: v\n  - key: a\n    value: v\n",
            "descriptors[1]",
            "already defined",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1, replaces: [ { name: ghost } ] }\n",
            "descriptors[0].rate_limit.replaces[0].name",
            "no rate limit named \"ghost\"",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { name: me, unit: second, requests_per_unit: 1, replaces: [ { name: me } ] }\n",
            "descriptors[0].rate_limit.replaces[0].name",
            "cannot replace itself",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unlimited: true, unit: day, requests_per_unit: 25 }\n",
            "descriptors[0].rate_limit.unlimited",
            "takes no unit",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 0 }\n",
            "descriptors[0].rate_limit.requests_per_unit",
            "between 1 and",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second }\n",
            "descriptors[0].rate_limit.requests_per_unit",
            "missing",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    quota_mode: true\n",
            "descriptors[0].quota_mode",
            "not supported",
        ),
        (
            "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: -1 }\n",
            "descriptors[0].rate_limit.requests_per_unit",
            "invalid type: integer `-1`",
        ),
        ("", "", "empty"),
        ("domain: d\ndescriptors: {\n", "descriptors", "line 2"),
        ("domain: d\n: : x\n  y\n\tz: [\n", "", "line"),
    ];
    for (text, path, reason) in cases {
        let (file, got_path, got_reason) = refused(text);
        assert_eq!(file, "rules.yaml");
        assert_eq!(&got_path, path, "for {text:?}: {got_reason}");
        assert!(
            got_reason.contains(reason),
            "for {text:?}: {got_reason:?} lacks {reason:?}"
        );
        assert!(
            !path.is_empty() && !got_reason.starts_with(path) || path.is_empty(),
            "path repeated: {got_reason}"
        );
    }
    let error = parse("domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n")
        .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("rules.yaml: descriptors[0].rate_limit.unit: unknown unit"),
        "{error}"
    );
}

#[test]
fn numbers_and_booleans_are_taken_as_their_text_and_envoy_keys_are_accepted() {
    let set = parse(
        "domain: d\ndescriptors:\n  - key: status\n    value: 200\n    detailed_metric: true\n    value_to_metric: true\n    rate_limit: { unit: second, requests_per_unit: 3 }\n  - key: flag\n    value: true\n    shadow_mode: true\n    rate_limit: { unit: second, requests_per_unit: 4 }\n",
    )
    .unwrap();
    assert_eq!(
        set.find("d", [("status", "200")])
            .unwrap()
            .requests_per_unit(),
        3
    );
    let shadow = set.find("d", [("flag", "true")]).unwrap();
    assert!(shadow.is_shadow());
    assert!(shadow.policy().unwrap().is_shadow());
}

#[test]
fn a_domain_lives_in_one_file() {
    let error = RuleSet::parse(&[
        source("a.yaml", "domain: d\n"),
        source("b.yaml", "domain: d\n"),
    ])
    .unwrap_err();
    let RulesError::Invalid { file, path, reason } = error else {
        panic!("expected a refusal");
    };
    assert_eq!(file, PathBuf::from("b.yaml"));
    assert_eq!(path, "domain");
    assert!(reason.contains("a.yaml"), "{reason}");
}

#[test]
fn a_directory_reads_its_yaml_files_once_through_configmap_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("..2026_01_01");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("one.yaml"), "domain: one\n").unwrap();
    std::fs::write(data.join("two.yml"), "domain: two\n").unwrap();
    std::fs::write(data.join("notes.txt"), "not rules").unwrap();
    std::os::unix::fs::symlink("..2026_01_01", dir.path().join("..data")).unwrap();
    for name in ["one.yaml", "two.yml", "notes.txt"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    let set = load(dir.path()).unwrap();
    assert_eq!(set.domains(), vec!["one", "two"]);
    let error = load(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(error, RulesError::Read { .. }), "{error}");
}
