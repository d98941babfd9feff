//! Real Redis set-ups a test owns: a private `redis-server` a test can kill, restart, pause and inspect (plain, TLS with a test CA, or a cluster node), and a Redis Cluster (`fault_proxy` slows, black-holes or cuts the way to one).
//!
//! Everything listens on 127.0.0.1 only, and every process, task or
//! directory a test starts here is stopped or removed when its guard is
//! dropped, also when the test fails.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use crate::helpers::eventually;

/// A free port on 127.0.0.1: bind one, note it, close it.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free port whose cluster bus port (port + 10000) is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_535 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// `redis-server` arguments for plain text on `port` (0: none) and TLS on
/// `tls_port`, presenting `certificate`, trusting `pki`'s CA for client
/// certificates, which `auth_clients` (`yes`, `no`, `optional`) asks for.
fn tls_listener_args(
    port: u16,
    tls_port: u16,
    pki: &TestPki,
    certificate: &Certificate,
    auth_clients: &str,
) -> Vec<String> {
    let path = |path: &Path| path.display().to_string();
    vec![
        "--port".into(),
        port.to_string(),
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        path(&certificate.cert),
        "--tls-key-file".into(),
        path(&certificate.key),
        "--tls-ca-cert-file".into(),
        path(&pki.ca.cert),
        "--tls-auth-clients".into(),
        auth_clients.into(),
    ]
}

/// The password of a TLS cluster's nodes ([`PrivateCluster::start_tls`]).
pub const CLUSTER_PASSWORD: &str = "cluster-secret";

