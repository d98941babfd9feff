//! Redis over TLS (`rediss://`): verified against a private CA, refused without it, mutual TLS; and TLS settings that stop start-up.
//!
//! Every server here is a private `redis-server` speaking only TLS, with a
//! CA and certificates made by `openssl` for the test.

use std::time::Duration;

use slidegate::configuration::Settings;
use slidegate::startup::Application;

use crate::helpers::{CheckReply, Replica, TestApp, TestOptions, policy, spawn_app};
use crate::private_redis::{PrivateRedis, TestPki};

/// A replica on `redis` (a TLS server) with these TLS settings.
fn options(redis: &PrivateRedis, pki: &TestPki, ca: bool, client: bool) -> TestOptions {
    let mut options = TestOptions::redis(vec![policy("p", "sliding_log", 3, "1m")]);
    options.redis_url = Some(redis.url());
    if ca {
        options.settings.redis.tls_ca_file = Some(pki.ca.cert.clone());
    }
    if client {
        options.settings.redis.tls_cert_file = Some(pki.client.cert.clone());
        options.settings.redis.tls_key_file = Some(pki.client.key.clone());
    }
    options
}

async fn wait_ready(app: &TestApp) -> CheckReply {
    app.eventually(
        "the replica to be ready over TLS",
        Duration::from_secs(10),
        || app.get("/health/ready"),
        |reply| reply.status == 200,
    )
    .await
}

