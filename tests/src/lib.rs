//! Test harness: starts real `ternd` processes on loopback ports, waits for
//! them to be ready, and kills them by PID when dropped (SIGKILL), so a
//! failing test never leaves a broker behind.
//!
//! Binaries are looked up next to the test executable (`target/<profile>/`);
//! `scripts/test.sh` builds them before running the tests.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn bounded<F: std::future::Future<Output = T>, T>(limit: Duration, f: F) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test exceeded {limit:?}"))
}

/// Client settings for fault tests: a paused broker must not hold a
/// request for long.
pub fn fault_client_config() -> tern_client::ClientConfig {
    tern_client::ClientConfig {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    }
}

/// How long a broker may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of a workspace binary (`ternd`, `tern`) built in the same profile.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (scripts/test.sh runs `cargo build --release --bins`)",
        path.display()
    );
    path
}

/// A free loopback port for a broker to bind later. Chosen below Linux's
/// ephemeral range (32768–60999), which outgoing connections and `:0`
/// listeners draw from: a port found free there could be taken by a
/// client's connection before the broker binds it. A port is handed out
/// at most once per test process: tests of one binary run in parallel
/// threads, and two of them drawing the same still-free port would both
/// give it to a broker (seen: "Address already in use" at a cluster's start).
pub fn free_port() -> u16 {
    use rand::Rng;
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut rng = rand::rng();
    loop {
        let port = rng.random_range(20_000..32_000);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
}

/// A running `ternd` process.
pub struct Broker {
    child: Option<Child>,
    /// Client address.
    pub addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// Raft (peer) address.
    pub peer_addr: String,
    /// Kafka-protocol address.
    pub kafka_addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
    /// Environment variables of the process (besides `TERN_LOG`).
    env: Vec<(String, String)>,
    /// The `ternd` executable to run (the workspace's by default).
    program: PathBuf,
}

impl Broker {
    /// Starts a broker on fresh ports with `data_dir` and extra flags.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Broker {
        let mut b = Broker::configure(data_dir, extra_args);
        b.spawn();
        b
    }

    /// A broker on fresh ports, not started yet.
    pub fn configure(data_dir: &Path, extra_args: &[&str]) -> Broker {
        Broker {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()),
            http_addr: format!("127.0.0.1:{}", free_port()),
            peer_addr: format!("127.0.0.1:{}", free_port()),
            kafka_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            program: bin("ternd"),
        }
    }

    /// Sets an environment variable for the next start (e.g.
    /// `TERN_BOOTSTRAP_PASSWORD`, which has no flag).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// The value given to [`Broker::set_env`] for `key`.
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Runs another `ternd` executable at the next start (e.g. a copy of the
    /// binary alone in an empty directory).
    pub fn set_program(&mut self, program: &Path) {
        self.program = program.to_path_buf();
    }

    /// Adds a flag for the next start.
    pub fn add_arg(&mut self, arg: &str) {
        self.extra_args.push(arg.to_owned());
    }

    /// Waits up to `limit` for the process to exit by itself: its success,
    /// or `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<bool> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process and waits until it is ready.
    pub fn spawn(&mut self) {
        self.spawn_no_wait();
        self.wait_ready();
    }

    /// Starts the process without waiting (a cluster member cannot be ready
    /// before a majority of its peers runs).
    pub fn spawn_no_wait(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("open broker log");
        let child = Command::new(&self.program)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.addr, "--metrics-listen", &self.http_addr])
            .args(["--peer-listen", &self.peer_addr])
            .args(["--kafka-listen", &self.kafka_addr])
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("TERN_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ternd");
        self.child = Some(child);
    }

    /// Blocks until `/ready` answers 200, or panics with the broker's log.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "ternd exited with {status} during start-up; log:\n{}",
                    self.log()
                );
            }
            if http_get(&self.http_addr, "/ready").is_some_and(|(code, _)| code == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "ternd not ready after {READY_TIMEOUT:?}; log:\n{}",
            self.log()
        );
    }

    /// Blocks until the broker's log contains `needle`, or panics with the
    /// log after `limit`: a readiness check for a step that happens after
    /// `/ready` (registration, a background retry).
    pub fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{needle:?} not logged after {limit:?}; log:\n{}",
            self.log()
        );
    }

    /// The broker's log so far, without terminal colour codes (so tests can
    /// look for `key=value` fields).
    pub fn log(&self) -> String {
        strip_ansi(
            &std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default(),
        )
    }

    /// SIGKILL: no shutdown code runs, exactly like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the process freezes (a pause, a GC stall, a hung VM).
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGSTOP);
        }
    }

    /// SIGHUP: reload the TLS material.
    pub fn hangup(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGHUP);
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, libc::SIGCONT);
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGTERM);
            return c.wait().map(|s| s.success()).unwrap_or(false);
        }
        false
    }

    /// Restarts the (stopped) broker on the same ports and data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Restarts without waiting for readiness (a cluster member).
    pub fn restart_no_wait(&mut self) {
        self.kill9();
        self.spawn_no_wait();
    }

    /// GET a path on the HTTP endpoint: (status, body).
    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http_addr, path)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // A paused process must be resumed to die promptly and be reaped.
        self.resume();
        self.kill9();
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a PID we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Several `ternd` processes forming one cluster on loopback, each with its
/// own data directory under `dir`. Dropping it kills them all.
pub struct Cluster {
    /// The brokers; `brokers[i]` has node id `i + 1`.
    pub brokers: Vec<Broker>,
    links: HashMap<(usize, usize), LinkProxy>,
}

