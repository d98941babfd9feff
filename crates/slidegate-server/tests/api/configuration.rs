//! Configuration: the shipped files, layering, and errors that name the field.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use slidegate::configuration::{ConfigurationError, Settings};
use slidegate_core::FailureMode;

/// Environment variables are process-wide: tests that read or set them take turns.
static ENV: Mutex<()> = Mutex::new(());

fn repo_file(path: &str) -> PathBuf {
    // The shipped files live at the repository root, two levels above this crate.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn load_toml(text: &str) -> Result<Settings, ConfigurationError> {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    Settings::load(Some(file.path()))
}

fn invalid_setting(text: &str) -> String {
    match load_toml(text).and_then(|settings| settings.clone().validate().map(|_| settings)) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn the_shipped_default_file_matches_the_built_in_defaults() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let from_file = Settings::load(Some(&repo_file("config/default.toml"))).unwrap();
    let built_in = Settings::default();
    assert_eq!(format!("{from_file:?}"), format!("{built_in:?}"));
    assert_eq!(
        from_file.validate().unwrap().policies.len(),
        1,
        "the demo policy"
    );
}

#[test]
fn the_shipped_example_file_is_valid() {
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let settings = Settings::load(Some(&repo_file("config/example.toml"))).unwrap();
    let policies = settings.clone().validate().unwrap().policies;
    assert!(policies.len() >= 3);
    assert!(settings.redis.url().is_some());
}