/// Redis's own error for the replica that cannot use it, once readiness
/// names one of `reasons`. A loaded machine can first report a probe that
/// ran out of time ("no answer to the health probe within …"): that is a
/// true answer too, but not the one under test, so it is waited past.
async fn redis_error(app: &TestApp, reasons: &[&str]) -> String {
    let reply = app
        .eventually(
            &format!("readiness to say Redis cannot be used because of one of {reasons:?}"),
            Duration::from_secs(10),
            || app.get("/health/ready"),
            |reply| {
                reply.body["checks"]["redis"]["error"]
                    .as_str()
                    .is_some_and(|error| reasons.iter().any(|reason| error.contains(reason)))
            },
        )
        .await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.body["ready"], false);
    reply.body["checks"]["redis"]["error"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn statuses(app: &TestApp, key: &str, checks: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..checks {
        statuses.push(app.check("p", key, None).await.status);
    }
    statuses
}

#[tokio::test]
async fn decisions_are_made_over_tls_verified_against_a_private_ca() {
    let pki = TestPki::new();
    let redis = PrivateRedis::start_tls(&pki, false);
    let app = spawn_app(options(&redis, &pki, true, false)).await;
    let ready = wait_ready(&app).await;
    assert_eq!(ready.body["checks"]["redis"]["ok"], true);
    // The only Redis this replica knows speaks TLS: the fourth check is
    // denied because the first three were counted there.
    assert_eq!(statuses(&app, "alice", 4).await, [200, 200, 200, 429]);

    // By name: the certificate's DNS name, verified as its IP address was.
    let mut by_name = options(&redis, &pki, true, false);
    by_name.redis_url = Some(format!("rediss://localhost:{}", redis.port()));
    let by_name = spawn_app(by_name).await;
    wait_ready(&by_name).await;
    assert_eq!(statuses(&by_name, "bob", 4).await, [200, 200, 200, 429]);
}

#[tokio::test]
async fn a_replica_without_the_ca_refuses_the_certificate_and_says_why_once() {
    let pki = TestPki::new();
    let redis = PrivateRedis::start_tls(&pki, false);
    // No tls_ca_file: the system's roots, which do not know the test CA.
    let replica = Replica::spawn("", &[("SLIDEGATE__REDIS__URL", redis.url())]).await;
    let lost = replica
        .wait_for_log("the refused certificate to be logged", |line| {
            line["message"]
                .as_str()
                .is_some_and(|message| message.starts_with("cannot reach Redis"))
        })
        .await;
    let logged = lost["error"].as_str().unwrap();
    assert!(logged.contains("certificate verify failed"), "{logged}");

    // Readiness names the same reason (a probe that ran out of time on a
    // loaded machine is a true answer too, and is waited past).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ready = replica
            .client
            .get(format!("{}/health/ready", replica.address))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        let ready: serde_json::Value = ready.json().await.unwrap();
        let error = ready["checks"]["redis"]["error"]
            .as_str()
            .unwrap_or_default();
        if error.contains("certificate verify failed") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never named the refused certificate: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        let check = replica
            .client
            .post(format!("{}/v1/check", replica.address))
            .json(&serde_json::json!({"policy": "demo", "key": "alice"}))
            .send()
            .await
            .unwrap();
        // Never admitted over a connection that skipped verification.
        assert_eq!(check.status(), 503);
    }
    let logs = replica.logs();
    let mentions = |text: &str| {
        logs.iter()
            .filter(|line| line.to_string().contains(text))
            .count()
    };
    assert_eq!(mentions("certificate verify failed"), 1, "{logs:#?}");
    assert_eq!(mentions("connected to Redis"), 0, "{logs:#?}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused_even_from_the_trusted_ca() {
    let pki = TestPki::new();
    let elsewhere = pki.issue(
        "elsewhere",
        "subjectAltName=DNS:elsewhere.example\nextendedKeyUsage=serverAuth\n",
    );
    let redis = PrivateRedis::start_tls_with(&pki, &elsewhere, false);
    let app = spawn_app(options(&redis, &pki, true, false)).await;
    let error = redis_error(&app, &["certificate verify failed"]).await;
    assert!(error.contains("certificate verify failed"), "{error}");
    assert_eq!(app.check("p", "alice", None).await.status, 503);
}

#[tokio::test]
async fn mutual_tls_refuses_a_replica_without_a_client_certificate_and_accepts_one_with_it() {
    let pki = TestPki::new();
    let redis = PrivateRedis::start_tls(&pki, true);

    let without = spawn_app(options(&redis, &pki, true, false)).await;
    // TLS 1.3: the server judges the client's certificate after the
    // handshake, so the replica sees its alert or the connection reset.
    let error = redis_error(&without, &["certificate required", "connection dropped"]).await;
    assert!(
        error.contains("certificate required") || error.contains("connection dropped"),
        "{error}"
    );
    assert_eq!(without.check("p", "alice", None).await.status, 503);

    let with = spawn_app(options(&redis, &pki, true, true)).await;
    wait_ready(&with).await;
    assert_eq!(statuses(&with, "alice", 4).await, [200, 200, 200, 429]);
    // Still refused: the server, not a cached failure, tells them apart.
    assert_eq!(without.check("p", "bob", None).await.status, 503);
}

#[tokio::test]
async fn a_server_that_accepts_but_never_completes_the_handshake_times_the_attempt_out() {
    let pki = TestPki::new();
    // The kernel accepts connections to it; nothing ever answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut options = TestOptions::redis(vec![policy("p", "sliding_log", 3, "1m")]);
    options.redis_url = Some(format!(
        "rediss://127.0.0.1:{}",
        silent.local_addr().unwrap().port()
    ));
    options.settings.redis.tls_ca_file = Some(pki.ca.cert.clone());
    let app = spawn_app(options).await;
    // The attempt ends (and says so) instead of holding the pool's slot.
    app.eventually(
        "the hanging handshake to be given up",
        Duration::from_secs(10),
        || app.get("/health/ready"),
        |reply| {
            reply.body["checks"]["redis"]["error"]
                .as_str()
                .is_some_and(|error| {
                    error.contains("the last connection attempt failed: connection timed out")
                })
        },
    )
    .await;
    assert_eq!(app.check("p", "alice", None).await.status, 503);
}

/// Settings as the environment would give them, over an empty file.
fn settings(env: &[(&str, String)]) -> Settings {
    let env = env
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.clone()))
        .collect();
    Settings::load_with_env(None, env).unwrap()
}