/// A `redis-server` owned by one test, stopped when dropped (also when the test fails).
pub struct PrivateRedis {
    port: u16,
    /// Everything but `--bind` and the persistence switches.
    args: Vec<String>,
    scheme: &'static str,
    /// A TLS cluster node's plain-text port, which the test's own
    /// connections use (the node serves TLS on `port`).
    plain_port: Option<u16>,
    /// The password the server wants (`--requirepass`), for the test's own connections.
    password: Option<&'static str>,
    process: Option<Child>,
    /// The server's working directory, where a replica writes the snapshot
    /// it syncs from its master: never the test's own directory.
    _dir: Option<tempfile::TempDir>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = free_port();
        Self::start_with(port, "redis", vec!["--port".into(), port.to_string()])
    }

    /// A server replicating `master` (`--replicaof`).
    pub fn start_replica_of(master: &PrivateRedis) -> Self {
        let port = free_port();
        let args = vec![
            "--port".into(),
            port.to_string(),
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port().to_string(),
        ];
        Self::start_with(port, "redis", args)
    }

    /// A server that speaks only TLS, with `pki`'s server certificate. With
    /// `clients_need_certificates` it refuses clients without a certificate
    /// signed by the test CA (`--tls-auth-clients yes`).
    pub fn start_tls(pki: &TestPki, clients_need_certificates: bool) -> Self {
        Self::start_tls_with(pki, &pki.server, clients_need_certificates)
    }

    /// As [`PrivateRedis::start_tls`], presenting `certificate` (one of `pki`'s).
    pub fn start_tls_with(
        pki: &TestPki,
        certificate: &Certificate,
        clients_need_certificates: bool,
    ) -> Self {
        let port = free_port();
        let args = tls_listener_args(
            0,
            port,
            pki,
            certificate,
            if clients_need_certificates {
                "yes"
            } else {
                "no"
            },
        );
        Self::start_with(port, "rediss", args)
    }

    /// A cluster-enabled server on `port` (its bus on port + 10000), keeping its
    /// cluster state in `dir`; not part of a cluster until one is created.
    /// With `full_coverage` (Redis's default) every master stops answering
    /// while any slot has no master; without, a failed master stops only its own.
    pub fn start_cluster_node(port: u16, dir: &Path, full_coverage: bool) -> Self {
        let args = vec![
            "--port".into(),
            port.to_string(),
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            dir.join("nodes.conf").display().to_string(),
            "--cluster-node-timeout".into(),
            "2000".into(),
            "--cluster-require-full-coverage".into(),
            if full_coverage { "yes" } else { "no" }.into(),
            // Replicas sync at once rather than after the default 5 s batch
            // delay: a replica that never synced cannot be promoted.
            "--repl-diskless-sync-delay".into(),
            "0".into(),
            "--dir".into(),
            dir.display().to_string(),
        ];
        Self::start_with(port, "redis", args)
    }

    /// As [`PrivateRedis::start_cluster_node`], speaking TLS with `pki`'s
    /// server certificate on `port` (clients need no certificate), on the
    /// cluster bus and for replication; and plain text on a second port, for
    /// the test's own connections. A TLS client is told the TLS ports of the
    /// other nodes, a plain one their plain ports. Clients must present a
    /// certificate signed by the CA and authenticate with [`CLUSTER_PASSWORD`];
    /// the nodes present `certificate` to each other.
    pub fn start_tls_cluster_node(
        port: u16,
        dir: &Path,
        pki: &TestPki,
        certificate: &Certificate,
    ) -> Self {
        let plain_port = free_port();
        let path = |path: &Path| path.display().to_string();
        let mut args = tls_listener_args(plain_port, port, pki, certificate, "yes");
        args.extend([
            // The nodes present their certificate to each other as clients
            // of the bus and of replication.
            "--tls-client-cert-file".into(),
            path(&certificate.cert),
            "--tls-client-key-file".into(),
            path(&certificate.key),
            "--requirepass".into(),
            CLUSTER_PASSWORD.into(),
            "--masterauth".into(),
            CLUSTER_PASSWORD.into(),
            "--tls-cluster".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
            "--cluster-enabled".into(),
            "yes".into(),
            "--cluster-config-file".into(),
            dir.join("nodes.conf").display().to_string(),
            "--cluster-node-timeout".into(),
            "2000".into(),
            "--dir".into(),
            dir.display().to_string(),
        ]);
        let mut node = Self::start_with(port, "rediss", args);
        node.plain_port = Some(plain_port);
        node.password = Some(CLUSTER_PASSWORD);
        node
    }

    /// A server speaking TLS with `pki`'s server certificate on its port
    /// (clients need no certificate), replicating over TLS, and plain text
    /// on a second port for the test's own connections; a replica of
    /// `master` when given.
    pub fn start_tls_replicating(pki: &TestPki, master: Option<&PrivateRedis>) -> Self {
        let port = free_port();
        let plain_port = free_port();
        let mut args = tls_listener_args(plain_port, port, pki, &pki.server, "no");
        args.extend([
            "--tls-replication".into(),
            "yes".into(),
            "--repl-diskless-sync-delay".into(),
            "0".into(),
        ]);
        if let Some(master) = master {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port().to_string(),
            ]);
        }
        let mut node = Self::start_with(port, "rediss", args);
        node.plain_port = Some(plain_port);
        node
    }

    fn start_with(port: u16, scheme: &'static str, mut args: Vec<String>) -> Self {
        let dir = if args.iter().any(|arg| arg == "--dir") {
            None
        } else {
            let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
            args.extend(["--dir".into(), dir.path().display().to_string()]);
            Some(dir)
        };
        let mut redis = Self {
            port,
            args,
            scheme,
            plain_port: None,
            password: None,
            process: None,
            _dir: dir,
        };
        redis.restart();
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// Starts a fresh server (no data, no scripts) on the same port and
    /// returns once it accepts connections.
    pub fn restart(&mut self) {
        self.kill();
        let mut child = Command::new("redis-server")
            .args(&self.args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (bash .ci/run installs it)");
        // Wait for the server to say it is ready, reading its log on a thread
        // that keeps draining it afterwards so the server never blocks on it.
        let (ready, is_ready) = mpsc::channel();
        let log = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                if line.contains("Ready to accept connections") {
                    let _ = ready.send(());
                }
            }
        });
        self.process = Some(child);
        is_ready
            .recv_timeout(Duration::from_secs(10))
            .expect("redis-server did not become ready within 10 s");
    }

    /// SIGKILL: the server vanishes mid-conversation, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    /// SIGSTOP: the server keeps its connections open and answers nothing, as
    /// a hung server does. Returns once the kernel reports it stopped: the
    /// signal is delivered asynchronously, and on a loaded machine the server
    /// could otherwise answer a command sent just after this returns.
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.process.as_ref().expect("the server runs").id();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // The state follows the parenthesised command name: T = stopped.
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next());
            if state == Some("T") {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server {pid} did not stop: {stat}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT: the paused server carries on, answering everything queued meanwhile.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.process.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// A plain connection (not for a TLS server).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let auth = self
            .password
            .map_or_else(String::new, |password| format!(":{password}@"));
        let url = match self.plain_port {
            Some(port) => format!("redis://{auth}127.0.0.1:{port}"),
            None => format!("{}://{auth}127.0.0.1:{}", self.scheme, self.port),
        };
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("the private Redis answers")
    }

    /// How many times the server has run `command` (from `INFO commandstats`):
    /// the round-trips slidegate made, counted by Redis itself.
    pub async fn calls_of(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.connection().await)
            .await
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        // SIGKILL ends a stopped (paused) process too.
        self.kill();
    }
}

