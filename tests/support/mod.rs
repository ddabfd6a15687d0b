//! Test harness for real clusters: a testnet on free loopback ports, `faultline run` children
//! that are killed when the harness is dropped (also on panic), a tiny HTTP client over std, and
//! condition waits with deadlines instead of fixed sleeps.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_faultline");

/// The binary the cluster runs: `FAULTLINE_BIN` (e.g. a release build, for measurements) or
/// the one cargo built for this test.
pub fn bin() -> String {
    std::env::var("FAULTLINE_BIN").unwrap_or_else(|_| BIN.to_string())
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub n: usize,
    pub base: u16,
    children: Vec<Option<Child>>,
    /// Per-node HTTP API and p2p addresses when the nodes are not all on loopback.
    hosts: Option<Vec<String>>,
    /// A command that node `i`'s `faultline run` is started under (e.g. `ip netns exec`);
    /// called with the node index, returns the program and its leading arguments.
    wrap: Option<Box<dyn Fn(usize) -> Vec<String>>>,
}

/// A base port such that base..base+2n are all free right now.
fn free_base(n: usize) -> u16 {
    let seed = std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0));
    let mut x = seed;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let base = 20000 + ((x >> 33) % 35000) as u16;
        if (0..2 * n as u16).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return base;
        }
    }
    panic!("no free port range found");
}

impl Cluster {
    /// Writes a testnet of `n` raft nodes (not started).
    pub fn raft(n: usize) -> Cluster {
        Cluster::raft_with_clients(n, 1)
    }

    /// Writes a testnet of `n` raft nodes with `clients` permitted client keys.
    pub fn raft_with_clients(n: usize, clients: usize) -> Cluster {
        Cluster::write("raft", n, clients)
    }

    /// Writes a testnet of `n` pbft nodes (not started).
    pub fn pbft(n: usize) -> Cluster {
        Cluster::write("pbft", n, 1)
    }

