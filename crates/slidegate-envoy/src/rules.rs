//! envoyproxy/ratelimit's rule files: read, validated with the file, the path in it and the reason, and built into a [`RuleSet`] of core policies and a tree to match requests against.
//!
//! The format is envoyproxy/ratelimit's (`domain`, `descriptors` with `key`,
//! optional `value`, `rate_limit`, `shadow_mode`, `detailed_metric`, nested
//! `descriptors`), plus one slidegate extension inside `rate_limit`:
//! `algorithm` (`sliding_log`, the default; `sliding_window`; `gcra`).
//! Anything else is refused rather than ignored: a rule an operator wrote
//! and slidegate silently skipped is a limit nobody enforces.
//!
//! Matching follows envoyproxy/ratelimit's `GetLimit` (see [`RuleSet::find`]).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use slidegate_core::policy::{MAX_LIMIT, MAX_POLICY_NAME_LEN, MAX_SLIDING_LOG_LIMIT};
use slidegate_core::{Algorithm, Policy, PolicyName, PolicySet, Window};

use crate::MAX_ENTRIES;

/// A rule file could not be read or is not a valid rule file.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path` is where in the file, as `descriptors[1].rate_limit.unit`
    /// (empty for the document itself).
    #[error("{}: {}: {reason}", file.display(), if path.is_empty() { "(document)" } else { path.as_str() })]
    Invalid {
        file: PathBuf,
        path: String,
        reason: String,
    },
}

impl RulesError {
    fn invalid(file: &Path, path: impl Into<String>, reason: impl Into<String>) -> Self {
        RulesError::Invalid {
            file: file.to_owned(),
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// The file the error is about.
    pub fn file(&self) -> &Path {
        match self {
            RulesError::Read { file, .. } | RulesError::Invalid { file, .. } => file,
        }
    }
}

/// One rule file's name and text, as read from disk (the watcher compares these).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub text: Vec<u8>,
}

/// Reads `path`: a rule file, or a directory whose `*.yaml` and `*.yml`
/// files (not its subdirectories, and no name starting with `.`) are the
/// rule files, in name order. Hidden names are skipped so that a Kubernetes
/// ConfigMap volume (`rules.yaml -> ..data/rules.yaml`, `..data -> ..2026_…`)
/// is read once, through its symlinks, and not twice.
///
/// # Errors
/// [`RulesError::Read`] when the path or a file cannot be read.
pub fn read_sources(path: &Path) -> Result<Vec<Source>, RulesError> {
    let read_error = |file: &Path| {
        let file = file.to_owned();
        move |source| RulesError::Read { file, source }
    };
    let metadata = std::fs::metadata(path).map_err(read_error(path))?;
    let files = if metadata.is_dir() {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(path).map_err(read_error(path))? {
            let entry = entry.map_err(read_error(path))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let is_rule_file =
                !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"));
            // `metadata` follows symlinks: a ConfigMap's files are symlinks.
            if is_rule_file
                && std::fs::metadata(entry.path()).is_ok_and(|metadata| metadata.is_file())
            {
                files.push(entry.path());
            }
        }
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read(&file).map_err(read_error(&file))?;
            Ok(Source { file, text })
        })
        .collect()
}

/// Reads and parses `path` (see [`read_sources`] and [`RuleSet::parse`]).
///
/// # Errors
/// As [`read_sources`] and [`RuleSet::parse`].
pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
    RuleSet::parse(&read_sources(path)?)
}

