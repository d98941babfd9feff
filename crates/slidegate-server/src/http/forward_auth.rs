//! `/v1/forward-auth`: the decision a gateway (nginx `auth_request`, Traefik ForwardAuth, Envoy ext_authz) asks for before passing a request on.
//!
//! The request being protected is described by forwarded headers:
//! `X-Forwarded-Method`, `X-Forwarded-Uri` (or `X-Original-URI`) and
//! `X-Forwarded-Host`. Envoy's HTTP ext_authz sends none of them; it calls
//! `<path_prefix><original path>` with the original method and `Host`, so
//! with `path_prefix: /v1/forward-auth` those are read instead.
//!
//! The rules come from the config file's `[policies.match]` and `key`, or,
//! when Postgres is configured, from the catalog's `match` and `key` of each
//! policy (read from the limiter's snapshot, so an admin change applies on
//! every replica as soon as it syncs; file rules are then not used).
//!
//! Every policy whose match rule covers the request is checked as one
//! request, **all or nothing** (the core's [`Limiter::check_all`]: one
//! script call on one Redis): it is admitted only if every enforced policy
//! admits it, and then counted on each; if any denies, none is consumed.
//! The answers are combined by the core's [`AllMustAdmit`], in
//! configuration order (catalog rules: by policy name): the first denial
//! answers 429 with its headers; when all admit, the tightest enforced
//! policy's headers answer.
//!
//! [`Limiter::check_all`]: slidegate_core::Limiter::check_all

use std::borrow::Cow;
use std::ops::ControlFlow;

use actix_web::http::header::HeaderMap;
use actix_web::{HttpRequest, HttpResponse, web};

use super::HttpState;
use super::check::decision_response;
use super::error::ApiError;
use crate::client_ip::ClientIpRules;
use slidegate_core::rules::{
    ForwardedRequest, NoMatch, Rules, normalize_path, normalize_path_decoding_slashes,
};
use slidegate_core::{AllMustAdmit, PolicyCheck, PresentedApiKey, Store, UnknownPolicy};

/// The path Envoy's ext_authz `path_prefix` should be set to.
pub const PATH: &str = "/v1/forward-auth";

/// How forward-auth reads requests: its rules, whose address to believe, and the answer when nothing matches.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    /// The config file's rules; with a catalog, the limiter's are used instead.
    pub rules: Rules,
    pub client_ip: ClientIpRules,
    pub no_match: NoMatch,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// `Host` as rules compare it: lower-case, without port or trailing dot.
fn normalize_host(host: &str) -> String {
    let host = host.split(',').next().unwrap_or("").trim();
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

/// The API key by the core's one rule ([`PresentedApiKey::read`]); a
/// malformed one is no key here: these are the protected request's headers,
/// and its `Authorization` may be meant for the upstream.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    PresentedApiKey::read(
        headers.get("x-api-key").map(|value| value.as_bytes()),
        headers.get("authorization").map(|value| value.as_bytes()),
    )
    .key()
}

/// Any method: gateways send the protected request's own method (Envoy) or
/// whatever they are configured to (nginx, Traefik).
pub async fn forward_auth<S: Store>(
    request: HttpRequest,
    state: web::Data<HttpState<S>>,
) -> Result<HttpResponse, ApiError> {
    let headers = request.headers();
    let method = header(headers, "x-forwarded-method").unwrap_or(request.method().as_str());
    let target: Cow<'_, str> =
        match header(headers, "x-forwarded-uri").or_else(|| header(headers, "x-original-uri")) {
            Some(target) => Cow::Borrowed(target),
            None => match request.uri().path().strip_prefix(PATH) {
                // Envoy: the original path follows the prefix.
                Some(rest) if rest.starts_with('/') => Cow::Borrowed(rest),
                _ => return Err(ApiError::MissingForwardedUri),
            },
        };
    let path = normalize_path(&target);
    let path_decoding_slashes = normalize_path_decoding_slashes(&target);
    let host = header(headers, "x-forwarded-host")
        .or_else(|| header(headers, "host"))
        .map(normalize_host);
    let config = &state.forward_auth;
    let forwarded_for: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok())
        .collect();
    let client_ip = config
        .client_ip
        .client_ip(
            request.peer_addr().map(|peer| peer.ip()),
            forwarded_for.into_iter(),
        )
        .map(|address| config.client_ip.key_text(address));
    let lookup = |name: &str| header(headers, name);
    let forwarded = ForwardedRequest {
        method,
        path: &path,
        path_decoding_slashes: path_decoding_slashes.as_deref(),
        host: host.as_deref(),
        client_ip: client_ip.as_deref(),
        api_key: api_key(headers),
        header: &lookup,
    };

    let catalog_rules = state.limiter.bundle_rules();
    let rules = catalog_rules.as_deref().unwrap_or(&config.rules);
    // A part the request lacks (no API key, no such header): that policy
    // does not apply, as with Envoy's rate-limit descriptors.
    let keyed: Vec<(&str, String)> = rules
        .matching(&forwarded)
        .filter_map(|rule| Some((rule.policy.name().as_str(), rule.key.derive(&forwarded)?)))
        .collect();
    let checks: Vec<PolicyCheck<'_>> = keyed
        .iter()
        .map(|(policy, key)| PolicyCheck {
            policy,
            key,
            cost: None,
        })
        .collect();
    // A catalog policy deleted between loading these rules and the check no
    // longer applies; a file policy always exists.
    let unknown = if catalog_rules.is_some() {
        UnknownPolicy::Skip
    } else {
        UnknownPolicy::Refuse
    };
    let mut answers = AllMustAdmit::new();
    for checked in state
        .limiter
        .check_all(&checks, unknown)
        .await?
        .into_iter()
        .flatten()
    {
        if let ControlFlow::Break(denial) = answers.add(checked) {
            return Ok(decision_response(&denial));
        }
    }
    match (answers.answer(), config.no_match) {
        (Some(checked), _) => Ok(decision_response(&checked)),
        (None, NoMatch::Allow) => Ok(HttpResponse::Ok().json(serde_json::json!({
            "allowed": true,
            "policy": null,
        }))),
        (None, NoMatch::Deny) => Err(ApiError::NoMatchingPolicy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_compared_without_port_case_or_trailing_dot() {
        assert_eq!(normalize_host("API.Example.com:8443"), "api.example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("[2001:db8::1]:80"), "2001:db8::1");
        assert_eq!(normalize_host("a.example, b.example"), "a.example");
    }
}
