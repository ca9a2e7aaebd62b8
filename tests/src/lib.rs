//! Test harness: starts real `ternd` processes on loopback ports, waits for
//! them to be ready, and kills them by PID when dropped (SIGKILL), so a
//! failing test never leaves a broker behind.
//!
//! Binaries are looked up next to the test executable (`target/<profile>/`);
//! `scripts/test.sh` builds them before running the tests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// A free loopback port (bound then released; racy but fine on loopback).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A running `ternd` process.
pub struct Broker {
    child: Option<Child>,
    /// Client address.
    pub addr: String,
    /// HTTP address.
    pub http_addr: String,
    /// Data directory.
    pub data_dir: PathBuf,
    extra_args: Vec<String>,
}

impl Broker {
    /// Starts a broker on fresh ports with `data_dir` and extra flags.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Broker {
        let mut b = Broker {
            child: None,
            addr: format!("127.0.0.1:{}", free_port()),
            http_addr: format!("127.0.0.1:{}", free_port()),
            data_dir: data_dir.to_path_buf(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("open broker log");
        let child = Command::new(bin("ternd"))
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", &self.addr, "--metrics-listen", &self.http_addr])
            .args(&self.extra_args)
            .env("TERN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn ternd");
        self.child = Some(child);
        self.wait_ready();
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

    /// The broker's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }

    /// SIGKILL: no shutdown code runs, exactly like a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        if let Some(mut c) = self.child.take() {
            unsafe_sigterm(c.id());
            return c.wait().map(|s| s.success()).unwrap_or(false);
        }
        false
    }

    /// Restarts the (stopped) broker on the same ports and data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// GET a path on the HTTP endpoint: (status, body).
    pub fn http(&self, path: &str) -> Option<(u16, String)> {
        http_get(&self.http_addr, path)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_sigterm(pid: u32) {
    // SAFETY: kill(2) with a PID we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
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
