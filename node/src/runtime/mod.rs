//! `faultline run`: one node as a process. Loads the configs and key, opens the store and the
//! engine (which restarts itself from the store), starts the libp2p transport and the HTTP API,
//! and runs the [`driver::Driver`] task that owns the engine until SIGINT/SIGTERM.

pub mod driver;
pub mod http_server;

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ed25519_dalek::SigningKey;
use faultline_net::{Multiaddr, NetConfig, PeerInfo};
use tokio::sync::{mpsc, watch};

use crate::config::{ClusterConfig, NodeConfig};
use crate::metrics::Metrics;
use crate::setup::{open_engine, EngineSetup};
use crate::store::Store;

pub use crate::handle::{Cmd, NodeStatus, Shared};

fn parse_addr(s: &str, what: &str) -> Result<Multiaddr> {
    s.parse()
        .with_context(|| format!("{what}: {s:?} is not a valid multiaddr"))
}

/// Binds `addr`'s port on `ip` instead of its own address: a node whose cluster.toml entry names
/// the address peers reach it at (a public or NAT-ed address, a container's service address)
/// listens on a local one (`faultline run --listen 0.0.0.0`).
fn with_listen_ip(addr: &Multiaddr, ip: IpAddr) -> Result<Multiaddr> {
    use faultline_net::multiaddr::Protocol as P;
    let mut out = Multiaddr::empty();
    let mut replaced = false;
    for part in addr.iter() {
        match part {
            P::Ip4(_) | P::Ip6(_) | P::Dns(_) | P::Dns4(_) | P::Dns6(_) if !replaced => {
                replaced = true;
                out.push(match ip {
                    IpAddr::V4(v4) => P::Ip4(v4),
                    IpAddr::V6(v6) => P::Ip6(v6),
                });
            }
            other => out.push(other),
        }
    }
    if !replaced {
        anyhow::bail!("own p2p address {addr} has no IP part for --listen to replace");
    }
    Ok(out)
}

/// Runs the node described by `config_path` until SIGINT or SIGTERM. `listen`, when given, is
/// the local IP both the p2p and the API listeners bind (ports from cluster.toml).
pub fn run(config_path: &Path, listen: Option<IpAddr>, allow_partition: bool) -> Result<()> {
    let node = NodeConfig::load(config_path)?;
    let cluster = ClusterConfig::load(&node.cluster)?;
    let me = cluster
        .node(node.id)
        .with_context(|| format!("node id {} is not in {}", node.id, node.cluster.display()))?
        .clone();
    let key = crate::keys::read_key(&node.key_file)?;
    if key.verifying_key().to_bytes() != me.public_key {
        // Not fatal: the peers will refuse this node (a test of the allow-list relies on it).
        tracing::warn!(
            "the key in {} is not node {}'s key in cluster.toml; peers will refuse this node",
            node.key_file.display(),
            node.id
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(node, cluster, me, key, listen, allow_partition))
}

async fn run_async(
    node: NodeConfig,
    cluster: ClusterConfig,
    me: crate::config::NodeEntry,
    key: SigningKey,
    listen_ip: Option<IpAddr>,
    allow_partition: bool,
) -> Result<()> {
    let store = Arc::new(
        Store::open(&node.data_dir, &cluster.genesis)
            .with_context(|| format!("cannot open the store in {}", node.data_dir.display()))?,
    );
    let engine = open_engine(
        EngineSetup {
            id: node.id,
            cluster: &cluster,
            key: key.clone(),
            timing: node.timing.clone(),
            batching: node.batching.clone(),
            limits: node.limits.clone(),
            byzantine: node.byzantine,
            seed: node.id,
            read_nonce_seed: {
                // Fresh on every start, so a restarted replica never reuses a read marker.
                let mut b = [0u8; 8];
                getrandom::fill(&mut b)
                    .context("the operating system's random number generator failed")?;
                u64::from_le_bytes(b)
            },
        },
        &store,
    )
    .context("cannot start the consensus engine")?;

    let mut peers = Vec::new();
    for p in cluster.nodes.iter().filter(|p| p.id != node.id) {
        peers.push(PeerInfo {
            id: p.id,
            peer_id: faultline_net::peer_id_from_public(&p.public_key)
                .with_context(|| format!("node {}'s public key", p.id))?,
            addr: parse_addr(&p.p2p, &format!("node {} p2p", p.id))?,
        });
    }
    let mut listen = parse_addr(&me.p2p, "own p2p address")?;
    let mut api_addr = me.api;
    if let Some(ip) = listen_ip {
        listen = with_listen_ip(&listen, ip)?;
        api_addr.set_ip(ip);
    }
    let mut net_config = NetConfig::new(node.id, key.to_bytes(), listen.clone(), peers);
    // One budget for the transport and the cores: a frame the cores may produce is never
    // refused by the network, and the network never accepts more than the cores expect.
    net_config.max_frame_bytes = node.limits.max_message_bytes;
    let (net, inbound) = faultline_net::start(net_config)
        .await
        .context("cannot start the network")?;

    let listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| format!("cannot listen for the API on {api_addr}"))?;

    let (cmd_tx, cmd_rx) = mpsc::channel(4096);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")?;
    let clients = crate::ledger::tx::ClientKeys::new(cluster.clients.iter().map(|c| c.public_key))
        .map_err(|k| {
            anyhow::anyhow!(
                "client public_key {} in cluster.toml is not a valid ed25519 key",
                hex::encode(k)
            )
        })?;
    let shared = Arc::new(Shared {
        id: node.id,
        cluster: cluster.clone(),
        clients,
        key,
        store: Arc::clone(&store),
        metrics: Metrics::new(),
        status: Mutex::new(NodeStatus::initial(engine.as_ref())),
        cmds: cmd_tx,
        net: net.clone(),
        http,
        byzantine: node.byzantine,
        allow_partition,
    });
    let driver = driver::Driver {
        engine,
        shared: Arc::clone(&shared),
        net: net.clone(),
        inbound,
        cmds: cmd_rx,
        shutdown: shutdown_rx.clone(),
        tick: Duration::from_millis(node.timing.tick_ms),
    };
    let driver_task = tokio::spawn(driver.run());

    let router = crate::api::router(Arc::clone(&shared));
    let refused = Arc::clone(&shared);
    let api_task = tokio::spawn(http_server::serve(
        listener,
        router,
        shutdown_rx.clone(),
        move || {
            refused.metrics.api_refused.inc();
        },
    ));
    tracing::info!(
        id = node.id,
        protocol = %cluster.protocol,
        api = %api_addr,
        p2p = %listen,
        advertised_p2p = %me.p2p,
        "node running"
    );

    let mut driver_task = driver_task;
    let driver_result = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            None
        }
        r = &mut driver_task => Some(r),
    };
    let _ = shutdown_tx.send(true);
    let driver_result = match driver_result {
        Some(r) => r,
        None => driver_task.await,
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), api_task).await;
    net.shutdown().await;
    match driver_result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context("the node stopped on a storage error")),
        Err(e) => Err(anyhow::anyhow!("the driver task failed: {e}")),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
