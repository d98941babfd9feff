//! The deploy files cannot run here (no Docker, no cluster), so these tests read them: they fail when the files drift from the app.
//!
//! Every `SLIDEGATE__*` variable in the compose file and the Kubernetes
//! manifests must be a real setting with a valid value (loaded through the
//! same `config` layering the binary uses), every file the Dockerfile copies
//! must exist, the probes must name the app's paths and port with deliberate
//! timings, the shutdown must fit the time the orchestrator grants, the admin
//! port must stay off the public side, and no proxy may be trusted wider than
//! the shipped topology needs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use slidegate::configuration::Settings;

pub fn repo_file(path: &str) -> PathBuf {
    // The shipped files live at the repository root, two levels above this crate.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn unquote(value: &str) -> String {
    let value = value.trim();
    let value = value
        .split_once(" #")
        .map_or(value, |(value, _)| value)
        .trim();
    value.trim_matches('"').trim_matches('\'').to_owned()
}

/// `NAME: value` lines of the `environment:` map of the `x-slidegate` block in docker-compose.yml.
pub fn compose_slidegate_env() -> Vec<(String, String)> {
    let compose = read("docker-compose.yml");
    let mut in_block = false;
    let mut in_environment = false;
    let mut env = Vec::new();
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            in_block = line.starts_with("x-slidegate:");
            in_environment = false;
            continue;
        }
        if !in_block {
            continue;
        }
        let trimmed = line.trim();
        if line.starts_with("  ") && !line.starts_with("    ") {
            in_environment = trimmed == "environment:";
            continue;
        }
        if in_environment
            && let Some((name, value)) = trimmed.split_once(':')
            && !trimmed.starts_with('#')
        {
            env.push((name.trim().to_owned(), unquote(value)));
        }
    }
    assert!(
        env.iter().any(|(name, _)| name == "SLIDEGATE__REDIS__URL"),
        "found no environment in the x-slidegate block of docker-compose.yml: {env:?}"
    );
    env
}

/// `SLIDEGATE_*` pairs written as `KEY: value` (ConfigMap/Secret data) or
/// `- name: KEY` followed by `value: …` (a container's env).
fn manifest_env(text: &str) -> Vec<(String, String)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut env = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix("- name: ")
            && name.trim().starts_with("SLIDEGATE")
        {
            let value = lines
                .get(at + 1)
                .and_then(|next| next.strip_prefix("value:"))
                .map(unquote)
                .unwrap_or_default();
            env.push((name.trim().to_owned(), value));
        } else if let Some((name, value)) = line.split_once(':')
            && name.starts_with("SLIDEGATE")
        {
            env.push((name.to_owned(), unquote(value)));
        }
    }
    env
}

/// The repository file a path inside the image comes from (deploy/Dockerfile: `COPY config /etc/slidegate`).
fn image_path_in_repo(path: &str) -> PathBuf {
    let relative = path.strip_prefix("/etc/slidegate/").unwrap_or_else(|| {
        panic!("{path} is not under /etc/slidegate, where the image has config/")
    });
    repo_file("config").join(relative)
}

/// Loads and validates the settings a container with `env` would run with.
fn assert_settings_valid(source: &str, env: &[(String, String)]) -> Settings {
    let file = env
        .iter()
        .find(|(name, _)| name == "SLIDEGATE_CONFIG")
        .map(|(_, path)| image_path_in_repo(path));
    if let Some(file) = &file {
        assert!(
            file.is_file(),
            "{source}: SLIDEGATE_CONFIG names {file:?}, which does not exist"
        );
    }
    for (name, _) in env {
        assert!(
            name == "SLIDEGATE_CONFIG" || name.starts_with("SLIDEGATE__"),
            "{source}: {name} is neither SLIDEGATE_CONFIG nor SLIDEGATE__SECTION__KEY"
        );
    }
    // One variable at a time first, so a wrong name is reported by name.
    for (name, value) in env
        .iter()
        .filter(|(name, _)| name.starts_with("SLIDEGATE__"))
    {
        let one = [(name.clone(), value.clone())].into_iter().collect();
        if let Err(error) = Settings::load_with_env(None, one) {
            panic!("{source}: {name}={value:?} is not a valid setting: {error}");
        }
    }
    let all = env.iter().cloned().collect();
    let settings = Settings::load_with_env(file.as_deref(), all)
        .unwrap_or_else(|error| panic!("{source}: {error}"));
    if let Err(error) = settings.clone().validate() {
        panic!("{source}: {error}");
    }
    settings
}

