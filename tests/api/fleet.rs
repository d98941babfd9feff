//! The fleet through real nginx: three `slidegate` processes, the shipped nginx files, a demo upstream — exact limits, forward-auth, a killed replica, a rolling restart, a forged `X-Forwarded-For`.
//!
//! Everything runs on 127.0.0.1 with free ports. nginx runs the files of
//! `deploy/nginx/conf.d` with only the upstream addresses and listen ports
//! filled in; the replicas run `config/fleet.toml` with the `SLIDEGATE__*`
//! variables of `docker-compose.yml`, addresses replaced. Clients connect
//! from other loopback addresses (127.0.0.x) than nginx's own 127.0.0.1, so
//! "the client's address" and "the trusted proxy" differ as they would in
//! production. Every process is killed when its guard drops, also on failure.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};
use tokio::sync::Mutex;

use crate::deploy::{compose_slidegate_env, repo_file};
use crate::helpers::{Replica, redis_url, unique_prefix};

/// Fleet tests each start four processes and load them: they take turns.
static ONE_FLEET_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const API_LIMIT: u64 = 100;
const DEMO_LIMIT: usize = 20;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A client whose connections come from `source` (a loopback address other than nginx's).
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// The upstream the gateway protects: counts the requests that reach it.
struct Demo {
    address: SocketAddr,
    hits: Arc<AtomicU64>,
    server: actix_web::dev::ServerHandle,
}

impl Demo {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let counted = web::Data::from(Arc::clone(&hits));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(counted.clone())
                .default_service(web::to(|hits: web::Data<AtomicU64>| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    HttpResponse::Ok().body("hello from the demo upstream")
                }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            address,
            hits,
            server: handle,
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        drop(self.server.stop(false));
    }
}

/// nginx as a foreground process with its own prefix, logs and temp files.
struct Nginx {
    child: Option<Child>,
    dir: tempfile::TempDir,
    lb: String,
    gateway: String,
}

/// The shipped file with the addresses of this run filled in: each
/// `server slidegate-N:8080` gets the next replica port, `server demo:80` the
/// demo's address, and `listen 8080;` / `listen 8081;` ports on 127.0.0.1.
fn fill_in(text: &str, replicas: &[u16], demo: SocketAddr, lb: u16, gateway: u16) -> String {
    let mut next_replica = replicas.iter();
    let mut out = String::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        // `server ADDRESS [parameters];` inside an upstream block (not `server {`).
        let upstream_server = trimmed
            .strip_prefix("server ")
            .filter(|rest| !rest.starts_with('{'));
        let filled = if let Some(rest) = upstream_server {
            let end = rest.find([' ', ';']).unwrap_or(rest.len());
            let (address, tail) = rest.split_at(end);
            let replaced = if address.starts_with("slidegate-") {
                let port = next_replica.next().expect("as many replicas as servers");
                format!("127.0.0.1:{port}")
            } else if address == "demo:80" {
                demo.to_string()
            } else {
                panic!("unexpected upstream server {address:?} in the shipped nginx files");
            };
            format!("{indent}server {replaced}{tail}")
        } else if trimmed == "listen 8080;" {
            format!("{indent}listen 127.0.0.1:{lb};")
        } else if trimmed == "listen 8081;" {
            format!("{indent}listen 127.0.0.1:{gateway};")
        } else {
            line.to_owned()
        };
        out.push_str(&filled);
        out.push('\n');
    }
    assert!(
        next_replica.len() == replicas.len() || next_replica.len() == 0,
        "the shipped upstream lists fewer replicas than the test starts"
    );
    out
}