/// The unit of a rate limit. envoyproxy/ratelimit also knows `week`,
/// `month` and `year`; the core's windows end at 24 hours, so those are
/// refused with that reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub fn as_duration(self) -> Duration {
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 60 * 60,
            Unit::Day => 24 * 60 * 60,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
        }
    }

    /// Case-insensitive, as envoyproxy/ratelimit reads it (it upper-cases the text).
    fn parse(text: &str) -> Result<Self, String> {
        match text.to_ascii_lowercase().as_str() {
            "second" => Ok(Unit::Second),
            "minute" => Ok(Unit::Minute),
            "hour" => Ok(Unit::Hour),
            "day" => Ok(Unit::Day),
            "week" | "month" | "year" => Err(format!(
                "unit {text:?} is not supported: slidegate's windows are at most a day; use second, minute, hour or day"
            )),
            _ => Err(format!(
                "unknown unit {text:?}; expected second, minute, hour or day"
            )),
        }
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A descriptor's `rate_limit`, built: what a matching request descriptor gets.
#[derive(Debug)]
pub struct Rule {
    /// The core policy counting it; `None` when the rule is `unlimited`.
    policy: Option<Arc<Policy>>,
    /// The rule's own `name` (for `current_limit.name` and `replaces`), if it has one.
    name: Option<String>,
    requests_per_unit: u64,
    unit: Option<Unit>,
    replaces: Vec<String>,
    shadow: bool,
    detailed_metric: bool,
    /// `file: descriptors[0].descriptors[1]`, for logs.
    location: String,
}

impl Rule {
    /// The policy's name, which the limiter counts under; `None` when unlimited.
    pub fn policy(&self) -> Option<&Arc<Policy>> {
        self.policy.as_ref()
    }
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    pub fn is_unlimited(&self) -> bool {
        self.policy.is_none()
    }
    pub fn requests_per_unit(&self) -> u64 {
        self.requests_per_unit
    }
    pub fn unit(&self) -> Option<Unit> {
        self.unit
    }
    pub fn replaces(&self) -> &[String] {
        &self.replaces
    }
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }
    /// Accepted for compatibility; slidegate's metrics are per rule already.
    pub fn detailed_metric(&self) -> bool {
        self.detailed_metric
    }
    pub fn location(&self) -> &str {
        &self.location
    }
}

/// The rules in force: one tree per domain, and the policies they count with.
#[derive(Debug, Default)]
pub struct RuleSet {
    domains: HashMap<Box<str>, Level>,
    /// Every `rate_limit`, indexed by the tree's nodes.
    rules: Vec<Arc<Rule>>,
    policies: Vec<Arc<Policy>>,
}

/// The descriptors at one depth of the tree, by key.
#[derive(Debug, Default)]
struct Level {
    keys: HashMap<Box<str>, KeyRules>,
}

/// The descriptors of one key at one depth: by exact value, by wildcard
/// pattern (in file order), and the key alone (any value).
#[derive(Debug, Default)]
struct KeyRules {
    exact: HashMap<Box<str>, Node>,
    patterns: Vec<(Pattern, Node)>,
    any: Option<Node>,
}

#[derive(Debug, Default)]
struct Node {
    /// Index into [`RuleSet::rules`].
    rule: Option<usize>,
    children: Level,
}

/// A `value` with `*`s, each matching any run of characters (possibly
/// empty), as envoyproxy/ratelimit's wildcards do.
#[derive(Debug)]
struct Pattern {
    parts: Vec<Box<str>>,
}

impl Pattern {
    fn new(value: &str) -> Self {
        Self {
            parts: value.split('*').map(Box::from).collect(),
        }
    }