#[test]
fn every_slidegate_variable_in_the_compose_file_is_a_real_setting_and_the_result_is_valid() {
    let env = compose_slidegate_env();
    let slidegate: Vec<_> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with("SLIDEGATE"))
        .collect();
    let settings = assert_settings_valid("docker-compose.yml", &slidegate);
    assert!(settings.redis.url().is_some(), "the fleet shares one Redis");
    assert!(
        !settings.forward_auth.trusted_proxies.is_empty(),
        "nginx is a trusted proxy"
    );
    // The compose health check and nginx reach the port the replicas bind.
    assert!(settings.server.bind.ends_with(":8080"));
    let compose = read("docker-compose.yml");
    assert!(compose.contains("http://127.0.0.1:8080/health/ready"));
    assert!(compose.contains("./deploy/nginx/conf.d:/etc/nginx/conf.d"));
    assert!(compose.contains("dockerfile: deploy/Dockerfile"));
    for service in [
        "slidegate-1:",
        "slidegate-2:",
        "slidegate-3:",
        "nginx:",
        "redis:",
        "postgres:",
        "jaeger:",
    ] {
        assert!(
            compose.contains(&format!("\n  {service}")),
            "compose has no {service}"
        );
    }
}

#[test]
fn the_nginx_upstream_names_the_compose_replicas() {
    let upstreams = read("deploy/nginx/conf.d/upstreams.conf");
    let compose = read("docker-compose.yml");
    for line in upstreams.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("server ") {
            let host = rest.split(':').next().unwrap();
            assert!(
                compose.contains(&format!("\n  {host}:")),
                "upstream server {host} is not a compose service"
            );
        }
    }
}

#[test]
fn every_file_the_dockerfile_copies_exists_and_its_healthcheck_is_readiness() {
    let dockerfile = read("deploy/Dockerfile");
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(|line| line.trim().trim_end_matches('/').to_owned())
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let mut copies = 0;
    for line in dockerfile.lines().map(str::trim) {
        let Some(arguments) = line.strip_prefix("COPY ") else {
            continue;
        };
        if arguments.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = arguments.split_whitespace().collect();
        // The build context is the repository root (compose: context: .).
        for source in &words[..words.len() - 1] {
            copies += 1;
            assert!(
                repo_file(source).exists(),
                "deploy/Dockerfile copies {source}, which does not exist"
            );
            let top = source.split('/').next().unwrap();
            assert!(
                !ignored.iter().any(|pattern| pattern == top),
                ".dockerignore hides {source} from the build"
            );
        }
    }
    // The manifests, the lock file, the crates and the config.
    assert!(copies >= 4, "found only {copies} COPY sources");
    let healthcheck = dockerfile
        .lines()
        .find(|line| line.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let flag = |name: &str| {
        let value = healthcheck
            .split_whitespace()
            .find_map(|word| word.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| {
                panic!("HEALTHCHECK sets no --{name}: deliberate values, not Docker's")
            });
        value.to_owned()
    };
    let interval = humantime::parse_duration(&flag("interval")).unwrap();
    let timeout = humantime::parse_duration(&flag("timeout")).unwrap();
    assert!(!timeout.is_zero() && timeout < interval, "{healthcheck}");
    assert!(
        flag("retries").parse::<u32>().unwrap() >= 2,
        "{healthcheck}"
    );
    flag("start-period");
    assert!(dockerfile.contains("http://127.0.0.1:8080/health/ready"));
    assert!(dockerfile.contains("EXPOSE 8080 "));
    assert!(dockerfile.contains("\nUSER "), "runs as a non-root user");
    let env: Vec<(String, String)> = dockerfile
        .split("SLIDEGATE__")
        .skip(1)
        .map(|rest| {
            let pair = rest.split_whitespace().next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            (format!("SLIDEGATE__{name}"), value.to_owned())
        })
        .collect();
    assert_settings_valid("deploy/Dockerfile", &env);
}

/// The `key: value` lines nested under the first line that reads `key:`
/// (YAML), by their trimmed key; lists' `- ` dropped.
fn yaml_block(text: &str, key: &str) -> HashMap<String, String> {
    let mut lines = text.lines();
    let start = lines
        .by_ref()
        .find(|line| line.trim() == format!("{key}:"))
        .unwrap_or_else(|| panic!("no {key}: block"));
    let indent = start.len() - start.trim_start().len();
    lines
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() > indent)
        .filter_map(|line| line.trim().trim_start_matches("- ").split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), unquote(value)))
        .collect()
}

