//! The fault schedule: every 1–2 s (random) the nemesis hits a node with kill -9 or SIGSTOP —
//! half the time whoever leads at that moment — or heals one it hit before (restart from its
//! data dir, SIGCONT), or turns a paused node into a killed one; never more than f nodes are
//! faulty at once, so the cluster is always expected to make progress.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

use super::history::{Fault, FaultKind};
use crate::api_types::StatusReply;
use crate::cluster::LocalCluster;

/// Status probes during the faults must not wait on a SIGSTOPped node.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The nemesis and what it has done.
pub struct Nemesis {
    rng: ChaCha8Rng,
    f: usize,
    start: Instant,
    pub killed: BTreeSet<usize>,
    pub paused: BTreeSet<usize>,
    pub faults: Vec<Fault>,
    /// Nodes that exited without being killed, with the time (a crash the nemesis did not cause).
    pub unexpected_exits: Vec<(u64, usize)>,
    http: reqwest::Client,
}

/// Sends a signal with `kill -SIG PID` (SIGSTOP and SIGCONT have no std API).
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

impl Nemesis {
    pub fn new(f: usize, seed: u64, start: Instant, http: reqwest::Client) -> Nemesis {
        Nemesis {
            rng: ChaCha8Rng::seed_from_u64(seed),
            f,
            start,
            killed: BTreeSet::new(),
            paused: BTreeSet::new(),
            faults: Vec::new(),
            unexpected_exits: Vec::new(),
            http,
        }
    }

    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn faulty(&self) -> usize {
        self.killed.len() + self.paused.len()
    }

    fn healthy(&self, n: usize) -> Vec<usize> {
        (0..n)
            .filter(|i| !self.killed.contains(i) && !self.paused.contains(i))
            .collect()
    }

    fn pick(&mut self, from: &[usize]) -> Option<usize> {
        if from.is_empty() {
            return None;
        }
        Some(from[(self.rng.next_u64() % from.len() as u64) as usize])
    }

    /// The leader (raft) or primary (pbft) most healthy nodes name, asked with a short timeout.
    async fn leader(&self, cluster: &LocalCluster) -> Option<usize> {
        let mut votes: HashMap<u64, usize> = HashMap::new();
        for i in self.healthy(cluster.n()) {
            let url = format!("http://{}/v1/status", cluster.config.nodes[i].api);
            let req = self.http.get(url).timeout(PROBE_TIMEOUT);
            let status = crate::client::wire::get::<StatusReply>(req).await;
            if let Some(l) = status.and_then(|s| s.leader) {
                *votes.entry(l).or_default() += 1;
            }
        }
        votes
            .into_iter()
            .max_by_key(|(_, c)| *c)
            .map(|(l, _)| l as usize)
    }

    fn record(&mut self, node: usize, kind: FaultKind, was_leader: bool) {
        let at_ns = self.now_ns();
        self.faults.push(Fault {
            at_ns,
            node,
            kind,
            was_leader,
        });
    }

    /// Notes (and clears) nodes that exited although the nemesis did not kill them; they are
    /// then treated as killed, so a later heal restarts them.
    fn reap(&mut self, cluster: &mut LocalCluster) {
        while let Some(i) = cluster.exited() {
            cluster.kill(i);
            self.paused.remove(&i);
            self.killed.insert(i);
            let at = self.now_ns();
            self.unexpected_exits.push((at, i));
        }
    }

    /// Applies faults every 1–2 s until `until`.
    pub async fn run(&mut self, cluster: &mut LocalCluster, until: Instant) -> anyhow::Result<()> {
        loop {
            let pause = Duration::from_millis(1000 + self.rng.next_u64() % 1000);
            if Instant::now() + pause >= until {
                tokio::time::sleep_until(until.into()).await;
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            self.reap(cluster);
            self.step(cluster).await?;
        }
    }

    async fn step(&mut self, cluster: &mut LocalCluster) -> anyhow::Result<()> {
        let n = cluster.n();
        let faulty = self.faulty();
        let inject = faulty < self.f && (faulty == 0 || self.rng.next_u64() % 2 == 0);
        if inject {
            let healthy = self.healthy(n);
            let leader = self.leader(cluster).await;
            let target = match leader {
                Some(l) if healthy.contains(&l) && self.rng.next_u64() % 2 == 0 => Some(l),
                _ => self.pick(&healthy),
            };
            let Some(i) = target else { return Ok(()) };
            let was_leader = leader == Some(i);
            if self.rng.next_u64() % 2 == 0 {
                cluster.kill(i);
                self.killed.insert(i);
                self.record(i, FaultKind::Kill, was_leader);
            } else if let Some(pid) = cluster.pid(i) {
                if signal(pid, "STOP") {
                    self.paused.insert(i);
                    self.record(i, FaultKind::Pause, was_leader);
                }
            }
            return Ok(());
        }
        // One in five heals of a paused node kills it instead: SIGKILL while stopped, so it
        // dies without having run again since it froze.
        let paused: Vec<usize> = self.paused.iter().copied().collect();
        if !paused.is_empty() && self.rng.next_u64() % 5 == 0 {
            if let Some(i) = self.pick(&paused) {
                cluster.kill(i);
                self.paused.remove(&i);
                self.killed.insert(i);
                self.record(i, FaultKind::Kill, false);
            }
            return Ok(());
        }
        let faulty: Vec<usize> = self.killed.iter().chain(&self.paused).copied().collect();
        if let Some(i) = self.pick(&faulty) {
            self.heal(cluster, i)?;
        }
        Ok(())
    }

    fn heal(&mut self, cluster: &mut LocalCluster, i: usize) -> anyhow::Result<()> {
        if self.killed.remove(&i) {
            cluster.spawn(i)?;
            self.record(i, FaultKind::Restart, false);
        } else if self.paused.remove(&i) {
            if let Some(pid) = cluster.pid(i) {
                signal(pid, "CONT");
            }
            self.record(i, FaultKind::Resume, false);
        }
        Ok(())
    }

    /// Resumes every paused node and restarts every killed one.
    pub fn heal_all(&mut self, cluster: &mut LocalCluster) -> anyhow::Result<()> {
        self.reap(cluster);
        let faulty: Vec<usize> = self.killed.iter().chain(&self.paused).copied().collect();
        for i in faulty {
            self.heal(cluster, i)?;
        }
        Ok(())
    }

    pub fn count(&self, kind: FaultKind) -> usize {
        self.faults.iter().filter(|f| f.kind == kind).count()
    }
}
