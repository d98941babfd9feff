//! Which policies limit a request seen by a gateway, and what each counts it as: match rules and key specs.
//!
//! A gateway asks "may this request through?" (`/v1/forward-auth`); it names
//! no policy and no key. Policies that carry a match rule answer for it:
//! the rule says which requests (methods, path prefix, host), the key spec
//! says what to count per (client address, API key, a header, or several).
//! This module knows no HTTP types: the caller hands it plain strings.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::key::MAX_KEY_LEN;
use super::policy::{Policy, PolicySet};

/// Most parts in one key spec. Four parts can join to more than the 256-byte
/// key limit (four 32-byte header names with their digests: 303 bytes), so a
/// longer key is digested as a whole (see [`KeySpec::derive`]).
pub const MAX_KEY_PARTS: usize = 4;

/// Longest `path_prefix` in a rule, in bytes (the file's and the admin API's alike).
pub const MAX_PATH_PREFIX_LEN: usize = 1024;
/// Longest host name in a rule (DNS allows 253 bytes).
pub const MAX_HOST_LEN: usize = 253;
/// Longest method name.
pub const MAX_METHOD_LEN: usize = 32;

/// Why a match rule or key spec was refused; the caller adds the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0:?} is not an HTTP method (letters only, e.g. \"GET\")")]
    InvalidMethod(String),
    #[error(
        "must start with '/', be at most {MAX_PATH_PREFIX_LEN} bytes and hold no control characters, '?' or '#' (got {0:?})"
    )]
    InvalidPathPrefix(String),
    #[error(
        "must be a host name such as \"api.example.com\" or \"*.example.com\", optionally with :port (which is ignored), without scheme or path (got {0:?})"
    )]
    InvalidHost(String),
    #[error(
        "unknown key part {0:?}; expected \"client_ip\", \"api_key\" or \"header:<name>\" (a header name of at most 32 bytes)"
    )]
    UnknownKeyPart(String),
    #[error("{0:?} is listed twice")]
    DuplicateKeyPart(String),
    #[error("must name at least one part, e.g. [\"client_ip\"]")]
    EmptyKey,
    #[error("at most {MAX_KEY_PARTS} parts")]
    TooManyKeyParts,
}

/// Which forwarded requests a policy applies to. Every condition given must hold;
/// one left out matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestMatch {
    /// Upper-case methods; empty: any method.
    methods: Vec<String>,
    path_prefix: Option<String>,
    host: Option<HostPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any subdomain, not the apex. Stored as `.example.com`.
    Subdomains(String),
}