fn seconds(block: &HashMap<String, String>, what: &str, field: &str) -> u64 {
    block
        .get(field)
        .unwrap_or_else(|| panic!("{what} sets no {field}: deliberate values, not the defaults"))
        .parse()
        .unwrap_or_else(|_| panic!("{what}.{field} is not a number of seconds"))
}

fn duration(block: &HashMap<String, String>, what: &str, field: &str) -> Duration {
    let text = block
        .get(field)
        .unwrap_or_else(|| panic!("{what} sets no {field}: deliberate values, not the defaults"));
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{what}.{field} = {text:?}: {e}"))
}

/// From SIGTERM to exit at most: the drain, then the servers' shutdown (whole
/// seconds, rounded up as actix counts them), then the last span export.
fn shutdown_budget(settings: &Settings) -> Duration {
    let shutdown = Duration::from_secs_f64(
        settings
            .server
            .shutdown_timeout
            .as_secs_f64()
            .ceil()
            .max(1.0),
    );
    settings.server.drain_delay + shutdown + settings.tracing.export_timeout
}

/// The port of a `host:port` setting.
fn port_of(address: &str) -> u16 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

/// Every trusted proxy covers at most 256 addresses: one host, or an ingress's own small range.
fn assert_trusted_proxies_are_narrow(source: &str, settings: &Settings) {
    for entry in &settings.forward_auth.trusted_proxies {
        let net: IpNet = entry
            .parse()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(IpNet::from))
            .unwrap_or_else(|_| panic!("{source}: trusted proxy {entry:?}"));
        let host_bits = u32::from(net.max_prefix_len() - net.prefix_len());
        assert!(
            host_bits <= 8,
            "{source} trusts {entry} ({} addresses) for X-Forwarded-For: any host in it can forge a client's address",
            1u128 << host_bits
        );
    }
}