/// A certificate and its key (PEM files, the key in PKCS#8).
pub struct Certificate {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A throw-away certificate authority made with `openssl` in a directory of
/// its own (removed when dropped): the CA, a server certificate for
/// 127.0.0.1 and localhost, and a client certificate. EC P-256 keys, so
/// making them takes milliseconds.
pub struct TestPki {
    pub ca: Certificate,
    pub server: Certificate,
    pub client: Certificate,
    dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Certificate {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=slidegate test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &ca.key.display().to_string(),
            "-out",
            &ca.cert.display().to_string(),
        ]);
        let mut pki = Self {
            server: Certificate {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            client: Certificate {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            ca,
            dir,
        };
        pki.server = pki.issue(
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.client = pki.issue("client", "extendedKeyUsage=clientAuth\n");
        pki
    }

    /// A certificate named `name`, signed by the CA, with `extensions` (an
    /// openssl extension file's lines).
    pub fn issue(&self, name: &str, extensions: &str) -> Certificate {
        let file = |suffix: &str| self.dir.path().join(format!("{name}.{suffix}"));
        let certificate = Certificate {
            cert: file("crt"),
            key: file("key"),
        };
        let request = file("csr");
        let extension_file = file("ext");
        std::fs::write(&extension_file, extensions).unwrap();
        let subject = format!("/CN={name}");
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            &subject,
            "-keyout",
            &certificate.key.display().to_string(),
            "-out",
            &request.display().to_string(),
        ]);
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        openssl(&[
            "x509",
            "-req",
            "-in",
            &request.display().to_string(),
            "-CA",
            &self.ca.cert.display().to_string(),
            "-CAkey",
            &self.ca.key.display().to_string(),
            "-set_serial",
            &SERIAL.fetch_add(1, Ordering::Relaxed).to_string(),
            "-days",
            "2",
            "-extfile",
            &extension_file.display().to_string(),
            "-out",
            &certificate.cert.display().to_string(),
        ]);
        certificate
    }

    /// A path in the PKI's directory for a test's own file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is installed");
    assert!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A Redis Cluster of real `redis-server` processes on 127.0.0.1, each in a
/// directory of its own; every process is killed and every directory removed
/// when dropped, also when the test (or the start) fails.
pub struct PrivateCluster {
    /// In the order given to `redis-cli --cluster create`, which picks the masters.
    nodes: Vec<PrivateRedis>,
    _dirs: tempfile::TempDir,
}

impl PrivateCluster {
    /// `masters` masters (at least 3, as `redis-cli --cluster create` wants)
    /// with `replicas_per_master` replicas each; returns once every node
    /// reports `cluster_state:ok` and every replica is attached and synced.
    pub async fn start(masters: usize, replicas_per_master: usize) -> Self {
        Self::start_with(masters, replicas_per_master, true).await
    }