#[test]
fn invalid_settings_name_the_field_and_the_problem() {
    let cases = [
        ("[redis]\npool_size = 0", "redis.pool_size"),
        (
            "[redis]\ncommand_timeout = \"soon\"",
            "redis.command_timeout",
        ),
        ("[server]\nbind = \"localhost\"", "server.bind"),
        ("[server]\nport = 8080", "port"),
        ("[server]\nadmin_bind = \"localhost\"", "server.admin_bind"),
        (
            "[server]\nbind = \"127.0.0.1:8080\"\nadmin_bind = \"127.0.0.1:8080\"",
            "server.admin_bind: must differ from server.bind",
        ),
        ("[health]\nprobe_interval = \"0s\"", "health.probe_interval"),
        ("[health]\nprobe_timeout = \"0s\"", "health.probe_timeout"),
        ("[limiter]\nkey_prefix = \"a{b}\"", "limiter.key_prefix"),
        (
            "[limiter]\nfailure_mode = \"sideways\"",
            "unknown failure mode \"sideways\"; expected one of closed, open, local for key `limiter.failure_mode`",
        ),
        (
            "[limiter]\nheartbeat_interval = \"0s\"",
            "limiter.heartbeat_interval",
        ),
        (
            "[limiter.deny_cache]\nmax_keys = 0",
            "limiter.deny_cache.max_keys",
        ),
        ("[limiter]\nmax_keys = 0", "limiter.max_keys"),
        ("[redis.breaker]\nfailures = 0", "redis.breaker.failures"),
        (
            "[redis.breaker]\nfailure_ratio = 1.5",
            "redis.breaker.failure_ratio",
        ),
        ("[redis.breaker]\nprobes = 0", "redis.breaker.probes"),
        (
            "[redis.breaker]\ncool_down = \"0s\"",
            "redis.breaker.cool_down",
        ),
        (
            "[[policies]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"\nfailure_mode = \"maybe\"",
            "policies[0].failure_mode: unknown failure mode",
        ),
        (
            "[[policies]]\nname = \"api\"\nalgorithm = \"leaky\"\nlimit = 5\nwindow = \"1m\"",
            "policies[0].algorithm",
        ),
        (
            "[[policies]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 0\nwindow = \"1m\"",
            "policies[0].limit",
        ),
        (
            "[[policies]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"0s\"",
            "policies[0].window",
        ),
        (
            "[[policies]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"25h\"",
            "24h",
        ),
        (
            "[[policies]]\nname = \"a:b\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"",
            "policies[0].name",
        ),
        (
            "[[policies]]\nname = \"api\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"\ncost = 6",
            "policies[0].cost",
        ),
        (
            "[[policies]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"\n[[policies]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"",
            "used twice",
        ),
    ];
    for (text, mentions) in cases {
        let message = invalid_setting(text);
        assert!(
            message.contains(mentions),
            "{message:?} does not mention {mentions:?}"
        );
    }
}

#[test]
fn a_policy_takes_the_default_failure_mode_unless_it_names_its_own() {
    let settings = load_toml(
        "[limiter]\nfailure_mode = \"open\"\n\
         [[policies]]\nname = \"a\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"\n\
         [[policies]]\nname = \"b\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"\nfailure_mode = \"local\"",
    )
    .unwrap();
    let policies = settings.clone().validate().unwrap().policies;
    assert_eq!(policies.get("a").unwrap().failure_mode(), FailureMode::Open);
    assert_eq!(
        policies.get("b").unwrap().failure_mode(),
        FailureMode::Local
    );
    assert_eq!(settings.failover().default_mode, FailureMode::Open);
}

#[test]
fn a_redis_url_with_a_bad_scheme_is_refused_without_echoing_it() {
    let message = invalid_setting("[redis]\nurl = \"http://:topsecret@127.0.0.1\"");
    assert!(message.contains("redis.url"));
    assert!(!message.contains("topsecret"));
}

#[test]
fn catalog_settings_are_checked_without_echoing_secrets() {
    let message = invalid_setting("[postgres]\nurl = \"mysql://root:topsecret@db\"");
    assert!(message.contains("postgres.url"), "{message}");
    assert!(!message.contains("topsecret"), "{message}");
    let message =
        invalid_setting("[postgres]\nurl = \"postgres://db/x\"\n[admin]\ntoken = \"short-secret\"");
    assert!(message.contains("admin.token"), "{message}");
    assert!(!message.contains("short-secret"), "{message}");
    let message = invalid_setting("[admin]\ntoken = \"long-enough-admin-token\"");
    assert!(message.contains("set postgres.url too"), "{message}");
    assert!(!message.contains("long-enough-admin-token"), "{message}");
    for (text, field) in [
        ("[postgres]\npool_size = 0", "postgres.pool_size"),
        (
            "[postgres]\nresync_interval = \"0s\"",
            "postgres.resync_interval",
        ),
        (
            "[postgres]\nstatement_timeout = \"0s\"",
            "postgres.statement_timeout",
        ),
    ] {
        assert!(invalid_setting(text).contains(field), "{text}");
    }
}

#[test]
fn environment_variables_override_the_file() {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(b"[redis]\npool_size = 3\n[server]\nbind = \"127.0.0.1:9000\"\n")
        .unwrap();
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: every test that reads or writes the environment holds `ENV`.
    unsafe { std::env::set_var("SLIDEGATE__REDIS__POOL_SIZE", "7") };
    let settings = Settings::load(Some(file.path()));
    unsafe { std::env::remove_var("SLIDEGATE__REDIS__POOL_SIZE") };
    let settings = settings.unwrap();
    assert_eq!(settings.redis.pool_size, 7);
    assert_eq!(settings.server.bind, "127.0.0.1:9000");
}

#[test]
fn limiter_max_keys_comes_from_the_environment_and_bounds_both_in_process_stores() {
    let defaults = Settings::default();
    assert_eq!(defaults.limiter.max_keys, 100_000);
    assert_eq!(defaults.failover().local_max_keys, 100_000);
    let env = [("SLIDEGATE__LIMITER__MAX_KEYS".to_owned(), "5000".to_owned())];
    let settings = Settings::load_with_env(None, env.into_iter().collect()).unwrap();
    settings.clone().validate().unwrap();
    assert_eq!(settings.limiter.max_keys, 5000);
    assert_eq!(settings.failover().local_max_keys, 5000);
}

#[test]
fn the_binary_refuses_an_invalid_file_with_exit_code_2_and_the_field() {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(b"[redis]\npool_size = 0\n").unwrap();
    let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let output = Command::new(env!("CARGO_BIN_EXE_slidegate"))
        .arg("--config")
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis.pool_size"), "{stderr}");
}

/// The README's first command: no file, no Redis: the embedded store and the demo policy.
#[test]
fn the_binary_with_no_configuration_serves_the_demo_policy_on_the_embedded_store() {
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let mut child = Command::new(env!("CARGO_BIN_EXE_slidegate"))
        .env("SLIDEGATE__SERVER__BIND", "127.0.0.1:0")
        .env("SLIDEGATE__LOG__FORMAT", "json")
        .env_remove("SLIDEGATE__REDIS__URL")
        .env_remove("SLIDEGATE_CONFIG")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop(env);
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut started = None;
    while started.is_none() && Instant::now() < deadline {
        if let Ok(line) = receiver.recv_timeout(Duration::from_millis(200)) {
            let log: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if log["message"]
                .as_str()
                .is_some_and(|m| m.contains("listening"))
            {
                started = Some(log);
            }
        }
    }
    let result = std::panic::catch_unwind(|| {
        let log = started.expect("the binary logs that it is listening");
        assert_eq!(log["store"], "memory");
        let address = log["address"].as_str().unwrap().to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let reply = reqwest::Client::new()
                .post(format!("http://{address}/v1/check"))
                .json(&serde_json::json!({"policy": "demo", "key": "alice"}))
                .send()
                .await
                .unwrap();
            assert_eq!(reply.status(), 200);
            let body: serde_json::Value = reply.json().await.unwrap();
            assert_eq!(body["limit"], 10);
            assert_eq!(body["remaining"], 9);
        });
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn debug_output_of_the_settings_and_the_store_options_never_shows_a_url_or_a_secret() {
    let redis_password = "redis-hunter2";
    let postgres_password = "pg-hunter2";
    let token = "admin-token-hunter2-0123456789";
    let text = format!(
        "[redis]\nurl = \"rediss://:{redis_password}@redis.internal:6380\"\n\
         [postgres]\nurl = \"postgres://slidegate:{postgres_password}@db.internal/slidegate\"\n\
         [admin]\ntoken = \"{token}\"\n"
    );
    let settings = load_toml(&text).unwrap();
    let redis = slidegate::store::RedisOptions {
        url: settings.redis.url().unwrap().to_owned(),
        tls: None,
        key_prefix: settings.limiter.key_prefix.clone(),
        pool_size: settings.redis.pool_size,
        connect_timeout: settings.redis.connect_timeout,
        command_timeout: settings.redis.command_timeout,
        sentinel: None,
    };
    let catalog = slidegate_catalog::CatalogOptions {
        url: settings.postgres.url().unwrap().to_owned(),
        pool_size: settings.postgres.pool_size,
        connect_timeout: settings.postgres.connect_timeout,
        statement_timeout: settings.postgres.statement_timeout,
        resync_interval: settings.postgres.resync_interval,
    };
    for debug in [
        format!("{settings:?}"),
        format!("{settings:#?}"),
        format!("{:?}", settings.redis),
        format!("{:?}", settings.postgres),
        format!("{:?}", settings.admin),
        format!("{redis:?}"),
        format!("{catalog:?}"),
    ] {
        for secret in [
            redis_password,
            postgres_password,
            token,
            "redis.internal",
            "db.internal",
        ] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
    }
    // Still useful for debugging: everything else is shown.
    assert!(format!("{catalog:?}").contains("pool_size: 4"));
    assert!(format!("{redis:?}").contains("command_timeout: 50ms"));
}

/// `[policies.match]` in the file and `match` in the admin API have one
/// validator (the core's): what one accepts, the other does.
#[test]
fn a_match_rule_in_the_file_is_validated_as_the_admin_api_validates_it() {
    let with_match = |table: &str| {
        format!(
            "[[policies]]\nname = \"p\"\nalgorithm = \"gcra\"\nlimit = 5\nwindow = \"1m\"\n[policies.match]\n{table}\n"
        )
    };
    let long_prefix = format!("/{}", "a".repeat(1023));
    for accepted in [
        "host = \"api.example.com:8443\"".to_owned(),
        "host = \"*.Example.com\"".to_owned(),
        "methods = [\"get\", \"POST\"]".to_owned(),
        format!("path_prefix = \"{long_prefix}\""),
    ] {
        let settings = load_toml(&with_match(&accepted)).unwrap();
        settings
            .validate()
            .unwrap_or_else(|error| panic!("{accepted}: {error}"));
    }
    for (refused, field) in [
        (
            format!("path_prefix = \"{long_prefix}a\""),
            "policies[0].match.path_prefix",
        ),
        (
            "path_prefix = \"/api?x\"".to_owned(),
            "policies[0].match.path_prefix",
        ),
        (
            "host = \"api.example.com:0\"".to_owned(),
            "policies[0].match.host",
        ),
        ("host = \"bad host\"".to_owned(), "policies[0].match.host"),
    ] {
        let error = invalid_setting(&with_match(&refused));
        assert!(error.contains(field), "{refused}: {error}");
    }
}

#[test]
fn cluster_seed_nodes_come_from_one_comma_separated_variable() {
    let env = [
        ("SLIDEGATE__REDIS__MODE".to_owned(), "cluster".to_owned()),
        (
            "SLIDEGATE__REDIS__NODES".to_owned(),
            "redis://10.0.0.1:6379, redis://10.0.0.2:6379,".to_owned(),
        ),
    ];
    let settings = {
        let _env = ENV.lock().unwrap_or_else(|e| e.into_inner());
        Settings::load_with_env(None, env.into_iter().collect()).unwrap()
    };
    assert_eq!(settings.redis.mode, slidegate_redis::RedisMode::Cluster);
    let options = settings.redis.cluster_options("p:", None).unwrap();
    assert_eq!(
        options.nodes,
        ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]
    );
    settings.validate().unwrap();
}
