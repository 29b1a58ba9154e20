//! Real servers for the tests and benches: each starts on a free loopback
//! port in its own temp dir and stops on drop. A missing server binary is a
//! failure naming the package to install, never a silent skip.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback port")
}

/// The path of `program`, or a panic that says how to install it.
pub fn require(program: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`{program}` is not installed; these tests need a real server. \
             Install it with `apt-get install -y {package}` (scripts/deps does this as root)"
        )
    })
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(child.id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} failed");
}

/// Certificates made at test time: a CA, a server certificate for
/// `localhost`/`127.0.0.1` signed by it, a client certificate, and an
/// unrelated CA for the "wrong CA" cases, and a self-signed certificate
/// for a name that is not the server's (as Heroku's are). PEM files in
/// `dir`; the DER of the two server certificates for pinning.
pub struct TestCerts {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_der: Vec<u8>,
    pub self_signed_cert: PathBuf,
    pub self_signed_key: PathBuf,
    pub self_signed_der: Vec<u8>,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TestCerts {
    pub fn generate(dir: &Path) -> TestCerts {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let ca_for = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), Issuer::new(params, key))
        };
        let (ca_pem, issuer) = ca_for("cacheruntime test CA");
        let (other_pem, _) = ca_for("someone else's CA");
        let leaf = |names: Vec<String>| {
            let params = CertificateParams::new(names).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        };
        let (server_pem, server_key, server_der) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_pem, client_key, _) = leaf(vec!["cache-client".into()]);
        let (self_pem, self_key, self_signed_der) = {
            let params = CertificateParams::new(vec!["redis.example.invalid".to_owned()]).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        };
        TestCerts {
            dir: dir.to_owned(),
            ca: write("ca.pem", ca_pem),
            server_cert: write("server.pem", server_pem),
            server_key: write("server.key", server_key),
            server_der,
            self_signed_cert: write("self-signed.pem", self_pem),
            self_signed_key: write("self-signed.key", self_key),
            self_signed_der,
            client_cert: write("client.pem", client_pem),
            client_key: write("client.key", client_key),
            other_ca: write("other-ca.pem", other_pem),
        }
    }
}

/// How to run a Redis server.
#[derive(Clone, Default)]
pub struct RedisOptions {
    /// TLS only (the plain port is closed); `require_client_cert` for mTLS.
    pub tls: bool,
    pub require_client_cert: bool,
    /// With `tls`: present the self-signed certificate for another name
    /// (`TestCerts::self_signed_cert`) instead of the CA-signed one.
    pub self_signed: bool,
    /// Extra `redis.conf` lines (ACL users, cluster settings, ...).
    pub config: Vec<String>,
}

