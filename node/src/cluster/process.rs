//! The node processes of a local cluster: starting them on free ports (retrying if a port
//! was taken), restarting one, rewriting a node's Byzantine mode, partitioning it, and
//! stopping them — SIGKILL for a crash, SIGTERM for a clean shutdown.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_ports, io_err, ClusterError, LocalCluster};
use crate::config::{NodeConfig, Protocol, Timing};

impl LocalCluster {
    /// Picks free ports, starts every node and waits until all answer and agree on a leader;
    /// retries with new ports (and wiped data dirs) if a node dies at startup, e.g. because
    /// another process took its port in the meantime.
    pub async fn start(&mut self, deadline: Duration) -> Result<(), ClusterError> {
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                self.kill_all();
                for i in 0..self.n() {
                    let data = self.dir.join(format!("node-{i}")).join("data");
                    let _ = std::fs::remove_dir_all(data);
                }
            }
            self.assign_ports()?;
            for i in 0..self.n() {
                self.spawn(i)?;
            }
            match self.wait_ready(deadline).await {
                Ok(()) => return Ok(()),
                Err(e @ ClusterError::Exited { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(ClusterError::Timeout {
            secs: deadline.as_secs(),
            what: "the cluster to start".into(),
        }))
    }

    fn assign_ports(&mut self) -> Result<(), ClusterError> {
        let n = self.n();
        let ports = free_ports(2 * n)?;
        for (i, node) in self.config.nodes.iter_mut().enumerate() {
            node.p2p = format!("/ip4/127.0.0.1/tcp/{}", ports[i]);
            node.api = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ports[n + i]);
        }
        let path = self.dir.join("cluster.toml");
        let text = toml::to_string_pretty(&self.config).map_err(|e| io_err(&path, e))?;
        std::fs::write(&path, text).map_err(|e| io_err(&path, e))
    }

    /// Starts node `i` (again) from its node.toml, appending to its log file.
    pub fn spawn(&mut self, i: usize) -> Result<(), ClusterError> {
        let log_path = self.log_path(i);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_err(&log_path, e))?;
        let mut cmd = Command::new(&self.exe);
        die_with_parent(&mut cmd);
        cmd.arg("run")
            .arg("--config")
            .arg(self.dir.join(format!("node-{i}")).join("node.toml"));
        if self.allow_partition {
            cmd.arg("--allow-partition");
        }
        let child = cmd
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ClusterError::Spawn { node: i, source })?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Nodes started from now on accept partition requests from loopback
    /// (`faultline run --allow-partition`).
    pub fn set_allow_partition(&mut self, on: bool) {
        self.allow_partition = on;
    }

    /// Rewrites node `i`'s node.toml with `byzantine = MODE` (or without it) for its next start.
    /// A Byzantine Raft node also gets a short election timeout, so that it takes over when the
    /// leader fails: Raft trusts its leader, which is where a Byzantine node does its harm.
    pub fn set_byzantine(
        &mut self,
        i: usize,
        mode: Option<crate::config::ByzantineMode>,
    ) -> Result<(), ClusterError> {
        let path = self.dir.join(format!("node-{i}")).join("node.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let mut node: NodeConfig = toml::from_str(&text).map_err(|e| io_err(&path, e))?;
        node.byzantine = mode;
        if self.config.protocol == Protocol::Raft {
            let d = Timing::default();
            (node.timing.election_ticks, node.timing.heartbeat_ticks) = match mode {
                Some(_) => (6, 2),
                None => (d.election_ticks, d.heartbeat_ticks),
            };
        }
        let text = toml::to_string_pretty(&node).map_err(|e| io_err(&path, e))?;
        std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
        self.byzantine.retain(|&b| b != i as u64);
        if mode.is_some() {
            self.byzantine.push(i as u64);
        }
        Ok(())
    }

    /// Tells node `i` to cut itself off from exactly `blocked` (`POST /v1/admin/partition`);
    /// whether it answered.
    pub async fn set_blocked(&self, i: usize, blocked: &[u64]) -> bool {
        let Some(node) = self.config.nodes.get(i) else {
            return false;
        };
        self.http
            .post(format!("http://{}/v1/admin/partition", node.api))
            .json(&crate::api_types::Partition {
                blocked: blocked.to_vec(),
            })
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// SIGKILL: a crash, whatever the node had not fsynced is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children.get_mut(i).and_then(Option::take) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id of node `i`, if it was started and not killed since.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Runs nodes from `exe` instead of this process's own executable (a test harness is not
    /// the `faultline` binary).
    pub fn set_exe(&mut self, exe: PathBuf) {
        self.exe = exe;
    }

    /// SIGTERM, then waits (bounded) for a clean exit, else SIGKILL; returns whether the node
    /// shut down cleanly with status 0.
    pub fn terminate(&mut self, i: usize, deadline: Duration) -> bool {
        let Some(mut c) = self.children.get_mut(i).and_then(Option::take) else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// A cluster that did not start: stops every node and keeps the logs for the operator,
    /// whose error then says where they are.
    pub fn start_failed(&mut self, e: ClusterError) -> anyhow::Error {
        self.kill_all();
        let dir = self.keep_dir();
        anyhow::Error::new(e).context(format!(
            "the {} cluster did not start (node logs kept in {})",
            self.config.protocol,
            dir.display()
        ))
    }

    pub fn kill_all(&mut self) {
        for i in 0..self.n() {
            self.kill(i);
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children.get(i).is_some_and(Option::is_some)
    }

    /// The first started node that has exited on its own, if any.
    pub fn exited(&mut self) -> Option<usize> {
        self.children.iter_mut().enumerate().find_map(|(i, c)| {
            c.as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .map(|_| i)
        })
    }
}

/// Linux: the node gets SIGKILL when the thread that started it dies, which for `local`, `demo`
/// and `bench` is when the process dies, even by SIGKILL. Every other way out already kills
/// the nodes (the cluster's Drop, the SIGINT/SIGTERM handler); this covers the one that cannot.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; prctl and getppid are async-signal-safe and
    // the closure only reads a copied integer.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then no signal would come.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("the parent process exited"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}