impl RequestMatch {
    /// The one validator of a match rule, for the config file's
    /// `[policies.match]` and the admin API's `match` alike:
    ///
    /// - `methods`: letters only, at most [`MAX_METHOD_LEN`], any case
    ///   (compared upper-case);
    /// - `path_prefix`: starts with `/`, at most [`MAX_PATH_PREFIX_LEN`]
    ///   bytes, no control characters and no `?` or `#` (a request's path
    ///   never holds them, so such a rule could never match);
    /// - `host`: a name (letters, digits, `-`, `_`, `.`), `*.` for any
    ///   subdomain, any case, a trailing dot and a `:port` ignored, since
    ///   forward-auth compares hosts without their port.
    ///
    /// # Errors
    /// The field (`methods`, `path_prefix` or `host`) and the problem.
    pub fn new(
        methods: &[String],
        path_prefix: Option<&str>,
        host: Option<&str>,
    ) -> Result<Self, (&'static str, RuleError)> {
        let methods = methods
            .iter()
            .map(|method| {
                let valid = !method.is_empty()
                    && method.len() <= MAX_METHOD_LEN
                    && method.bytes().all(|b| b.is_ascii_alphabetic());
                if valid {
                    Ok(method.to_ascii_uppercase())
                } else {
                    Err(("methods", RuleError::InvalidMethod(method.clone())))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let path_prefix = path_prefix
            .map(|prefix| {
                let valid = prefix.starts_with('/')
                    && prefix.len() <= MAX_PATH_PREFIX_LEN
                    && !prefix
                        .chars()
                        .any(|c| c.is_control() || c == '?' || c == '#');
                if valid {
                    Ok(prefix.to_owned())
                } else {
                    Err((
                        "path_prefix",
                        RuleError::InvalidPathPrefix(prefix.to_owned()),
                    ))
                }
            })
            .transpose()?;
        let host = host
            .map(|host| HostPattern::parse(host).map_err(|error| ("host", error)))
            .transpose()?;
        Ok(Self {
            methods,
            path_prefix,
            host,
        })
    }

    /// Whether the rule has any condition; one with none matches every request.
    pub fn is_unconditional(&self) -> bool {
        self.methods.is_empty() && self.path_prefix.is_none() && self.host.is_none()
    }

    /// Whether `request` is one this rule covers. The path is compared after
    /// [`normalize_path`], so `/./api` or `//api` cannot slip past a `/api`
    /// prefix; a path with an encoded slash is covered when either reading of
    /// it is (see [`normalize_path_decoding_slashes`]), so neither kind of
    /// upstream can be reached under the prefix without the rule applying.
    pub fn matches(&self, request: &ForwardedRequest<'_>) -> bool {
        let method_ok = self.methods.is_empty()
            || self
                .methods
                .iter()
                .any(|method| method.eq_ignore_ascii_case(request.method));
        let under = |prefix: &str, path: &str| {
            path.starts_with(prefix)
                // "/api" covers "/api" and "/api/x", not "/apix"; "/api/" only "/api/…".
                && (prefix.ends_with('/')
                    || path.len() == prefix.len()
                    || path.as_bytes()[prefix.len()] == b'/')
        };
        let path_ok = self.path_prefix.as_deref().is_none_or(|prefix| {
            under(prefix, request.path)
                || request
                    .path_decoding_slashes
                    .is_some_and(|path| under(prefix, path))
        });
        let host_ok = self.host.as_ref().is_none_or(|pattern| {
            let host = request.host.unwrap_or("");
            match pattern {
                HostPattern::Exact(exact) => host == exact,
                HostPattern::Subdomains(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }
            }
        });
        method_ok && path_ok && host_ok
    }
}

impl HostPattern {
    fn parse(text: &str) -> Result<Self, RuleError> {
        let invalid = || RuleError::InvalidHost(text.to_owned());
        // A port is ignored: forward-auth compares hosts without it.
        let without_port = match text.rsplit_once(':') {
            Some((name, port)) => {
                if !port.parse::<u16>().is_ok_and(|port| port > 0) {
                    return Err(invalid());
                }
                name
            }
            None => text,
        };
        let lower = without_port.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid = !name.is_empty()
            && name.len() <= MAX_HOST_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err(invalid());
        }
        Ok(if wildcard {
            HostPattern::Subdomains(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}

/// One part of a limiter key derived from a forwarded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// The client's address as the trusted-proxy rules derive it (IPv6 by prefix).
    ClientIp,
    /// `X-Api-Key`, or else the token of `Authorization: Bearer …`.
    ApiKey,
    /// The value of this header (lower-case name).
    Header(String),
}

impl KeyPart {
    fn parse(text: &str) -> Result<Self, RuleError> {
        match text {
            "client_ip" => Ok(KeyPart::ClientIp),
            "api_key" => Ok(KeyPart::ApiKey),
            other => {
                let name = other
                    .strip_prefix("header:")
                    .filter(|name| {
                        !name.is_empty()
                            && name.len() <= 32
                            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
                    .ok_or_else(|| RuleError::UnknownKeyPart(other.to_owned()))?;
                Ok(KeyPart::Header(name.to_ascii_lowercase()))
            }
        }
    }

    fn label(&self) -> String {
        match self {
            KeyPart::ClientIp => "ip".into(),
            KeyPart::ApiKey => "key".into(),
            KeyPart::Header(name) => format!("h.{name}"),
        }
    }
}

/// What a policy counts a forwarded request as: one or more parts, all required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec(Vec<KeyPart>);

impl KeySpec {
    /// # Errors
    /// An empty list, an unknown part, or a part listed twice.
    pub fn parse(parts: &[String]) -> Result<Self, RuleError> {
        if parts.is_empty() {
            return Err(RuleError::EmptyKey);
        }
        if parts.len() > MAX_KEY_PARTS {
            return Err(RuleError::TooManyKeyParts);
        }
        let mut parsed: Vec<KeyPart> = Vec::with_capacity(parts.len());
        for text in parts {
            let part = KeyPart::parse(text)?;
            if parsed.contains(&part) {
                return Err(RuleError::DuplicateKeyPart(text.clone()));
            }
            parsed.push(part);
        }
        Ok(Self(parsed))
    }

    /// The default: one counter per client address.
    pub fn client_ip() -> Self {
        Self(vec![KeyPart::ClientIp])
    }

    /// The limiter key for `request`, or `None` when a part is absent (no API
    /// key, no such header): the policy then does not apply to the request.
    ///
    /// API keys and header values are stored as SHA-1 digests: the key length
    /// stays bounded whatever a client sends, and Redis never holds a credential.
    /// A key that still comes to more than [`MAX_KEY_LEN`] bytes (long header
    /// names, an IPv6 address) becomes `sha1=<digest of the whole key>`, so a
    /// rule never fails a request for its key's length. No joined key starts
    /// with `sha1=` (each starts with a part's label), so the two never meet.
    pub fn derive(&self, request: &ForwardedRequest<'_>) -> Option<String> {
        let mut key = String::new();
        for part in &self.0 {
            let value = match part {
                KeyPart::ClientIp => request.client_ip?.to_owned(),
                KeyPart::ApiKey => digest(request.api_key?),
                KeyPart::Header(name) => digest((request.header)(name)?),
            };
            if !key.is_empty() {
                key.push('|');
            }
            key.push_str(&part.label());
            key.push('=');
            key.push_str(&value);
        }
        if key.len() > MAX_KEY_LEN {
            key = format!("sha1={}", digest(&key));
        }
        Some(key)
    }
}

fn digest(value: &str) -> String {
    use std::fmt::Write;
    let bytes = sha1_smol::Sha1::from(value.as_bytes()).digest().bytes();
    bytes
        .iter()
        .fold(String::with_capacity(40), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// What the limiter needs to know about a request a gateway forwards.
pub struct ForwardedRequest<'a> {
    pub method: &'a str,
    /// Normalised with [`normalize_path`], without the query.
    pub path: &'a str,
    /// [`normalize_path_decoding_slashes`]: set only when the target has a `%2F`.
    pub path_decoding_slashes: Option<&'a str>,
    /// Lower-case, without port.
    pub host: Option<&'a str>,
    /// Already reduced to what is counted (an IPv6 prefix, an IPv4 address).
    pub client_ip: Option<&'a str>,
    pub api_key: Option<&'a str>,
    /// Looks up a header of the request by lower-case name.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl fmt::Debug for ForwardedRequest<'_> {
    // Keys and credentials stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardedRequest")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("path_decoding_slashes", &self.path_decoding_slashes)
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

/// A policy together with the requests it covers and what it counts them as.
#[derive(Debug, Clone)]
pub struct Rule {
    pub policy: Arc<Policy>,
    pub matches: RequestMatch,
    pub key: KeySpec,
}

/// A rule as the catalog holds it, before it is joined to its loaded policy.
#[derive(Debug, Clone)]
pub struct StoredRule {
    pub policy: String,
    pub matches: RequestMatch,
    pub key: KeySpec,
}

/// What forward-auth answers when no policy matches a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoMatch {
    /// 2xx: requests no policy covers pass (the default).
    #[default]
    Allow,
    /// 403: only what some policy covers passes.
    Deny,
}

/// The rules in configuration order: forward-auth checks matching policies in this order.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
}

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Self {
        Self { rules }
    }

    /// The catalog's rules joined to the policies in force, ordered by policy
    /// name (the catalog has no other order). A rule whose policy is not
    /// loaded (disabled, or unusable by this build) is left out.
    pub fn from_stored(stored: &[StoredRule], policies: &PolicySet) -> Self {
        let mut rules: Vec<Rule> = stored
            .iter()
            .filter_map(|rule| {
                Some(Rule {
                    policy: Arc::clone(policies.get(&rule.policy)?),
                    matches: rule.matches.clone(),
                    key: rule.key.clone(),
                })
            })
            .collect();
        rules.sort_by(|a, b| a.policy.name().as_str().cmp(b.policy.name().as_str()));
        Self { rules }
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules covering `request`, in configuration order.
    pub fn matching<'r>(
        &'r self,
        request: &'r ForwardedRequest<'_>,
    ) -> impl Iterator<Item = &'r Rule> + 'r {
        self.rules
            .iter()
            .filter(move |rule| rule.matches.matches(request))
    }
}

/// The path part of a request target as most routers see it: query and
/// fragment dropped, split into segments on its real `/` separators, each
/// segment percent-decoded except `%2F`, which stays inside its segment (as
/// `%2F`), then empty and `.` segments dropped and `..` resolved. Gateways
/// route on the normalised path, so matching the raw one would let `/./api`
/// or `/%61pi` through unlimited; and decoding `%2F` into a separator would
/// let `/api/x%2F..%2F..%2Fpublic` (a path under `/api` to such a router)
/// pass for `/public`.
pub fn normalize_path(target: &str) -> String {
    resolve(raw_path(target).split('/').map(decode_segment))
}

/// The same path as a server that decodes `%2F` into a separator sees it
/// (some do, or proxies in front of them do); `None` when the target has no
/// encoded slash, so the two readings agree. Rules match either reading
/// (see [`RequestMatch::matches`]): `/public%2F..%2Fapi` is `/api` here.
pub fn normalize_path_decoding_slashes(target: &str) -> Option<String> {
    let raw = raw_path(target);
    let encoded_slash = raw.as_bytes().windows(3).any(|window| {
        window[0] == b'%' && window[1] == b'2' && window[2].eq_ignore_ascii_case(&b'f')
    });
    if !encoded_slash {
        return None;
    }
    let decoded = percent_decode(raw, false);
    Some(resolve(decoded.split('/').map(Cow::Borrowed)))
}

/// The path of a request target, still encoded: without query, fragment,
/// and the scheme and authority of an absolute-form target.
fn raw_path(target: &str) -> &str {
    let raw = target.split(['?', '#']).next().unwrap_or("");
    // An absolute-form target ("http://host/path") carries the path after the authority.
    match raw.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => raw,
    }
}

fn decode_segment(segment: &str) -> Cow<'_, str> {
    if segment.contains('%') {
        Cow::Owned(percent_decode(segment, true))
    } else {
        Cow::Borrowed(segment)
    }
}

/// Joins decoded segments into a path: empty and `.` segments dropped, `..`
/// removing the one before; a trailing `/` (or a final `.` or `..`) kept.
fn resolve<'a>(segments: impl Iterator<Item = Cow<'a, str>>) -> String {
    let mut kept: Vec<Cow<'a, str>> = Vec::new();
    let mut trailing = false;
    for segment in segments {
        trailing = matches!(segment.as_ref(), "" | "." | "..");
        match segment.as_ref() {
            "" | "." => {}
            ".." => {
                kept.pop();
            }
            _ => kept.push(segment),
        }
    }
    let mut path =
        String::with_capacity(kept.iter().map(|segment| segment.len() + 1).sum::<usize>() + 1);
    for segment in &kept {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || (trailing && !kept.is_empty()) {
        path.push('/');
    }
    path
}

/// Decodes `%xx` escapes; with `keep_slashes`, `%2F` stays `%2F` (upper-case,
/// so both spellings compare equal).
fn percent_decode(text: &str, keep_slashes: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(at + 1).and_then(|b| (*b as char).to_digit(16)),
                bytes.get(at + 2).and_then(|b| (*b as char).to_digit(16)),
            )
        {
            let byte = (high * 16 + low) as u8;
            if keep_slashes && byte == b'/' {
                out.extend_from_slice(b"%2F");
            } else {
                out.push(byte);
            }
            at += 3;
            continue;
        }
        out.push(bytes[at]);
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(
        method: &'a str,
        path: &'a str,
        host: Option<&'a str>,
        header: &'a dyn Fn(&str) -> Option<&'a str>,
    ) -> ForwardedRequest<'a> {
        ForwardedRequest {
            method,
            path,
            path_decoding_slashes: None,
            host,
            client_ip: Some("203.0.113.7"),
            api_key: None,
            header,
        }
    }

    const NO_HEADERS: &dyn Fn(&str) -> Option<&'static str> = &|_| None;

    #[test]
    fn paths_are_normalised_as_a_router_sees_them() {
        for (raw, normal) in [
            ("/api/v1?x=1", "/api/v1"),
            ("//api///v1", "/api/v1"),
            ("/./api/../api/v1/", "/api/v1/"),
            ("/%61pi/v1", "/api/v1"),
            ("/../../etc", "/etc"),
            ("", "/"),
            ("http://example.com/api?q", "/api"),
            ("/api/..", "/"),
            ("/%2e%2e/etc", "/etc"),
            ("/api/%2E%2E/public", "/public"),
            // An encoded slash stays inside its segment: `..` resolves on real separators only.
            ("/api/x%2F..%2F..%2Fpublic", "/api/x%2F..%2F..%2Fpublic"),
            ("/a%2fb", "/a%2Fb"),
            ("/api%2F", "/api%2F"),
        ] {
            assert_eq!(normalize_path(raw), normal, "{raw:?}");
        }
        assert_eq!(normalize_path_decoding_slashes("/api/x/../y"), None);
        assert_eq!(
            normalize_path_decoding_slashes("/api/x%2F..%2F..%2Fpublic?q=%2F").as_deref(),
            Some("/public")
        );
        assert_eq!(
            normalize_path_decoding_slashes("/public%2f..%2Fapi/x").as_deref(),
            Some("/api/x")
        );
    }

    #[test]
    fn an_encoded_slash_cannot_take_a_request_out_from_under_a_prefix() {
        let api = RequestMatch::new(&[], Some("/api"), None).unwrap();
        let covered = |target: &str| {
            let path = normalize_path(target);
            let decoded = normalize_path_decoding_slashes(target);
            let no_headers = |_: &str| None;
            let mut forwarded = request("GET", &path, None, &no_headers);
            forwarded.path_decoding_slashes = decoded.as_deref();
            api.matches(&forwarded)
        };
        // Under /api to a router that keeps %2F in its segment (most do).
        assert!(covered("/api/x%2F..%2F..%2Fpublic"));
        // Under /api to a server that decodes %2F into a separator.
        assert!(covered("/public%2F..%2Fapi/x"));
        assert!(covered("/public%2f..%2fapi"));
        // Neither reading is under /api.
        assert!(!covered("/public/x%2Fapi"));
        // One segment "api/x" to most routers, /api/x to the others: covered.
        assert!(covered("/api%2Fx"));
        assert!(!covered("/apix%2Fy"));
        assert!(!covered("/x%2F..%2Fapix"));
    }

    #[test]
    fn a_path_prefix_covers_whole_segments_only() {
        let rule = RequestMatch::new(&[], Some("/api"), None).unwrap();
        for (path, covered) in [
            ("/api", true),
            ("/api/x", true),
            ("/apix", false),
            ("/", false),
        ] {
            assert_eq!(
                rule.matches(&request("GET", path, None, NO_HEADERS)),
                covered,
                "{path}"
            );
        }
    }

    #[test]
    fn methods_and_hosts_must_all_match_when_given() {
        let rule =
            RequestMatch::new(&["post".into(), "PUT".into()], None, Some("*.Example.com")).unwrap();
        assert!(rule.matches(&request("POST", "/", Some("a.example.com"), NO_HEADERS)));
        assert!(!rule.matches(&request("GET", "/", Some("a.example.com"), NO_HEADERS)));
        assert!(!rule.matches(&request("POST", "/", Some("example.com"), NO_HEADERS)));
        assert!(!rule.matches(&request("POST", "/", None, NO_HEADERS)));
        let exact = RequestMatch::new(&[], None, Some("api.example.com")).unwrap();
        assert!(exact.matches(&request("GET", "/", Some("api.example.com"), NO_HEADERS)));
        assert!(!exact.matches(&request("GET", "/", Some("x.api.example.com"), NO_HEADERS)));
    }

    #[test]
    fn invalid_rules_are_refused_with_the_field() {
        assert_eq!(
            RequestMatch::new(&["GE T".into()], None, None)
                .unwrap_err()
                .0,
            "methods"
        );
        assert_eq!(
            RequestMatch::new(&[], Some("api"), None).unwrap_err().0,
            "path_prefix"
        );
        assert_eq!(
            RequestMatch::new(&[], None, Some("https://x.com"))
                .unwrap_err()
                .0,
            "host"
        );
        assert!(matches!(
            KeySpec::parse(&["ip".into()]),
            Err(RuleError::UnknownKeyPart(_))
        ));
        assert!(matches!(
            KeySpec::parse(&["client_ip".into(), "client_ip".into()]),
            Err(RuleError::DuplicateKeyPart(_))
        ));
        assert_eq!(KeySpec::parse(&[]), Err(RuleError::EmptyKey));
        assert!(KeySpec::parse(&["header:".into()]).is_err());
    }

    #[test]
    fn one_validator_ignores_the_port_and_joins_stored_rules_to_their_policies_by_name() {
        use crate::{Algorithm, PolicyName, Window};
        let policy = |name: &str| {
            Policy::new(
                PolicyName::parse(name).unwrap(),
                Algorithm::SlidingLog,
                5,
                Window::try_from(std::time::Duration::from_secs(60)).unwrap(),
                1,
            )
            .unwrap()
        };
        let policies = PolicySet::new([policy("b"), policy("a")]).unwrap();
        let matches = RequestMatch::new(&[], Some("/x"), Some("API.example.com:8443")).unwrap();
        assert!(matches.matches(&request("GET", "/x", Some("api.example.com"), NO_HEADERS)));
        let wildcard = RequestMatch::new(&["get".into()], None, Some("*.example.com:443")).unwrap();
        assert!(wildcard.matches(&request("GET", "/", Some("shop.example.com"), NO_HEADERS)));
        assert!(!wildcard.matches(&request("GET", "/", Some("example.com"), NO_HEADERS)));
        assert!(
            RequestMatch::new(&[], None, None)
                .unwrap()
                .is_unconditional()
        );
        let longest = format!("/{}", "a".repeat(MAX_PATH_PREFIX_LEN - 1));
        assert!(RequestMatch::new(&[], Some(&longest), None).is_ok());
        let too_long = format!("{longest}a");
        for (methods, prefix, host, field) in [
            (vec![], Some(too_long.as_str()), None, "path_prefix"),
            (vec![], Some("/a?b"), None, "path_prefix"),
            (vec![], Some("/a\nb"), None, "path_prefix"),
            (vec![], Some("api"), None, "path_prefix"),
            (vec![], None, Some("api.example.com:0"), "host"),
            (vec![], None, Some("api.example.com:http"), "host"),
            (vec![], None, Some("bad host"), "host"),
            (vec!["G3T".to_owned()], None, None, "methods"),
        ] {
            let refused = RequestMatch::new(&methods, prefix, host).unwrap_err();
            assert_eq!(refused.0, field, "{prefix:?} {host:?} {methods:?}");
        }
        let stored = |name: &str| StoredRule {
            policy: name.into(),
            matches: matches.clone(),
            key: KeySpec::client_ip(),
        };
        let rules = Rules::from_stored(&[stored("b"), stored("gone"), stored("a")], &policies);
        let names: Vec<_> = rules
            .matching(&request("GET", "/x", Some("api.example.com"), NO_HEADERS))
            .map(|rule| rule.policy.name().to_string())
            .collect();
        assert_eq!(
            names,
            ["a", "b"],
            "by name; a rule without its policy is left out"
        );
    }

    #[test]
    fn a_key_longer_than_the_limit_is_digested_whole_and_stays_distinct() {
        let names: Vec<String> = (0..MAX_KEY_PARTS)
            .map(|index| format!("header:x-{}-{index}", "a".repeat(28)))
            .collect();
        assert!(names.iter().all(|name| name.len() == "header:".len() + 32));
        let spec = KeySpec::parse(&names).unwrap();
        let key_for = |value: &'static str| {
            let header = move |_: &str| Some(value);
            spec.derive(&request("GET", "/", None, &header)).unwrap()
        };
        let key = key_for("acme");
        assert_eq!(key.len(), "sha1=".len() + 40, "{key}");
        assert!(key.starts_with("sha1="), "{key}");
        assert!(crate::LimiterKey::parse(&key).is_ok());
        assert_ne!(key, key_for("other"), "another value, another counter");
        assert_eq!(key, key_for("acme"));
        // Short keys keep their readable form.
        let short = KeySpec::parse(&["client_ip".into()]).unwrap();
        assert_eq!(
            short
                .derive(&request("GET", "/", None, NO_HEADERS))
                .unwrap(),
            "ip=203.0.113.7"
        );
    }

    #[test]
    fn keys_combine_their_parts_and_never_hold_a_credential() {
        let spec = KeySpec::parse(&[
            "client_ip".into(),
            "api_key".into(),
            "header:X-Tenant".into(),
        ])
        .unwrap();
        let header = |name: &str| (name == "x-tenant").then_some("acme");
        let mut forwarded = request("GET", "/", None, &header);
        assert_eq!(spec.derive(&forwarded), None, "no API key: not covered");
        forwarded.api_key = Some("secret-token");
        let key = spec.derive(&forwarded).unwrap();
        assert!(key.starts_with("ip=203.0.113.7|key="), "{key}");
        assert!(key.contains("|h.x-tenant="), "{key}");
        assert!(
            !key.contains("secret-token") && !key.contains("acme"),
            "{key}"
        );
    }
}