impl Nginx {
    async fn start(replicas: &[u16], demo: SocketAddr) -> Self {
        let binary = which("nginx").unwrap_or_else(|| {
            panic!(
                "nginx is not installed: the fleet test runs the shipped nginx configuration \
                 (bash .ci/run installs it; or apt-get install -y nginx)"
            )
        });
        let dir = tempfile::tempdir().unwrap();
        // nginx's workers run as an unprivileged user when started as root.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let (lb, gateway) = (free_port(), free_port());
        let conf_d = dir.path().join("conf.d");
        std::fs::create_dir(&conf_d).unwrap();
        let shipped = repo_file("deploy/nginx/conf.d");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&shipped)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "conf"))
            .collect();
        files.sort();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            std::fs::write(
                conf_d.join(file.file_name().unwrap()),
                fill_in(&text, replicas, demo, lb, gateway),
            )
            .unwrap();
        }
        let root = dir.path().display();
        // The envelope a distribution's nginx.conf provides; the nginx image's
        // includes /etc/nginx/conf.d/*.conf the same way.
        let main = format!(
            "worker_processes 1;\n\
             error_log {root}/error.log notice;\n\
             pid {root}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
               access_log {root}/access.log;\n\
               client_body_temp_path {root}/client_body;\n\
               proxy_temp_path {root}/proxy;\n\
               fastcgi_temp_path {root}/fastcgi;\n\
               uwsgi_temp_path {root}/uwsgi;\n\
               scgi_temp_path {root}/scgi;\n\
               include {root}/conf.d/*.conf;\n\
             }}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let mut nginx = Nginx {
            child: Some(child),
            dir,
            lb: format!("http://127.0.0.1:{lb}"),
            gateway: format!("http://127.0.0.1:{gateway}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", gateway)).is_err()
            || TcpStream::connect(("127.0.0.1", lb)).is_err()
        {
            if let Some(status) = nginx.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited ({status}):\n{}", nginx.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not listen within 10 s:\n{}",
                nginx.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// SIGTERM, not SIGKILL: the master must live to stop its workers, or
    /// they outlive the test still listening.
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Three replicas on the machine's Redis (a key prefix of their own), nginx, the demo upstream.
struct Fleet {
    replicas: Vec<Replica>,
    ports: Vec<u16>,
    env: Vec<(&'static str, String)>,
    config: String,
    nginx: Nginx,
    demo: Demo,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Fleet {
    async fn start() -> Self {
        let turn = ONE_FLEET_AT_A_TIME.lock().await;
        let config = std::fs::read_to_string(config_file()).unwrap();
        let mut env: Vec<(&'static str, String)> = compose_slidegate_env()
            .into_iter()
            .filter(|(name, _)| name.starts_with("SLIDEGATE__"))
            .map(|(name, value)| (&*name.leak(), value))
            .collect();
        let mut set = |name: &'static str, value: String| {
            assert!(
                name == "SLIDEGATE__LIMITER__KEY_PREFIX" || env.iter().any(|(n, _)| *n == name),
                "{name} is not set in docker-compose.yml: the test would drift from it"
            );
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        };
        set("SLIDEGATE__REDIS__URL", redis_url());
        // nginx connects from 127.0.0.1; clients come from other 127.0.0.x addresses.
        set(
            "SLIDEGATE__FORWARD_AUTH__TRUSTED_PROXIES",
            "127.0.0.1/32".into(),
        );
        set("SLIDEGATE__SERVER__DRAIN_DELAY", "300ms".into());
        set("SLIDEGATE__LIMITER__KEY_PREFIX", unique_prefix());
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut replicas = Vec::new();
        for port in &ports {
            replicas.push(spawn_replica(&config, &env, *port).await);
        }
        let demo = Demo::start();
        let nginx = Nginx::start(&ports, demo.address).await;
        Self {
            replicas,
            ports,
            env,
            config,
            nginx,
            demo,
            _turn: turn,
        }
    }
}

/// The file compose points `SLIDEGATE_CONFIG` at, in the repository.
fn config_file() -> PathBuf {
    let in_image = compose_slidegate_env()
        .into_iter()
        .find(|(name, _)| name == "SLIDEGATE_CONFIG")
        .expect("docker-compose.yml sets SLIDEGATE_CONFIG")
        .1;
    // deploy/Dockerfile copies config/ to /etc/slidegate/.
    let relative = Path::new(&in_image)
        .strip_prefix("/etc/slidegate")
        .expect("the config lives in /etc/slidegate");
    repo_file("config").join(relative)
}

async fn spawn_replica(config: &str, env: &[(&'static str, String)], port: u16) -> Replica {
    let mut env = env.to_vec();
    env.retain(|(name, _)| *name != "SLIDEGATE__SERVER__BIND");
    env.push(("SLIDEGATE__SERVER__BIND", format!("127.0.0.1:{port}")));
    Replica::spawn(config, &env).await
}

async fn check(client: &reqwest::Client, lb: &str, key: &str) -> Result<u16, String> {
    client
        .post(format!("{lb}/v1/check"))
        .json(&serde_json::json!({"policy": "api", "key": key}))
        .send()
        .await
        .map(|response| response.status().as_u16())
        .map_err(|error| format!("{error:?}"))
}

/// One request of the background load: when it started and how it ended.
#[derive(Debug)]
struct Sent {
    started: Instant,
    outcome: Result<u16, String>,
}

impl Sent {
    /// A decision (200 or 429) is a success; anything else failed the client.
    fn failed(&self) -> bool {
        !matches!(self.outcome, Ok(200 | 429))
    }
}

/// `clients` concurrent loops of checks through nginx until `stop` is set.
fn start_load(
    lb: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Sent>>> {
    (0..clients)
        .map(|client| {
            let (lb, stop) = (lb.to_owned(), Arc::clone(stop));
            tokio::spawn(async move {
                let http = client_from("127.0.0.20");
                let mut sent = Vec::new();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let started = Instant::now();
                    // Fresh keys: the load is admitted, so a failure cannot hide behind a 429.
                    let outcome = check(&http, &lb, &format!("load-{client}-{n}")).await;
                    sent.push(Sent { started, outcome });
                }
                sent
            })
        })
        .collect()
}

async fn finish_load(load: Vec<tokio::task::JoinHandle<Vec<Sent>>>) -> Vec<Sent> {
    let mut all = Vec::new();
    for client in load {
        all.extend(client.await.unwrap());
    }
    all
}

/// Decisions a replica has made, read from its own `/metrics`.
async fn decisions(replica: &Replica) -> f64 {
    let Ok(response) = replica
        .client
        .get(format!("{}/metrics", replica.address))
        .send()
        .await
    else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with("slidegate_decisions_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until nginx sends traffic to `replica` again (its decision count grows).
async fn wait_until_serving(replica: &Replica) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while decisions(replica).await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "nginx sent no traffic to the restarted replica within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_global_limit_is_exact_across_three_replicas_behind_nginx() {
    let fleet = Fleet::start().await;
    let clients = 50;
    let per_client = 4;
    let lb = fleet.nginx.lb.clone();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let lb = lb.clone();
            tokio::spawn(async move {
                let http = client_from("127.0.0.21");
                let mut statuses = Vec::new();
                for _ in 0..per_client {
                    statuses.push(check(&http, &lb, "one-key").await);
                }
                statuses
            })
        })
        .collect();
    let (mut admitted, mut denied, mut other) = (0u64, 0, Vec::new());
    for task in tasks {
        for status in task.await.unwrap() {
            match status {
                Ok(200) => admitted += 1,
                Ok(429) => denied += 1,
                other_status => other.push(other_status),
            }
        }
    }
    assert!(other.is_empty(), "failed checks: {other:?}");
    assert_eq!(admitted, API_LIMIT, "admitted {admitted}, denied {denied}");
    for replica in &fleet.replicas {
        assert!(
            decisions(replica).await > 0.0,
            "nginx spread the checks over every replica"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_auth_passes_allowed_requests_to_the_upstream_and_answers_429_with_retry_after_to_the_rest()
 {
    let fleet = Fleet::start().await;
    let client = client_from("127.0.0.22");
    for n in 0..DEMO_LIMIT {
        let response = client
            .get(format!("{}/demo/page?n={n}", fleet.nginx.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "request {n}: {}",
            fleet.nginx.error_log()
        );
        let remaining = response.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap();
        assert_eq!(remaining, (DEMO_LIMIT - n - 1).to_string());
        assert!(response.headers().contains_key("ratelimit-policy"));
        assert_eq!(
            response.text().await.unwrap(),
            "hello from the demo upstream"
        );
    }
    let denied = client
        .get(format!("{}/demo/page", fleet.nginx.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 429);
    let headers = denied.headers();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(
        headers["x-ratelimit-limit"],
        DEMO_LIMIT.to_string().as_str()
    );
    assert!(headers["ratelimit"].to_str().unwrap().contains("r=0"));
    assert!(headers.contains_key("ratelimit-policy"));
    assert_eq!(
        fleet.demo.hits.load(Ordering::SeqCst),
        DEMO_LIMIT as u64,
        "only allowed requests reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_spoofed_x_forwarded_for_from_an_untrusted_client_does_not_change_its_key() {
    let fleet = Fleet::start().await;
    let client = client_from("127.0.0.23");
    // Through nginx: each request forges another origin; nginx appends the
    // real one, and slidegate believes only what its trusted proxy appended.
    let mut statuses = Vec::new();
    for n in 0..=DEMO_LIMIT {
        let response = client
            .get(format!("{}/", fleet.nginx.gateway))
            .header("X-Forwarded-For", format!("203.0.113.{n}"))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..DEMO_LIMIT], [200; DEMO_LIMIT], "{statuses:?}");
    assert_eq!(
        statuses[DEMO_LIMIT], 429,
        "the forged addresses shared one key"
    );

    // Straight to a replica from an untrusted peer: the header is ignored
    // entirely, so this is the same, exhausted key.
    let direct = client
        .get(format!("{}/v1/forward-auth", fleet.replicas[0].address))
        .header("X-Forwarded-Uri", "/")
        .header("X-Forwarded-For", "198.51.100.77")
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_during_load_fails_at_most_the_checks_in_flight_on_it_and_none_after() {
    let mut fleet = Fleet::start().await;
    let clients = 8;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&fleet.nginx.lb, clients, &stop);
    wait_until_serving(&fleet.replicas[1]).await;

    fleet.replicas[1].signal("KILL");
    let status = fleet.replicas[1]
        .wait_for_exit(Duration::from_secs(5))
        .await;
    // The instant it is gone: what was sent to it before may fail, nothing after.
    let killed_at = Instant::now();
    assert!(!status.success());
    // Keep the load on long enough for nginx to hit the dead replica repeatedly.
    let before = decisions(&fleet.replicas[0]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while decisions(&fleet.replicas[0]).await < before + 300.0 {
        assert!(Instant::now() < deadline, "the load stalled after the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let sent = finish_load(load).await;

    let failed: Vec<&Sent> = sent.iter().filter(|sent| sent.failed()).collect();
    let after_kill: Vec<&Sent> = failed
        .iter()
        .copied()
        .filter(|sent| sent.started > killed_at)
        .collect();
    assert!(
        after_kill.is_empty(),
        "checks sent after the kill failed: {after_kill:?}\n{}",
        fleet.nginx.error_log()
    );
    assert!(
        failed.len() <= clients,
        "{} failed, more than the {clients} that could be in flight: {failed:?}",
        failed.len()
    );
    let succeeded_after = sent
        .iter()
        .filter(|sent| sent.started > killed_at && !sent.failed())
        .count();
    assert!(
        succeeded_after > 100,
        "only {succeeded_after} after the kill"
    );
}

// Ignored until fixed: measured 1 failure in 13,000–18,000 checks (a 502 when
// the replica's listener closes with a connection still in its accept queue:
// nginx has sent the check and may not retry it) plus, in one run, three 503
// limiter_unavailable at the moment nginx first sent to a restarted replica.
// Run it with: cargo test --test api rolling_restart -- --ignored
#[ignore = "known failure: a check in the closing listener's accept queue gets a 502; see the README, Fleet"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_with_sigterm_during_load_fails_no_client_request() {
    let mut fleet = Fleet::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&fleet.nginx.lb, 6, &stop);
    for index in 0..fleet.replicas.len() {
        wait_until_serving(&fleet.replicas[index]).await;
        fleet.replicas[index].signal("TERM");
        let status = fleet.replicas[index]
            .wait_for_exit(Duration::from_secs(10))
            .await;
        assert_eq!(status.code(), Some(0), "replica {index} after SIGTERM");
        let replacement = spawn_replica(&fleet.config, &fleet.env, fleet.ports[index]).await;
        fleet.replicas[index] = replacement;
        // As a rolling update waits for readiness: the next replica goes only
        // once this one takes traffic again.
        wait_until_serving(&fleet.replicas[index]).await;
    }
    stop.store(true, Ordering::SeqCst);
    let sent = finish_load(load).await;
    let failed: Vec<&Sent> = sent.iter().filter(|sent| sent.failed()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} checks failed during the rolling restart: {failed:?}\n{}",
        failed.len(),
        sent.len(),
        fleet.nginx.error_log()
    );
    assert!(sent.len() > 300, "only {} checks sent", sent.len());
}