    fn matches(&self, value: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some(mut remaining) = value.strip_prefix(&**first) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return remaining.is_empty();
        };
        let Some(before_last) = remaining.strip_suffix(&**last) else {
            return false;
        };
        remaining = before_last;
        for part in middle {
            match remaining.find(&**part) {
                Some(at) => remaining = &remaining[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Level {
    fn find(&self, key: &str, value: &str) -> Option<&Node> {
        let rules = self.keys.get(key)?;
        rules
            .exact
            .get(value)
            .or_else(|| {
                rules
                    .patterns
                    .iter()
                    .find(|(pattern, _)| pattern.matches(value))
                    .map(|(_, node)| node)
            })
            .or(rules.any.as_ref())
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl RuleSet {
    /// Parses rule files; a domain may appear in one file only.
    ///
    /// # Errors
    /// [`RulesError::Invalid`] naming the file, the path in it and the reason.
    pub fn parse(sources: &[Source]) -> Result<Self, RulesError> {
        let mut files: HashMap<String, PathBuf> = HashMap::new();
        let mut built = Vec::new();
        for source in sources {
            let document = parse_document(source)?;
            if let Some(first) = files.get(&document.domain) {
                return Err(RulesError::invalid(
                    &source.file,
                    "domain",
                    format!(
                        "domain {:?} is already defined in {}; a domain lives in one file",
                        document.domain,
                        first.display()
                    ),
                ));
            }
            files.insert(document.domain.clone(), source.file.clone());
            built.push((source, document));
        }
        let mut drafts = Vec::new();
        let mut domains = HashMap::new();
        for (source, document) in &built {
            let level = build_level(
                &source.file,
                &document.domain,
                "",
                &[],
                &document.descriptors,
                &mut drafts,
                1,
            )?;
            check_replaces(&source.file, &drafts, &document.domain)?;
            domains.insert(Box::from(document.domain.as_str()), level);
        }
        let policies = name_policies(&mut drafts)?;
        let rules = drafts
            .into_iter()
            .map(|draft| Arc::new(draft.rule))
            .collect();
        Ok(Self {
            domains,
            rules,
            policies,
        })
    }

    /// The rule for one request descriptor, as envoyproxy/ratelimit finds it:
    /// walk the domain's tree one entry at a time; at each depth the entry's
    /// key with its exact value wins, then the first wildcard value (`*`)
    /// that matches in file order, then the key alone (any value). The rule
    /// applies only if it sits at the depth of the descriptor's last entry:
    /// a rule higher up, or a tree that ends before the entries do, is no match.
    pub fn find<'a, I>(&self, domain: &str, entries: I) -> Option<&Arc<Rule>>
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut level = self.domains.get(domain)?;
        let entries = entries.into_iter();
        let last = entries.len().checked_sub(1)?;
        for (depth, (key, value)) in entries.enumerate() {
            let node = level.find(key, value)?;
            if depth == last {
                return node.rule.and_then(|index| self.rules.get(index));
            }
            if node.children.is_empty() {
                return None;
            }
            level = &node.children;
        }
        None
    }

    /// The policies to put in force in the limiter with this rule set.
    pub fn policies(&self) -> PolicySet {
        // Names are unique by construction (see `name_policies`).
        PolicySet::new(self.policies.iter().map(|policy| (**policy).clone())).unwrap_or_default()
    }

    /// The domains, sorted.
    pub fn domains(&self) -> Vec<&str> {
        let mut domains: Vec<&str> = self.domains.keys().map(|domain| &**domain).collect();
        domains.sort_unstable();
        domains
    }

    /// How many `rate_limit`s the files hold (unlimited ones included).
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

// ---- the documents, as serde reads them ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DocumentDoc {
    #[serde(default, deserialize_with = "scalar_string")]
    domain: String,
    #[serde(default)]
    descriptors: Option<Vec<DescriptorDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DescriptorDoc {
    #[serde(default, deserialize_with = "scalar_string")]
    key: String,
    #[serde(default, deserialize_with = "optional_scalar_string")]
    value: Option<String>,
    rate_limit: Option<RateLimitDoc>,
    #[serde(default)]
    descriptors: Option<Vec<DescriptorDoc>>,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    detailed_metric: bool,
    /// Only changes envoyproxy/ratelimit's stats names; accepted, no effect.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted for compatibility; stats names are not envoy-rl's"
    )]
    value_to_metric: bool,
    // Known to envoyproxy/ratelimit but not supported here: refused with
    // their own reason rather than as unknown keys.
    quota_mode: Option<serde_yaml_ng::Value>,
    share_threshold: Option<serde_yaml_ng::Value>,
    metadata: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitDoc {
    #[serde(default, deserialize_with = "optional_scalar_string")]
    unit: Option<String>,
    requests_per_unit: Option<u64>,
    #[serde(default, deserialize_with = "optional_scalar_string")]
    name: Option<String>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    replaces: Option<Vec<ReplacesDoc>>,
    /// slidegate's extension: which algorithm counts this limit.
    #[serde(default, deserialize_with = "optional_scalar_string")]
    algorithm: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplacesDoc {
    #[serde(default, deserialize_with = "scalar_string")]
    name: String,
}

/// A string written as YAML may come out as a number or a boolean
/// (`value: 200`); envoyproxy/ratelimit's YAML reader takes those as their
/// text, so this does too.
struct ScalarString;

impl serde::de::Visitor<'_> for ScalarString {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<String, E> {
        Ok(value.to_owned())
    }
    fn visit_string<E: serde::de::Error>(self, value: String) -> Result<String, E> {
        Ok(value)
    }
    fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<String, E> {
        Ok(value.to_string())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
        Ok(String::new())
    }
}

fn scalar_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    deserializer.deserialize_any(ScalarString)
}

fn optional_scalar_string<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let text = deserializer.deserialize_any(ScalarString)?;
    Ok((!text.is_empty()).then_some(text))
}

struct Document {
    domain: String,
    descriptors: Vec<DescriptorDoc>,
}

fn parse_document(source: &Source) -> Result<Document, RulesError> {
    let file = &source.file;
    let text = std::str::from_utf8(&source.text)
        .map_err(|error| RulesError::invalid(file, "", format!("not UTF-8 text: {error}")))?;
    if text.trim().is_empty() {
        return Err(RulesError::invalid(
            file,
            "",
            "the file is empty; a rule file needs a `domain` and `descriptors`",
        ));
    }
    let deserializer = serde_yaml_ng::Deserializer::from_str(text);
    let document: DocumentDoc =
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            // `.` is the document, `?` a place serde could not name (a syntax error).
            let path = if path == "." || path == "?" {
                String::new()
            } else {
                path
            };
            // serde_yaml_ng may start its message with the path already.
            let reason = error.into_inner().to_string();
            let reason = reason
                .strip_prefix(&format!("{path}: "))
                .map(str::to_owned)
                .unwrap_or(reason);
            RulesError::invalid(file, path, reason)
        })?;
    if document.domain.is_empty() {
        return Err(RulesError::invalid(
            file,
            "domain",
            "the domain is missing or empty",
        ));
    }
    Ok(Document {
        domain: document.domain,
        descriptors: document.descriptors.unwrap_or_default(),
    })
}

