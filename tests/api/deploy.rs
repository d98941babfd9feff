//! The deploy files cannot run here (no Docker, no cluster), so these tests read them: they fail when the files drift from the app.
//!
//! Every `SLIDEGATE__*` variable in the compose file and the Kubernetes
//! manifests must be a real setting with a valid value (loaded through the
//! same `config` layering the binary uses), every file the Dockerfile copies
//! must exist, and the probes must name the app's paths and port.

use std::path::{Path, PathBuf};

use slidegate::configuration::Settings;

pub fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
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
    if let Err(error) = settings.validate() {
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
    assert!(copies >= 5, "found only {copies} COPY sources");
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("http://127.0.0.1:8080/health/ready"));
    assert!(dockerfile.contains("EXPOSE 8080"));
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

#[test]
fn the_kubernetes_manifests_set_real_settings_and_probe_the_apps_paths() {
    let configmap = read("deploy/kubernetes/configmap.yaml");
    let secret = read("deploy/kubernetes/secret.yaml");
    let deployment = read("deploy/kubernetes/deployment.yaml");
    let mut env = manifest_env(&configmap);
    env.extend(manifest_env(&secret));
    env.extend(manifest_env(&deployment));
    let settings = assert_settings_valid("deploy/kubernetes", &env);
    assert!(settings.server.bind.ends_with(":8080"));

    assert!(deployment.contains("path: /health/ready"));
    assert!(deployment.contains("path: /health/live"));
    assert!(deployment.contains("containerPort: 8080"));
    assert!(deployment.matches("port: 8080").count() >= 2);
    // preStop sleeps as long as the drain, and the grace period covers
    // preStop + drain + shutdown_timeout.
    let drain = settings.server.drain_delay.as_secs();
    assert!(
        deployment.contains(&format!("command: [\"sleep\", \"{drain}\"]")),
        "preStop must sleep {drain}s, as server.drain_delay"
    );
    let grace: u64 = deployment
        .lines()
        .find_map(|line| line.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .expect("terminationGracePeriodSeconds")
        .trim()
        .parse()
        .unwrap();
    assert!(grace > 2 * drain + settings.server.shutdown_timeout.as_secs());
    for file in ["service.yaml", "hpa.yaml", "pdb.yaml"] {
        assert!(repo_file(&format!("deploy/kubernetes/{file}")).is_file());
    }
}