/// A `redis-server` child process.
pub struct RedisServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub certs: Option<TestCerts>,
    child: Option<Child>,
    conf: PathBuf,
    tls: bool,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(options: RedisOptions) -> RedisServer {
        Self::start_on(free_port(), options)
    }

    pub fn start_on(port: u16, options: RedisOptions) -> RedisServer {
        require("redis-server", "redis-server");
        let dir = tempfile::tempdir().unwrap();
        let mut conf = vec![
            "bind 127.0.0.1".to_owned(),
            format!("dir {}", dir.path().display()),
            "save \"\"".to_owned(),
            "appendonly no".to_owned(),
            "daemonize no".to_owned(),
            "protected-mode no".to_owned(),
            "logfile \"\"".to_owned(),
            "loglevel warning".to_owned(),
        ];
        let certs = options.tls.then(|| TestCerts::generate(dir.path()));
        match &certs {
            Some(c) => conf.extend([
                "port 0".to_owned(),
                format!("tls-port {port}"),
                format!(
                    "tls-cert-file {}",
                    if options.self_signed {
                        &c.self_signed_cert
                    } else {
                        &c.server_cert
                    }
                    .display()
                ),
                format!(
                    "tls-key-file {}",
                    if options.self_signed {
                        &c.self_signed_key
                    } else {
                        &c.server_key
                    }
                    .display()
                ),
                format!("tls-ca-cert-file {}", c.ca.display()),
                format!(
                    "tls-auth-clients {}",
                    if options.require_client_cert {
                        "yes"
                    } else {
                        "no"
                    }
                ),
            ]),
            None => conf.push(format!("port {port}")),
        }
        conf.extend(options.config);
        let conf_path = dir.path().join("redis.conf");
        std::fs::write(&conf_path, conf.join("\n") + "\n").unwrap();
        let mut server = RedisServer {
            port,
            dir,
            certs,
            child: None,
            conf: conf_path,
            tls: options.tls,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server");
    }

    /// `redis://127.0.0.1:port` or `rediss://localhost:port`.
    pub fn url(&self) -> String {
        if self.tls {
            format!("rediss://localhost:{}", self.port)
        } else {
            format!("redis://127.0.0.1:{}", self.port)
        }
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        signal(self.child.as_ref().expect("running"), "STOP");
    }

    pub fn resume(&self) {
        signal(self.child.as_ref().expect("running"), "CONT");
    }

    /// Runs `redis-cli` against the server (plain servers only).
    pub fn cli(&self, args: &[&str]) -> String {
        require("redis-cli", "redis-tools");
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server ignores SIGKILL until continued on some kernels.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// A three-master Redis Cluster on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// A Redis server with cluster mode on, not yet in a cluster. Its cluster
/// bus port is a free one of its own: by default it is the port plus
/// 10,000, which may be out of range or taken by another socket (the
/// server then never listens).
fn cluster_node() -> RedisServer {
    RedisServer::start_with(RedisOptions {
        config: vec![
            "cluster-enabled yes".into(),
            "cluster-config-file nodes.conf".into(),
            "cluster-node-timeout 2000".into(),
            format!("cluster-port {}", free_port()),
        ],
        ..RedisOptions::default()
    })
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        require("redis-cli", "redis-tools");
        let nodes: Vec<RedisServer> = (0..3).map(|_| cluster_node()).collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &nodes {
            while !n.cli(&["cluster", "info"]).contains("cluster_state:ok") {
                assert!(Instant::now() < deadline, "cluster did not become ready");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes }
    }

    /// Adds an empty master (no slots) to the cluster, and waits until
    /// every node knows it.
    pub fn add_node(&mut self) {
        let node = cluster_node();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("add-node")
            .arg(format!("127.0.0.1:{}", node.port))
            .arg(format!("127.0.0.1:{}", self.nodes[0].port))
            .output()
            .expect("run redis-cli --cluster add-node");
        assert!(
            out.status.success(),
            "add-node failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.nodes.push(node);
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        let deadline = Instant::now() + Duration::from_secs(20);
        for n in &self.nodes {
            while !n.cli(&["cluster", "info"]).contains(&known) {
                assert!(Instant::now() < deadline, "the new node was not met");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// A PostgreSQL binary: on PATH, or in Debian's versioned directory.
pub fn pg_bin(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }) {
        return p;
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .collect()
        })
        .unwrap_or_default();
    versions.retain(|p| p.is_file());
    versions.sort();
    versions.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's `{name}` is not installed; these tests need a real server. \
             Install it with `apt-get install -y postgresql` (scripts/deps does this as root)"
        )
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs a PostgreSQL tool, as the `postgres` user when we are root
/// (`initdb` and `postgres` refuse to run as root).
fn pg_command(name: &str) -> Command {
    let bin = pg_bin(name);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run_ok(mut cmd: Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A PostgreSQL cluster in a temp dir, on a free loopback port, with TLS on
/// (certificates made at test time) and a password for `postgres`.
pub struct Postgres {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub certs: TestCerts,
    pub password: String,
    running: bool,
}

impl Postgres {
    pub fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let password = format!("pw-{port}");
        let certs_dir = dir.path().join("certs");
        std::fs::create_dir(&certs_dir).unwrap();
        let certs = TestCerts::generate(&certs_dir);
        let data = dir.path().join("data");
        std::fs::write(dir.path().join("pwfile"), &password).unwrap();
        if is_root() {
            run_ok(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown the temp dir to postgres",
            );
        }
        run_ok(
            {
                let mut c = pg_command("initdb");
                c.arg("-D")
                    .arg(&data)
                    .args(["-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"])
                    .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                    .arg(format!("--pwfile={}", dir.path().join("pwfile").display()));
                c
            },
            "initdb",
        );
        let key = certs.server_key.display();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{}'\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{key}'\nfsync = off\n\
             full_page_writes = off\nmax_connections = 100\n",
            dir.path().display(),
            certs.server_cert.display(),
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        // The server refuses a key readable by others.
        run_ok(
            {
                let mut c = Command::new("chmod");
                c.arg("600").arg(&certs.server_key);
                c
            },
            "chmod the server key",
        );
        let mut pg = Postgres {
            port,
            dir,
            certs,
            password,
            running: false,
        };
        pg.start_again();
        pg
    }

    /// Starts the (stopped) server again on the same port and data.
    pub fn start_again(&mut self) {
        run_ok(
            {
                let mut c = pg_command("pg_ctl");
                c.arg("-D")
                    .arg(self.dir.path().join("data"))
                    .arg("-l")
                    .arg(self.dir.path().join("log"))
                    .args(["-w", "-t", "30", "start"]);
                c
            },
            "pg_ctl start",
        );
        self.running = true;
        wait_for_port(self.port, "postgres");
    }

    /// Stops the server at once (no clean shutdown).
    pub fn stop(&mut self) {
        if self.running {
            run_ok(
                {
                    let mut c = pg_command("pg_ctl");
                    c.arg("-D").arg(self.dir.path().join("data")).args([
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]);
                    c
                },
                "pg_ctl stop",
            );
            self.running = false;
        }
    }

    /// `postgres://postgres:<pw>@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    /// The same, named `localhost` (what the test certificate is for).
    pub fn url_localhost(&self) -> String {
        format!(
            "postgres://postgres:{}@localhost:{}/postgres",
            self.password, self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command("pg_ctl")
                .arg("-D")
                .arg(self.dir.path().join("data"))
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A `memcached` process on a free loopback port.
pub struct MemcachedServer {
    pub port: u16,
    child: Option<Child>,
    item_max: String,
}

impl MemcachedServer {
    pub fn start() -> MemcachedServer {
        Self::start_with_item_max("1m")
    }

    /// With `-I <item_max>` (the largest item it stores).
    pub fn start_with_item_max(item_max: &str) -> MemcachedServer {
        require("memcached", "memcached");
        let mut server = MemcachedServer {
            port: free_port(),
            child: None,
            item_max: item_max.to_owned(),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("memcached");
        cmd.args(["-l", "127.0.0.1", "-U", "0", "-m", "64", "-t", "2"])
            .args(["-p", &self.port.to_string(), "-I", &self.item_max]);
        if is_root() {
            // memcached refuses root without naming the user to run as.
            cmd.args(["-u", "root"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start memcached");
        self.child = Some(child);
        wait_for_port(self.port, "memcached");
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Items currently stored (`stats` → `curr_items`).
    pub fn items(&self) -> u64 {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect memcached");
        s.write_all(b"stats\r\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while !out.ends_with(b"END\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "memcached closed the stats connection");
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out)
            .lines()
            .find_map(|l| l.strip_prefix("STAT curr_items "))
            .and_then(|n| n.trim().parse().ok())
            .expect("curr_items in stats")
    }
}

impl Drop for MemcachedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The guarantee every store gives `invalidate_prefix`: a value computed
/// from a miss before the invalidation, and written after it, never shows;
/// a value computed after it does.
pub async fn stale_write_stays_hidden(backend: &dyn cacheruntime::Backend) {
    use bytes::Bytes;
    let ttl = Duration::from_secs(60);
    let miss = backend.get("user:7:feed").await.unwrap();
    assert!(miss.value.is_none());
    backend.invalidate_prefix("user:7:").await.unwrap();
    backend
        .set(
            "user:7:feed",
            Bytes::from_static(b"old"),
            ttl,
            miss.ticket.as_ref(),
        )
        .await
        .unwrap();
    assert!(
        backend.get("user:7:feed").await.unwrap().value.is_none(),
        "{}: a value computed before the invalidation showed after it",
        backend.name()
    );
    let miss = backend.get("user:7:feed").await.unwrap();
    backend
        .set(
            "user:7:feed",
            Bytes::from_static(b"new"),
            ttl,
            miss.ticket.as_ref(),
        )
        .await
        .unwrap();
    let got = backend.get("user:7:feed").await.unwrap().value;
    assert_eq!(got.as_deref(), Some(&b"new"[..]), "{}", backend.name());
}

/// A loopback TCP proxy in front of a server, for stalls that `SIGSTOP`
/// cannot give (a server that is one of many processes, or one whose
/// connections should hang while the process keeps running). It forwards
/// bytes both ways until [`stall`](Self::stall); from then on it still
/// accepts connections, and keeps every connection open, but forwards
/// nothing in either direction until [`resume`](Self::resume), when what it
/// held is delivered as if the server had been frozen. Counts the
/// exchanges it forwards ([`exchanges`](Self::exchanges)). Stops on drop.
pub struct StallProxy {
    pub port: u16,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    exchanges: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Milliseconds each chunk waits before it is forwarded (a slow link).
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sockets: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl StallProxy {
    /// A proxy on a free loopback port forwarding to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> StallProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let stalled = Arc::new(AtomicBool::new(false));
        let closed = Arc::new(AtomicBool::new(false));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sockets: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let exchanges = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, c, socks) = (stalled.clone(), closed.clone(), sockets.clone());
        let (d, x) = (delay_ms.clone(), exchanges.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if c.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue; // the client sees the connection close
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let clones = (
                    client.try_clone(),
                    server.try_clone(),
                    client.try_clone(),
                    server.try_clone(),
                );
                let (Ok(c1), Ok(s1), Ok(c2), Ok(s2)) = clones else {
                    continue;
                };
                socks.lock().unwrap().extend([c2, s2]);
                // Whether the client's next bytes start an exchange: at
                // first, and after each answer.
                let turn = Arc::new(AtomicBool::new(true));
                for (from, to, asks) in [(client, s1, true), (server, c1, false)] {
                    let (s, c, d) = (s.clone(), c.clone(), d.clone());
                    let (turn, x) = (turn.clone(), x.clone());
                    std::thread::spawn(move || {
                        pump(from, to, &s, &c, &d, |_| {
                            if !asks {
                                turn.store(true, Ordering::Release);
                            } else if turn.swap(false, Ordering::AcqRel) {
                                x.fetch_add(1, Ordering::AcqRel);
                            }
                        })
                    });
                }
            }
        });
        StallProxy {
            port,
            stalled,
            exchanges,
            delay_ms,
            closed,
            sockets,
        }
    }

    /// From now on every chunk waits `delay` in each direction: a slow link.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            delay.as_millis() as u64,
            std::sync::atomic::Ordering::Release,
        );
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How many exchanges clients began so far: bytes sent at first on a
    /// connection or after an answer on it (a pipelined batch, sent in one
    /// write and answered together, is one).
    pub fn exchanges(&self) -> u64 {
        self.exchanges.load(std::sync::atomic::Ordering::Acquire)
    }

    /// From now on nothing is forwarded; connections stay open.
    pub fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Forwards again, held bytes first.
    pub fn resume(&self) {
        self.stalled
            .store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Copies `from` to `to` until either closes, holding each chunk while
/// `stalled` is set, and for `delay_ms` first; `seen` hears of each chunk
/// as it is read.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    stalled: &std::sync::atomic::AtomicBool,
    closed: &std::sync::atomic::AtomicBool,
    delay_ms: &std::sync::atomic::AtomicU64,
    seen: impl Fn(&[u8]),
) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        seen(&buf[..n]);
        let delay = delay_ms.load(Ordering::Acquire);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        while stalled.load(Ordering::Acquire) && !closed.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if closed.load(Ordering::Acquire) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.closed.store(true, Ordering::Release);
        self.stalled.store(false, Ordering::Release);
        for s in self.sockets.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        // Wakes the accept loop so it sees `closed`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Long keys mean the same on every store: a key of any length round-trips
/// (shortened past 1 KB), two long keys that differ only past the
/// shortening point stay apart, and a prefix
/// longer than what stays readable invalidates every key under it (and, as
/// documented, its neighbours under the readable part), never fewer.
pub async fn long_keys_round_trip_and_invalidate(cache: &cacheruntime::Cache) {
    let ttl = Duration::from_secs(60);
    let url: String = (0..8000u32)
        .map(|i| char::from(b'a' + ((i.wrapping_mul(2_654_435_761) >> 13) % 26) as u8))
        .collect();
    let body = format!("feed:{url}:body");
    let head = format!("feed:{url}:head");
    cache.set(&body, "B", ttl).await.unwrap();
    cache.set(&head, "H", ttl).await.unwrap();
    cache.set("news:1", "N", ttl).await.unwrap();
    assert_eq!(
        cache.get::<String>(&body).await.unwrap().as_deref(),
        Some("B")
    );
    assert_eq!(
        cache.get::<String>(&head).await.unwrap().as_deref(),
        Some("H")
    );
    cache
        .invalidate_prefix(&format!("feed:{url}:"))
        .await
        .unwrap();
    assert_eq!(cache.get::<String>(&body).await.unwrap(), None);
    assert_eq!(cache.get::<String>(&head).await.unwrap(), None);
    assert_eq!(
        cache.get::<String>("news:1").await.unwrap().as_deref(),
        Some("N")
    );
    // A long prefix whose readable part holds no segment of its own falls
    // back to the namespace (everything in it goes: more than asked, never
    // less), and without a namespace it is refused rather than widened to
    // the whole store.
    let flat = format!("{url}:");
    let news = match cache.invalidate_prefix(&flat).await {
        Err(cacheruntime::Error::InvalidPrefix { .. }) => Some("N".to_owned()),
        Ok(()) => None,
        other => panic!("{other:?}"),
    };
    assert_eq!(cache.get::<String>("news:1").await.unwrap(), news);
    // And through get-or-compute, which takes the other path to the store.
    let policy = cacheruntime::Policy::new().ttl(ttl);
    let v = cache
        .get_or_compute(&body, &policy, || async { 7u32 })
        .await;
    assert_eq!(v, 7);
    assert_eq!(cache.get::<u32>(&body).await.unwrap(), Some(7));
    assert_eq!(cache.stats().errors, 0, "no store call failed");
}

/// A store used directly refuses a prefix that is not whole segments (as
/// `Cache::invalidate_prefix` does), rather than do less (or more) than
/// asked: `abc` is neither "everything" nor a counter any read consults.
#[allow(dead_code)]
pub async fn partial_prefixes_are_refused(backend: &dyn cacheruntime::Backend) {
    for bad in ["abc", "a:b", "x:\0:"] {
        let err = backend.invalidate_prefix(bad).await;
        assert!(
            matches!(err, Err(cacheruntime::Error::InvalidPrefix { .. })),
            "{} accepted {bad:?}: {err:?}",
            backend.name()
        );
    }
}

/// Opens the pool (and creates the SQL tables) before a scenario starts, so
/// a cold store (a TLS + SCRAM handshake, a pool's first connection) is not
/// mistaken for what the scenario tests. Panics if no write succeeds within
/// 20 s.
pub async fn until_ready(cache: &cacheruntime::Cache) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while cache
        .set("ready:1", &1u8, Duration::from_secs(5))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "store never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