#[test]
fn the_kubernetes_manifests_set_real_settings_and_probe_the_apps_paths_with_deliberate_timings() {
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let secret = read("deploy/kubernetes/secret.yaml");
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let mut env = manifest_env(&configmap);
    env.extend(manifest_env(&secret));
    env.extend(manifest_env(&deployment));
    let settings = assert_settings_valid("deploy/kubernetes", &env);
    assert!(settings.server.bind.ends_with(":8080"));
    assert!(deployment.contains("containerPort: 8080"));

    let readiness = yaml_block(&deployment, "readinessProbe");
    let liveness = yaml_block(&deployment, "livenessProbe");
    assert_eq!(readiness["path"], "/health/ready");
    assert_eq!(liveness["path"], "/health/live");
    for (what, probe) in [("readinessProbe", &readiness), ("livenessProbe", &liveness)] {
        assert_eq!(probe["port"], "8080", "{what} probes the public port");
        let timeout = seconds(probe, what, "timeoutSeconds");
        let period = seconds(probe, what, "periodSeconds");
        // Readiness waits on no dependency (it reads background probes):
        // a second is ample, and a probe never outlasts its period.
        assert!(
            (1..period).contains(&timeout),
            "{what}: timeoutSeconds {timeout} must be at least 1 and below periodSeconds {period}"
        );
    }
    let period = seconds(&readiness, "readinessProbe", "periodSeconds");
    let threshold = seconds(&readiness, "readinessProbe", "failureThreshold");
    assert!(
        threshold >= 2,
        "readinessProbe.failureThreshold {threshold}: one slow answer must not take every pod out at once"
    );
    let drain = settings.server.drain_delay;
    assert!(
        Duration::from_secs(period * threshold) <= drain,
        "readiness must notice a drain ({period} s x {threshold}) before the listener closes (drain_delay {drain:?})"
    );
    assert!(
        seconds(&liveness, "livenessProbe", "failureThreshold") >= 3,
        "a pod is not restarted for one or two missed answers"
    );

    // The grace period covers preStop + drain + shutdown + the last export.
    let pre_stop = drain.as_secs();
    assert!(
        deployment.contains(&format!("command: [\"sleep\", \"{pre_stop}\"]")),
        "preStop must sleep {pre_stop}s, as server.drain_delay"
    );
    let grace: u64 = deployment
        .lines()
        .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .unwrap();
    let needed = Duration::from_secs(pre_stop) + shutdown_budget(&settings);
    assert!(
        Duration::from_secs(grace) > needed,
        "terminationGracePeriodSeconds {grace} must exceed preStop + drain_delay + shutdown_timeout + tracing.export_timeout = {needed:?}"
    );

    // The admin port: a container port of its own, scraped by Prometheus,
    // never behind the public Service.
    let admin = port_of(
        settings
            .server
            .admin_bind()
            .expect("the manifests set server.admin_bind"),
    );
    assert_ne!(admin, 8080);
    assert!(deployment.contains(&format!("containerPort: {admin}")));
    assert!(
        deployment.contains(&format!("prometheus.io/port: \"{admin}\"")),
        "Prometheus scrapes the admin port, the only one with /metrics"
    );
    let service = read("deploy/kubernetes/service.yaml");
    let (public, admin_service) = service
        .split_once("\n---\n")
        .expect("service.yaml holds the public and the admin Service");
    assert!(public.contains("name: slidegate\n"));
    assert!(!public.contains(&admin.to_string()) && !public.contains("targetPort: admin"));
    assert!(admin_service.contains("name: slidegate-admin"));
    assert!(admin_service.contains(&format!("port: {admin}")));
    assert!(admin_service.contains("targetPort: admin"));

    assert_trusted_proxies_are_narrow("deploy/kubernetes", &settings);
    for file in ["service.yaml", "hpa.yaml", "pdb.yaml"] {
        assert!(repo_file(&format!("deploy/kubernetes/{file}")).is_file());
    }
}

/// Every `healthcheck:` block of docker-compose.yml, by the service it is in.
fn compose_healthchecks() -> Vec<(String, HashMap<String, String>)> {
    let compose = read("docker-compose.yml");
    let mut checks = Vec::new();
    let (mut top, mut service) = (String::new(), String::new());
    for (at, line) in compose.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        // A top-level block (x-slidegate, services, …), or a service under `services:`.
        if let Some((name, rest)) = line.trim().split_once(':')
            && !name.starts_with('#')
        {
            if indent == 0 {
                top = name.to_owned();
                service = name.to_owned();
            } else if indent == 2 && top == "services" && rest.trim().is_empty() {
                service = name.to_owned();
            }
        }
        if line.trim() == "healthcheck:" {
            let rest: String = compose.lines().skip(at).collect::<Vec<_>>().join("\n");
            checks.push((service.clone(), yaml_block(&rest, "healthcheck")));
        }
    }
    checks
}