    /// As [`PrivateCluster::start`], with `cluster-require-full-coverage no`:
    /// a failed master stops only the keys of its own slots.
    pub async fn start_serving_partial(masters: usize, replicas_per_master: usize) -> Self {
        Self::start_with(masters, replicas_per_master, false).await
    }

    /// As [`PrivateCluster::start`], every node speaking TLS with `pki`'s
    /// server certificate (see [`PrivateRedis::start_tls_cluster_node`]).
    pub async fn start_tls(masters: usize, replicas_per_master: usize, pki: &TestPki) -> Self {
        Self::start_with_tls(masters, replicas_per_master, true, Some(pki)).await
    }

    async fn start_with(masters: usize, replicas_per_master: usize, full_coverage: bool) -> Self {
        Self::start_with_tls(masters, replicas_per_master, full_coverage, None).await
    }

    async fn start_with_tls(
        masters: usize,
        replicas_per_master: usize,
        full_coverage: bool,
        tls: Option<&TestPki>,
    ) -> Self {
        let dirs = tempfile::tempdir().unwrap();
        // Each node is a server to clients and a client to the other nodes.
        let node_certificate = tls.map(|pki| {
            pki.issue(
                "cluster-node",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            )
        });
        let mut nodes = Vec::new();
        for index in 0..masters * (1 + replicas_per_master) {
            let dir = dirs.path().join(format!("node-{index}"));
            std::fs::create_dir(&dir).unwrap();
            nodes.push(match tls {
                Some(pki) => PrivateRedis::start_tls_cluster_node(
                    free_cluster_port(),
                    &dir,
                    pki,
                    node_certificate.as_ref().unwrap(),
                ),
                None => PrivateRedis::start_cluster_node(free_cluster_port(), &dir, full_coverage),
            });
        }
        let cluster = Self { nodes, _dirs: dirs };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(pki) = tls {
            create.arg("--tls").arg("--cacert").arg(&pki.ca.cert);
            create.arg("--cert").arg(&pki.client.cert);
            create.arg("--key").arg(&pki.client.key);
            create.args(["-a", CLUSTER_PASSWORD, "--no-auth-warning"]);
        }
        let created = create
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas_per_master.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli is installed");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let expected_replicas = masters * replicas_per_master;
        for node in &cluster.nodes {
            eventually(
                Duration::from_secs(30),
                "every node to report cluster_state:ok and see its replicas",
                || async {
                    let mut connection = node.connection().await;
                    let info: String = redis::cmd("CLUSTER")
                        .arg("INFO")
                        .query_async(&mut connection)
                        .await
                        .ok()?;
                    let nodes: String = redis::cmd("CLUSTER")
                        .arg("NODES")
                        .query_async(&mut connection)
                        .await
                        .ok()?;
                    let replicas = nodes.lines().filter(|line| line.contains("slave")).count();
                    // A replica counts once its link to its master is up
                    // (synced): only then can it be promoted.
                    let replication: String = redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut connection)
                        .await
                        .ok()?;
                    let synced = !replication.contains("role:slave")
                        || replication.contains("master_link_status:up");
                    (info.contains("cluster_state:ok") && replicas == expected_replicas && synced)
                        .then_some(())
                },
            )
            .await;
        }
        cluster
    }

    /// Every node, in the order given to `redis-cli --cluster create`; with
    /// no replicas, all of them masters.
    pub fn nodes(&self) -> &[PrivateRedis] {
        &self.nodes
    }

    /// The `redis://` URL of node `index`.
    pub fn url(&self, index: usize) -> String {
        self.nodes[index].url()
    }

    /// SIGKILL of node `index`, as a crash.
    pub fn kill(&mut self, index: usize) {
        self.nodes[index].kill();
    }
}

/// A master, its replica and three sentinels watching them (quorum 2, a
/// master down after 1 s), as `redis-server --sentinel` processes on free
/// ports; every process is killed when dropped.
pub struct PrivateSentinels {
    pub master: PrivateRedis,
    pub replica: PrivateRedis,
    sentinels: Vec<(u16, Child)>,
    /// The test CA's certificate (PEM) when everything speaks TLS.
    tls_ca: Option<Vec<u8>>,
    _dir: tempfile::TempDir,
}