fn tls_error(settings: &Settings) -> String {
    match settings.redis.tls() {
        Ok(_) => panic!("accepted: {settings:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn tls_settings_that_cannot_work_are_refused_naming_the_setting() {
    let pki = TestPki::new();
    let ca = pki.ca.cert.display().to_string();
    let url = |url: &str| ("SLIDEGATE__REDIS__URL", url.to_owned());
    for (env, mentions) in [
        (
            vec![
                url("redis://127.0.0.1:6379"),
                ("SLIDEGATE__REDIS__TLS_CA_FILE", ca.clone()),
            ],
            "redis.tls_ca_file: applies only to a rediss:// redis.url",
        ),
        (
            vec![("SLIDEGATE__REDIS__TLS_CA_FILE", ca.clone())],
            "redis.tls_ca_file: applies only to a rediss:// redis.url",
        ),
        (
            vec![
                url("rediss://127.0.0.1:6380"),
                ("SLIDEGATE__REDIS__TLS_CERT_FILE", ca.clone()),
            ],
            "redis.tls_key_file: must be set with redis.tls_cert_file",
        ),
        (
            vec![
                url("rediss://127.0.0.1:6380"),
                ("SLIDEGATE__REDIS__TLS_KEY_FILE", ca.clone()),
            ],
            "redis.tls_cert_file: must be set with redis.tls_key_file",
        ),
        (
            vec![url("rediss://:topsecret@127.0.0.1:6380/#insecure")],
            "redis.url: must not have a #fragment (#insecure",
        ),
    ] {
        let settings = settings(&env);
        let message = settings.clone().validate().unwrap_err().to_string();
        assert!(message.contains(mentions), "{message:?} for {env:?}");
        assert!(!message.contains("topsecret"), "{message}");
        assert_eq!(tls_error(&settings), message, "the same check at start-up");
    }
}

#[test]
fn tls_files_that_cannot_be_read_or_parsed_name_the_setting_and_the_path_never_the_contents() {
    let pki = TestPki::new();
    let secret = "hunter2-contents-of-a-file";
    let not_pem = pki.path("not-pem.txt");
    std::fs::write(&not_pem, secret).unwrap();
    let legacy_key = pki.path("legacy.key");
    std::fs::write(
        &legacy_key,
        format!("-----BEGIN EC PRIVATE KEY-----\n{secret}\n-----END EC PRIVATE KEY-----\n"),
    )
    .unwrap();
    let missing = pki.path("missing.crt");
    let path = |path: &std::path::Path| path.display().to_string();
    let with = |ca: Option<String>, client: Option<(String, String)>| {
        let mut env = vec![(
            "SLIDEGATE__REDIS__URL",
            "rediss://127.0.0.1:6380".to_owned(),
        )];
        if let Some(ca) = ca {
            env.push(("SLIDEGATE__REDIS__TLS_CA_FILE", ca));
        }
        if let Some((cert, key)) = client {
            env.push(("SLIDEGATE__REDIS__TLS_CERT_FILE", cert));
            env.push(("SLIDEGATE__REDIS__TLS_KEY_FILE", key));
        }
        settings(&env)
    };
    let client = |cert: &std::path::Path, key: &std::path::Path| Some((path(cert), path(key)));
    for (settings, field, mentions) in [
        (
            with(Some(path(&missing)), None),
            "redis.tls_ca_file",
            "cannot read",
        ),
        (
            with(Some(path(&not_pem)), None),
            "redis.tls_ca_file",
            "holds no PEM certificate",
        ),
        (
            with(None, client(&not_pem, &pki.client.key)),
            "redis.tls_cert_file",
            "holds no PEM certificate",
        ),
        (
            with(None, client(&pki.client.cert, &legacy_key)),
            "redis.tls_key_file",
            "is not a PKCS#8 PEM private key",
        ),
        (
            with(None, client(&pki.client.cert, &missing)),
            "redis.tls_key_file",
            "cannot read",
        ),
        (
            // A real key, of another certificate.
            with(None, client(&pki.client.cert, &pki.server.key)),
            "redis.tls_key_file",
            "does not fit the client certificate",
        ),
    ] {
        // Consistent settings: only reading the files finds the problem,
        // and validation reads them (once: start-up uses what it read).
        let message = tls_error(&settings);
        assert_eq!(
            settings.validate().unwrap_err().to_string(),
            message,
            "validation reports what reading the files found"
        );
        assert!(
            message.starts_with(&format!("invalid setting {field}: ")),
            "{message}"
        );
        assert!(message.contains(mentions), "{message}");
        assert!(!message.contains(secret), "{message}");
    }
    // The files of a working set-up are accepted, and their contents stay out of debug output.
    let good = with(
        Some(path(&pki.ca.cert)),
        client(&pki.client.cert, &pki.client.key),
    );
    let tls = good.redis.tls().unwrap().expect("TLS files are set");
    let debug = format!("{tls:?}");
    assert_eq!(
        debug,
        "RedisTls { private_ca: true, client_certificate: true, .. }"
    );
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_start_up_naming_the_setting() {
    let pki = TestPki::new();
    let mut settings = Settings::default();
    settings.server.bind = "127.0.0.1:0".into();
    settings.redis.url = Some("rediss://127.0.0.1:6380".to_owned().into());
    settings.redis.tls_ca_file = Some(pki.path("missing.crt"));
    let error = match settings.validate() {
        Err(error) => error.to_string(),
        Ok(valid) => match Application::build(valid).await {
            Ok(_) => panic!("started without its CA file"),
            Err(error) => error.to_string(),
        },
    };
    assert!(
        error.starts_with("invalid setting redis.tls_ca_file: cannot read "),
        "{error}"
    );
}