// ---- building the tree ----

/// A rule whose policy name is not decided yet: names are chosen once every
/// rule is known, so that two rules whose readable names collide both get a hash.
struct Draft {
    rule: Rule,
    file: PathBuf,
    /// `descriptors[0].descriptors[1]`: where the descriptor is.
    path: String,
    domain: String,
    /// (key, value) from the root to this descriptor.
    segments: Vec<(String, Option<String>)>,
    algorithm: Algorithm,
}

fn build_level(
    file: &Path,
    domain: &str,
    parent_path: &str,
    parent_segments: &[(String, Option<String>)],
    descriptors: &[DescriptorDoc],
    drafts: &mut Vec<Draft>,
    depth: usize,
) -> Result<Level, RulesError> {
    let mut level = Level::default();
    for (index, descriptor) in descriptors.iter().enumerate() {
        let path = if parent_path.is_empty() {
            format!("descriptors[{index}]")
        } else {
            format!("{parent_path}.descriptors[{index}]")
        };
        if depth > MAX_ENTRIES {
            return Err(RulesError::invalid(
                file,
                path,
                format!(
                    "descriptors nest deeper than {MAX_ENTRIES} levels, more entries than a request may send"
                ),
            ));
        }
        if descriptor.key.is_empty() {
            return Err(RulesError::invalid(
                file,
                format!("{path}.key"),
                "the key is missing or empty",
            ));
        }
        refuse_unsupported(file, &path, descriptor)?;
        let mut segments = parent_segments.to_vec();
        segments.push((descriptor.key.clone(), descriptor.value.clone()));
        let rule = match &descriptor.rate_limit {
            Some(rate_limit) => Some(build_rule(
                file, &path, domain, descriptor, rate_limit, &segments, drafts,
            )?),
            None => None,
        };
        let children = build_level(
            file,
            domain,
            &path,
            &segments,
            descriptor.descriptors.as_deref().unwrap_or_default(),
            drafts,
            depth + 1,
        )?;
        let node = Node { rule, children };
        let rules = level
            .keys
            .entry(descriptor.key.as_str().into())
            .or_default();
        let duplicate = || {
            let shown = match &descriptor.value {
                Some(value) => format!("key {:?} with value {value:?}", descriptor.key),
                None => format!("key {:?} without a value", descriptor.key),
            };
            RulesError::invalid(
                file,
                path.clone(),
                format!("{shown} is already defined at this level"),
            )
        };
        match &descriptor.value {
            None => {
                if rules.any.is_some() {
                    return Err(duplicate());
                }
                rules.any = Some(node);
            }
            Some(value) if value.contains('*') => {
                if rules.patterns.iter().any(|(pattern, _)| {
                    pattern
                        .parts
                        .iter()
                        .map(|part| &**part)
                        .collect::<Vec<_>>()
                        .join("*")
                        == *value
                }) {
                    return Err(duplicate());
                }
                rules.patterns.push((Pattern::new(value), node));
            }
            Some(value) => {
                if rules.exact.contains_key(value.as_str()) {
                    return Err(duplicate());
                }
                rules.exact.insert(value.as_str().into(), node);
            }
        }
    }
    Ok(level)
}