/// A TCP proxy standing for one directed network link between two brokers.
/// [`LinkProxy::cut`] resets its connections and refuses new ones (packets
/// of a partitioned link go nowhere); [`LinkProxy::heal`] lets them through
/// again. Threads end when it is dropped.
pub struct LinkProxy {
    /// Address the sending broker dials.
    pub listen: String,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl LinkProxy {
    /// A proxy forwarding to `target`.
    pub fn start(target: &str) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let listen = listener.local_addr().expect("proxy addr").to_string();
        let proxy = LinkProxy {
            listen,
            cut: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (cut, stop, conns) = (proxy.cut.clone(), proxy.stop.clone(), proxy.conns.clone());
        let target = target.to_owned();
        std::thread::spawn(move || {
            for incoming in listener.incoming() {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let Ok(client) = incoming else { continue };
                if cut.load(Ordering::Acquire) {
                    continue; // dropped: connection reset
                }
                let Ok(upstream) = target.parse().map_err(|_| ()).and_then(|a| {
                    TcpStream::connect_timeout(&a, Duration::from_secs(1)).map_err(|_| ())
                }) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let mut guard = conns.lock().expect("proxy conns");
                guard.retain(|c| c.peer_addr().is_ok());
                for s in [&client, &upstream] {
                    if let Ok(c) = s.try_clone() {
                        guard.push(c);
                    }
                }
                drop(guard);
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Both);
                        let _ = from.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        proxy
    }

    /// Partitions the link: resets live connections, refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        for c in self.conns.lock().expect("proxy conns").drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Heals the link.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(&self.listen);
    }
}

impl Cluster {
    /// Client settings that reach these brokers: TLS trusting the CA the
    /// brokers were given (`--tls-ca`), if any; the bootstrap user's
    /// credentials (`TERN_BOOTSTRAP_USER`/`_PASSWORD`), if any; the
    /// harness's timeouts.
    pub fn client_config(&self) -> tern_client::ClientConfig {
        let credentials = self.brokers.first().and_then(|b| {
            Some(tern_client::Credentials::new(
                b.env("TERN_BOOTSTRAP_USER")?,
                b.env("TERN_BOOTSTRAP_PASSWORD")?,
            ))
        });
        let ca = self.brokers.first().and_then(|b| {
            b.extra_args
                .iter()
                .position(|a| a == "--tls-ca")
                .and_then(|i| b.extra_args.get(i + 1))
        });
        tern_client::ClientConfig {
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(2),
            tls: ca.map(|ca| tern_client::ClientTls {
                ca: PathBuf::from(ca),
                identity: None,
            }),
            credentials,
            ..Default::default()
        }
    }

    /// Starts `n` brokers with `extra_args` and waits until all are ready.
    /// `{node}` in an argument stands for each broker's node id (e.g. its
    /// own certificate file: `certs/node-{node}.pem`).
    pub fn start(dir: &Path, n: usize, extra_args: &[&str]) -> Cluster {
        Self::start_inner(dir, n, extra_args, &[], false, &|_| Vec::new())
    }

    /// Like [`Self::start`], with arguments of each broker's own
    /// (`per_broker(index)`, e.g. its rack) after the common ones.
    pub fn start_each(
        dir: &Path,
        n: usize,
        extra_args: &[&str],
        per_broker: &dyn Fn(usize) -> Vec<String>,
    ) -> Cluster {
        Self::start_inner(dir, n, extra_args, &[], false, per_broker)
    }

    /// Like [`Self::start`], with environment variables for every broker.
    pub fn start_with_env(
        dir: &Path,
        n: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Cluster {
        Self::start_inner(dir, n, extra_args, env, false, &|_| Vec::new())
    }

    /// Like [`Self::start`], but every peer link goes through a
    /// [`LinkProxy`] the test can cut ([`Self::isolate`]).
    pub fn start_partitionable(dir: &Path, n: usize, extra_args: &[&str]) -> Cluster {
        Self::start_inner(dir, n, extra_args, &[], true, &|_| Vec::new())
    }

    /// Like [`Self::start_partitionable`], with environment variables for
    /// every broker.
    pub fn start_partitionable_with_env(
        dir: &Path,
        n: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Cluster {
        Self::start_inner(dir, n, extra_args, env, true, &|_| Vec::new())
    }

    fn start_inner(
        dir: &Path,
        n: usize,
        extra_args: &[&str],
        env: &[(&str, &str)],
        proxied: bool,
        per_broker: &dyn Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let mut brokers: Vec<Broker> = (0..n)
            .map(|i| {
                let own = per_broker(i);
                let args: Vec<&str> = extra_args
                    .iter()
                    .copied()
                    .chain(own.iter().map(String::as_str))
                    .collect();
                let mut b = Broker::configure(&dir.join(format!("node{}", i + 1)), &args);
                for (k, v) in env {
                    b.set_env(k, v);
                }
                b
            })
            .collect();
        let mut links = HashMap::new();
        if proxied {
            for from in 0..n {
                for (to, target) in brokers.iter().enumerate() {
                    if from != to {
                        links.insert((from, to), LinkProxy::start(&target.peer_addr));
                    }
                }
            }
        }
        // Each node's view of how to reach each peer: directly, or through
        // the proxy of that directed link.
        let initial_for = |me: usize| {
            (0..n)
                .map(|j| {
                    let addr = match links.get(&(me, j)) {
                        Some(l) => l.listen.clone(),
                        None => brokers[j].peer_addr.clone(),
                    };
                    format!("{}@{}", j + 1, addr)
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let initial: Vec<String> = (0..n).map(initial_for).collect();
        for (i, b) in brokers.iter_mut().enumerate() {
            for arg in &mut b.extra_args {
                *arg = arg.replace("{node}", &(i + 1).to_string());
            }
            b.extra_args.extend([
                "--node-id".to_owned(),
                (i + 1).to_string(),
                "--initial-cluster".to_owned(),
                initial[i].clone(),
            ]);
            b.spawn_no_wait();
        }
        for b in &mut brokers {
            b.wait_ready();
        }
        let cluster = Cluster { brokers, links };
        cluster.wait_ready();
        cluster
    }

    /// Blocks until the cluster serves clients: every running broker
    /// answers a metadata request naming a metadata leader and listing
    /// every broker's client address (each registered itself). `/ready`
    /// says only that one process opened its topics.
    pub fn wait_ready(&self) {
        let wanted: Vec<u32> = (1..=self.brokers.len() as u32).collect();
        let config = self.client_config();
        let addrs: Vec<String> = self
            .brokers
            .iter()
            .filter(|b| b.is_running())
            .map(|b| b.addr.clone())
            .collect();
        // The harness is synchronous; the client is not. A thread of its own
        // keeps this usable from inside a test's runtime.
        let outcome = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("readiness runtime");
                rt.block_on(cluster_ready(&addrs, &wanted, &config))
            })
            .join()
            .expect("readiness thread")
        });
        if let Err(last) = outcome {
            panic!(
                "cluster not ready after {READY_TIMEOUT:?}: {last}\n{}",
                self.logs()
            );
        }
    }

    /// Cuts every link between node index `i` and the others (both
    /// directions): a network partition isolating it.
    pub fn isolate(&self, i: usize) {
        for ((from, to), link) in &self.links {
            if *from == i || *to == i {
                link.cut();
            }
        }
    }

    /// Restores every cut link.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.heal();
        }
    }

    /// Starts one more broker with `--join` (node id = its index + 1),
    /// without waiting: it becomes ready once a member adds it
    /// (`Admin::add_broker`). Returns its index.
    pub fn start_joining(&mut self, dir: &Path, extra_args: &[&str]) -> usize {
        let index = self.brokers.len();
        let mut b = Broker::configure(&dir.join(format!("node{}", index + 1)), extra_args);
        let initial = self
            .brokers
            .iter()
            .chain(std::iter::once(&b))
            .enumerate()
            .map(|(i, x)| format!("{}@{}", i + 1, x.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        b.extra_args.extend([
            "--node-id".to_owned(),
            (index + 1).to_string(),
            "--initial-cluster".to_owned(),
            initial,
            "--join".to_owned(),
        ]);
        b.spawn_no_wait();
        self.brokers.push(b);
        index
    }

    /// Client seed list: every broker's client address.
    pub fn seeds(&self) -> String {
        self.brokers
            .iter()
            .map(|b| b.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every broker's log, for failure messages.
    pub fn logs(&self) -> String {
        self.brokers
            .iter()
            .enumerate()
            .map(|(i, b)| format!("==== node {} ====\n{}", i + 1, b.log()))
            .collect()
    }
}

/// Polls every broker at `addrs` until each names a metadata leader and
/// lists every node of `wanted`, or [`READY_TIMEOUT`] passes: then the last
/// thing missing.
async fn cluster_ready(
    addrs: &[String],
    wanted: &[u32],
    config: &tern_client::ClientConfig,
) -> Result<(), String> {
    use tern_protocol::{Request, Response};
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; addrs.len()];
    let mut last = String::from("not asked yet");
    while Instant::now() < deadline {
        for (addr, ready) in addrs.iter().zip(&mut ready).filter(|(_, r)| !**r) {
            let answer = async {
                let conn = tern_client::Connection::connect_with(addr, config).await?;
                conn.request(Request::Metadata {
                    topics: Some(vec![]),
                })
                .await
            };
            match answer.await {
                Ok(Response::Metadata {
                    brokers,
                    controller,
                    ..
                }) => {
                    let known: Vec<u32> = brokers.iter().map(|b| b.node_id).collect();
                    let missing: Vec<u32> = wanted
                        .iter()
                        .filter(|n| !known.contains(n))
                        .copied()
                        .collect();
                    if controller != 0 && missing.is_empty() {
                        *ready = true;
                    } else {
                        last = format!(
                            "{addr}: metadata leader {controller} (0: none), brokers not registered yet: {missing:?}"
                        );
                    }
                }
                Ok(other) => last = format!("{addr}: metadata answered with {other:?}"),
                Err(e) => last = format!("{addr}: {e}"),
            }
        }
        if ready.iter().all(|r| *r) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(last)
}

/// Minimal HTTP/1.0 GET, enough for `/ready` and `/metrics`.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// Value of an unlabelled or labelled sample in Prometheus text, summed over
/// every series whose line starts with `prefix`.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `ternd` with `args` to completion (it must exit by itself within
/// `limit`, e.g. a refused start or a subcommand): (success, stdout, stderr).
pub fn run_ternd(args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = Command::new(bin("ternd"))
        .args(args)
        // As many users' shells have it: errors must still be one line.
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ternd");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("poll ternd").is_some() {
            let out = child.wait_with_output().expect("ternd output");
            return (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ternd {args:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `text` without ANSI escape sequences (`ESC [ ... letter`).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip to the sequence's final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A directory of PEM files: `ca.pem`, `node-N.pem`, `NAME.pem`, each with
/// its `-key.pem`.
pub struct Certs {
    dir: PathBuf,
    ca: tern_tls::generate::CertifiedPem,
}

impl Certs {
    /// A new CA written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> Certs {
        std::fs::create_dir_all(dir).unwrap();
        let ca = tern_tls::generate::create_ca("test CA", 1).unwrap();
        let certs = Certs {
            dir: dir.to_path_buf(),
            ca,
        };
        certs.write("ca", &certs.ca.clone());
        certs
    }

    fn write(&self, stem: &str, pem: &tern_tls::generate::CertifiedPem) {
        std::fs::write(self.dir.join(format!("{stem}.pem")), &pem.cert).unwrap();
        std::fs::write(self.dir.join(format!("{stem}-key.pem")), &pem.key).unwrap();
    }

    /// Issues broker `id`'s certificate (`node-<id>.pem`, for 127.0.0.1).
    pub fn node(&self, id: u64) -> tern_tls::generate::CertifiedPem {
        let pem = tern_tls::generate::issue_node(&self.ca, id, &["127.0.0.1".into()], 1).unwrap();
        self.write(&format!("node-{id}"), &pem);
        pem
    }

    /// Issues client `name`'s certificate (`<name>.pem`).
    pub fn client(&self, name: &str) -> tern_tls::generate::CertifiedPem {
        let pem = tern_tls::generate::issue_client(&self.ca, name, 1).unwrap();
        self.write(name, &pem);
        pem
    }

    /// A file of this directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    fn arg(&self, file: &str) -> String {
        self.path(file).display().to_string()
    }

    /// Broker flags: TLS on every port but /metrics (the harness polls
    /// `/ready` over plain HTTP).
    pub fn broker_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.arg("node-{node}.pem"),
            "--tls-key".into(),
            self.arg("node-{node}-key.pem"),
            "--tls-ca".into(),
            self.arg("ca.pem"),
            "--metrics-plaintext".into(),
        ]
    }

    /// Client settings trusting this CA, with client certificate
    /// `identity` if given, and the fault tests' timeouts.
    pub fn client_config(&self, identity: Option<&str>) -> tern_client::ClientConfig {
        tern_client::ClientConfig {
            tls: Some(tern_client::ClientTls {
                ca: self.path("ca.pem"),
                identity: identity.map(|n| {
                    (
                        self.path(&format!("{n}.pem")),
                        self.path(&format!("{n}-key.pem")),
                    )
                }),
            }),
            ..fault_client_config()
        }
    }
}
