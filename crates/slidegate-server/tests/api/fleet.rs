//! The fleet through real nginx: three `slidegate` processes, the shipped nginx files, a demo upstream — exact limits, forward-auth, a killed replica, a rolling restart, a forged `X-Forwarded-For`, the admin side out of reach.
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
use crate::helpers::{Replica, eventually, redis_url, sliding_log_units, unique_prefix};

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
    /// What the shipped files are filled in with; kept to rewrite them on reload.
    addresses: Addresses,
}

/// The addresses of this run that replace those of the shipped files.
struct Addresses {
    replicas: Vec<u16>,
    demo: SocketAddr,
    lb: u16,
    gateway: u16,
}

/// The shipped file with the addresses of this run filled in: each
/// `server slidegate-N:8080` gets the next replica port, `server demo:80` the
/// demo's address, and `listen 8080;` / `listen 8081;` ports on 127.0.0.1.
/// Replicas whose port is in `down` are marked `down`: out of rotation, as
/// an operator takes one out before stopping it.
fn fill_in(text: &str, addresses: &Addresses, down: &[u16]) -> String {
    let Addresses {
        replicas,
        demo,
        lb,
        gateway,
    } = addresses;
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
            let (replaced, tail) = if address.starts_with("slidegate-") {
                let port = next_replica.next().expect("as many replicas as servers");
                let tail = match tail.strip_suffix(';') {
                    Some(parameters) if down.contains(port) => format!("{parameters} down;"),
                    _ => tail.to_owned(),
                };
                (format!("127.0.0.1:{port}"), tail)
            } else if address == "demo:80" {
                (demo.to_string(), tail.to_owned())
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
        std::fs::create_dir(dir.path().join("conf.d")).unwrap();
        let addresses = Addresses {
            replicas: replicas.to_vec(),
            demo,
            lb,
            gateway,
        };
        write_conf_d(dir.path(), &addresses, &[]);
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
            addresses,
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

    /// Takes the replicas on `down` out of rotation (and puts every other
    /// one back), as an operator does before stopping a replica behind nginx
    /// OSS, which has no active health checks: rewrite the upstream file,
    /// `nginx -s reload` (SIGHUP to the master), and wait until the reload
    /// has taken effect. The master starts workers with the new file and asks
    /// the old ones to finish their requests and exit; once every old worker
    /// has exited, no check can reach a server marked `down` any more. A file
    /// nginx refuses leaves the old workers running: that fails here too.
    async fn reload(&mut self, down: &[u16]) {
        let old = self.workers();
        assert!(!old.is_empty(), "nginx has no workers");
        write_conf_d(self.dir.path(), &self.addresses, down);
        let master = self.child.as_ref().expect("nginx is running").id();
        let signalled = Command::new("kill")
            .args(["-HUP", &master.to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(signalled.success(), "kill -HUP nginx failed");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let now = self.workers();
            if !now.is_empty() && old.iter().all(|worker| !now.contains(worker)) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("nginx exited on reload ({status}):\n{}", self.error_log());
            }
            assert!(
                Instant::now() < deadline,
                "nginx's old workers {old:?} still run 10 s after the reload (now {now:?}):\n{}",
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The master's live children (its workers), from /proc.
    fn workers(&self) -> Vec<u32> {
        let master = self.child.as_ref().expect("nginx is running").id();
        let mut workers = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `pid (comm) state ppid ...`; comm may contain spaces, so parse after the last ')'.
            let mut fields = stat[stat.rfind(')').map_or(0, |end| end + 1)..].split_whitespace();
            let (state, parent) = (fields.next(), fields.next());
            if state != Some("Z") && parent == Some(master.to_string().as_str()) {
                workers.push(pid);
            }
        }
        workers
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

/// Writes the shipped `deploy/nginx/conf.d` files, filled in, to `prefix/conf.d`.
fn write_conf_d(prefix: &Path, addresses: &Addresses, down: &[u16]) {
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
            prefix.join("conf.d").join(file.file_name().unwrap()),
            fill_in(&text, addresses, down),
        )
        .unwrap();
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
        Self::start_with(&[]).await
    }

    /// As [`Fleet::start`], with `extra` settings on every replica (e.g. a Postgres catalog).
    async fn start_with(extra: &[(&'static str, String)]) -> Self {
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
        // As every replica in these tests (see TestOptions::redis): on a
        // busy 2-core CI a scheduling stall outlasts the built-in 50 ms, and
        // every check in flight on the stalled replica would answer 503 for
        // the wrong reason (the rolling restart failed 6 or so checks in most
        // runs with the machine loaded by other builds). No fleet test is about timeouts.
        env.push(("SLIDEGATE__REDIS__CONNECT_TIMEOUT", "1s".into()));
        env.push(("SLIDEGATE__REDIS__COMMAND_TIMEOUT", "1s".into()));
        // Settings compose does not use (a Postgres catalog): added on purpose,
        // so they skip the drift check above.
        for (name, value) in extra {
            env.retain(|(n, _)| n != name);
            env.push((name, value.clone()));
        }
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
    // Compose's admin port, on a free port of this host (nginx never sees it).
    if let Some(admin) = env
        .iter_mut()
        .find(|(name, _)| *name == "SLIDEGATE__SERVER__ADMIN_BIND")
    {
        admin.1 = "127.0.0.1:0".into();
    }
    Replica::spawn(config, &env).await
}

/// Where a replica serves `/metrics` and the admin API: its admin listener
/// (compose sets one), else its only one.
fn operators_side(replica: &Replica) -> &str {
    replica.admin_address.as_deref().unwrap_or(&replica.address)
}

/// A check through nginx: the status of a decision (200, 429); any other
/// status comes back as an error with its body, so a failure says who answered.
/// The second value says whether the check was sent twice (see [`closed_unanswered`]).
async fn check(client: &reqwest::Client, lb: &str, key: &str) -> (Result<u16, String>, bool) {
    let send = || {
        client
            .post(format!("{lb}/v1/check"))
            .json(&serde_json::json!({"policy": "api", "key": key}))
            .send()
    };
    let (response, resent) = match send().await {
        Err(error) if closed_unanswered(&error) => (send().await, true),
        other => (other, false),
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => return (Err(format!("{error:?}")), resent),
    };
    let status = response.status().as_u16();
    if matches!(status, 200 | 429) {
        return (Ok(status), resent);
    }
    let body = response.text().await.unwrap_or_default();
    (Err(format!("{status}: {}", body.trim())), resent)
}

/// nginx closed the client's kept-alive connection without answering (a
/// FIN: "connection closed before message completed"; or, when the check
/// arrived after the close, a reset). On a reload nginx's old workers close
/// the connections that have no request in progress, so a check sent on one
/// at that instant was never read by nginx, and sending it again cannot
/// count it twice: the rolling restart test proves it, every decision a
/// replica made reached a client. This is what an HTTP client of the load
/// balancer does with a reused connection the server closed.
fn closed_unanswered(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = source {
        let incomplete = cause
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_incomplete_message);
        let reset = cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
        if incomplete || reset {
            return true;
        }
        source = cause.source();
    }
    false
}

/// One request of the background load: when it started and how it ended.
#[derive(Debug)]
struct Sent {
    started: Instant,
    outcome: Result<u16, String>,
    /// Sent again after nginx closed the connection unanswered.
    resent: bool,
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
                    let (outcome, resent) = check(&http, &lb, &format!("load-{client}-{n}")).await;
                    sent.push(Sent {
                        started,
                        outcome,
                        resent,
                    });
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
        .get(format!("{}/metrics", operators_side(replica)))
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
    eventually(
        Duration::from_secs(10),
        "nginx to send traffic to the restarted replica",
        || async { (decisions(replica).await >= 1.0).then_some(()) },
    )
    .await;
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
                    statuses.push(check(&http, &lb, "one-key").await.0);
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
async fn with_policies_in_postgres_a_policy_created_through_nginx_guards_the_gateway_on_every_replica()
 {
    let database = crate::helpers::TestDatabase::create().await;
    let fleet = Fleet::start_with(&[
        ("SLIDEGATE__POSTGRES__URL", database.url.clone()),
        (
            "SLIDEGATE__ADMIN__TOKEN",
            crate::helpers::ADMIN_TOKEN.to_owned(),
        ),
    ])
    .await;
    // Through nginx the admin API is not there; an operator uses a replica's admin listener.
    let admin = client_from("127.0.0.24");
    let through_nginx = admin
        .get(format!("{}/v1/admin/policies", fleet.nginx.lb))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(through_nginx.status(), 404);
    let created = admin
        .post(format!(
            "{}/v1/admin/policies",
            operators_side(&fleet.replicas[0])
        ))
        .bearer_auth(crate::helpers::ADMIN_TOKEN)
        .json(&serde_json::json!({
            "name": "pg-demo",
            "algorithm": "sliding_log",
            "limit": 3,
            "window": "1m",
            "match": { "methods": ["GET"], "path_prefix": "/demo/pg" },
            "key": ["client_ip"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());

    // Every replica learns the policy from Postgres (LISTEN/NOTIFY); nginx
    // spreads the gateway's auth checks over all three, and they share one count.
    let client = client_from("127.0.0.25");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut statuses = Vec::new();
    loop {
        let response = client
            .get(format!("{}/demo/pg/page", fleet.nginx.gateway))
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            assert!(response.headers().contains_key("retry-after"));
            assert_eq!(response.headers()["x-ratelimit-limit"], "3");
            break;
        }
        assert_eq!(response.status(), 200, "{}", fleet.nginx.error_log());
        assert!(
            Instant::now() < deadline,
            "the catalog policy never denied: {statuses:?}"
        );
    }
    // A policy is in force everywhere from its first enforced request: once
    // it applied, exactly its limit was admitted before the first 429.
    let admitted_under_it = statuses
        .iter()
        .rev()
        .skip(1)
        .take_while(|status| **status == 200)
        .count();
    assert!(admitted_under_it >= 3, "{statuses:?}");
    // nginx round-robins the auth checks: the next requests reach every
    // replica, and each denies from the same shared count.
    for _ in 0..6 {
        let response = client
            .get(format!("{}/demo/pg/page", fleet.nginx.gateway))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429, "{statuses:?}");
    }
    // Another path is not covered by the catalog policy.
    let other = client
        .get(format!("{}/elsewhere", fleet.nginx.gateway))
        .send()
        .await
        .unwrap();
    assert_ne!(other.status(), 429);
    for replica in &fleet.replicas {
        let ready = replica
            .client
            .get(format!("{}/health/ready", replica.address))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = ready.json().await.unwrap();
        assert_eq!(body["checks"]["postgres"]["ok"], true, "{body}");
        assert_eq!(body["checks"]["limiter"]["source"], "database", "{body}");
    }
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
    eventually(
        Duration::from_secs(10),
        "300 more decisions after the kill (the load stalled)",
        || async { (decisions(&fleet.replicas[0]).await >= before + 300.0).then_some(()) },
    )
    .await;
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

/// Waits until `replica` answers `/health/ready` with 200: its store answers.
async fn wait_until_ready(replica: &Replica) {
    eventually(
        Duration::from_secs(10),
        "the replica to be ready",
        || async {
            let status = replica
                .client
                .get(format!("{}/health/ready", replica.address))
                .send()
                .await
                .map(|response| response.status().as_u16());
            matches!(status, Ok(200)).then_some(())
        },
    )
    .await;
}

/// Waits until `replica`, signalled to stop, answers readiness with 503
/// (draining); false if it is already gone (the drain ended first).
async fn saw_draining(replica: &Replica) -> bool {
    eventually(
        Duration::from_secs(10),
        "readiness to turn 503 after SIGTERM",
        || async {
            match replica
                .client
                .get(format!("{}/health/ready", replica.address))
                .send()
                .await
            {
                Ok(response) if response.status() == 503 => Some(true),
                Ok(_) => None,
                Err(_) => Some(false),
            }
        },
    )
    .await
}

/// The store errors and pool timeouts a replica counted, for a failure message.
async fn store_trouble(replicas: &[Replica]) -> String {
    let mut trouble = String::new();
    for (index, replica) in replicas.iter().enumerate() {
        let Ok(response) = replica
            .client
            .get(format!("{}/metrics", operators_side(replica)))
            .send()
            .await
        else {
            continue;
        };
        for line in response.text().await.unwrap_or_default().lines() {
            let counted = line.starts_with("slidegate_store_errors_total{")
                || line.starts_with("slidegate_pool_timeouts_total{");
            if counted && !line.ends_with(" 0") {
                trouble.push_str(&format!("replica {index}: {line}\n"));
            }
        }
    }
    trouble
}

/// The rolling restart behind nginx OSS, as the README tells operators to do
/// it: nginx has no active health checks, so each replica is first taken out
/// of the upstream (marked `down`, reloaded, old workers gone), then stopped
/// with SIGTERM (it drains and exits 0), replaced on the same port, and put
/// back once its readiness says its store answers. Load runs throughout; not
/// one check may fail, and one key shared by a client keeps its exact limit
/// (a check counted twice, or lost, would show).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_with_sigterm_during_load_fails_no_client_request() {
    let mut fleet = Fleet::start().await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = start_load(&fleet.nginx.lb, 6, &stop);
    let one_key = {
        let (lb, stop) = (fleet.nginx.lb.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let http = client_from("127.0.0.24");
            let mut sent = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let (outcome, resent) = check(&http, &lb, "one-key").await;
                sent.push(Sent {
                    started,
                    outcome,
                    resent,
                });
            }
            sent
        })
    };
    // Decisions of the replicas stopped so far: each counted after its last check.
    let mut decided_by_stopped = 0.0;
    for index in 0..fleet.replicas.len() {
        wait_until_serving(&fleet.replicas[index]).await;
        let port = fleet.ports[index];

        fleet.nginx.reload(&[port]).await;
        let decided = decisions(&fleet.replicas[index]).await;
        decided_by_stopped += decided;
        fleet.replicas[index].signal("TERM");
        if saw_draining(&fleet.replicas[index]).await {
            assert_eq!(
                decisions(&fleet.replicas[index]).await,
                decided,
                "replica {index} decided checks after nginx took it out of rotation"
            );
        }
        let status = fleet.replicas[index]
            .wait_for_exit(Duration::from_secs(10))
            .await;
        assert_eq!(status.code(), Some(0), "replica {index} after SIGTERM");

        let replacement = spawn_replica(&fleet.config, &fleet.env, port).await;
        wait_until_ready(&replacement).await;
        fleet.replicas[index] = replacement;
        fleet.nginx.reload(&[]).await;
    }
    // The last replacement takes traffic too.
    wait_until_serving(&fleet.replicas[2]).await;
    stop.store(true, Ordering::SeqCst);
    let mut sent = finish_load(load).await;
    let on_one_key = one_key.await.unwrap();
    let admitted = on_one_key
        .iter()
        .filter(|sent| matches!(sent.outcome, Ok(200)))
        .count();
    let sent_on_one_key = on_one_key.len();
    sent.extend(on_one_key);
    let mut decided = decided_by_stopped;
    for replica in &fleet.replicas {
        decided += decisions(replica).await;
    }
    let resent = sent.iter().filter(|sent| sent.resent).count();
    let failed: Vec<&Sent> = sent.iter().filter(|sent| sent.failed()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} checks failed during the rolling restart: {failed:?}\n{}\n{}",
        failed.len(),
        sent.len(),
        store_trouble(&fleet.replicas).await,
        fleet.nginx.error_log()
    );
    assert!(sent.len() > 300, "only {} checks sent", sent.len());
    assert!(
        sent_on_one_key > API_LIMIT as usize,
        "only {sent_on_one_key} checks on the shared key"
    );
    assert_eq!(
        admitted, API_LIMIT as usize,
        "the shared key admitted {admitted} of {sent_on_one_key}"
    );
    // Every check a replica decided reached its client: none was counted
    // without an answer, so none sent again was counted twice.
    assert_eq!(
        decided as usize,
        sent.len(),
        "replicas decided {decided} checks, clients got {} answers ({resent} sent twice)",
        sent.len()
    );
    eprintln!(
        "rolling restart: {} checks answered, {resent} sent again after nginx closed a kept-alive connection on reload",
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_and_metrics_answer_404_through_nginx_and_only_each_replicas_admin_listener_serves_them()
 {
    let fleet = Fleet::start().await;
    let client = client_from("127.0.0.27");
    for base in [&fleet.nginx.lb, &fleet.nginx.gateway] {
        for path in ["/metrics", "/v1/admin/policies", "/v1/admin/keys"] {
            let response = client.get(format!("{base}{path}")).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            // The gateway runs forward-auth first; whatever it lets through,
            // the demo upstream answers, never a replica's admin side.
            assert!(
                !body.contains("slidegate_") && !body.contains("\"policies\""),
                "{base}{path}: {status} {body}"
            );
            if base == &fleet.nginx.lb {
                assert_eq!(status, 404, "{path}: {body}");
            }
        }
    }
    for replica in &fleet.replicas {
        let admin = replica
            .admin_address
            .as_deref()
            .expect("compose sets server.admin_bind");
        let scrape = replica
            .client
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .unwrap();
        assert_eq!(scrape.status(), 200);
        let public = replica
            .client
            .get(format!("{}/metrics", replica.address))
            .send()
            .await
            .unwrap();
        assert_eq!(
            public.status(),
            404,
            "the public listener does not serve metrics"
        );
    }
}

/// Units admitted, summed over the `sliding_log` logs of `policy` under `prefix` in this Redis.
async fn admitted(
    redis: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    policy: &str,
) -> u64 {
    let pattern = format!("{prefix}{{{policy}:*}}:wlog");
    let mut cursor = 0u64;
    let mut total = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(redis)
            .await
            .unwrap();
        for key in keys {
            total += sliding_log_units(redis, &key).await;
        }
        if next == 0 {
            return total;
        }
        cursor = next;
    }
}

/// Replica 0 of `fleet` replaced by one on a private Redis whose replies are
/// held `reply_delay`: what it counts is apart from the others' count, and it
/// can be killed after counting a check and before answering it.
async fn with_a_slow_replica(
    fleet: &mut Fleet,
    reply_delay: Duration,
) -> (
    crate::private_redis::PrivateRedis,
    crate::fault_proxy::FaultProxy,
) {
    let redis = crate::private_redis::PrivateRedis::start();
    let proxy = crate::fault_proxy::FaultProxy::start(redis.port()).await;
    fleet.replicas[0].signal("KILL");
    fleet.replicas[0]
        .wait_for_exit(Duration::from_secs(5))
        .await;
    let mut env = fleet.env.clone();
    env.retain(|(name, _)| {
        !matches!(
            *name,
            "SLIDEGATE__REDIS__URL" | "SLIDEGATE__REDIS__COMMAND_TIMEOUT"
        )
    });
    env.push(("SLIDEGATE__REDIS__URL", proxy.redis_url()));
    // It waits for the held reply instead of answering 503 after 50 ms.
    env.push(("SLIDEGATE__REDIS__COMMAND_TIMEOUT", "20s".into()));
    fleet.replicas[0] = spawn_replica(&fleet.config, &env, fleet.ports[0]).await;
    // Its script is loaded before replies are held.
    let warm = fleet.replicas[0]
        .client
        .post(format!("{}/v1/check", fleet.replicas[0].address))
        .json(&serde_json::json!({"policy": "api", "key": "warm-up"}))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    proxy.set_delay(reply_delay);
    (redis, proxy)
}

/// Which shipped nginx entry sends the forward-auth request.
#[derive(Clone, Copy)]
enum Via {
    /// The gateway's `auth_request` subrequest (a protected page).
    Gateway,
    /// `/v1/forward-auth` on the load balancer, as a gateway elsewhere would call it.
    LoadBalancer,
}

/// Sends forward-auth requests through nginx one at a time until one is
/// counted by the slow replica 0, kills that replica while the answer is
/// held, and checks that nginx did not send the request to another replica:
/// it failed, closed, and the others counted nothing for it.
async fn a_forward_auth_request_is_counted_once_when_its_replica_dies_mid_request(
    via: Via,
    failed_status: u16,
) {
    let mut fleet = Fleet::start().await;
    let (slow_redis, _proxy) = with_a_slow_replica(&mut fleet, Duration::from_secs(3)).await;
    let prefix = fleet
        .env
        .iter()
        .find(|(name, _)| *name == "SLIDEGATE__LIMITER__KEY_PREFIX")
        .unwrap()
        .1
        .clone();
    let mut shared = crate::helpers::redis_connection().await;
    let mut slow = slow_redis.connection().await;
    let client = client_from("127.0.0.26");
    let request = match via {
        Via::Gateway => client.get(format!("{}/page", fleet.nginx.gateway)),
        Via::LoadBalancer => client
            .get(format!("{}/v1/forward-auth", fleet.nginx.lb))
            .header("X-Forwarded-Uri", "/page"),
    };
    let policy = "demo-per-client";
    for attempt in 0..DEMO_LIMIT {
        let shared_before = admitted(&mut shared, &prefix, policy).await;
        let slow_before = admitted(&mut slow, &prefix, policy).await;
        let sent = tokio::spawn(request.try_clone().unwrap().send());
        // Answered (by replica 1 or 2), or counted by replica 0 and held there.
        let held = eventually(Duration::from_secs(10), "the request to be decided", || {
            let (mut slow, sent, prefix) = (slow.clone(), &sent, &prefix);
            async move {
                if sent.is_finished() {
                    Some(false)
                } else if admitted(&mut slow, prefix, policy).await > slow_before {
                    Some(true)
                } else {
                    None
                }
            }
        })
        .await;
        if !held {
            let response = sent.await.unwrap().unwrap();
            assert_eq!(response.status(), 200, "request {attempt}");
            continue;
        }
        fleet.replicas[0].signal("KILL");
        let response = sent.await.unwrap().unwrap();
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            admitted(&mut shared, &prefix, policy).await,
            shared_before,
            "nginx sent the request the killed replica had counted to another replica, \
             which counted it again ({status} {body})\n{}",
            fleet.nginx.error_log()
        );
        assert_eq!(status, failed_status, "{body}");
        assert_eq!(admitted(&mut slow, &prefix, policy).await, slow_before + 1);
        if matches!(via, Via::Gateway) {
            assert_eq!(
                fleet.demo.hits.load(Ordering::SeqCst),
                attempt as u64,
                "the failed request did not reach the upstream"
            );
        }
        // Without retries a dead replica fails the requests that meet its
        // refused connection: one per fail_timeout (2 s) and nginx worker
        // (the test runs one), since max_fails=1 takes it out of rotation.
        let started = Instant::now();
        let mut refused = 0;
        for _ in 0..6 {
            let status = request.try_clone().unwrap().send().await.unwrap().status();
            if status != 200 {
                assert_eq!(status.as_u16(), failed_status);
                refused += 1;
            }
        }
        let windows = 1 + started.elapsed().as_secs() / 2;
        assert!(
            refused <= windows,
            "{refused} requests failed on the dead replica within {:?}",
            started.elapsed()
        );
        return;
    }
    panic!("nginx never sent a request to replica 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_request_whose_replica_dies_after_counting_it_fails_closed_and_is_not_counted_again()
 {
    a_forward_auth_request_is_counted_once_when_its_replica_dies_mid_request(Via::Gateway, 503)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forward_auth_request_on_the_load_balancer_whose_replica_dies_after_counting_it_is_not_counted_again()
 {
    a_forward_auth_request_is_counted_once_when_its_replica_dies_mid_request(
        Via::LoadBalancer,
        502,
    )
    .await;
}