fn refuse_unsupported(
    file: &Path,
    path: &str,
    descriptor: &DescriptorDoc,
) -> Result<(), RulesError> {
    let set = |value: &Option<serde_yaml_ng::Value>| {
        value.as_ref().is_some_and(|value| {
            !matches!(
                value,
                serde_yaml_ng::Value::Null | serde_yaml_ng::Value::Bool(false)
            )
        })
    };
    let unsupported = [
        (
            set(&descriptor.quota_mode),
            "quota_mode",
            "quota mode is not supported by slidegate",
        ),
        (
            set(&descriptor.share_threshold),
            "share_threshold",
            "a threshold shared by every value a wildcard matches is not supported by slidegate; each value is counted on its own",
        ),
        (
            set(&descriptor.metadata),
            "metadata",
            "descriptor metadata is not supported by slidegate (it sends no dynamic metadata)",
        ),
    ];
    for (is_set, field, reason) in unsupported {
        if is_set {
            return Err(RulesError::invalid(file, format!("{path}.{field}"), reason));
        }
    }
    Ok(())
}

fn build_rule(
    file: &Path,
    path: &str,
    domain: &str,
    descriptor: &DescriptorDoc,
    rate_limit: &RateLimitDoc,
    segments: &[(String, Option<String>)],
    drafts: &mut Vec<Draft>,
) -> Result<usize, RulesError> {
    let at = |field: &str| format!("{path}.rate_limit.{field}");
    let location = format!("{}: {path}", file.display());
    let mut replaces = Vec::new();
    for (index, replaced) in rate_limit.replaces.iter().flatten().enumerate() {
        if replaced.name.is_empty() {
            return Err(RulesError::invalid(
                file,
                format!("{}[{index}].name", at("replaces")),
                "a replaces entry needs a name",
            ));
        }
        if rate_limit.name.as_deref() == Some(replaced.name.as_str()) {
            return Err(RulesError::invalid(
                file,
                format!("{}[{index}].name", at("replaces")),
                format!("a rate limit cannot replace itself ({:?})", replaced.name),
            ));
        }
        replaces.push(replaced.name.clone());
    }
    let (unit, requests_per_unit, algorithm) = if rate_limit.unlimited {
        if rate_limit.unit.is_some() || rate_limit.requests_per_unit.is_some() {
            return Err(RulesError::invalid(
                file,
                at("unlimited"),
                "an unlimited rate limit takes no unit or requests_per_unit",
            ));
        }
        if rate_limit.algorithm.is_some() {
            return Err(RulesError::invalid(
                file,
                at("algorithm"),
                "an unlimited rate limit counts nothing, so it takes no algorithm",
            ));
        }
        (None, 0, Algorithm::SlidingLog)
    } else {
        let unit = rate_limit
            .unit
            .as_deref()
            .ok_or_else(|| RulesError::invalid(file, at("unit"), "the unit is missing"))
            .and_then(|unit| {
                Unit::parse(unit).map_err(|reason| RulesError::invalid(file, at("unit"), reason))
            })?;
        let requests = rate_limit.requests_per_unit.ok_or_else(|| {
            RulesError::invalid(
                file,
                at("requests_per_unit"),
                "requests_per_unit is missing",
            )
        })?;
        if requests == 0 || requests > MAX_LIMIT {
            return Err(RulesError::invalid(
                file,
                at("requests_per_unit"),
                format!(
                    "requests_per_unit must be between 1 and {MAX_LIMIT} (got {requests}); to refuse every request, Envoy's own filters are the place"
                ),
            ));
        }
        let algorithm = match rate_limit.algorithm.as_deref() {
            Some(text) => text
                .parse::<Algorithm>()
                .map_err(|error| RulesError::invalid(file, at("algorithm"), error.to_string()))?,
            None if requests > MAX_SLIDING_LOG_LIMIT => {
                return Err(RulesError::invalid(
                    file,
                    at("requests_per_unit"),
                    format!(
                        "requests_per_unit {requests} is above {MAX_SLIDING_LOG_LIMIT}, the most the default algorithm sliding_log counts (it keeps one entry per request); set `algorithm: sliding_window` or `algorithm: gcra` in this rate_limit"
                    ),
                ));
            }
            None => Algorithm::SlidingLog,
        };
        if algorithm == Algorithm::SlidingLog && requests > MAX_SLIDING_LOG_LIMIT {
            return Err(RulesError::invalid(
                file,
                at("requests_per_unit"),
                format!(
                    "requests_per_unit {requests} is above {MAX_SLIDING_LOG_LIMIT}, the most sliding_log counts; use sliding_window or gcra"
                ),
            ));
        }
        (Some(unit), requests, algorithm)
    };
    let rule = Rule {
        policy: None,
        name: rate_limit.name.clone(),
        requests_per_unit,
        unit,
        replaces,
        shadow: descriptor.shadow_mode,
        detailed_metric: descriptor.detailed_metric,
        location,
    };
    let index = drafts.len();
    drafts.push(Draft {
        rule,
        file: file.to_owned(),
        path: path.to_owned(),
        domain: domain.to_owned(),
        segments: segments.to_vec(),
        algorithm,
    });
    Ok(index)
}

