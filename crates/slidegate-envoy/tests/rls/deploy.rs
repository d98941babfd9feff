//! The shipped Envoy config and rule file stay in step with the code.

use std::path::PathBuf;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn the_shipped_rules_parse_and_their_domain_is_the_one_envoy_sends() {
    let rules = slidegate_envoy::rules::load(&repo_file("deploy/envoy/rules/ratelimit.yaml"))
        .unwrap_or_else(|error| panic!("{error}"));
    let envoy: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo_file("deploy/envoy/envoy.yaml")).unwrap(),
    )
    .unwrap();
    let mut domains = Vec::new();
    find_ratelimit_domains(&envoy, &mut domains);
    assert!(
        !domains.is_empty(),
        "envoy.yaml has no ratelimit filter with a domain"
    );
    for domain in &domains {
        assert!(
            rules.domains().contains(&domain.as_str()),
            "envoy.yaml sends domain {domain:?}; the rules have {:?}",
            rules.domains()
        );
    }
    let mut clusters = Vec::new();
    find_socket_addresses(&envoy, &mut clusters);
    assert!(
        clusters.contains(&("127.0.0.1".to_owned(), 8081)),
        "envoy.yaml does not call slidegate's gRPC on 127.0.0.1:8081: {clusters:?}"
    );
}

/// Every `domain` under an `envoy.filters.http.ratelimit` filter's typed config.
fn find_ratelimit_domains(value: &serde_yaml_ng::Value, out: &mut Vec<String>) {
    match value {
        serde_yaml_ng::Value::Mapping(map) => {
            let is_ratelimit = map
                .get("name")
                .and_then(|name| name.as_str())
                .is_some_and(|name| name == "envoy.filters.http.ratelimit");
            if is_ratelimit
                && let Some(domain) = map
                    .get("typed_config")
                    .and_then(|config| config.get("domain"))
                    .and_then(|domain| domain.as_str())
            {
                out.push(domain.to_owned());
            }
            for child in map.values() {
                find_ratelimit_domains(child, out);
            }
        }
        serde_yaml_ng::Value::Sequence(items) => {
            for item in items {
                find_ratelimit_domains(item, out);
            }
        }
        _ => {}
    }
}

fn find_socket_addresses(value: &serde_yaml_ng::Value, out: &mut Vec<(String, u64)>) {
    match value {
        serde_yaml_ng::Value::Mapping(map) => {
            if let Some(socket) = map.get("socket_address")
                && let (Some(address), Some(port)) = (
                    socket.get("address").and_then(|a| a.as_str()),
                    socket.get("port_value").and_then(|p| p.as_u64()),
                )
            {
                out.push((address.to_owned(), port));
            }
            for child in map.values() {
                find_socket_addresses(child, out);
            }
        }
        serde_yaml_ng::Value::Sequence(items) => {
            for item in items {
                find_socket_addresses(item, out);
            }
        }
        _ => {}
    }
}