    /// Writes a testnet of `n` nodes of `protocol` with `clients` client keys (not started).
    pub fn write(protocol: &str, n: usize, clients: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let base = free_base(n);
        let out = Command::new(bin())
            .args(["testnet", "--protocol", protocol, "--nodes", &n.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--base-port", &base.to_string()])
            .args(["--clients", &clients.to_string()])
            .args(["--admins", "1"])
            .output()
            .expect("run testnet");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir,
            n,
            base,
            children: (0..n).map(|_| None).collect(),
            hosts: None,
            wrap: None,
        }
    }

    /// Writes a testnet with one address per node (`testnet --hosts`), whose nodes are started
    /// under `wrap(i)` (e.g. inside node i's network namespace).
    pub fn on_hosts(
        protocol: &str,
        hosts: &[String],
        base: u16,
        wrap: impl Fn(usize) -> Vec<String> + 'static,
    ) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = hosts.len();
        let out = Command::new(bin())
            .args(["testnet", "--protocol", protocol, "--nodes", &n.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--hosts", &hosts.join(",")])
            .args(["--base-port", &base.to_string()])
            .output()
            .expect("run testnet");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            dir,
            n,
            base,
            children: (0..n).map(|_| None).collect(),
            hosts: Some(hosts.to_vec()),
            wrap: Some(Box::new(wrap)),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    pub fn api(&self, i: usize) -> String {
        match &self.hosts {
            Some(h) => format!("{}:{}", h[i], self.base + 1),
            None => format!("127.0.0.1:{}", self.base as usize + self.n + i),
        }
    }

    pub fn start(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{i}.log")))
            .expect("log file");
        let mut cmd = match &self.wrap {
            Some(wrap) => {
                let prefix = wrap(i);
                let mut c = Command::new(&prefix[0]);
                c.args(&prefix[1..]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let child = cmd
            .arg("run")
            .arg("--config")
            .arg(self.node_dir(i).join("node.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn faultline run");
        self.children[i] = Some(child);
    }

    pub fn start_all(&mut self) {
        for i in 0..self.n {
            self.start(i);
        }
    }

    /// SIGKILL: no clean shutdown, whatever was not fsynced is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (bounded) for a clean exit; returns whether it exited with 0.
    pub fn terminate(&mut self, i: usize) -> bool {
        let Some(mut c) = self.children[i].take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// The OS process id of node `i`, if it is running under this harness.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// The p2p address of node `i`.
    pub fn p2p(&self, i: usize) -> String {
        match &self.hosts {
            Some(h) => format!("{}:{}", h[i], self.base),
            None => format!("127.0.0.1:{}", self.base as usize + i),
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{i}.log"))).unwrap_or_default()
    }

    pub fn status(&self, i: usize) -> Option<Value> {
        match http(&self.api(i), "GET", "/v1/status", None) {
            Some((200, v)) => Some(v),
            _ => None,
        }
    }

    /// The id of the leader all running nodes in `nodes` agree on.
    pub fn wait_leader(&self, nodes: &[usize], timeout: Duration) -> usize {
        wait_for(timeout, "an agreed leader", || {
            let mut leader = None;
            for &i in nodes {
                let s = self.status(i)?;
                let l = s.get("leader")?.as_u64()?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader? as usize;
            let s = self.status(l)?;
            (s["role"] == "leader").then_some(l)
        })
    }

    /// Waits until every node in `nodes` reports the same height (>= min) and head hash.
    pub fn wait_converged(&self, nodes: &[usize], min: u64, timeout: Duration) -> (u64, String) {
        wait_for(timeout, "equal heads", || {
            let mut head: Option<(u64, String)> = None;
            for &i in nodes {
                let s = self.status(i)?;
                let h = (s["height"].as_u64()?, s["head_hash"].as_str()?.to_string());
                if head.as_ref().is_some_and(|x| *x != h) {
                    return None;
                }
                head = Some(h);
            }
            head.filter(|h| h.0 >= min)
        })
    }

    /// Sets `name = value` in table `[table]` of every node's node.toml (before start).
    pub fn set_node_toml(&self, table: &str, name: &str, value: i64) {
        for i in 0..self.n {
            let path = self.node_dir(i).join("node.toml");
            let text = std::fs::read_to_string(&path).expect("node.toml");
            let mut doc: toml::Table = toml::from_str(&text).expect("parse node.toml");
            let t = doc
                .entry(table)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(t) = t else {
                panic!("[{table}] is not a table")
            };
            t.insert(name.into(), toml::Value::Integer(value));
            std::fs::write(&path, toml::to_string(&doc).expect("toml")).expect("write node.toml");
        }
    }

    /// `faultline verify` on node `i`'s data dir; panics unless it says ok. Returns stdout.
    pub fn verify(&self, i: usize) -> String {
        let out = Command::new(BIN)
            .arg("verify")
            .arg("--data")
            .arg(self.node_dir(i).join("data"))
            .output()
            .expect("verify");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "verify node {i}: {stdout}{stderr}");
        stdout
    }

    pub fn client_key(&self) -> ed25519_dalek::SigningKey {
        self.client_key_n(0)
    }

    pub fn admin_key(&self) -> ed25519_dalek::SigningKey {
        self.key_file("admin-0.key")
    }

    pub fn client_key_n(&self, j: usize) -> ed25519_dalek::SigningKey {
        self.key_file(&format!("client-{j}.key"))
    }

    fn key_file(&self, name: &str) -> ed25519_dalek::SigningKey {
        let path = self.dir.path().join(name);
        let text = std::fs::read_to_string(path).expect("key");
        let mut b = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut b).expect("hex key");
        ed25519_dalek::SigningKey::from_bytes(&b)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.n {
            self.kill(i);
        }
    }
}

/// Polls `f` every 50 ms until it returns Some or `timeout` passes (then panics with `what`).
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request with `Connection: close`; None if the node is unreachable.
pub fn http(addr: &str, method: &str, path: &str, body: Option<&[u8]>) -> Option<(u16, Value)> {
    let (code, bytes) = http_raw(addr, method, path, body)?;
    Some((code, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

pub fn http_raw(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body).ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..split]).ok()?;
    let code: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut payload = buf[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload);
    }
    Some((code, payload))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(pos) = b.windows(2).position(|w| w == b"\r\n") {
        let len = std::str::from_utf8(&b[..pos])
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .unwrap_or(0);
        if len == 0 || b.len() < pos + 2 + len {
            break;
        }
        out.extend_from_slice(&b[pos + 2..pos + 2 + len]);
        b = &b[pos + 2 + len + 2.min(b.len() - pos - 2 - len)..];
    }
    out
}