/// `replaces` must name a rule of the same domain: a request has one domain,
/// so a name from elsewhere could never be replaced and is a typo.
fn check_replaces(file: &Path, drafts: &[Draft], domain: &str) -> Result<(), RulesError> {
    let in_domain = || drafts.iter().filter(|draft| draft.domain == domain);
    let names: HashSet<&str> = in_domain()
        .filter_map(|draft| draft.rule.name.as_deref())
        .collect();
    for draft in in_domain() {
        for (index, replaced) in draft.rule.replaces.iter().enumerate() {
            if !names.contains(replaced.as_str()) {
                return Err(RulesError::invalid(
                    file,
                    format!("{}.rate_limit.replaces[{index}].name", draft.path),
                    format!("no rate limit named {replaced:?} in domain {domain:?}"),
                ));
            }
        }
    }
    Ok(())
}

/// Gives each counted rule its policy: a name readable in metrics and
/// stable across reloads (`rls.<domain>.<key>_<value>.<key>…`), made of the
/// characters policy names allow. A name that had to be changed to fit
/// (other characters, longer than 64 bytes) or that two rules would share
/// gets a hash of the exact domain and path, so it stays unique.
fn name_policies(drafts: &mut [Draft]) -> Result<Vec<Arc<Policy>>, RulesError> {
    let readable: Vec<(String, bool)> = drafts.iter().map(readable_name).collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for (name, _) in &readable {
        *counts.entry(name.as_str()).or_default() += 1;
    }
    let names: Vec<String> = drafts
        .iter()
        .zip(&readable)
        .map(|(draft, (name, exact))| {
            if *exact && counts[name.as_str()] == 1 {
                name.clone()
            } else {
                let suffix = format!("-{:08x}", fnv1a(&canonical(draft)) as u32);
                let keep = MAX_POLICY_NAME_LEN - suffix.len();
                let mut short: String = name.chars().take(keep).collect();
                short.push_str(&suffix);
                short
            }
        })
        .collect();
    let mut seen = HashSet::new();
    let mut policies = Vec::new();
    for (draft, name) in drafts.iter_mut().zip(names) {
        let invalid = |reason: String| {
            RulesError::invalid(&draft.file, format!("{}.rate_limit", draft.path), reason)
        };
        if !seen.insert(name.clone()) {
            return Err(invalid(format!(
                "two rate limits derive the policy name {name:?}"
            )));
        }
        let Some(unit) = draft.rule.unit else {
            continue;
        };
        let policy_name = PolicyName::parse(&name).map_err(|error| invalid(error.to_string()))?;
        let window =
            Window::try_from(unit.as_duration()).map_err(|error| invalid(error.to_string()))?;
        let policy = Policy::new(
            policy_name,
            draft.algorithm,
            draft.rule.requests_per_unit,
            window,
            1,
        )
        .map_err(|error| invalid(error.to_string()))?
        .with_shadow(draft.rule.shadow);
        let policy = Arc::new(policy);
        draft.rule.policy = Some(Arc::clone(&policy));
        policies.push(policy);
    }
    Ok(policies)
}

/// The readable name, and whether it spells domain and path exactly.
fn readable_name(draft: &Draft) -> (String, bool) {
    let mut raw = format!("rls.{}", draft.domain);
    for (key, value) in &draft.segments {
        raw.push('.');
        raw.push_str(key);
        if let Some(value) = value {
            raw.push('_');
            raw.push_str(value);
        }
    }
    let sanitized: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact = sanitized == raw && raw.len() <= MAX_POLICY_NAME_LEN;
    (sanitized, exact)
}

/// Domain and path, each part length-prefixed, so two paths never encode alike.
fn canonical(draft: &Draft) -> String {
    let mut text = format!("{}:{}", draft.domain.len(), draft.domain);
    for (key, value) in &draft.segments {
        text.push_str(&format!("|{}:{key}", key.len()));
        match value {
            Some(value) => text.push_str(&format!("={}:{value}", value.len())),
            None => text.push('~'),
        }
    }
    text
}

/// FNV-1a, 64 bits: a hash whose value never changes between Rust releases
/// (std's `DefaultHasher` makes no such promise), so names stay stable.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