/// The name the test sentinels monitor their master by.
pub const SENTINEL_MASTER: &str = "limits";

impl PrivateSentinels {
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// As [`PrivateSentinels::start`], with the master, its replica and the
    /// sentinels speaking only TLS to clients (`pki`'s server certificate,
    /// no client certificates), and to each other.
    pub async fn start_tls(pki: &TestPki) -> Self {
        Self::start_with(Some(pki)).await
    }

    async fn start_with(pki: Option<&TestPki>) -> Self {
        let (master, replica) = match pki {
            Some(pki) => {
                let master = PrivateRedis::start_tls_replicating(pki, None);
                let replica = PrivateRedis::start_tls_replicating(pki, Some(&master));
                (master, replica)
            }
            None => {
                let master = PrivateRedis::start();
                let replica = PrivateRedis::start_replica_of(&master);
                (master, replica)
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let mut sentinels = Vec::new();
        for index in 0..3 {
            let port = free_port();
            let config = dir.path().join(format!("sentinel-{index}.conf"));
            let listen = match pki {
                Some(pki) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {cert}\ntls-key-file {key}\n\
                     tls-ca-cert-file {ca}\ntls-auth-clients no\ntls-replication yes\n",
                    cert = pki.server.cert.display(),
                    key = pki.server.key.display(),
                    ca = pki.ca.cert.display(),
                ),
                None => format!("port {port}\n"),
            };
            std::fs::write(
                &config,
                format!(
                    "{listen}bind 127.0.0.1\ndir {dir}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 3000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir = dir.path().display(),
                    master = master.port()
                ),
            )
            .unwrap();
            let child = Command::new("redis-server")
                .arg(&config)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server is installed");
            sentinels.push((port, child));
        }
        let setup = Self {
            master,
            replica,
            sentinels,
            tls_ca: pki.map(|pki| std::fs::read(&pki.ca.cert).unwrap()),
            _dir: dir,
        };
        // Ready when every sentinel sees the replica and the other two
        // sentinels: a failover needs the quorum and an elected leader.
        for index in 0..setup.sentinels.len() {
            eventually(
                Duration::from_secs(30),
                "every sentinel to see the replica and the other sentinels",
                || async {
                    let mut connection = setup.sentinel_connection(index).await?;
                    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("replicas")
                        .arg(SENTINEL_MASTER)
                        .query_async(&mut connection)
                        .await
                        .ok()?;
                    let sentinels: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("sentinels")
                        .arg(SENTINEL_MASTER)
                        .query_async(&mut connection)
                        .await
                        .ok()?;
                    (replicas.len() == 1 && sentinels.len() == 2).then_some(())
                },
            )
            .await;
        }
        setup
    }

    /// `redis://127.0.0.1:<port>` of each sentinel (`rediss://` with TLS).
    pub fn urls(&self) -> Vec<String> {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.sentinels
            .iter()
            .map(|(port, _)| format!("{scheme}://127.0.0.1:{port}"))
            .collect()
    }

    /// A connection to sentinel `index`, over TLS trusting the test CA when
    /// the sentinels speak TLS.
    async fn sentinel_connection(&self, index: usize) -> Option<redis::aio::MultiplexedConnection> {
        let url = self.urls()[index].clone();
        let client = match &self.tls_ca {
            Some(ca) => redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            None => redis::Client::open(url),
        };
        client.ok()?.get_multiplexed_async_connection().await.ok()
    }

    /// The port of the master the first sentinel names now.
    pub async fn master_port(&self) -> Option<u16> {
        let mut connection = self.sentinel_connection(0).await?;
        let (_, port): (String, u16) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(SENTINEL_MASTER)
            .query_async(&mut connection)
            .await
            .ok()?;
        Some(port)
    }
}

impl Drop for PrivateSentinels {
    fn drop(&mut self) {
        for (_, child) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