#[test]
fn the_compose_file_gives_each_healthcheck_deliberate_timings_and_the_replicas_time_to_stop() {
    let checks = compose_healthchecks();
    assert!(checks.len() >= 4, "{checks:?}");
    for (service, check) in &checks {
        let what = format!("docker-compose.yml {service} healthcheck");
        let interval = duration(check, &what, "interval");
        let timeout = duration(check, &what, "timeout");
        assert!(
            !timeout.is_zero() && timeout <= interval,
            "{what}: timeout {timeout:?} must be above 0 and at most the interval {interval:?}"
        );
        assert!(check.contains_key("retries"), "{what} sets no retries");
    }
    let (_, replica) = checks
        .iter()
        .find(|(service, _)| service == "x-slidegate")
        .expect("the replicas' healthcheck");
    assert!(replica["test"].contains("http://127.0.0.1:8080/health/ready"));
    assert!(replica.contains_key("start_period"));

    let env: Vec<_> = compose_slidegate_env()
        .into_iter()
        .filter(|(name, _)| name.starts_with("SLIDEGATE"))
        .collect();
    let settings = assert_settings_valid("docker-compose.yml", &env);
    let compose = read("docker-compose.yml");
    let grace = compose
        .lines()
        .find_map(|line| line.trim().strip_prefix("stop_grace_period:"))
        .expect("the replicas set stop_grace_period (Docker's default is 10 s)");
    let grace = humantime::parse_duration(grace.trim()).unwrap();
    let needed = shutdown_budget(&settings);
    assert!(
        grace > needed,
        "stop_grace_period {grace:?} must exceed drain_delay + shutdown_timeout + tracing.export_timeout = {needed:?}"
    );
}

#[test]
fn the_admin_api_and_metrics_are_never_reachable_through_the_shipped_nginx() {
    let env: Vec<_> = compose_slidegate_env()
        .into_iter()
        .filter(|(name, _)| name.starts_with("SLIDEGATE"))
        .collect();
    let settings = assert_settings_valid("docker-compose.yml", &env);
    let public = port_of(&settings.server.bind);
    let admin = port_of(
        settings
            .server
            .admin_bind()
            .expect("compose sets server.admin_bind"),
    );
    assert_ne!(public, admin);
    // nginx proxies only the replicas' public port.
    let upstreams = read("deploy/nginx/conf.d/upstreams.conf");
    for line in upstreams.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("server slidegate-") {
            let port = rest.split([' ', ';']).next().unwrap();
            assert_eq!(port_of(port), public, "upstream {line}");
        }
    }
    for file in ["slidegate.conf", "gateway.conf"] {
        let text = read(&format!("deploy/nginx/conf.d/{file}"));
        assert!(
            !text.contains(&format!(":{admin}")),
            "{file} names the admin port"
        );
    }
    // And the load balancer refuses the paths itself, for a replica run without an admin listener.
    let lb = read("deploy/nginx/conf.d/slidegate.conf");
    for location in ["location ^~ /v1/admin {", "location = /metrics {"] {
        let block = nginx_block(&lb, location);
        assert!(block.contains("return 404"), "{location} {block}");
    }
    let dockerfile = read("deploy/Dockerfile");
    assert!(dockerfile.contains(&format!("SLIDEGATE__SERVER__ADMIN_BIND=0.0.0.0:{admin}")));
    assert!(dockerfile.contains(&format!("EXPOSE {public} {admin}")));
    assert_trusted_proxies_are_narrow("docker-compose.yml", &settings);
}

/// The text of the nginx block that opens with `opening` (up to its closing brace).
fn nginx_block<'a>(text: &'a str, opening: &str) -> &'a str {
    let start = text
        .find(opening)
        .unwrap_or_else(|| panic!("no {opening:?}"));
    let end = text[start..].find("\n    }").expect("a closing brace");
    &text[start..start + end]
}

#[test]
fn nginx_sends_a_forward_auth_check_to_one_replica_only() {
    for (file, location) in [
        ("slidegate.conf", "location /v1/forward-auth {"),
        ("gateway.conf", "location = /_slidegate {"),
    ] {
        let text = read(&format!("deploy/nginx/conf.d/{file}"));
        let block = nginx_block(&text, location);
        assert!(block.contains("forward-auth") || block.contains("proxy_pass http://slidegate"));
        assert!(
            block.contains("proxy_next_upstream off;"),
            "{file} {location}: a check retried on another replica after a reset or a timeout may be counted twice"
        );
    }
}
