//! `faultline local … --ui ADDR`: the cluster of `local` with a paced workload that runs until
//! SIGINT/SIGTERM, the live view on ADDR, and the view's controls applied to the child
//! processes this command owns. On exit it audits the correct nodes' ledgers as `local` does.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::{Action, ControlRequest, Process, Ui};
use crate::cluster::{ClusterSpec, LocalCluster};
use crate::local::Scenario;

/// Transactions per second of the view's workload unless `--rate` says otherwise: enough to
/// see blocks and messages flow, little enough to leave the machine's cores to the nodes.
pub const DEFAULT_RATE: f64 = 100.0;
const STARTUP: Duration = Duration::from_secs(30);

/// Who is cut off: `partitioned` nodes are each alone; everyone else blocks them.
fn blocked_for(i: usize, n: usize, partitioned: &BTreeSet<usize>) -> Vec<u64> {
    if partitioned.contains(&i) {
        (0..n).filter(|&j| j != i).map(|j| j as u64).collect()
    } else {
        partitioned.iter().map(|&j| j as u64).collect()
    }
}

struct Owner {
    cluster: LocalCluster,
    ui: Arc<Ui>,
    partitioned: BTreeSet<usize>,
    /// Push the partition sets again on the next tick (a restarted node starts unblocked).
    repush: bool,
}

impl Owner {
    fn publish(&self, i: usize) {
        let mode = if self.cluster.is_byzantine(i as u64) {
            self.mode(i)
        } else {
            None
        };
        self.ui.set_process(
            i,
            Process {
                running: self.cluster.is_running(i),
                byzantine: mode,
                partitioned: self.partitioned.contains(&i),
            },
        );
    }

    fn mode(&self, i: usize) -> Option<crate::config::ByzantineMode> {
        let path = self.cluster.dir.join(format!("node-{i}")).join("node.toml");
        let text = std::fs::read_to_string(path).ok()?;
        toml::from_str::<crate::config::NodeConfig>(&text)
            .ok()?
            .byzantine
    }

    async fn push_partitions(&mut self) {
        let n = self.cluster.n();
        let mut all = true;
        for i in 0..n {
            if self.cluster.is_running(i) {
                let b = blocked_for(i, n, &self.partitioned);
                all &= self.cluster.set_blocked(i, &b).await;
            }
        }
        // A node that did not answer (starting up) gets it on the next tick.
        self.repush = !all;
    }

    async fn apply(&mut self, i: usize, action: Action) -> Result<String, String> {
        let id = i;
        let leader = self.ui.leader();
        let was = |what: &str| {
            if leader == Some(i as u64) {
                format!(" (was {what})")
            } else {
                String::new()
            }
        };
        let role = match self.cluster.config.protocol {
            crate::config::Protocol::Raft => "leader",
            crate::config::Protocol::Pbft => "primary",
        };
        let text = match action {
            Action::Kill => {
                if !self.cluster.is_running(i) {
                    return Err(format!("node {id} is not running"));
                }
                self.cluster.kill(i);
                format!("kill -9 node {id}{}", was(role))
            }
            Action::Restart => {
                if self.cluster.is_running(i) {
                    return Err(format!("node {id} is running; kill it first"));
                }
                self.cluster.spawn(i).map_err(|e| e.to_string())?;
                self.repush = true;
                format!("restart node {id}")
            }
            Action::Byzantine(mode) => {
                self.cluster.kill(i);
                self.cluster
                    .set_byzantine(i, mode)
                    .map_err(|e| e.to_string())?;
                self.cluster.spawn(i).map_err(|e| e.to_string())?;
                self.repush = true;
                match mode {
                    Some(m) => format!(
                        "node {id}{} restarted Byzantine: {} (byzantine = \"{}\" in its node.toml)",
                        was(role),
                        m.name(),
                        m.name()
                    ),
                    None => format!("node {id} restarted honest"),
                }
            }
            Action::Partition => {
                self.partitioned.insert(i);
                self.push_partitions().await;
                format!("partition node {id} from every other node{}", was(role))
            }
            Action::Heal => {
                if !self.partitioned.remove(&i) {
                    return Err(format!("node {id} is not partitioned"));
                }
                self.push_partitions().await;
                format!("heal node {id}")
            }
        };
        self.publish(i);
        Ok(text)
    }
}

