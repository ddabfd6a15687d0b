//! `faultline admin`: operations an admin key (`[[admin]]` in cluster.toml) signs. `members`
//! shows the member set with each member's role and height as it reports them;
//! `transfer-leader ID` moves Raft leadership (thesis §3.10) by a signed request to the
//! leader, valid only in the term it names (docs/SPEC.md "Admin requests").

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{field, node_status, wire};
use crate::api_types::{StatusReply, TransferLeaderReply, TransferLeaderRequest};
use crate::config::{ClusterConfig, Protocol};

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AdminCommand {
    /// The members of the cluster, each with its role, term or view and height.
    Members,
    /// Raft: hand the leadership to voter ID (the leader brings it up to date, then it
    /// campaigns at once); answers once ID leads.
    TransferLeader {
        /// The node to lead next.
        id: u64,
    },
}

pub fn run(cluster_path: &Path, key: Option<PathBuf>, cmd: AdminCommand) -> Result<()> {
    let super::Cli {
        cluster,
        rt,
        http,
        key_path,
    } = super::Cli::new(cluster_path, key, "admin-0.key")?;
    rt.block_on(async {
        match cmd {
            AdminCommand::Members => members(&cluster, &http).await,
            AdminCommand::TransferLeader { id } => {
                let sk = crate::keys::read_key(&key_path)?;
                if !cluster.is_admin(&sk.verifying_key().to_bytes()) {
                    bail!(
                        "{} is not an admin key of this cluster (no [[admin]] entry in {} lists it)",
                        key_path.display(),
                        cluster_path.display()
                    );
                }
                transfer_leader(&cluster, &http, &sk, id).await
            }
        }
    })
}

async fn statuses(cluster: &ClusterConfig, http: &reqwest::Client) -> Vec<Option<StatusReply>> {
    let mut out = Vec::with_capacity(cluster.n());
    for node in &cluster.nodes {
        out.push(node_status(http, node.api).await);
    }
    out
}

async fn members(cluster: &ClusterConfig, http: &reqwest::Client) -> Result<()> {
    outln!(
        "{} cluster, {} members (f = {}), {} admin key(s)",
        cluster.protocol,
        cluster.n(),
        cluster.f,
        cluster.admins.len()
    );
    outln!(
        "{:>4} {:<22} {:<30} {:<13} {:>6} {:>6} {:>8}",
        "id",
        "api",
        "p2p",
        "role",
        "term",
        "view",
        "height"
    );
    for (node, s) in cluster.nodes.iter().zip(statuses(cluster, http).await) {
        match s {
            Some(s) => outln!(
                "{:>4} {:<22} {:<30} {:<13} {:>6} {:>6} {:>8}",
                node.id,
                node.api.to_string(),
                node.p2p,
                s.role,
                field(s.term),
                field(s.view),
                s.height
            ),
            None => outln!(
                "{:>4} {:<22} {:<30} unreachable",
                node.id,
                node.api.to_string(),
                node.p2p
            ),
        }
    }
    Ok(())
}

/// The leader of the highest term any node reports, and that term.
fn leader_and_term(statuses: &[Option<StatusReply>]) -> Option<(u64, u64)> {
    statuses
        .iter()
        .flatten()
        .filter_map(|s| Some((s.leader?, s.term?)))
        .max_by_key(|&(_, term)| term)
}

async fn transfer_leader(
    cluster: &ClusterConfig,
    http: &reqwest::Client,
    key: &ed25519_dalek::SigningKey,
    target: u64,
) -> Result<()> {
    if cluster.protocol != Protocol::Raft {
        bail!("transfer-leader is a raft operation; a PBFT primary changes only by a view change");
    }
    if cluster.node(target).is_none() {
        bail!("node {target} is not a member of this cluster");
    }
    // An election between reading the term and the leader's check makes the request stale
    // (409); then it is signed again for the new term.
    let mut last = String::new();
    for _ in 0..3 {
        let Some((leader, term)) = leader_and_term(&statuses(cluster, http).await) else {
            last = "no node reports a leader".into();
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Some(api) = cluster.node(leader).map(|n| n.api) else {
            bail!("the nodes report leader {leader}, which cluster.toml does not list");
        };
        let req = TransferLeaderRequest::sign(key, target, term);
        let url = format!("http://{api}/v1/admin/transfer-leader");
        let answer = wire::send(http.post(url).json(&req))
            .await
            .with_context(|| format!("cannot reach leader {leader} at {api}"))?;
        if let Some(r) = answer.json_if::<TransferLeaderReply>(200) {
            outln!("leader is node {} in term {}", r.leader, r.term);
            return Ok(());
        }
        last = format!("leader {leader}: {}", answer.error_text());
        if answer.code != 409 && answer.code != 503 {
            break;
        }
    }
    bail!("the transfer did not happen ({last})")
}