/// Runs the cluster, the workload and the view until SIGINT/SIGTERM; prints the audit and
/// returns whether the correct nodes kept one ledger.
pub fn run(sc: Scenario, listen: SocketAddr, rate: f64) -> Result<bool> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(sc, listen, rate))
}

async fn run_async(sc: Scenario, listen: SocketAddr, rate: f64) -> Result<bool> {
    // Registered first, so a signal never hits the default handler and orphans the nodes.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen for the view on {listen}"))?;
    let mut cluster = LocalCluster::create(&ClusterSpec {
        protocol: sc.protocol,
        nodes: sc.nodes,
        clients: sc.clients.max(1),
        byzantine: sc.byzantine.clone(),
        dir: sc.dir.clone(),
        eager_leader: None,
    })?;
    cluster.set_allow_partition(true);
    for b in &sc.byzantine {
        cluster.set_byzantine(b.node as usize, Some(b.mode))?;
    }
    let started = tokio::select! {
        r = cluster.start(STARTUP) => r,
        _ = int.recv() => bail!("interrupted; every node process was stopped"),
        _ = term.recv() => bail!("terminated; every node process was stopped"),
    };
    if let Err(e) = started {
        return Err(cluster.start_failed(e));
    }
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlRequest>(16);
    let ui = Ui::new(&cluster.config, Some(ctl_tx))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(Arc::clone(&ui).serve(listener, stop_rx.clone()));
    let mut owner = Owner {
        cluster,
        ui: Arc::clone(&ui),
        partitioned: BTreeSet::new(),
        repush: false,
    };
    for i in 0..owner.cluster.n() {
        owner.publish(i);
    }
    ui.event(
        "start",
        None,
        format!(
            "{} cluster of {} nodes started ({} clients, {rate} tx/s; logs in {})",
            sc.protocol,
            sc.nodes,
            sc.clients,
            owner.cluster.dir.display()
        ),
    );
    let keys = (0..sc.clients.max(1))
        .map(|j| crate::keys::read_key(&owner.cluster.dir.join(format!("client-{j}.key"))))
        .collect::<Result<Vec<_>, _>>()?;
    let http = crate::cluster::http_client()?;
    let config = owner.cluster.config.clone();
    let load = tokio::spawn({
        let stop = stop_rx.clone();
        async move { crate::workload::run_until(&config, keys, rate, &http, stop).await }
    });
    outln!("faultline local --ui: http://{listen}/ (Ctrl-C to stop)");

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            Some(req) = ctl_rx.recv() => {
                let r = owner.apply(req.node, req.action).await;
                let _ = req.reply.send(r);
            }
            _ = tick.tick() => {
                if let Some(i) = owner.cluster.exited() {
                    owner.cluster.kill(i);
                    ui.event("down", Some(i as u64), format!("node {i} exited on its own (see {})", owner.cluster.log_path(i).display()));
                    owner.publish(i);
                }
                if owner.repush {
                    owner.push_partitions().await;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = load.await;
    // Heal before the audit, so that every running correct node can catch up.
    if !owner.partitioned.is_empty() {
        owner.partitioned.clear();
        owner.push_partitions().await;
    }
    owner.cluster.wait_converged(Duration::from_secs(10)).await;
    let safety = owner.cluster.safety().await;
    // The page's keep-alive connections may hold a graceful shutdown open; do not wait long.
    let _ = tokio::time::timeout(Duration::from_secs(3), server).await;
    owner.cluster.kill_all();
    if safety.safe {
        outln!(
            "safe: correct nodes {:?} hold the same ledger up to height {}",
            safety.checked_nodes,
            safety.compared_height
        );
    } else {
        outln!(
            "UNSAFE: correct nodes {:?} first differ at height {}",
            safety.checked_nodes,
            safety.first_diverging_height.unwrap_or(0)
        );
    }
    Ok(safety.safe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partitioned_node_is_alone_and_the_others_block_it() {
        let p: BTreeSet<usize> = [1].into_iter().collect();
        assert_eq!(blocked_for(1, 3, &p), vec![0, 2]);
        assert_eq!(blocked_for(0, 3, &p), vec![1]);
        assert!(blocked_for(0, 3, &BTreeSet::new()).is_empty());
    }
}
